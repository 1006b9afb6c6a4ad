"""Strict VOC annotation parsing.

ppdet's VOCDataSet skips list lines whose files are missing, lets a malformed
XML raise a bare ParseError and an unknown class a bare KeyError. ppkd's
`CheckedVOCDataSet` refuses all three with a message naming the file, and
drops zero-area or inverted boxes with one warning that counts them.
"""
import logging
import os
import xml.etree.ElementTree as ET

import numpy as np

from ppdet.core.workspace import register, serializable
from ppdet.data.source.voc import VOCDataSet

from ppkd.errors import PPKDError

logger = logging.getLogger('ppkd.data')


def read_label_list(path):
    """Class names, one a line, in index order."""
    if not os.path.isfile(path):
        raise PPKDError(f'label list not found: {path}')
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise PPKDError(f'label list is empty: {path}')
    if len(set(names)) != len(names):
        raise PPKDError(f'label list has duplicate names: {path}')
    return names


def read_list_file(list_path, root):
    """Pairs (image path, xml path) of a VOC list file, both checked to exist."""
    if not os.path.isfile(list_path):
        raise PPKDError(f'list file not found: {list_path}')
    pairs = []
    with open(list_path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise PPKDError(f'{list_path}:{lineno}: expected "image xml", got {line.strip()!r}')
            img, xml = (os.path.join(root, p) for p in parts[:2])
            for kind, path in (('image', img), ('annotation', xml)):
                if not os.path.isfile(path):
                    raise PPKDError(f'{list_path}:{lineno}: {kind} not found: {path}')
            pairs.append((img, xml))
    if not pairs:
        raise PPKDError(f'list file has no entries: {list_path}')
    return pairs


def _number(obj, tag, xml_path):
    node = obj.find(tag)
    try:
        return float(node.text)
    except (AttributeError, TypeError, ValueError):
        raise PPKDError(f'{xml_path}: missing or non-numeric <{tag}>') from None


def parse_voc_xml(xml_path, cname2cid=None):
    """One annotation as a dict (w, h, boxes [n,4] xyxy, classes [n], names,
    difficult [n]) plus the number of zero-area or inverted boxes dropped.

    With `cname2cid`, a class name outside it is an error naming the class
    and the file.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise PPKDError(f'{xml_path}: malformed XML ({e})') from None
    size = root.find('size')
    if size is None:
        raise PPKDError(f'{xml_path}: no <size> element')
    w, h = _number(size, 'width', xml_path), _number(size, 'height', xml_path)
    if w <= 0 or h <= 0:
        raise PPKDError(f'{xml_path}: image size {w}x{h} is not positive')
    boxes, names, difficult, dropped = [], [], [], 0
    for obj in root.findall('object'):
        name_node = obj.find('name')
        name = name_node.text.strip() if name_node is not None and name_node.text else ''
        if cname2cid is not None and name not in cname2cid:
            raise PPKDError(f'{xml_path}: class {name!r} is not in the label list')
        bnd = obj.find('bndbox')
        if bnd is None:
            raise PPKDError(f'{xml_path}: object {name!r} has no <bndbox>')
        x1, y1, x2, y2 = (_number(bnd, t, xml_path) for t in ('xmin', 'ymin', 'xmax', 'ymax'))
        x1, y1, x2, y2 = max(0., x1), max(0., y1), min(w - 1, x2), min(h - 1, y2)
        if x2 <= x1 or y2 <= y1:
            dropped += 1
            continue
        diff = obj.find('difficult')
        boxes.append([x1, y1, x2, y2])
        names.append(name)
        difficult.append(int(diff.text) if diff is not None and diff.text else 0)
    ann = {
        'w': w, 'h': h, 'names': names,
        'boxes': np.array(boxes, dtype=np.float32).reshape(-1, 4),
        'difficult': np.array(difficult, dtype=np.int32),
        'classes': np.array([cname2cid[n] for n in names] if cname2cid else [], dtype=np.int32),
    }
    return ann, dropped


JPEG_END = b'\xff\xd9'


def check_image_complete(path):
    """A JPEG cut short (an interrupted copy) decodes without an error into
    grey rows, libjpeg's warning naming no file: refuse one whose last
    kilobyte holds no end-of-image marker (entropy-coded data never holds
    one; some writers pad after it)."""
    if not path.lower().endswith(('.jpg', '.jpeg')):
        return
    with open(path, 'rb') as f:
        f.seek(max(0, os.path.getsize(path) - 1024))
        if JPEG_END not in f.read():
            raise PPKDError(f'{path}: truncated JPEG (no end-of-image marker); copy it again or drop it from the list')


class NamesFailingImage:
    """Data set mixin: an error in a reader transform names its image, and
    a truncated JPEG is refused before it decodes into grey rows."""

    def __getitem__(self, idx):
        try:
            im_file = self.roidbs[idx % len(self.roidbs)].get('im_file') if self.roidbs else None
            if isinstance(im_file, str):
                check_image_complete(im_file)
            return super().__getitem__(idx)
        except PPKDError:
            raise
        except Exception as e:  # noqa: BLE001  any transform error, named by its image
            im_file = self.roidbs[idx % len(self.roidbs)].get('im_file', f'sample {idx}')
            raise PPKDError(f'{im_file}: reader transform failed: {type(e).__name__}: {e}') from None


# (list file, boxes dropped) already reported in this process
_REPORTED_DROPS = set()


@register
@serializable
class CheckedVOCDataSet(NamesFailingImage, VOCDataSet):
    """VOCDataSet with strict checks (see the module docstring). Same YAML
    keys as ppdet's VOCDataSet; `label_list` is required."""

    def check_or_download_dataset(self):
        # ppdet downloads the data sets it knows (VOC, COCO...) into a
        # missing dataset_dir; any other missing folder is the user's typo.
        if not os.path.isdir(self.dataset_dir):
            try:
                super().check_or_download_dataset()
            except Exception:  # noqa: BLE001  ppdet raises ValueError or download errors
                raise PPKDError(f'dataset_dir does not exist: {self.dataset_dir}') from None

    def parse_dataset(self):
        if not os.path.isdir(self.dataset_dir):
            raise PPKDError(f'dataset_dir does not exist: {self.dataset_dir}')
        if not self.label_list:
            raise PPKDError(f'label_list is not set for the data set in {self.dataset_dir}')
        names = read_label_list(os.path.join(self.dataset_dir, self.label_list))
        cname2cid = {n: i for i, n in enumerate(names)}
        image_root = os.path.join(self.dataset_dir, self.image_dir or '')
        pairs = read_list_file(os.path.join(self.dataset_dir, self.anno_path), image_root)
        records, dropped_total, dropped_files = [], 0, 0
        for im_id, (img, xml) in enumerate(pairs):
            ann, dropped = parse_voc_xml(xml, cname2cid)
            if dropped:
                dropped_total += dropped
                dropped_files += 1
            n = len(ann['boxes'])
            if n == 0 and not self.allow_empty:
                continue
            rec = {'im_file': img, 'im_id': np.array([im_id]), 'h': ann['h'], 'w': ann['w']}
            gt = {
                'gt_class': ann['classes'].reshape(-1, 1),
                'gt_bbox': ann['boxes'],
                'gt_score': np.ones((n, 1), dtype=np.float32),
                'difficult': ann['difficult'].reshape(-1, 1),
            }
            rec.update({k: v for k, v in gt.items() if k in self.data_fields})
            records.append(rec)
            if 0 < self.sample_num <= len(records):
                break
        report = (os.path.abspath(os.path.join(self.dataset_dir, self.anno_path)), dropped_total)
        if dropped_total and report not in _REPORTED_DROPS:  # once: other readers parse the same list again
            _REPORTED_DROPS.add(report)
            logger.warning('%s: dropped %d zero-area or inverted boxes in %d annotation files',
                           self.anno_path, dropped_total, dropped_files)
        if not records:
            raise PPKDError(f'no image with boxes in {os.path.join(self.dataset_dir, self.anno_path)}')
        self.roidbs, self.cname2cid = records, cname2cid
