"""COCO-format data sets, checked as strictly as the VOC ones.

ppdet's COCODataSet asserts on a non-JSON path, lets malformed JSON raise
from pycocotools, skips images whose file is missing with a warning, and
lets an annotation with an unknown category id raise a bare KeyError.
ppkd's `CheckedCOCODataSet` refuses each with one message naming the file
(and the image or id) before ppdet parses it.
"""
import json
import os

from ppdet.core.workspace import register, serializable
from ppdet.data.source.coco import COCODataSet

from ppkd.data.voc import NamesFailingImage
from ppkd.errors import PPKDError


def read_coco_json(path):
    """The annotation file as a dict, its required parts checked."""
    if not os.path.isfile(path):
        raise PPKDError(f'annotation file not found: {path}')
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PPKDError(f'{path}: malformed JSON ({e})') from None
    if not isinstance(data, dict):
        raise PPKDError(f'{path}: expected a JSON object with images, annotations and categories')
    for key in ('images', 'categories'):
        if not isinstance(data.get(key), list):
            raise PPKDError(f'{path}: no "{key}" list')
    return data


def category_names(path):
    """Class names in ppdet's class order (categories sorted by id)."""
    cats = sorted(read_coco_json(path)['categories'], key=lambda c: c['id'])
    return [c['name'] for c in cats]


def check_coco(data, path, image_root):
    """Every image file present and sized, every annotation's image and
    category known, every box a list of four numbers."""
    cat_ids = {c.get('id') for c in data['categories']}
    img_ids = set()
    for img in data['images']:
        for key in ('id', 'file_name', 'width', 'height'):
            if key not in img:
                raise PPKDError(f'{path}: image entry {img!r:.80} has no "{key}"')
        img_ids.add(img['id'])
        file = os.path.join(image_root, img['file_name'])
        if not os.path.isfile(file):
            raise PPKDError(f'{path}: image file not found: {file}')
    for ann in data.get('annotations') or []:
        if ann.get('category_id') not in cat_ids:
            raise PPKDError(f'{path}: annotation {ann.get("id")} has unknown category id {ann.get("category_id")!r} '
                            f'(categories: {sorted(cat_ids)})')
        if ann.get('image_id') not in img_ids:
            raise PPKDError(f'{path}: annotation {ann.get("id")} refers to unknown image id {ann.get("image_id")!r}')
        box = ann.get('bbox')
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise PPKDError(f'{path}: annotation {ann.get("id")} has no [x, y, w, h] bbox (got {box!r})')


@register
@serializable
class CheckedCOCODataSet(NamesFailingImage, COCODataSet):
    """COCODataSet with strict checks (see the module docstring); same YAML
    keys as ppdet's."""

    def check_or_download_dataset(self):
        if not os.path.isdir(self.dataset_dir):
            raise PPKDError(f'dataset_dir does not exist: {self.dataset_dir}')

    def parse_dataset(self):
        if not os.path.isdir(self.dataset_dir):
            raise PPKDError(f'dataset_dir does not exist: {self.dataset_dir}')
        path = os.path.join(self.dataset_dir, self.anno_path or '')
        check_coco(read_coco_json(path), path, os.path.join(self.dataset_dir, self.image_dir or ''))
        super().parse_dataset()
        if not self.roidbs:
            raise PPKDError(f'no image with boxes in {path}')
