"""Semantic segmentation through PaddleSeg: its YAML (`_base_`, components
by `type`), models (which return a list of logits), losses (computed
outside the model), transforms and file-list data sets; mIoU, per-class
IoU and pixel accuracy at each image's own size, as PaddleSeg scores them.

The training loop is ppkd's: `iters` iterations in passes over the training
set (an epoch is one pass), PaddleSeg's learning-rate schedule stepped
every iteration.
"""
import contextlib
import json
import logging
import math
import os
import time

import numpy as np
import paddle
import yaml

from paddleseg.core import infer
from paddleseg.core.train import loss_computation
from paddleseg.cvlibs import Config as SegConfig
from paddleseg.cvlibs import SegBuilder
from paddleseg.transforms import Compose
from paddleseg.utils import logger as seg_logger
from paddleseg.utils import metrics

from ppkd import compat
from ppkd import config as cfgmod
from ppkd.data.loader import stop_workers_on_error
from ppkd.data.segmentation import UnlabeledSegImages  # the module registers CheckedSegDataset
from ppkd.data.unlabeled import list_unlabeled_images, unlabeled_section
from ppkd.errors import PPKDError

logger = logging.getLogger('ppkd')
compat.apply(fixes=compat.PADDLESEG_FIXES)

# ppkd's own keys in a PaddleSeg config, with their defaults.
SEG_DEFAULTS = {'log_iter': 20, 'snapshot_epoch': 1, 'snapshot_iter': 0, 'worker_num': 0, 'save_dir': 'output', 'use_gpu': False,
                'dataset_dir': None}
DATASET_SECTIONS = ('train_dataset', 'val_dataset')
_models_built = 0


@contextlib.contextmanager
def _quiet_paddleseg():
    """PaddleSeg prints every component's config (INFO) as it builds it."""
    saved, seg_logger.log_level = seg_logger.log_level, 1  # 1: warnings and errors
    try:
        yield
    finally:
        seg_logger.log_level = saved


def load_seg_config(path, overrides):
    """A PaddleSeg config (its `_base_` merged by PaddleSeg) with ppkd's
    keys and the registered distillation losses beside it, `overrides`
    (nested dict) merged strictly, as for detection configs."""
    try:
        with _quiet_paddleseg():
            seg = SegConfig(path)
    except (AssertionError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
        raise PPKDError(f'{path}: not a valid PaddleSeg config ({str(e).strip().splitlines()[0]})') from None
    cfg = cfgmod.registry_copy()
    cfg.update(SEG_DEFAULTS)
    cfgmod.workspace.dict_merge(cfg, seg.dic)
    if overrides:
        cfgmod.merge_overrides(cfg, overrides)
    # PaddleSeg's builder reads seg.dic: it gets the merged sections.
    for key in set(seg.dic) | set(DATASET_SECTIONS) | {'model', 'loss', 'optimizer', 'lr_scheduler'}:
        seg.dic[key] = cfg.get(key)
    cfg.update(task='segmentation', paddleseg=seg, filename=os.path.basename(path), config_path=path)
    for key in ('model', 'train_dataset', 'loss', 'optimizer', 'lr_scheduler'):
        if not isinstance(cfg.get(key), dict):
            raise PPKDError(f'{path}: no {key} section (a PaddleSeg config needs model, train_dataset, val_dataset, '
                            'loss, optimizer, lr_scheduler, iters, batch_size)')
    for key in ('iters', 'batch_size'):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PPKDError(f'{path}: {key} must be a positive integer, got {value!r}')
    if cfg.get('dataset_dir'):
        _apply_dataset_dir(cfg, overrides or {})
    return cfg


def _apply_dataset_dir(cfg, overrides):
    """One root for both sets, their list files found under it by name —
    except a root or list the command line sets for its own set (the more
    specific key wins, as for detection configs)."""
    for section in DATASET_SECTIONS:
        spec = cfg.get(section)
        if not isinstance(spec, dict):
            continue
        given = overrides.get(section) if isinstance(overrides.get(section), dict) else {}
        if 'dataset_root' not in given:
            spec['dataset_root'] = cfg['dataset_dir']
        for key in ('train_path', 'val_path'):
            if spec.get(key) and key not in given:
                spec[key] = os.path.join(cfg['dataset_dir'], os.path.basename(spec[key]))


class _Reader:
    """A data set, its batch sampler and loader: `len()` batches a pass."""

    def __init__(self, dataset, sampler, worker_num):
        self.dataset, self.sampler = dataset, sampler
        self.worker_seed = 0
        self.loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=worker_num, return_list=True,
                                           worker_init_fn=self._seed_worker)

    def _seed_worker(self, worker_id):
        np.random.seed((self.worker_seed + worker_id) % 2 ** 32)

    def __len__(self):
        return len(self.sampler)


