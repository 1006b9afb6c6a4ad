"""Small helpers shared across rooms."""
import os
import tempfile


def atomic_write_text(path, text):
    """Write `text` to `path` through a temporary file and a rename, so a
    reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix='.tmp-')
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
