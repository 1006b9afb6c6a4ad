"""Images without annotations, for distillation on unlabeled data.

`distill.unlabeled` in a student config names a folder of images or a list
file (one image a line; a VOC list's `image xml` lines work too, only the
image is read), both relative to the config's `dataset_dir`:

    distill:
      unlabeled: {image_dir: unlabeled/JPEGImages, batch_size: 8, weight: 1.0}

The images go through the config's own TrainReader transforms with an empty
box list, so they are augmented, resized and normalised exactly as the
labelled ones; the distiller reads their images only.
"""
import logging
import os

import numpy as np
from PIL import Image

from ppdet.core.workspace import register, serializable
from ppdet.data.source.dataset import DetDataset

from ppkd.data.split import IMAGE_EXTS
from ppkd.data.voc import NamesFailingImage
from ppkd.errors import PPKDError

logger = logging.getLogger('ppkd.data')

UNLABELED_KEYS = {'image_dir', 'image_list', 'batch_size', 'weight'}


def _check_image(path, where):
    if not os.path.isfile(path):
        raise PPKDError(f'{where}: image not found: {path}')
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001  PIL raises many types for a bad file
        raise PPKDError(f'{where}: unreadable image {path} ({type(e).__name__}: {e})') from None


def list_unlabeled_images(dataset_dir, image_dir=None, image_list=None):
    """Paths of the images in `image_dir` (sorted) or `image_list`, each
    checked to be a readable image; both relative to `dataset_dir`."""
    if bool(image_dir) == bool(image_list):
        raise PPKDError('distill.unlabeled: give exactly one of image_dir and image_list')
    if image_dir:
        folder = os.path.join(dataset_dir or '', image_dir)
        if not os.path.isdir(folder):
            raise PPKDError(f'distill.unlabeled.image_dir does not exist: {folder}')
        paths = [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                 if os.path.splitext(n)[1].lower() in IMAGE_EXTS]
        where = folder
    else:
        list_path = os.path.join(dataset_dir or '', image_list)
        if not os.path.isfile(list_path):
            raise PPKDError(f'distill.unlabeled.image_list not found: {list_path}')
        root = os.path.dirname(list_path)
        with open(list_path) as f:
            paths = [os.path.join(root, line.split()[0]) for line in f if line.strip()]
        where = list_path
    if not paths:
        raise PPKDError(f'distill.unlabeled: no images in {where}')
    for path in paths:
        _check_image(path, where)
    return paths


@register
@serializable
class UnlabeledImages(NamesFailingImage, DetDataset):
    """Images with empty box lists, for the TrainReader's transforms."""

    def __init__(self, dataset_dir=None, image_dir=None, image_list=None, **kwargs):
        super().__init__(dataset_dir=dataset_dir, **kwargs)
        self.unlabeled_dir, self.image_list = image_dir, image_list
        self.roidbs = []

    def check_or_download_dataset(self):
        pass

    def parse_dataset(self):
        paths = list_unlabeled_images(self.dataset_dir, self.unlabeled_dir, self.image_list)
        self.roidbs = [{'im_file': p, 'im_id': np.array([i]),
                        'gt_bbox': np.zeros((0, 4), np.float32), 'gt_class': np.zeros((0, 1), np.int32),
                        'gt_score': np.zeros((0, 1), np.float32), 'difficult': np.zeros((0, 1), np.int32)}
                       for i, p in enumerate(paths)]
        logger.info('unlabeled images: %d from %s', len(paths), self.unlabeled_dir or self.image_list)


def unlabeled_section(cfg):
    """The config's `distill.unlabeled` section, checked, or None."""
    section = (cfg.get('distill') or {}).get('unlabeled')
    if not section:
        return None
    if not isinstance(section, dict):
        raise PPKDError(f'{cfg["config_path"]}: distill.unlabeled must be a mapping, got {section!r}')
    unknown = set(section) - UNLABELED_KEYS
    if unknown:
        raise PPKDError(f'{cfg["config_path"]}: distill.unlabeled has unknown keys {sorted(unknown)} '
                        f'(known: {sorted(UNLABELED_KEYS)})')
    return section
