"""A live progress line for a training run in another process, read from
the log that run writes (its `Epoch: [e] [step/steps] ... loss: x ... eta:
h:mm:ss` lines): used by the demo, whose stages log to files."""
import re
import sys
import time

_LINE = re.compile(r'Epoch: \[(?P<epoch>\d+)\] \[\s*(?P<step>\d+)/(?P<steps>\d+)\].*?\sloss: (?P<loss>\S+)'
                   r'.*?eta: (?P<eta>(?:\d+ days?, )?\d+:\d\d:\d\d)')


def _seconds(eta):
    days = 0
    if 'day' in eta:
        head, eta = eta.split(', ')
        days = int(head.split()[0])
    h, m, s = (int(x) for x in eta.split(':'))
    return days * 86400 + h * 3600 + m * 60 + s


def last_progress(text):
    """The last training log line in `text` as a dict (epoch, step, steps,
    loss, eta_seconds), or None."""
    found = None
    for found in _LINE.finditer(text):
        pass
    if found is None:
        return None
    return {'epoch': int(found['epoch']), 'step': int(found['step']) + 1, 'steps': int(found['steps']),
            'loss': float(found['loss']), 'eta_seconds': _seconds(found['eta'])}


def render(name, progress, elapsed, width=24):
    """`name [#####-----]  42%  epoch 3  step 17/120  loss 12.345  eta 0:02:31`;
    the share done is time spent over time spent plus the run's own ETA."""
    if progress is None:
        return f'{name} starting ({elapsed:.0f} s)'
    done = elapsed / (elapsed + progress['eta_seconds']) if elapsed + progress['eta_seconds'] > 0 else 0.
    bar = '#' * int(round(done * width))
    eta = progress['eta_seconds']
    return (f'{name} [{bar:-<{width}}] {100 * done:3.0f}%  epoch {progress["epoch"]}  '
            f'step {progress["step"]}/{progress["steps"]}  loss {progress["loss"]:.3f}  '
            f'eta {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}')


def _in_notebook():
    ipython = sys.modules.get('IPython')
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and 'IPKernelApp' in shell.config


def follow(process, log_path, name, interval=1.0, stream=None):
    """Wait for `process`, showing the run's progress from `log_path`: one
    line redrawn in place on a terminal (or notebook), elsewhere one line
    per epoch. Returns the process's exit code."""
    stream = stream or sys.stdout
    # A notebook cell is no terminal but redraws '\r' in place; other
    # streams (files, buffers) get one line per epoch even inside a kernel.
    redraw = stream.isatty() or (stream is sys.stdout and _in_notebook())
    start, shown, offset, text = time.time(), None, 0, ''
    while True:
        code = process.poll()
        with open(log_path, errors='replace') as f:
            f.seek(offset)
            text = text[-4096:] + f.read()
            offset = f.tell()
        progress = last_progress(text)
        line = render(name, progress, time.time() - start)
        if redraw:
            stream.write('\r' + line.ljust(100))
        elif progress is not None and (shown is None or progress['epoch'] != shown):
            stream.write(line + '\n')
            shown = progress['epoch']
        stream.flush()
        if code is not None:
            if redraw:
                stream.write('\n')
            return code
        time.sleep(interval)
