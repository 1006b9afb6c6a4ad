"""The CPU settings of the training loop, chosen by measuring it.

Two settings decide how fast Paddle's CPU training runs, and which is best
depends on the machine and the model:

- MKL's BLAS threads (Paddle's dygraph convolutions are im2col + MKL GEMM).
  Measured on 2 cores (AMD EPYC), a step with BLAS on 2 threads against 1:
  the demo student 0.45 vs 0.30 s and the demo teacher 1.09 vs 0.65 s (small
  maps: threading costs more than it gains), but the BCCD student at 160 px
  1.86 vs 3.31 s and its ResNet-34 teacher 3.94 vs 5.71 s.
- Intel OpenMP's wait policy: its threads spin 200 ms after each parallel
  region, while the reader's threads and Python need the same cores. On one
  machine the demo teacher's loop ran 2.6× slower spinning than with a block
  time of 0 (2.48 vs 0.95 s); on another, 0 was the slower (1.35 vs 1.00 s).

So the trainer times each combination in the first iterations of the run,
interleaved, until the fastest stands out (`CPUTuner`), and keeps it. The
OpenMP thread count never changes. The BLAS thread count can change the
last bits of a GEMM's sums, so a run whose choice differs from another's
can differ in those bits: pin it
(`cpu_blas_threads: N`, or MKL_NUM_THREADS) for bitwise-repeatable runs.

A user's own KMP_BLOCKTIME / MKL_NUM_THREADS (or `cpu_wait: spin|sleep`,
`cpu_blas_threads: N` in the config) is kept as it is.
"""
import ctypes
import functools
import itertools
import logging
import os
import statistics

import paddle

logger = logging.getLogger('ppkd')

DEFAULT_BLOCKTIME_MS = 200  # Intel OpenMP's default
POLICIES = {'spin': DEFAULT_BLOCKTIME_MS, 'sleep': 0}
_LIBS = os.path.join(os.path.dirname(paddle.__file__), 'libs')
# The BLAS thread count ppkd set (None: MKL's own); a Paddle Inference run resets it.
_blas_threads = None


@functools.lru_cache(maxsize=None)
def _paddle_lib(filename, symbol):
    """One of the libraries Paddle ships, if it is there with `symbol`."""
    path = os.path.join(_LIBS, filename)
    if not os.path.isfile(path):
        return None
    lib = ctypes.CDLL(path)
    return lib if hasattr(lib, symbol) else None


def _openmp():
    return _paddle_lib('libiomp5.so', 'kmp_set_blocktime')


def _mkl():
    return _paddle_lib('libmklml_intel.so', 'MKL_Set_Num_Threads')


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


def set_blas_threads(n):
    """Set MKL's BLAS threads (kept, to be restored after a Paddle Inference run); False if Paddle has no MKL."""
    global _blas_threads
    lib = _mkl()
    if lib is None:
        return False
    lib.MKL_Set_Num_Threads(ctypes.c_int(int(n)))
    _blas_threads = int(n)
    return True


def get_blas_threads():
    lib = _mkl()
    return None if lib is None else int(lib.MKL_Get_Max_Threads())


def restore_threads(omp_threads):
    """The training loop's thread settings back after a Paddle Inference
    run, which ends by setting the CPU math library to one thread."""
    paddle.base.core.set_num_threads(omp_threads)  # OpenMP and MKL
    if _blas_threads is not None:
        set_blas_threads(_blas_threads)


def _name(candidate):
    wait, blas = candidate
    parts = ([wait] if wait else []) + ([f'BLAS {blas} thread' + ('s' if blas > 1 else '')] if blas else [])
    return ', '.join(parts)


