"""The OpenMP wait policy of the training loop, chosen by measuring it.

Paddle's CPU kernels run on Intel OpenMP, whose threads spin for 200 ms
after each parallel region before sleeping. In the real loop the reader's
threads and Python need the same cores. Measured on the demo teacher's loop
(2 cores): on one machine the spinning made an iteration 2.6× slower than a
block time of 0 (2.48 vs 0.95 s); on another (AMD EPYC) a block time of 0
was the slower (1.35 vs 1.00 s). No default wins everywhere, so the trainer
times both in the first iterations of the run, interleaved, and keeps the
faster. Only the wait policy changes, never the
thread count, so the numbers a run computes do not depend on the choice.

A user's own KMP_BLOCKTIME (or `cpu_wait: spin` / `cpu_wait: sleep` in the
config) is kept as it is.
"""
import ctypes
import functools
import logging
import os
import statistics

import paddle

logger = logging.getLogger('ppkd')

DEFAULT_BLOCKTIME_MS = 200  # Intel OpenMP's default
POLICIES = {'spin': DEFAULT_BLOCKTIME_MS, 'sleep': 0}


@functools.lru_cache(maxsize=None)
def _openmp():
    path = os.path.join(os.path.dirname(paddle.__file__), 'libs', 'libiomp5.so')
    if not os.path.isfile(path):
        return None
    lib = ctypes.CDLL(path)
    return lib if hasattr(lib, 'kmp_set_blocktime') else None


def set_blocktime(ms):
    """Set Intel OpenMP's block time for this thread's parallel regions; False if unavailable."""
    lib = _openmp()
    if lib is None:
        return False
    lib.kmp_set_blocktime(ctypes.c_int(int(ms)))
    return True


def get_blocktime():
    lib = _openmp()
    return None if lib is None else int(lib.kmp_get_blocktime())


class WaitPolicyTuner:
    """Times each wait policy over `rounds` interleaved iterations after
    `warmup` ones, then keeps the faster for the rest of the run.

    `begin(iteration)` before a step, `end(iteration, seconds)` after it,
    with the iteration's whole time (data wait included)."""

    def __init__(self, warmup=3, rounds=3):
        self.warmup, self.rounds = warmup, rounds
        self.names = list(POLICIES)
        self.times = {name: [] for name in self.names}
        self.chosen = None

    def _candidate(self, iteration):
        k = iteration - self.warmup
        if self.chosen is not None or k < 0 or k >= self.rounds * len(self.names):
            return None
        return self.names[k % len(self.names)]

    def begin(self, iteration):
        name = self._candidate(iteration)
        if name is not None:
            set_blocktime(POLICIES[name])

    def end(self, iteration, seconds):
        name = self._candidate(iteration)
        if name is None:
            return
        self.times[name].append(seconds)
        if all(len(t) == self.rounds for t in self.times.values()):
            medians = {n: statistics.median(t) for n, t in self.times.items()}
            self.chosen = min(medians, key=medians.get)
            set_blocktime(POLICIES[self.chosen])
            logger.info('CPU wait policy: %s (OpenMP block time %d ms), measured over %d iterations each: %s',
                        self.chosen, POLICIES[self.chosen], self.rounds,
                        ', '.join(f'{n} {m:.3f} s' for n, m in medians.items()))


def wait_policy_tuner(cfg):
    """A tuner for this run, or None when the policy is fixed: by the
    user's KMP_BLOCKTIME, by `cpu_wait` in the config, on a GPU, on one
    core, or where Paddle's OpenMP is not Intel's."""
    setting = cfg.get('cpu_wait', 'auto')
    if setting not in ('auto', *POLICIES):
        from ppkd.errors import PPKDError
        raise PPKDError(f'{cfg["config_path"]}: cpu_wait must be auto, spin or sleep; got {setting!r}')
    if 'KMP_BLOCKTIME' in os.environ or cfg.get('use_gpu') or int(os.environ.get('OMP_NUM_THREADS', 1)) < 2:
        return None
    if setting != 'auto':
        if set_blocktime(POLICIES[setting]):
            logger.info('CPU wait policy: %s (cpu_wait in the config)', setting)
        return None
    return WaitPolicyTuner() if _openmp() is not None else None
