"""The demo's embedded data set: coloured shapes on varied backgrounds,
written in VOC layout, deterministically from a seed, in seconds."""
import os

import cv2
import numpy as np

from ppkd.utils import atomic_write_text

CLASSES = ('circle', 'square', 'triangle', 'cross')

_XML = """<annotation>
  <filename>{name}.jpg</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>
"""
_OBJ = """  <object>
    <name>{cls}</name><difficult>0</difficult>
    <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>
  </object>
"""


def _background(rng, size):
    kind = rng.randint(3)
    if kind == 0:  # flat colour with noise
        img = np.full((size, size, 3), rng.randint(0, 256, 3), dtype=np.float32)
    elif kind == 1:  # linear gradient between two colours
        t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        a, b = rng.randint(0, 256, 3), rng.randint(0, 256, 3)
        img = np.broadcast_to(a + (b - a) * t, (size, size, 3)).astype(np.float32)
        if rng.rand() < 0.5:
            img = img.transpose(1, 0, 2)
    else:  # coarse blobs, upsampled
        img = cv2.resize(rng.randint(0, 256, (4, 4, 3)).astype(np.float32), (size, size))
    img += rng.normal(0, 8, img.shape)
    return np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))


def _draw(img, cls, x1, y1, x2, y2, colour):
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    if cls == 'circle':
        cv2.ellipse(img, (cx, cy), ((x2 - x1) // 2, (y2 - y1) // 2), 0, 0, 360, colour, -1)
    elif cls == 'square':
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, -1)
    elif cls == 'triangle':
        pts = np.array([[cx, y1], [x1, y2], [x2, y2]], dtype=np.int32)
        cv2.fillPoly(img, [pts], colour)
    else:
        t = max(2, (x2 - x1) // 4)
        cv2.rectangle(img, (cx - t // 2, y1), (cx + t // 2, y2), colour, -1)
        cv2.rectangle(img, (x1, cy - t // 2), (x2, cy + t // 2), colour, -1)


def _overlaps(box, boxes):
    x1, y1, x2, y2 = box
    return any(x1 < b[2] and b[0] < x2 and y1 < b[3] and b[1] < y2 for b in boxes)


def make_shapes_voc(root, num_images=240, image_size=160, seed=0, test_ratio=0.25,
                    min_size=12, max_size=72, max_objects=4, num_unlabeled=0):
    """Write the data set under `root` (JPEGImages/, Annotations/,
    label_list.txt, trainval.txt, test.txt) and return its root.

    `num_unlabeled` more images of the same kind go to `unlabeled/` without
    annotations, listed in `unlabeled.txt`."""
    rng = np.random.RandomState(seed)
    max_size = min(max_size, image_size - 1)
    for d in ('JPEGImages', 'Annotations'):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    lines, unlabeled = [], []
    if num_unlabeled:
        os.makedirs(os.path.join(root, 'unlabeled'), exist_ok=True)
    for i in range(num_images + num_unlabeled):
        name = f'shapes_{i:04d}'
        img = _background(rng, image_size)
        boxes, objects = [], []
        for _ in range(rng.randint(1, max_objects + 1)):
            s = rng.randint(min_size, max_size + 1)
            x1, y1 = rng.randint(0, image_size - s, 2)
            box = (int(x1), int(y1), int(x1 + s), int(y1 + s))
            if _overlaps(box, boxes):
                continue
            cls = CLASSES[rng.randint(len(CLASSES))]
            # A colour far from the local background keeps every object visible.
            bg = img[box[1]:box[3], box[0]:box[2]].reshape(-1, 3).mean(0)
            colour = tuple(int(c) for c in np.where(bg > 127, rng.randint(0, 70, 3), rng.randint(185, 256, 3)))
            _draw(img, cls, *box, colour)
            boxes.append(box)
            objects.append(_OBJ.format(cls=cls, x1=box[0], y1=box[1], x2=box[2], y2=box[3]))
        if i >= num_images:
            cv2.imwrite(os.path.join(root, 'unlabeled', name + '.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            unlabeled.append(f'unlabeled/{name}.jpg\n')
            continue
        cv2.imwrite(os.path.join(root, 'JPEGImages', name + '.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        atomic_write_text(os.path.join(root, 'Annotations', name + '.xml'),
                          _XML.format(name=name, w=image_size, h=image_size, objects=''.join(objects)))
        lines.append(f'JPEGImages/{name}.jpg Annotations/{name}.xml\n')
    n_test = int(round(num_images * test_ratio))
    atomic_write_text(os.path.join(root, 'trainval.txt'), ''.join(lines[n_test:]))
    atomic_write_text(os.path.join(root, 'test.txt'), ''.join(lines[:n_test]))
    atomic_write_text(os.path.join(root, 'label_list.txt'), ''.join(c + '\n' for c in CLASSES))
    if num_unlabeled:
        atomic_write_text(os.path.join(root, 'unlabeled.txt'), ''.join(unlabeled))
    return root


SEG_CLASSES = ('background', 'circle', 'square', 'triangle', 'cross')


def make_shapes_segmentation(root, num_images=24, height=64, width=80, seed=0, val_ratio=0.25, max_objects=3):
    """Coloured shapes with their masks (class index per pixel; 0 is the
    background, a later shape over an earlier one): PaddleSeg's file-list layout (`train.txt`, `test.txt` of `image mask` lines,
    `labels.txt`) under `root`. Deterministic from `seed`."""
    rng = np.random.RandomState(seed)
    for sub in ('images', 'labels'):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    lines = []
    for k in range(num_images):
        img = cv2.resize(_background(rng, max(height, width)), (width, height))
        mask = np.zeros((height, width), np.uint8)
        for _ in range(rng.randint(1, max_objects + 1)):
            cls = rng.randint(1, len(SEG_CLASSES))
            size = rng.randint(min(height, width) // 4, min(height, width) // 2)
            x1, y1 = rng.randint(0, width - size), rng.randint(0, height - size)
            colour = tuple(int(c) for c in rng.randint(0, 256, 3))
            _draw(img, SEG_CLASSES[cls], x1, y1, x1 + size, y1 + size, colour)
            _draw(mask, SEG_CLASSES[cls], x1, y1, x1 + size, y1 + size, cls)
        name = f'{k:05d}'
        cv2.imwrite(os.path.join(root, 'images', name + '.jpg'), img)
        cv2.imwrite(os.path.join(root, 'labels', name + '.png'), mask)
        lines.append(f'images/{name}.jpg labels/{name}.png')
    n_val = max(1, int(round(num_images * val_ratio)))
    atomic_write_text(os.path.join(root, 'train.txt'), '\n'.join(lines[n_val:]) + '\n')
    atomic_write_text(os.path.join(root, 'test.txt'), '\n'.join(lines[:n_val]) + '\n')
    atomic_write_text(os.path.join(root, 'labels.txt'), '\n'.join(SEG_CLASSES) + '\n')
    return root