class CPUTuner:
    """Times each candidate (wait policy, BLAS threads) — None leaves that
    setting alone — in interleaved iterations after `warmup` ones, then
    keeps the fastest for the rest of the run.

    Iteration times are noisy (the reader, the machine), and 3 iterations
    each once chose BLAS on 2 threads at 0.404 s against 0.476 for 1 on a
    model whose steps then took 0.545 s with 2 and ~0.36 s with 1. So from
    `rounds` iterations each on, a candidate is dropped once every one of
    its times is slower than every one of the leader's (the lowest median):
    for two candidates of the same speed that happens by chance once in 20
    with 3 times each. The rest go on alternating until one is left or each
    has `max_rounds`, then the lowest median wins.

    `begin(iteration)` before a step, `end(iteration, seconds)` after it,
    with the iteration's whole time (data wait included)."""

    def __init__(self, candidates, warmup=3, rounds=3, max_rounds=10):
        self.candidates, self.warmup, self.rounds, self.max_rounds = list(candidates), warmup, rounds, max_rounds
        self.times = {c: [] for c in self.candidates}
        self.racing = list(self.candidates)
        self.chosen = None
        self._current = None  # the candidate timed in this iteration

    @staticmethod
    def _apply(candidate):
        wait, blas = candidate
        if wait:
            set_blocktime(POLICIES[wait])
        if blas:
            set_blas_threads(blas)

    def begin(self, iteration):
        self._current = None
        if self.chosen is not None or iteration < self.warmup:
            return
        # Round-robin over the candidates still racing: the one with fewest times next.
        self._current = min(self.racing, key=lambda c: len(self.times[c]))
        self._apply(self._current)

    def end(self, iteration, seconds):
        if self._current is None:
            return
        self.times[self._current].append(seconds)
        counts = {len(self.times[c]) for c in self.racing}
        if len(counts) > 1 or counts.pop() < self.rounds:
            return
        medians = {c: statistics.median(self.times[c]) for c in self.racing}
        leader = min(medians, key=medians.get)
        slowest = max(self.times[leader])
        self.racing = [c for c in self.racing if c == leader or min(self.times[c]) <= slowest]
        if len(self.racing) == 1 or len(self.times[leader]) >= self.max_rounds:
            self._choose(leader)

    def _choose(self, leader):
        self.chosen = leader
        self._apply(leader)
        timed = '; '.join(f'{_name(c)} {statistics.median(t):.3f} s ({len(t)})' for c, t in self.times.items())
        if len(self.racing) == 1:
            logger.info('CPU settings: %s, faster than the others (median, iterations timed): %s', _name(leader), timed)
        else:
            logger.info('CPU settings: %s, the lowest median, not told apart from %s in %d iterations each '
                        '(median, iterations timed): %s', _name(leader),
                        ' or '.join(_name(c) for c in self.racing if c != leader), len(self.times[leader]), timed)


def _fixed(cfg, key, allowed, parse):
    """A setting from the config: 'auto' (None) or a valid value."""
    value = cfg.get(key, 'auto')
    if value == 'auto':
        return None
    try:
        return parse(value)
    except (TypeError, ValueError):
        from ppkd.errors import PPKDError
        raise PPKDError(f'{cfg["config_path"]}: {key} must be {allowed}; got {value!r}') from None


def _policy(value):
    if value not in POLICIES:
        raise ValueError(value)
    return value


def _positive_int(value):
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(value)
    return int(value)


def cpu_tuner(cfg):
    """Apply the CPU settings the user fixed; a tuner for the others, or
    None when nothing is left to choose: on a GPU, on one core, or where
    Paddle's OpenMP is not Intel's and it has no MKL."""
    wait = _fixed(cfg, 'cpu_wait', 'auto, spin or sleep', _policy)
    blas = _fixed(cfg, 'cpu_blas_threads', 'auto or a positive integer', _positive_int)
    threads = int(os.environ.get('OMP_NUM_THREADS', 1))
    if cfg.get('use_gpu') or threads < 2:
        return None
    waits, blases = [None], [None]
    if _openmp() is not None and 'KMP_BLOCKTIME' not in os.environ:
        if wait is None:
            waits = list(POLICIES)
        else:
            set_blocktime(POLICIES[wait])
            logger.info('CPU wait policy: %s (cpu_wait in the config)', wait)
    if _mkl() is not None:
        user = os.environ.get('MKL_NUM_THREADS')
        if user is not None:
            if user.isdigit():  # kept, so that it is restored after a predictor's run
                set_blas_threads(int(user))
        elif blas is None:
            blases = [threads, 1]
        else:
            set_blas_threads(blas)
            logger.info('CPU BLAS threads: %d (cpu_blas_threads in the config)', blas)
    candidates = list(itertools.product(waits, blases))
    return CPUTuner(candidates) if len(candidates) > 1 else None
