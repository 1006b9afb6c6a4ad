"""Readers built from a config, iterated one fresh pass per epoch.

ppdet's reader starts an iterator as soon as it is built, and starts the
next epoch's the moment one ends, before the trainer can seed the epoch:
its loading thread then draws augmentations from the global RNG at its own
pace. ppkd stops that eager iterator and opens each epoch's pass after
seeding, so a run (and a resumed run) sees the same batches every time.
"""
import paddle

from ppkd import config as cfgmod
from ppkd.data.unlabeled import UnlabeledImages, unlabeled_section
from ppkd.errors import PPKDError

WORKER_ERROR_PREFIX = 'ppkd.errors.PPKDError: '


def build_reader(cfg, mode, dataset=None, batch_size=None):
    """The config's `<mode>Reader` (mode: Train, Eval) over its `<mode>Dataset`,
    or over `dataset` with `batch_size` (the unlabeled images)."""
    reader = cfgmod.build(cfg, f'{mode}Reader')
    if batch_size:
        reader.batch_size = int(batch_size)
    dataset = cfg[f'{mode}Dataset'] if dataset is None else dataset
    if mode == 'Eval':
        # A figure over the whole test list: ppdet's EvalReader drops the last
        # incomplete batch, and VOC parsing skips images without objects
        # (whose false positives must count).
        reader.drop_last = False
        dataset.allow_empty = True
    # ppdet shards every reader across processes; an evaluation reads the whole set.
    sampler = paddle.io.BatchSampler(dataset, batch_size=reader.batch_size) if mode == 'Eval' else None
    reader = reader(dataset, cfg.get('worker_num', 0), sampler)
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
    return stop_workers_on_error(iter(reader.dataloader))


def stop_workers_on_error(batches):
    """Yield `batches`; if loading fails, stop the loader's worker processes
    before the error goes on. Left to Paddle, the exit waits for them
    without a timeout, and a worker blocked on its queue hangs it forever.
    A PPKDError from a worker comes back wrapped in the worker's traceback:
    it goes on as its own one line."""
    try:
        yield from batches
    except Exception as e:
        workers = getattr(batches, '_workers', None)
        if workers is not None:  # a multi-process iterator
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.join(1)
            # Dropped unread: Paddle's shutdown drains it, and a worker killed
            # in the middle of a write leaves a message that blocks that read
            # forever (1 exit in 25 hung so under load).
            if batches._data_queue is not None:
                batches._data_queue.cancel_join_thread()
                batches._data_queue.close()
                batches._data_queue = None
            batches._try_shutdown_all(timeout=1)
        lines = str(e).strip().splitlines()
        if isinstance(e, PPKDError) and len(lines) > 1 and lines[-1].startswith(WORKER_ERROR_PREFIX):
            raise PPKDError(lines[-1][len(WORKER_ERROR_PREFIX):]) from None
        raise


def build_unlabeled_reader(cfg):
    """The TrainReader over `distill.unlabeled`'s images (its own batch size,
    the labelled one by default), or None when the config has none."""
    section = unlabeled_section(cfg)
    if section is None:
        return None
    dataset = UnlabeledImages(dataset_dir=cfg.get('dataset_dir') or cfg['TrainDataset'].dataset_dir,
                              image_dir=section.get('image_dir'), image_list=section.get('image_list'))
    return build_reader(cfg, 'Train', dataset, section.get('batch_size'))


def endless_batches(batches, reader, first_pass=0):
    """Passes over `reader` one after another, pass k being `batches(reader, k)`
    (shuffled as epoch k)."""
    passes = first_pass
    while True:
        yield from batches(reader, passes)
        passes += 1
