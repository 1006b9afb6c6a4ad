"""The training loop shared by `tools/train.py` (a model alone) and
`slim/distillation/distill.py` (a Distiller).

Several devices run through `python -m paddle.distributed.launch`: the model
is wrapped in `paddle.DataParallel` and ppdet's readers shard the batches.
"""
import contextlib
import datetime
import json
import logging
import math
import os
import random
import signal
import threading
import time

import numpy as np
import paddle

from ppkd.engine.checkpoint import load_resume_state, optimizer_state_for_loading, save_checkpoint
from ppkd.data.loader import endless_batches
from ppkd.engine.visualdl import VisualDLLog
from ppkd.distiller import Distiller
from ppkd.errors import PPKDError, StoppedBySignal, describe
from ppkd.tasks import task_of
from ppkd.teacher import load_weights
from ppkd.heap import keep_freed_heap
from ppkd.threads import cpu_tuner

logger = logging.getLogger('ppkd')


def setup_logging():
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, datefmt='%m/%d %H:%M:%S',
                            format='[%(asctime)s] %(name)s %(levelname)s: %(message)s')


def default_output_dir(cfg):
    """save_dir/<config name>."""
    return os.path.join(cfg.get('save_dir', 'output'), os.path.splitext(cfg['filename'])[0])


def setup_run(cfg, seed=0):
    """Device, threads and seeds, before any model is built (so its
    initial weights depend on the seed alone)."""
    if cfg.get('use_gpu'):
        if not paddle.is_compiled_with_cuda():
            raise PPKDError('use_gpu is true but this paddle has no CUDA: install paddlepaddle-gpu (make install GPU=1)')
        paddle.set_device('gpu')
    else:
        paddle.set_device('cpu')
    rank, world_size = paddle.distributed.get_rank(), paddle.distributed.get_world_size()
    if rank > 0:  # one voice: rank 0 logs progress; the others' warnings and errors still show
        logger.setLevel(logging.WARNING)
    logger.info('device: %s, CPU threads: %s, paddle %s, seed %d%s', paddle.get_device(),
                os.environ.get('OMP_NUM_THREADS', '1'), paddle.__version__, seed,
                f', {world_size} processes' if world_size > 1 else '')
    seed_everything(seed)


def amp_available(cfg):
    """Mixed precision needs a CUDA device; elsewhere say so and train in float32."""
    if cfg.get('use_gpu') and paddle.is_compiled_with_cuda():
        return True
    logger.warning('--amp needs a GPU (use_gpu: true with paddlepaddle-gpu); training in float32')
    return False


def amp_scaler(amp):
    """The dynamic loss scale float16 autocast needs, or None without AMP."""
    return paddle.amp.GradScaler(init_loss_scaling=1024.) if amp else None


def apply_gradients(loss, optimizer, scaler=None):
    """Backward and update (through `scaler` under AMP), then clear the gradients."""
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaled = scaler.scale(loss)
        scaled.backward()
        scaler.minimize(optimizer, scaled)
    optimizer.clear_grad()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


class _StopSignals:
    """While training: SIGTERM only raises a flag (checked after each
    iteration) instead of killing the process mid-write. Ctrl-C (SIGINT)
    raises KeyboardInterrupt at once, as usual, and is also remembered: one
    that lands inside a finalizer (`__del__`, where Python prints it and
    goes on) still stops training after the iteration. Signals can be set
    in the main thread only; elsewhere no flag ever rises."""

    def __init__(self):
        self.received = set()

    def terminated(self):
        return signal.SIGTERM in self.received

    def interrupted(self):
        return signal.SIGINT in self.received

    def _on_sigint(self, signum, frame):
        self.received.add(signum)
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: self.received.add(signum)),
                    signal.SIGINT: signal.signal(signal.SIGINT, self._on_sigint)}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _scalar(value):
    return float(value.numpy().reshape(-1)[0]) if isinstance(value, paddle.Tensor) else float(value)


