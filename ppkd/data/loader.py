"""Readers built from a config, iterated one fresh pass per epoch.

ppdet's reader starts an iterator as soon as it is built, and starts the
next epoch's the moment one ends, before the trainer can seed the epoch:
its loading thread then draws augmentations from the global RNG at its own
pace. ppkd stops that eager iterator and opens each epoch's pass after
seeding, so a run (and a resumed run) sees the same batches every time.
"""
from ppkd import config as cfgmod


def build_reader(cfg, mode):
    """The config's `<mode>Reader` over its `<mode>Dataset` (mode: Train, Eval)."""
    reader = cfgmod.build(cfg, f'{mode}Reader')(cfg[f'{mode}Dataset'], cfg.get('worker_num', 0))
    eager = getattr(reader, 'loader', None)
    if eager is not None and hasattr(eager, '_try_shutdown_all'):
        eager._try_shutdown_all()
    reader.loader = None
    return reader


def epoch_batches(reader, epoch=0):
    """A fresh pass over `reader` for `epoch` (shuffle order and per-epoch
    dataset state follow the epoch number)."""
    reader.dataset.set_epoch(epoch)
    if hasattr(reader._batch_sampler, 'set_epoch'):
        reader._batch_sampler.set_epoch(epoch)
    return iter(reader.dataloader)
