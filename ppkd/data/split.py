"""Split a VOC-style folder into trainval/test list files.

Lines are `JPEGImages/x.jpg Annotations/x.xml`, relative to the folder, the
form ppdet's VOC reader reads. Images that cannot be used are reported with
the reason, never silently dropped.
"""
import collections
import json
import os
import random

from ppkd.data.voc import parse_voc_xml
from ppkd.errors import PPKDError
from ppkd.utils import atomic_write_text

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp')


def _index_images(image_dir):
    images = {}
    for name in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTS:
            images.setdefault(stem, name)
    return images


def scan_voc_folder(root, image_dir='JPEGImages', anno_dir='Annotations'):
    """Usable samples {stem: (image rel path, xml rel path)}, class names
    found (sorted), and skipped {stem: reason}."""
    img_root, ann_root = os.path.join(root, image_dir), os.path.join(root, anno_dir)
    if not os.path.isdir(root):
        raise PPKDError(f'dataset root does not exist: {root}')
    for d in (img_root, ann_root):
        if not os.path.isdir(d):
            raise PPKDError(f'missing folder: {d}')
    images = _index_images(img_root)
    xmls = {os.path.splitext(n)[0] for n in os.listdir(ann_root) if n.endswith('.xml')}
    samples, skipped, classes = {}, {}, set()
    for stem in sorted(set(images) | xmls):
        if stem not in xmls:
            skipped[stem] = 'no annotation'
            continue
        if stem not in images:
            skipped[stem] = 'no image'
            continue
        if any(c.isspace() for c in images[stem]):
            skipped[stem] = 'file name has a space (list lines are space-separated): rename it'
            continue
        xml_rel = f'{anno_dir}/{stem}.xml'
        try:
            ann, _ = parse_voc_xml(os.path.join(root, xml_rel))
        except PPKDError as e:
            skipped[stem] = str(e)
            continue
        if not ann['names']:
            skipped[stem] = 'no valid box'
            continue
        classes.update(ann['names'])
        samples[stem] = (f'{image_dir}/{images[stem]}', xml_rel)
    return samples, sorted(classes), skipped


def _read_ids(path):
    if not os.path.isfile(path):
        raise PPKDError(f'split file not found: {path}')
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def _draw(stems, share, seed):
    """`stems` split at random (`seed`) into `share` of them and the rest,
    each side keeping at least one; both sorted."""
    drawn = sorted(stems)
    random.Random(seed).shuffle(drawn)
    n = min(max(1, round(len(drawn) * share)), len(drawn) - 1)
    return sorted(drawn[:n]), sorted(drawn[n:])


def coco_json(root, stems, samples, classes, rel):
    """COCO detection JSON of `stems` (their VOC annotations converted:
    boxes as [x, y, w, h], category ids 1… in label-list order, file names
    relative to the lists' folder)."""
    images, annotations = [], []
    for image_id, stem in enumerate(stems, start=1):
        image, xml = samples[stem]
        ann, _ = parse_voc_xml(os.path.join(root, xml))
        images.append({'id': image_id, 'file_name': rel(image), 'width': int(ann['w']), 'height': int(ann['h'])})
        for (x1, y1, x2, y2), name, difficult in zip(ann['boxes'].tolist(), ann['names'], ann['difficult'].tolist()):
            annotations.append({'id': len(annotations) + 1, 'image_id': image_id,
                                'category_id': classes.index(name) + 1, 'bbox': [x1, y1, x2 - x1, y2 - y1],
                                'area': (x2 - x1) * (y2 - y1), 'iscrowd': int(difficult)})
    return json.dumps({'info': {'description': f'converted from the VOC annotations of {root}'},
                       'images': images, 'annotations': annotations,
                       'categories': [{'id': i + 1, 'name': c} for i, c in enumerate(classes)]})


def split_voc(root, ratio=0.9, seed=0, imagesets=None, out_dir=None,
              image_dir='JPEGImages', anno_dir='Annotations', labeled_fraction=None, fmt='voc'):
    """Write trainval.txt, test.txt and label_list.txt (`fmt='coco'`: also
    trainval.json and test.json, COCO detection format; VOC's difficult
    boxes become iscrowd); return a summary.

    `imagesets` (e.g. ('trainval', 'test')) takes the split from
    ImageSets/Main/<name>.txt instead of drawing it with `ratio` and `seed`.

    `labeled_fraction` (e.g. 0.25): trainval.txt keeps that share of the
    trainval images (drawn with `seed`) and unlabeled.txt lists the others'
    images alone, their annotations withheld — a low-label setting.
    """
    if not 0. < ratio < 1.:
        raise PPKDError(f'ratio must be between 0 and 1, got {ratio}')
    if fmt not in ('voc', 'coco'):
        raise PPKDError(f'format must be voc or coco, got {fmt!r}')
    if labeled_fraction is not None and not 0. < labeled_fraction < 1.:
        raise PPKDError(f'labeled_fraction must be between 0 and 1, got {labeled_fraction}')
    samples, classes, skipped = scan_voc_folder(root, image_dir, anno_dir)
    if not samples:
        raise PPKDError(f'no usable image/annotation pair in {root}')
    if imagesets:
        split = {}
        for name in imagesets:
            ids = _read_ids(os.path.join(root, 'ImageSets', 'Main', f'{name}.txt'))
            split[name] = [s for s in ids if s in samples]
            for s in ids:
                if s not in samples:
                    skipped.setdefault(s, 'listed in ImageSets but not usable')
        trainval, test = split[imagesets[0]], split[imagesets[1]]
    else:
        trainval, test = _draw(samples, ratio, seed)
    unlabeled = []
    if labeled_fraction is not None:
        trainval, unlabeled = _draw(trainval, labeled_fraction, seed)
    out_dir = out_dir or root
    os.makedirs(out_dir, exist_ok=True)
    # List lines are relative to the folder holding the lists (ppdet's
    # dataset_dir), so a read-only data set can be split into another folder.
    prefix = os.path.relpath(root, out_dir)
    for part, shown in ((prefix, root), (image_dir, os.path.join(root, image_dir)),
                        (anno_dir, os.path.join(root, anno_dir))):
        if any(c.isspace() for c in part):
            raise PPKDError(f'{shown}: a space in the path the lists would hold ({part!r}), and list lines '
                            'are space-separated; rename the folder or write the lists elsewhere (--out_dir)')

    def rel(path):
        return os.path.normpath(os.path.join(prefix, path))

    lists = {'trainval.txt': [f'{rel(samples[s][0])} {rel(samples[s][1])}\n' for s in trainval],
             'test.txt': [f'{rel(samples[s][0])} {rel(samples[s][1])}\n' for s in test]}
    if labeled_fraction is not None:
        lists['unlabeled.txt'] = [f'{rel(samples[s][0])}\n' for s in unlabeled]
    for name, lines in lists.items():
        atomic_write_text(os.path.join(out_dir, name), ''.join(lines))
    atomic_write_text(os.path.join(out_dir, 'label_list.txt'), ''.join(c + '\n' for c in classes))
    if fmt == 'coco':
        for name, stems in (('trainval.json', trainval), ('test.json', test)):
            atomic_write_text(os.path.join(out_dir, name), coco_json(root, stems, samples, classes, rel))
    reasons = collections.Counter(skipped.values())
    return {'trainval': len(trainval), 'test': len(test), 'unlabeled': len(unlabeled), 'classes': classes,
            'skipped': skipped, 'skip_reasons': dict(reasons)}
