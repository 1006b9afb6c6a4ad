"""The teacher's outputs on an image kept from one epoch to the next, for
readers whose transforms are deterministic.

A frozen teacher given the same pixels gives the same outputs, so when the
training reader turns an image into the same tensor in every epoch, the
teacher's image part needs to run on it once: later epochs read its
outputs back. Only a reader known to be deterministic qualifies (every
transform on `DETERMINISTIC`, `BatchRandomResize` with one size and a fixed
interpolation): random flips, crops, colour distortion or a random resize
make each epoch's pixels new, and there the teacher runs every step.

Outputs are kept per image (by the dataset's image id), so a shuffled batch
is put together from its images' entries; a batch with an image not seen
yet, or whose entries' shapes differ (a padded batch of another size), runs
the teacher and stores what it gives. Entries are NumPy arrays in host
memory, up to `MAX_BYTES` in all.
"""
import logging

import numpy as np
import paddle

logger = logging.getLogger('ppkd')

# Transforms whose output depends on the image alone (batch ones: on the batch's images alone).
DETERMINISTIC = frozenset({'Decode', 'Resize', 'NormalizeImage', 'Permute', 'NormalizeBox', 'PadBox',
                           'BboxXYXY2XYWH', 'Gt2YoloTarget', 'PadBatch'})
MAX_BYTES = 2 * 2 ** 30


def random_transform(name, params):
    """Why transform `name` with `params` can change an image from epoch to epoch, or None."""
    if name == 'BatchRandomResize':
        sizes = params.get('target_size', [])
        if len(sizes) != 1:
            return f'{name} with {len(sizes)} sizes'
        return f'{name} with random_interp' if params.get('random_interp', False) else None
    return None if name in DETERMINISTIC else name


def random_transforms(cfg):
    """The TrainReader's transforms that make its images differ between
    epochs ('name' or 'name with ...'); empty when it is deterministic."""
    reader = cfg.get('TrainReader') or {}
    found = []
    for key in ('sample_transforms', 'batch_transforms'):
        for transform in reader.get(key) or []:
            for name, params in transform.items():
                why = random_transform(name, params or {})
                if why:
                    found.append(why)
    return found


def _arrays(entry):
    return [a for calls in entry.values() for a in calls]


def _shapes(entry):
    return [a.shape for a in _arrays(entry)]


class TeacherOutputCache:
    """Per-image teacher outputs: `lookup(ids)` gives a batch's recorder
    outputs ({name: [tensor per call]}) when every image is held with
    matching shapes, else None; `store(ids, outputs)` keeps each image's
    slice of them, False if they are not one row per image."""

    def __init__(self, max_bytes=MAX_BYTES):
        self.entries, self.bytes, self.max_bytes, self.full = {}, 0, max_bytes, False
        self.hits = self.misses = 0

    def lookup(self, ids):
        entries = [self.entries.get(i) for i in ids]
        if any(e is None for e in entries) or len({tuple(_shapes(e)) for e in entries}) > 1:
            self.misses += 1
            return None
        self.hits += 1
        return {name: [paddle.to_tensor(np.stack([e[name][k] for e in entries])) for k in range(len(calls))]
                for name, calls in entries[0].items()}

    def store(self, ids, outputs):
        if any(t.shape[0] != len(ids) for calls in outputs.values() for t in calls):
            return False
        for row, image_id in enumerate(ids):
            if self.full:
                break
            entry = {name: [t[row].numpy() for t in calls] for name, calls in outputs.items()}
            old = self.entries.get(image_id)
            size = sum(a.nbytes for a in _arrays(entry)) - (0 if old is None else sum(a.nbytes for a in _arrays(old)))
            if self.bytes + size > self.max_bytes:
                self.full = True
                logger.warning('teacher: its kept outputs reached %.0f MB; images not kept yet run the teacher '
                               'every epoch', self.bytes / 2 ** 20)
                break
            self.entries[image_id] = entry
            self.bytes += size
        return True
