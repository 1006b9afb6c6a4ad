"""Configs as PaddleDetection users write them: YAML with `_BASE_`
includes, `-o key=value` overrides, ppdet's `@register`/`create` names.

ppdet keeps one process-wide config (`workspace.global_config`), which
cannot hold a student and a teacher at once. ppkd loads each config into
its own dict and activates one at a time around `create` calls.
"""
import contextlib
import difflib
import inspect
import logging
import os

import yaml

from ppdet.core import workspace
from ppdet.core.config.schema import SchemaDict
from ppdet.core.workspace import AttrDict, create  # noqa: F401  (re-exported for callers)

from ppkd import compat
import ppkd.data.coco  # noqa: F401  registers CheckedCOCODataSet for YAML tags
import ppkd.data.voc  # noqa: F401  registers CheckedVOCDataSet for YAML tags
import ppkd.losses  # noqa: F401  registers the distillation losses
import ppkd.modeling  # noqa: F401  registers ppkd's model components (VGGFromFC7, MobileNetForFPN)
from ppkd.errors import PPKDError
from ppkd.tasks import is_segmentation_file

logger = logging.getLogger('ppkd')

DATASET_KEYS = ('TrainDataset', 'EvalDataset', 'TestDataset')
# The `**kwargs` of these constructors that ppdet reads (DetDataset.set_kwargs).
KWARGS_READ = {'BaseDataLoader': ('mixup_epoch', 'cutmix_epoch', 'mosaic_epoch', 'pre_img_epoch')}
# Top-level keys a command line may add that a config file need not hold.
COMMAND_LINE_KEYS = ('weights', 'use_fine_grained_loss', 'distill', 'use_gpu', 'use_vdl', 'vdl_log_dir', 'snapshot_iter')

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


def _known_fields(module):
    """The keys a registered module's constructor takes, or None when it
    takes any (`**kwargs` all the way up)."""
    cls = getattr(module.pymodule, module.name, None)
    names = set()
    for klass in (cls.__mro__ if cls is not None else ()):
        if klass is object or '__init__' not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {'self'}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
        if klass.__name__ in KWARGS_READ:
            return names | set(KWARGS_READ[klass.__name__])
    return None


def _refuse_unknown(key, where, candidates, what):
    near = difflib.get_close_matches(key, sorted(candidates), n=1)
    hint = f' (did you mean {near[0]}?)' if near else ''
    raise PPKDError(f'override {where}: unknown {what} {key!r}{hint}')


def merge_overrides(target, overrides, path=''):
    """Merge nested overrides into a loaded config; reaches into objects that
    YAML tags built (e.g. `TrainDataset.dataset_dir`) instead of replacing them.
    A key that nothing reads is refused: a new top-level key, or a key a
    registered module's constructor does not take."""
    for key, value in overrides.items():
        where = f'{path}{key}'
        if not path and key not in target and key not in COMMAND_LINE_KEYS:
            _refuse_unknown(key, where, [k for k in target if not isinstance(target[k], SchemaDict)]
                            + list(COMMAND_LINE_KEYS), 'top-level key')
        if isinstance(target, SchemaDict) and key not in target:
            known = _known_fields(target)
            if known is not None and key not in known:
                _refuse_unknown(key, where, known, f'{target.name} key')
        if isinstance(target, dict):
            current = target.get(key)
            if isinstance(value, dict) and current is not None and not isinstance(current, (int, float, str, list)):
                merge_overrides(current, value, where + '.')
            else:
                target[key] = value
        elif hasattr(target, key):
            current = getattr(target, key)
            if isinstance(value, dict) and isinstance(current, dict):
                merge_overrides(current, value, where + '.')
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


# The multiple an architecture's input size must be (its coarsest stride);
# SSD300's extra blocks take any size.
INPUT_SIZE_MULTIPLE = {'SSD': 1}


def _apply_input_size(cfg):
    """ppkd's `input_size` key: one number for the train, eval and test sizes."""
    size = cfg.get('input_size')
    if not size:
        return
    multiple = INPUT_SIZE_MULTIPLE.get(cfg.get('architecture'), 32)
    if not isinstance(size, int) or size <= 0 or size % multiple:
        raise PPKDError(f'input_size must be a positive multiple of {multiple} for {cfg.get("architecture")}, '
                        f'got {size!r}')
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
    if cfg.get('architecture') == 'SSD':
        _scale_ssd_priors(cfg, size)


def _scale_by(value, factor):
    if isinstance(value, (list, tuple)):
        return [_scale_by(v, factor) for v in value]
    return value * factor


