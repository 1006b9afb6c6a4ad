"""ppkd: knowledge distillation for PaddleDetection models.

Importing ppkd before paddle lets it choose the CPU thread count: Paddle
trains on one thread unless OMP_NUM_THREADS says otherwise, so ppkd defaults
it to every core (a user's own setting wins).

It also imports paddle and ppdet itself, keeping their import-time notices
that do not concern ppkd off the console (ppdet's optional tracking
dependencies, Paddle's data-parallel OMP advice); anything else they print
is passed on.
"""
import contextlib
import io
import logging
import os
import sys
import warnings

os.environ.setdefault('OMP_NUM_THREADS', str(os.cpu_count() or 1))
# Paddle warns at import that ccache is missing, which only matters when
# compiling custom operators; ppkd compiles none.
warnings.filterwarnings('ignore', message='No ccache found')

__version__ = '0.1.0'

IMPORT_NOTICES = ('Warning: Unable to use ', 'WARNING: OMP_NUM_THREADS set to ', 'PLEASE USE OMP_NUM_THREADS WISELY')


def _import_quietly():
    captured = {sys.stdout: io.StringIO(), sys.stderr: io.StringIO()}
    with contextlib.redirect_stdout(captured[sys.stdout]), contextlib.redirect_stderr(captured[sys.stderr]):
        import paddle  # noqa: F401
        import ppdet.modeling  # noqa: F401  (imports the tracking modules that print the notices)
    # Logging handlers made during the imports (ppdet's loggers) must write to the real streams.
    real = {id(text): stream for stream, text in captured.items()}
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for handler in (h for lg in loggers for h in lg.handlers):
        if isinstance(handler, logging.StreamHandler) and id(handler.stream) in real:
            handler.setStream(real[id(handler.stream)])
    for stream, text in captured.items():
        stream.write(''.join(line for line in text.getvalue().splitlines(True) if not line.startswith(IMPORT_NOTICES)))


_import_quietly()
