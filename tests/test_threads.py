"""The CPU tuner: it times every combination of wait policy and BLAS
threads interleaved, keeps the fastest, and leaves a user's own settings
alone."""
import os

import pytest

from ppkd import threads
from ppkd.errors import PPKDError

needs_iomp = pytest.mark.skipif(threads._openmp() is None, reason="Paddle's OpenMP is not Intel's here")
needs_mkl = pytest.mark.skipif(threads._mkl() is None, reason='Paddle has no MKL here')


@needs_iomp
def test_set_blocktime_reaches_openmp(restored_cpu_settings):
    threads.set_blocktime(0)
    assert threads.get_blocktime() == 0
    threads.set_blocktime(200)
    assert threads.get_blocktime() == 200


@needs_mkl
def test_blas_threads_reach_mkl_and_survive_a_math_library_reset(restored_cpu_settings):
    import paddle
    threads.set_blas_threads(1)
    assert threads.get_blas_threads() == 1
    paddle.base.core.set_num_threads(2)  # what giving OpenMP its threads back also does to MKL
    assert threads.get_blas_threads() == 2
    threads.restore_threads(2)
    assert threads.get_blas_threads() == 1


@needs_iomp
@needs_mkl
@pytest.mark.parametrize('fastest', [('spin', 2), ('sleep', 1), ('spin', 1)])
def test_tuner_keeps_the_fastest_combination(fastest, restored_cpu_settings, caplog):
    candidates = [(w, b) for w in ('spin', 'sleep') for b in (2, 1)]
    tuner = threads.CPUTuner(candidates, warmup=2, rounds=3)
    seen = []
    with caplog.at_level('INFO'):
        for it in range(20):
            tuner.begin(it)
            current = ('spin' if threads.get_blocktime() == 200 else 'sleep', threads.get_blas_threads())
            seen.append(current)
            tuner.end(it, 1.0 if current == fastest else 1.5)
    assert tuner.chosen == fastest
    # Interleaved after the warm-up, then the choice for good.
    assert seen[2:14] == candidates * 3
    assert set(seen[14:]) == {fastest}
    blas = f'BLAS {fastest[1]} thread' + ('s' if fastest[1] > 1 else '')
    assert f'CPU settings: {fastest[0]}, {blas}, faster than the others' in caplog.text


def _race(tuner, times_of, iterations):
    """Run the tuner over `iterations`, each candidate's k-th timed
    iteration taking times_of[candidate][k] (its last value after those)."""
    seen = []
    for it in range(iterations):
        tuner.begin(it)
        current = tuner._current or tuner.chosen
        k = sum(1 for c in seen if c == current)
        seen.append(current)
        tuner.end(it, 1.0 if current is None else times_of[current][min(k, len(times_of[current]) - 1)])
    return seen


def test_tuner_is_not_fooled_by_a_slow_start():
    # What a run once did: the faster setting's first iterations slow, the
    # slower one's fast; 3 each chose the slower. Overlapping times keep
    # both racing; their medians over more iterations tell them apart.
    one, two = (None, 1), (None, 2)
    times_of = {one: [0.50, 0.48, 0.36, 0.35, 0.36, 0.35, 0.37, 0.36],
                two: [0.40, 0.41, 0.55, 0.52, 0.50, 0.53, 0.51, 0.55]}
    old_rule = {c: sorted(t[:3])[1] for c, t in times_of.items()}
    assert min(old_rule, key=old_rule.get) == two
    tuner = threads.CPUTuner([one, two], warmup=0, rounds=3, max_rounds=10)
    tuner._apply = lambda candidate: None
    seen = _race(tuner, times_of, 40)
    assert tuner.chosen == one
    # One thread's two slow starts overlap two threads' times for good, so
    # the race runs its 10 iterations each and the medians decide.
    assert seen[:20] == [one, two] * 10 and set(seen[20:]) == {one}


def test_tuner_drops_a_clear_loser_and_goes_on_with_a_tie(caplog):
    a, b, slow = ('spin', 1), ('sleep', 1), ('spin', 2)
    times_of = {a: [1.00, 1.02, 0.98], b: [1.01, 0.99, 1.00], slow: [1.5]}
    tuner = threads.CPUTuner([a, b, slow], warmup=1, rounds=3, max_rounds=6)
    tuner._apply = lambda candidate: None
    with caplog.at_level('INFO'):
        seen = _race(tuner, times_of, 30)
    assert seen[1:10] == [a, b, slow] * 3
    assert seen[10:16] == [a, b] * 3  # the tie raced on, without the loser
    assert tuner.chosen in (a, b) and set(seen[16:]) == {tuner.chosen}
    assert [len(tuner.times[c]) for c in (a, b, slow)] == [6, 6, 3]
    assert 'in 6 iterations each' in caplog.text and 'not told apart from' in caplog.text


def test_user_settings_fix_their_part(monkeypatch, restored_cpu_settings):
    cfg = {'config_path': 'x.yml'}
    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    monkeypatch.delenv('KMP_BLOCKTIME', raising=False)
    monkeypatch.delenv('MKL_NUM_THREADS', raising=False)
    both = [(w, b) for w in (['spin', 'sleep'] if threads._openmp() else [None])
            for b in ([2, 1] if threads._mkl() else [None])]
    tuner = threads.cpu_tuner(cfg)
    assert (tuner.candidates if tuner else [(None, None)]) == both
    if threads._openmp() and threads._mkl():
        # One setting fixed (environment or config): the other is still tuned.
        monkeypatch.setenv('KMP_BLOCKTIME', '0')
        assert threads.cpu_tuner(cfg).candidates == [(None, 2), (None, 1)]
        monkeypatch.delenv('KMP_BLOCKTIME')
        assert threads.cpu_tuner({**cfg, 'cpu_wait': 'spin'}).candidates == [(None, 2), (None, 1)]
        assert threads.get_blocktime() == 200
        monkeypatch.setenv('MKL_NUM_THREADS', '1')
        assert threads.cpu_tuner(cfg).candidates == [('spin', None), ('sleep', None)]
        assert threads.get_blas_threads() == 1 and threads._blas_threads == 1  # kept for after a predictor run
        monkeypatch.delenv('MKL_NUM_THREADS')
        assert threads.cpu_tuner({**cfg, 'cpu_blas_threads': 2}).candidates == [('spin', None), ('sleep', None)]
        assert threads.get_blas_threads() == 2
        assert threads.cpu_tuner({**cfg, 'cpu_blas_threads': 1, 'cpu_wait': 'sleep'}) is None
    assert threads.cpu_tuner({**cfg, 'use_gpu': True}) is None
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    assert threads.cpu_tuner(cfg) is None
    with pytest.raises(PPKDError, match="x.yml: cpu_wait must be auto, spin or sleep; got 'fast'"):
        threads.cpu_tuner({**cfg, 'cpu_wait': 'fast'})
    for bad in (0, 'two', 1.5, True):
        with pytest.raises(PPKDError, match=f'x.yml: cpu_blas_threads must be auto or a positive integer; got {bad!r}'):
            threads.cpu_tuner({**cfg, 'cpu_blas_threads': bad})
    assert os.environ.get('KMP_BLOCKTIME') is None
