"""How much each distillation term counts, step by step.

`distill:` keys (all optional):

    warmup_iters: 100      # the weights ramp linearly from 0 over these iterations
    stop_epoch: 14         # from this epoch on, no distillation (MMRazor's last-epochs stop)
    decay: cosine          # or linear: the weights fall to decay_to × over the run (YOLOv6's cosine)
    decay_to: 0.0
    balance: 1.0           # for losses with `weight: auto`: weighted term = balance × detection loss
    balance_iters: 20      # ... measured over these first iterations (the term counts 0 meanwhile)
"""
import logging
import math

from ppkd.errors import PPKDError

logger = logging.getLogger('ppkd')

SCHEDULE_KEYS = ('warmup_iters', 'stop_epoch', 'decay', 'decay_to', 'balance', 'balance_iters')


class WeightSchedule:
    """The factor every distillation weight is multiplied by at an iteration."""

    def __init__(self, warmup_iters=0, stop_epoch=None, decay=None, decay_to=0.):
        if decay not in (None, 'none', 'cosine', 'linear'):
            raise PPKDError(f'distill.decay must be cosine, linear or none; got {decay!r}')
        if int(warmup_iters) < 0:
            raise PPKDError(f'distill.warmup_iters must be ≥ 0, got {warmup_iters!r}')
        self.warmup_iters = int(warmup_iters)
        self.stop_epoch = None if stop_epoch is None else int(stop_epoch)
        self.decay = None if decay == 'none' else decay
        self.decay_to = float(decay_to)

    def factor(self, iteration, total_iters, steps_per_epoch):
        if self.stop_epoch is not None and iteration >= self.stop_epoch * steps_per_epoch:
            return 0.
        f = 1.
        if self.warmup_iters:
            f = min(1., iteration / self.warmup_iters)
        if self.decay and total_iters:
            t = min(1., iteration / total_iters)
            shape = 0.5 * (1 + math.cos(math.pi * t)) if self.decay == 'cosine' else 1. - t
            f *= self.decay_to + (1. - self.decay_to) * shape
        return f


class AutoBalance:
    """Calibrates `weight: auto` losses: over the first `iters` iterations
    it averages the detection loss and each such loss's unweighted terms,
    then sets weight = ratio × detection / terms, once."""

    def __init__(self, ratio=1., iters=20):
        if float(ratio) <= 0 or int(iters) < 1:
            raise PPKDError(f'distill.balance must be > 0 and balance_iters ≥ 1; got {ratio!r}, {iters!r}')
        self.ratio, self.iters = float(ratio), int(iters)
        self._det, self._terms = [], {}

    def observe(self, iteration, det_loss, terms_by_loss):
        """`terms_by_loss`: {loss: unweighted sum of its terms this step}.
        Returns {loss: calibrated weight} at the end of calibration, else {}."""
        if not terms_by_loss or iteration >= self.iters:
            return {}
        self._det.append(det_loss)
        for loss, value in terms_by_loss.items():
            self._terms.setdefault(loss, []).append(value)
        if len(self._det) < self.iters:
            return {}
        det = sum(self._det) / len(self._det)
        chosen = {}
        for loss, values in self._terms.items():
            term = sum(values) / len(values)
            if not term > 0:
                raise PPKDError(f'{type(loss).__name__}: weight auto cannot be calibrated, its terms averaged '
                                f'{term} over the first {self.iters} iterations')
            chosen[loss] = self.ratio * det / term
            logger.info('%s: weight auto = %.4g (%.3g × detection loss %.4g / terms %.4g, mean of %d iterations)',
                        type(loss).__name__, chosen[loss], self.ratio, det, term, len(values))
        return chosen


def schedule_from_config(section):
    """`distill:` section → (WeightSchedule, AutoBalance)."""
    section = section or {}
    return (WeightSchedule(section.get('warmup_iters', 0), section.get('stop_epoch'), section.get('decay'),
                           section.get('decay_to', 0.)),
            AutoBalance(section.get('balance', 1.), section.get('balance_iters', 20)))
