"""Configs as PaddleDetection users write them: YAML with `_BASE_`
includes, `-o key=value` overrides, ppdet's `@register`/`create` names.

ppdet keeps one process-wide config (`workspace.global_config`), which
cannot hold a student and a teacher at once. ppkd loads each config into
its own dict and activates one at a time around `create` calls.
"""
import contextlib
import os

import yaml

from ppdet.core import workspace
from ppdet.core.workspace import AttrDict, create  # noqa: F401  (re-exported for callers)

from ppkd import compat
import ppkd.data.voc  # noqa: F401  registers CheckedVOCDataSet for YAML tags
import ppkd.losses  # noqa: F401  registers the distillation losses
from ppkd.errors import PPKDError

DATASET_KEYS = ('TrainDataset', 'EvalDataset', 'TestDataset')

compat.apply()


def parse_overrides(items):
    """`['a.b=1', 'c=[1, 2]']` → {'a': {'b': 1}, 'c': [1, 2]}; values are YAML."""
    result = {}
    for item in items or []:
        if '=' not in item:
            raise PPKDError(f'override {item!r} is not key=value')
        key, value = item.split('=', 1)
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise PPKDError(f'override {item!r}: value is not valid YAML') from None
        node = result
        *parents, leaf = key.strip().split('.')
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return result


def _merge(target, overrides, path=''):
    """Merge nested overrides into a loaded config; reaches into objects that
    YAML tags built (e.g. `TrainDataset.dataset_dir`) instead of replacing them."""
    for key, value in overrides.items():
        where = f'{path}{key}'
        if isinstance(target, dict):
            current = target.get(key)
            if isinstance(value, dict) and current is not None and not isinstance(current, (int, float, str, list)):
                _merge(current, value, where + '.')
            else:
                target[key] = value
        elif hasattr(target, key):
            current = getattr(target, key)
            if isinstance(value, dict) and isinstance(current, dict):
                _merge(current, value, where + '.')
            else:
                setattr(target, key, value)
        else:
            raise PPKDError(f'override {where}: {type(target).__name__} has no field {key!r}')


def _read_yaml(path, seen=()):
    """A YAML file with its `_BASE_` files merged under it (later bases over
    earlier ones, the file over all), paths relative to the file.

    ppdet's own `_load_config_with_base` merges the first base into its
    process-wide config (an empty dict is falsy in its `merge_config`), which
    would leak one config into the next; this reads with the same YAML
    loader (ppdet's tags, e.g. `!VOCDataSet`) and merges privately.
    """
    if not os.path.isfile(path):
        raise PPKDError(f'config not found: {path}')
    if path in seen:
        raise PPKDError(f'{path}: _BASE_ includes itself')
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=yaml.Loader) or {}
    except yaml.YAMLError as e:
        raise PPKDError(f'{path}: invalid YAML ({str(e).splitlines()[0]})') from None
    if not isinstance(data, dict):
        raise PPKDError(f'{path}: expected a mapping at the top level')
    merged = {}
    for base in data.pop('_BASE_', None) or []:
        base = os.path.join(os.path.dirname(path), os.path.expanduser(base))
        workspace.dict_merge(merged, _read_yaml(base, seen + (path,)))
    workspace.dict_merge(merged, data)
    return merged


def _apply_input_size(cfg):
    """ppkd's `input_size` key: one number for the train, eval and test sizes."""
    size = cfg.get('input_size')
    if not size:
        return
    if not isinstance(size, int) or size <= 0 or size % 32:
        raise PPKDError(f'input_size must be a positive multiple of 32, got {size!r}')
    for reader in ('TrainReader', 'EvalReader', 'TestReader'):
        spec = cfg.get(reader) or {}
        for group in ('sample_transforms', 'batch_transforms'):
            for op in spec.get(group) or []:
                if 'Resize' in op:
                    op['Resize']['target_size'] = [size, size]
                if 'BatchRandomResize' in op:
                    op['BatchRandomResize']['target_size'] = [size]
        if 'image_shape' in (spec.get('inputs_def') or {}):
            spec['inputs_def']['image_shape'] = [3, size, size]


def _apply_dataset_dir(cfg):
    """ppkd's `dataset_dir` key: one root for all three data sets."""
    root = cfg.get('dataset_dir')
    if root:
        for key in DATASET_KEYS:
            if key in cfg and hasattr(cfg[key], 'dataset_dir'):
                cfg[key].dataset_dir = root


def load_config(path, overrides=None):
    """The config at `path` with its bases and `overrides` (a dict or a list
    of 'key=value' strings) merged in, isolated from every other config."""
    file_cfg = _read_yaml(path)
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(overrides)
    # Per-config copies of the registry, so merging never touches the shared one.
    cfg = AttrDict(**{k: v.copy() for k, v in workspace.get_registered_modules().items()})
    workspace.dict_merge(cfg, file_cfg)
    if overrides:
        _merge(cfg, overrides)
    cfg['filename'] = os.path.splitext(os.path.basename(path))[0]
    cfg['config_path'] = path
    _apply_input_size(cfg)
    _apply_dataset_dir(cfg)
    if 'architecture' not in cfg:
        raise PPKDError(f'{path}: no "architecture" key (is this a model config?)')
    return cfg


@contextlib.contextmanager
def active(cfg):
    """Make `cfg` ppdet's global config for the `create` calls inside."""
    saved = dict(workspace.global_config)
    workspace.global_config.clear()
    workspace.global_config.update(cfg)
    try:
        yield cfg
    finally:
        workspace.global_config.clear()
        workspace.global_config.update(saved)


def build(cfg, name, **kwargs):
    """`create(name)` with `cfg` active."""
    with active(cfg):
        return create(name, **kwargs)


def label_names(cfg, dataset_key='EvalDataset'):
    """Class names of a config's data set, read from its label list."""
    ds = cfg.get(dataset_key)
    if ds is None:
        ds = cfg.get('TrainDataset')
    if ds is None or not getattr(ds, 'label_list', None):
        raise PPKDError(f'{cfg.get("config_path")}: {dataset_key} has no label_list')
    path = os.path.join(ds.dataset_dir or '', ds.label_list)
    return ppkd.data.voc.read_label_list(path)
