"""The narrow fixes the pinned stack needs, each gated on the versions that
need it and applied once by `apply()`.

Never a copy of ppdet's or Paddle's code: each fix wraps the narrowest point.
"""
import functools

import paddle

from ppkd.errors import PPKDError

_applied = set()


def paddle_version():
    """(major, minor); a development build counts as the newest."""
    parts = paddle.__version__.split('.')
    try:
        return int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        return 99, 0


def _loader_thread_errors():
    """With num_workers=0, Paddle's loader thread (`_thread_loop`) catches
    only StopIteration around the dataset fetch: any other exception kills
    the thread without closing the queue, and the main thread waits on it
    forever (seen on 2.6.2 and 3.3.1). With workers, the main thread gets a
    bare "Blocking queue is killed". Keep the exception, close the queue,
    and raise it in the main thread."""
    from paddle.io.dataloader import dataloader_iter as it
    for cls in (it._DataLoaderIterSingleProcess, it._DataLoaderIterMultiProcess):
        _carry_thread_errors(cls)


def _carry_thread_errors(cls):
    thread_loop, next_batch = cls._thread_loop, cls.__next__

    @functools.wraps(thread_loop)
    def _thread_loop(self, *args, **kwargs):
        try:
            return thread_loop(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001  re-raised in the main thread
            self._ppkd_error = e
            self._exit_thread_unexpectedly()

    @functools.wraps(next_batch)
    def __next__(self):
        try:
            return next_batch(self)
        except StopIteration:
            if getattr(self, '_ppkd_error', None) is None:
                raise
        except Exception:
            if getattr(self, '_ppkd_error', None) is None:
                raise
        error = self._ppkd_error
        if isinstance(error, PPKDError):
            raise error
        raise PPKDError(f'data reader failed: {type(error).__name__}: {error}') from error

    cls._thread_loop, cls.__next__ = _thread_loop, __next__


def _ppdet_export_on_paddle3():
    """ppdet 2.6 exports by tracing the model into a legacy static program
    (it prunes that program, and its NMS ops are built for the legacy IR).
    Paddle 3 traces into PIR and, by default, with full_graph=False, where
    `main_program` does not exist. Export needs FLAGS_enable_pir_api=0 (set
    by tools/export.py before paddle loads) and full-graph tracing."""
    from ppdet.engine import trainer
    export = trainer.Trainer.export

    @functools.wraps(export)
    def _export(self, *args, **kwargs):
        if paddle.get_flags(['FLAGS_enable_pir_api'])['FLAGS_enable_pir_api']:
            raise PPKDError('exporting a ppdet 2.6 model on Paddle 3 needs FLAGS_enable_pir_api=0 '
                            'in the environment before paddle is imported (tools/export.py sets it)')
        to_static = paddle.jit.to_static
        paddle.jit.to_static = functools.partial(to_static, full_graph=True)
        try:
            return export(self, *args, **kwargs)
        finally:
            paddle.jit.to_static = to_static

    trainer.Trainer.export = _export


# name → (needed on this stack?, fix)
FIXES = {
    'loader_thread_errors': (lambda: paddle_version() <= (3, 3), _loader_thread_errors),
    'ppdet_export_on_paddle3': (lambda: paddle_version() >= (3, 0), _ppdet_export_on_paddle3),
}


def apply(only=None):
    """Apply every fix this stack needs (or just `only`); idempotent."""
    for name, (needed, fix) in FIXES.items():
        if (only is None or name in only) and name not in _applied and needed():
            fix()
            _applied.add(name)