def _scale_ssd_priors(cfg, size):
    """SSD's prior sizes are pixels of a `base_size` image (SSD300: 20 % to
    90 % of 300 px); at another input size they keep those fractions of the
    image, or small inputs get priors larger than every object. Fixed steps
    (SSD300-VGG16's 8 ... 300) are that image's grid: 0 lets each level's
    step follow its own grid (image size / cells)."""
    head = cfg.get(cfg.get('SSD', {}).get('ssd_head', 'SSDHead')) or {}
    priors = head.get('anchor_generator')
    if not isinstance(priors, dict):
        return
    base = priors.get('base_size', 300)
    if base == size:
        return
    factor = size / base
    for key in ('min_sizes', 'max_sizes'):
        if key in priors:
            priors[key] = _scale_by(priors[key], factor)
    if 'steps' in priors:
        priors['steps'] = [0.] * len(priors['steps'])
    priors['base_size'] = size


def _apply_dataset_dir(cfg, overrides):
    """ppkd's `dataset_dir` key: one root for all three data sets, except
    one whose own `<Dataset>.dataset_dir` the command line sets (the more
    specific key wins, as in PaddleDetection)."""
    root = cfg.get('dataset_dir')
    if root:
        for key in DATASET_KEYS:
            given = isinstance(overrides.get(key), dict) and 'dataset_dir' in overrides[key]
            if key in cfg and hasattr(cfg[key], 'dataset_dir') and not given:
                cfg[key].dataset_dir = root


def _check_counts(cfg):
    """Counts that must be positive integers (0 or a string would train
    nothing, or fail deep inside ppdet)."""
    checks = [('epoch', cfg.get('epoch'))]
    checks += [(f'{r}.batch_size', (cfg.get(r) or {}).get('batch_size')) for r in ('TrainReader', 'EvalReader')]
    for key, value in checks:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise PPKDError(f'{cfg["config_path"]}: {key} must be a positive integer, got {value!r}')


def registry_copy():
    """Per-config copies of ppdet's registry (every `@register`ed module's
    defaults), so merging a config never touches the shared one."""
    return AttrDict(**{k: v.copy() for k, v in workspace.get_registered_modules().items()})


def load_config(path, overrides=None):
    """The config at `path` with its bases and `overrides` (a dict or a list
    of 'key=value' strings) merged in, isolated from every other config."""
    file_cfg = _read_yaml(path)
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(overrides)
    if is_segmentation_file(file_cfg):
        from ppkd.tasks.segmentation import load_seg_config
        return load_seg_config(path, overrides)
    cfg = registry_copy()
    workspace.dict_merge(cfg, file_cfg)
    if overrides:
        merge_overrides(cfg, overrides)
    # As ppdet's own loader: the file's name with its extension (ppdet's
    # exporter strips the extension itself: `…_x0.5.yml` → `…_x0.5`).
    cfg['filename'] = os.path.basename(path)
    cfg['config_path'] = path
    _apply_input_size(cfg)
    _apply_dataset_dir(cfg, overrides or {})
    _check_counts(cfg)
    if 'architecture' not in cfg:
        raise PPKDError(f'{path}: no "architecture" key (is this a model config?)')
    return cfg


def load_teacher_config(path, overrides, student_cfg):
    """The teacher's config for distilling into `student_cfg`. The teacher
    reads the student's batches, so it takes the student's `input_size`
    (SSD's priors, hence its decoded boxes, follow it) unless `overrides`
    set its own."""
    overrides = parse_overrides(overrides) if isinstance(overrides, (list, tuple)) else dict(overrides or {})
    size = student_cfg.get('input_size')
    if size and 'input_size' not in overrides and student_cfg.get('task') != 'segmentation':
        try:
            cfg = load_config(path, dict(overrides, input_size=size))
        except PPKDError as e:  # e.g. a size the teacher's architecture cannot take: its own size stays
            logger.info('teacher: keeps its own input_size (%s)', e)
        else:
            logger.info("teacher: input_size %d, the student's (it reads the student's batches)", size)
            return cfg
    return load_config(path, overrides)


@contextlib.contextmanager
def active(cfg):
    """Make `cfg` ppdet's global config for the `create` calls inside
    (yields that global config: what a merge inside changes)."""
    saved = dict(workspace.global_config)
    workspace.global_config.clear()
    workspace.global_config.update(cfg)
    try:
        yield workspace.global_config
    finally:
        workspace.global_config.clear()
        workspace.global_config.update(saved)


def build(cfg, name, **kwargs):
    """`create(name)` with `cfg` active."""
    with active(cfg):
        return create(name, **kwargs)


def label_names(cfg, dataset_key='EvalDataset'):
    """Class names of a config's data set, in class order: its label list
    (VOC), or its annotation file's categories sorted by id (COCO)."""
    ds = cfg.get(dataset_key)
    if ds is None:
        ds = cfg.get('TrainDataset')
    if isinstance(ds, ppkd.data.coco.CheckedCOCODataSet):
        return ppkd.data.coco.category_names(os.path.join(ds.dataset_dir or '', ds.anno_path or ''))
    if ds is None or not getattr(ds, 'label_list', None):
        raise PPKDError(f'{cfg.get("config_path")}: {dataset_key} has no label_list')
    path = os.path.join(ds.dataset_dir or '', ds.label_list)
    return ppkd.data.voc.read_label_list(path)
