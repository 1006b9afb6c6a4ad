"""Small helpers shared across rooms."""
import os
import tempfile

import cv2

from ppkd.errors import PPKDError


def hold_outside_tree(layer, name, value):
    """`layer.<name> = value` without making `value` a sublayer: Paddle
    registers any Layer assigned to a Layer's attribute, and its parameters
    would then train, save and synchronise with the holder's."""
    object.__setattr__(layer, name, value)


def _atomic_write(path, data, mode):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix='.tmp-')
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text):
    """Write `text` to `path` through a temporary file and a rename, so a
    reader never sees half a file."""
    _atomic_write(path, text, 'w')


def atomic_write_bytes(path, data):
    """`atomic_write_text` for bytes."""
    _atomic_write(path, data, 'wb')


def atomic_write_png(path, image):
    """An image array (BGR) written as a PNG, atomically."""
    ok, encoded = cv2.imencode('.png', image)
    if not ok:
        raise PPKDError(f'could not encode {path}')
    atomic_write_bytes(path, encoded.tobytes())