class SegmentationTask:
    metric = 'mIoU'
    # the student's own loss, beside the distillation terms
    own_loss_key = 'task_loss'

    def __init__(self, cfg):
        self.cfg = cfg
        self.seg = cfg['paddleseg']
        self.builder = SegBuilder(self.seg)
        self._loss = None

    def _build(self, spec, what):
        """A PaddleSeg component; a ppkd error inside it comes out as itself."""
        try:
            with _quiet_paddleseg():
                return self.builder.build_component(spec)
        except RuntimeError as e:
            if isinstance(e.__context__, PPKDError):
                raise e.__context__ from None
            raise PPKDError(f'{self.cfg["config_path"]}: cannot build {what}: '
                            f'{str(e).strip().splitlines()[-1]}') from None

    def build_model(self):
        """A fresh model. PaddleSeg's ResNets name their parameters
        explicitly (`conv1_1_weights`), which Paddle allows once a process:
        each model gets its own name scope, so a ResNet teacher and a ResNet
        student (or a test's second model) can be built side by side."""
        global _models_built
        _models_built += 1
        with paddle.utils.unique_name.guard(f'seg{_models_built}_'):
            return self._build(self.seg.dic['model'], 'model')

    @property
    def loss(self):
        """PaddleSeg's {'types': [...], 'coef': [...]}, one type per logit map."""
        if self._loss is None:
            spec = self.seg.dic['loss']
            ignore = (self.seg.dic.get('train_dataset') or {}).get('ignore_index', 255)
            types = []
            for item in spec.get('types') or []:
                item = dict(item)
                item.setdefault('ignore_index', ignore)
                types.append(self._build(item, 'loss'))
            if len(types) != len(spec.get('coef') or []):
                raise PPKDError(f'{self.cfg["config_path"]}: loss has {len(types)} types and '
                                f'{len(spec.get("coef") or [])} coef')
            self._loss = {'types': types, 'coef': list(spec['coef'])}
        return self._loss

    def student_loss(self, model, batch):
        logits = model(batch['img'])
        if len(logits) != len(self.loss['types']):
            raise PPKDError(f'{self.cfg["config_path"]}: the model returns {len(logits)} logit maps, loss.types '
                            f'lists {len(self.loss["types"])}')
        terms = loss_computation(logits, batch['label'].astype('int64'), batch.get('edge'), self.loss)
        outputs = {f'seg_loss_{i}' if len(terms) > 1 else 'seg_loss': term for i, term in enumerate(terms)}
        outputs['loss'] = paddle.add_n(terms)
        return outputs

    @staticmethod
    def images(batch):
        return batch['img']

    @staticmethod
    def teacher_forwards(teacher):
        # The whole forward on the image: PaddleSeg models take the image tensor.
        return (lambda model, batch, names: model(batch['img'])), None

    @staticmethod
    def teacher_tail(teacher):
        return None

    def _dataset(self, section):
        spec = self.seg.dic.get(section)
        if not isinstance(spec, dict):
            raise PPKDError(f'{self.cfg["config_path"]}: no {section} section')
        return self._build(spec, section)

    def class_names(self):
        spec = self.seg.dic['train_dataset']
        if spec.get('type') == 'CheckedSegDataset' and spec.get('label_list'):
            from ppkd.data.voc import read_label_list
            return read_label_list(os.path.join(spec['dataset_root'], spec['label_list']))
        return [f'class{i}' for i in range(int(spec.get('num_classes', 0)))]

    def train_transforms(self):
        """The training set's transforms, built without the set (whose list
        checks read every line), composed as PaddleSeg's data sets do."""
        spec = self.seg.dic['train_dataset']
        return Compose([self._build(t, 'train_dataset.transforms') for t in spec.get('transforms') or []],
                       img_channels=int(spec.get('img_channels', 3)))

    def train_reader(self):
        dataset = self._dataset('train_dataset')
        sampler = paddle.io.DistributedBatchSampler(dataset, batch_size=int(self.cfg['batch_size']), shuffle=True,
                                                    drop_last=True)
        return _Reader(dataset, sampler, int(self.cfg.get('worker_num') or 0))

    def eval_reader(self, limit=None):
        """The whole test set, or its first `limit` images; batch 1: each
        image is scored at its own size, as PaddleSeg does."""
        dataset = self._dataset('val_dataset')
        if limit is not None:
            dataset.file_list = dataset.file_list[:limit]
        return _Reader(dataset, paddle.io.BatchSampler(dataset, batch_size=1), int(self.cfg.get('worker_num') or 0))

    @staticmethod
    def batches(reader, epoch=0):
        if hasattr(reader.sampler, 'set_epoch'):
            reader.sampler.set_epoch(epoch)
        reader.worker_seed = int(np.random.randint(2 ** 31))  # the trainer seeds numpy per epoch
        return stop_workers_on_error(iter(reader.loader))

    def schedule(self, steps_per_epoch):
        iters = int(self.cfg['iters'])
        return math.ceil(iters / steps_per_epoch), iters

    def lr_and_optimizer(self, steps_per_epoch, model):
        with _quiet_paddleseg():
            lr = self.builder.lr_scheduler
            spec = dict(self.seg.dic['optimizer'])
        kind = {'sgd': 'SGD', 'adam': 'Adam'}.get(spec.get('type'), spec.get('type'))
        spec['type'] = 'Momentum' if kind == 'SGD' and 'momentum' in spec else kind
        return lr, self._build(spec, 'optimizer')(model, lr)

    def unlabeled_reader(self):
        """`distill.unlabeled`'s images (relative to `dataset_dir`, else the
        training set's root), shuffled, in batches of their own size (the
        labelled one by default); None when the config has none."""
        section = unlabeled_section(self.cfg)
        if section is None:
            return None
        root = self.cfg.get('dataset_dir') or self.seg.dic['train_dataset'].get('dataset_root')
        paths = list_unlabeled_images(root, section.get('image_dir'), section.get('image_list'))
        dataset = UnlabeledSegImages(paths, self.train_transforms())
        batch_size = int(section.get('batch_size') or self.cfg['batch_size'])
        # Fewer images than a batch still make one (smaller) batch a pass.
        sampler = paddle.io.DistributedBatchSampler(dataset, batch_size=batch_size, shuffle=True,
                                                    drop_last=len(dataset) >= batch_size)
        return _Reader(dataset, sampler, int(self.cfg.get('worker_num') or 0))

    @staticmethod
    def batch_size(batch):
        return int(batch['img'].shape[0])

    def evaluate(self, model, reader=None):
        """mIoU and per-class IoU (%), pixel accuracy (%), over every
        validation image at its own size (logits resized back)."""
        reader = reader or self.eval_reader()
        num_classes = int(self.seg.dic['model'].get('num_classes') or reader.dataset.num_classes)
        ignore = reader.dataset.ignore_index
        was_training = model.training
        model.eval()
        intersect = pred_area = label_area = 0
        images, seconds = 0, 0.
        with paddle.no_grad():
            for batch in self.batches(reader):
                start = time.perf_counter()
                pred, _ = infer.inference(model, batch['img'], trans_info=batch['trans_info'])
                seconds += time.perf_counter() - start
                i, p, t = metrics.calculate_area(pred, batch['label'].astype('int64'), num_classes,
                                                 ignore_index=ignore)
                intersect, pred_area, label_area = intersect + i.numpy(), pred_area + p.numpy(), label_area + t.numpy()
                images += 1
        if was_training:
            model.train()
        areas = [paddle.to_tensor(a) for a in (intersect, pred_area, label_area)]
        class_iou, miou = metrics.mean_iou(*areas)
        _, accuracy = metrics.accuracy(areas[0], areas[1])
        names = getattr(reader.dataset, 'class_names', None) or [f'class{i}' for i in range(num_classes)]
        return {'mIoU': 100. * float(miou), 'per_class': {names[k]: 100. * float(class_iou[k]) for k in range(num_classes)},
                'pixel_accuracy': 100. * float(accuracy), 'images': images,
                'images_per_s': images / seconds if seconds else 0.}

    def describe(self, result):
        return (f'mIoU = {result["mIoU"]:.2f}% (pixel accuracy {result["pixel_accuracy"]:.2f}%) over '
                f'{result["images"]} images  per class IoU: '
                f'{json.dumps({k: round(v, 2) for k, v in result["per_class"].items()})}')