class Trainer:
    """Trains `model` (a detector, or a Distiller whose `student` is saved)
    with the config's reader, learning rate and optimizer.

    Every `snapshot_epoch` epochs it writes a checkpoint and, with
    `eval=True`, evaluates the student and keeps `best_model` by mAP. A
    non-finite loss stops training with the iteration named; the last good
    checkpoint stays. `snapshot_iter` (N > 0) also writes `latest` every N
    iterations, and SIGTERM (a preempted job) writes `latest` after the
    iteration in progress and stops: `-r OUTPUT/latest` goes on from there.
    """

    def __init__(self, cfg, model, output_dir=None, eval=False, seed=0, to_static=False, amp=False,
                 vdl_log_dir=None):
        self.cfg = cfg
        self.amp = amp_available(cfg) if amp else False
        self.seed = seed
        self.output_dir = output_dir or default_output_dir(cfg)
        self.world_size = paddle.distributed.get_world_size()
        self.rank = paddle.distributed.get_rank()
        self.vdl = VisualDLLog(vdl_log_dir) if vdl_log_dir and self.rank == 0 else None
        self.task = task_of(cfg)
        try:  # the class order these weights train in, saved with each checkpoint and checked when they teach
            self.classes = self.task.class_names()
        except PPKDError:
            self.classes = None
        self.model = model
        self.student = getattr(model, 'student', model)
        self.loader = self.task.train_reader()
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise PPKDError(f'{cfg["config_path"]}: the train set has fewer images than one batch')
        self.epochs, self.total_iters = self.task.schedule(self.steps_per_epoch)
        self.lr, self.optimizer = self.task.lr_and_optimizer(self.steps_per_epoch, model)
        self.start_epoch = 0
        self.resume_step = 0  # batches of start_epoch already trained (a checkpoint saved inside an epoch)
        self.best_map = None
        self.train_model = model
        self.to_static = to_static
        if self.world_size > 1:
            paddle.distributed.init_parallel_env()
            part = model.data_parallel_part() if isinstance(model, Distiller) else model
            self.train_model = paddle.DataParallel(
                part, find_unused_parameters=bool(cfg.get('find_unused_parameters', False)))
        if to_static:
            self.train_model = paddle.jit.to_static(self.train_model)
        self.scaler = amp_scaler(self.amp)
        # Built now so that a bad evaluation set fails before training, not
        # after it. Rank 0 evaluates, over the whole set, for every rank.
        self.do_eval = eval and self.rank == 0
        self.eval_loader = self.task.eval_reader() if self.do_eval else None
        # Distillation on unlabeled images: one unlabeled batch beside each labelled one.
        self.unlabeled_loader = self.task.unlabeled_reader() if self.student is not model else None

    def load_student_weights(self, path):
        load_weights(self.student, path, role='student')

    def resume(self, prefix):
        prefix, state, weights = load_resume_state(prefix)
        inside_epoch = state.get('step') is not None
        if int(state['epoch']) + 1 >= self.epochs and not inside_epoch:
            raise PPKDError(f'{prefix}: saved after epoch {int(state["epoch"]) + 1} of {self.epochs}; nothing left '
                            f'to train (raise -o epoch=N to train on)')
        load_weights(self.student, prefix + '.pdparams', role='student', state=weights)
        try:
            self.optimizer.set_state_dict(optimizer_state_for_loading(state['optimizer'], self.model))
        except (AssertionError, KeyError, ValueError, TypeError) as e:
            raise PPKDError(f'{prefix}.pdstate: its optimizer state does not fit this run\'s model and optimizer '
                            f'(a distillation checkpoint resumed without its teacher, or another optimizer?): '
                            f'{describe(e)}') from None
        extra = state.get('extra') or {}
        if extra.get('distill_losses') and hasattr(self.model, 'distill_losses'):
            self.model.distill_losses.set_state_dict(extra['distill_losses'])
        self.start_epoch = int(state['epoch']) + (0 if inside_epoch else 1)
        self.resume_step = int(state['step']) if inside_epoch else 0
        self.best_map = state.get('best')
        logger.info('resumed from %s at epoch %d (iteration %d)', prefix, self.start_epoch,
                    min(self.start_epoch * self.steps_per_epoch + self.resume_step, self.total_iters))

    def _save(self, name, epoch, step=None):
        if self.rank != 0:
            return
        extra = {}
        if hasattr(self.model, 'distill_losses'):
            extra['distill_losses'] = self.model.distill_losses.state_dict()
        if self.classes is not None:
            extra['classes'] = self.classes
        save_checkpoint(os.path.join(self.output_dir, name), self.student, self.optimizer,
                        epoch=epoch, extra_state=extra, best=self.best_map, model=self.model, step=step)
        logger.info('saved checkpoint %s', os.path.join(self.output_dir, name))

    def _record(self, entry):
        """Append one JSON line to `metrics.jsonl` in the output folder: the
        logged losses and every evaluation, for plots and benchmarks."""
        if self.rank == 0:
            with open(os.path.join(self.output_dir, 'metrics.jsonl'), 'a') as f:
                f.write(json.dumps(entry) + '\n')
            if self.vdl is not None:
                self.vdl.write(entry)

    def _log(self, epoch, step, outputs, batch_cost, data_cost, batch_size, iters_left):
        values = {k: _scalar(v) for k, v in outputs.items() if isinstance(v, paddle.Tensor) and v.size == 1}
        self._record({'type': 'train', 'epoch': epoch, 'iteration': epoch * self.steps_per_epoch + step,
                      'lr': self.optimizer.get_lr(), 'batch_cost': batch_cost,
                      'images_per_s': batch_size / batch_cost, **values})
        terms = '  '.join(f'{k}: {v:.6f}' for k, v in values.items())
        eta = datetime.timedelta(seconds=int(batch_cost * iters_left))
        logger.info('Epoch: [%d] [%4d/%d] learning_rate: %.6f  %s  eta: %s  batch_cost: %.4f  '
                    'data_cost: %.4f  ips: %.4f images/s', epoch, step, self.steps_per_epoch,
                    self.optimizer.get_lr(), terms, eta, batch_cost, data_cost, batch_size / batch_cost)

    def train(self):
        """Train from `start_epoch` to the end; returns the history of evals."""
        if self.rank == 0:
            os.makedirs(self.output_dir, exist_ok=True)
        self.model.train()
        unlabeled = None if self.unlabeled_loader is None else endless_batches(self.task.batches,
                                                                                 self.unlabeled_loader, self.start_epoch)
        keep_freed_heap(self.cfg)
        tuner = cpu_tuner(self.cfg)
        with _StopSignals().installed() as signals:
            return self._train_epochs(unlabeled, tuner, signals)

    def _train_epochs(self, unlabeled, tuner, signals):
        log_iter = int(self.cfg.get('log_iter', 20))
        snapshot = int(self.cfg.get('snapshot_epoch', 1))
        snapshot_iter = int(self.cfg.get('snapshot_iter') or 0)
        total_iters = self.total_iters
        history = []
        for epoch in range(self.start_epoch, self.epochs):
            # Seeding per epoch makes a resumed run draw the same batches.
            seed_everything(self.seed + epoch)
            tic = time.perf_counter()
            for step, batch in enumerate(self.task.batches(self.loader, epoch)):
                data_cost = time.perf_counter() - tic
                iteration = epoch * self.steps_per_epoch + step
                if iteration >= total_iters:  # an iteration budget (PaddleSeg's iters) ends inside an epoch
                    break
                if epoch == self.start_epoch and step < self.resume_step:  # trained before the checkpoint
                    if unlabeled is not None:
                        next(unlabeled)
                    tic = time.perf_counter()
                    continue
                extra = () if unlabeled is None else (next(unlabeled),)
                # The tuner counts this run's iterations (a resumed run measures afresh).
                run_iteration = iteration - self.start_epoch * self.steps_per_epoch - self.resume_step
                if tuner is not None:
                    tuner.begin(run_iteration)
                if hasattr(self.model, 'prepare_teacher'):
                    self.model.prepare_teacher(batch, in_program=self.to_static)
                    self.model.begin_step(iteration, total_iters, self.steps_per_epoch)
                try:
                    with paddle.amp.auto_cast(enable=self.amp):
                        outputs = (self.train_model(batch, *extra) if self.student is not self.model
                                   else self.task.student_loss(self.train_model, batch))
                except Exception:
                    # Non-finite weights make some ppdet ops raise (e.g. BCE's
                    # input check) before a loss exists.
                    self._check_finite_parameters(epoch, iteration)
                    raise
                loss = outputs['loss']
                value = _scalar(loss)
                if not math.isfinite(value):
                    bad = [k for k, v in outputs.items() if k != 'loss' and isinstance(v, paddle.Tensor)
                           and v.size == 1 and not math.isfinite(_scalar(v))]
                    detail = f' ({", ".join(bad)} non-finite)' if bad else ''
                    raise self._diverged(f'loss became {value}{detail}', epoch, iteration)
                apply_gradients(loss, self.optimizer, self.scaler)
                self.lr.step()
                if hasattr(self.model, 'end_step'):
                    self.model.end_step(iteration, outputs)
                batch_cost = time.perf_counter() - tic
                if tuner is not None:
                    tuner.end(run_iteration, batch_cost)
                if step % log_iter == 0 or step == self.steps_per_epoch - 1 or iteration == total_iters - 1:
                    self._log(epoch, step, outputs, batch_cost, data_cost, self.task.batch_size(batch),
                              total_iters - iteration - 1)
                if signals.interrupted():  # a Ctrl-C that a finalizer swallowed
                    raise KeyboardInterrupt
                inside = step + 1 < self.steps_per_epoch and iteration + 1 < total_iters
                if signals.terminated() and inside:
                    self._save('latest', epoch, step=step + 1)
                    latest = os.path.join(self.output_dir, 'latest')
                    raise StoppedBySignal(f'terminated (SIGTERM) at epoch {epoch}, iteration {iteration + 1}; saved '
                                          f'{latest}: resume with -r {latest}')
                if snapshot_iter and (iteration + 1) % snapshot_iter == 0 and inside:
                    self._save('latest', epoch, step=step + 1)
                tic = time.perf_counter()
            last = epoch == self.epochs - 1
            if (epoch + 1) % snapshot == 0 or last:
                # Saved first: a failing evaluation must not cost the training.
                self._save('model_final' if last else str(epoch), epoch)
                if self.do_eval:
                    history.append(self._evaluate(epoch))
        return history

    def _diverged(self, what, epoch, iteration):
        return PPKDError(f'{what} at epoch {epoch}, iteration {iteration}; stopped, '
                         f'the last good checkpoint in {self.output_dir} is kept')

    def _check_finite_parameters(self, epoch, iteration):
        for name, p in self.model.named_parameters():
            # The frozen teacher is not updated (and its dygraph weights may be released).
            if not p.stop_gradient and not bool(paddle.isfinite(p).all()):
                raise self._diverged(f'parameter {name} became non-finite', epoch, iteration)

    def _evaluate(self, epoch):
        result = self.task.evaluate(self.student, self.eval_loader)
        self.model.train()
        result['epoch'] = epoch
        result['iteration'] = min((epoch + 1) * self.steps_per_epoch, self.total_iters)
        self._record({'type': 'eval', **result})
        logger.info('epoch %d: %s', epoch, self.task.describe(result))
        metric = self.task.metric
        if self.best_map is None or result[metric] > self.best_map:
            self.best_map = result[metric]
            self._save('best_model', epoch)
            logger.info('best model so far: %s %.2f%% at epoch %d', metric, self.best_map, epoch)
        return result


def train_from_args(cfg, model, args):
    """What tools/train.py and distill.py share after building the model:
    the flags of `ppkd.cli.train_parser` applied, then training."""
    output_dir = args.output_dir or default_output_dir(cfg)
    vdl_dir = (args.vdl_log_dir or os.path.join(output_dir, 'vdl')) if args.use_vdl else None
    trainer = Trainer(cfg, model, output_dir, eval=args.eval, seed=args.seed, to_static=args.to_static,
                      amp=args.amp, vdl_log_dir=vdl_dir)
    if args.resume:
        trainer.resume(args.resume)
    try:
        return trainer.train()
    finally:
        if trainer.vdl is not None:
            trainer.vdl.close()
