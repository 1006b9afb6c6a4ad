"""The wait-policy tuner: it times both policies interleaved, keeps the
faster, and leaves a user's own setting alone."""
import os

import pytest

from ppkd import threads
from ppkd.errors import PPKDError

needs_iomp = pytest.mark.skipif(threads._openmp() is None, reason="Paddle's OpenMP is not Intel's here")


@needs_iomp
def test_set_blocktime_reaches_openmp():
    before = threads.get_blocktime()
    try:
        threads.set_blocktime(0)
        assert threads.get_blocktime() == 0
        threads.set_blocktime(200)
        assert threads.get_blocktime() == 200
    finally:
        threads.set_blocktime(before)


@needs_iomp
@pytest.mark.parametrize('faster', ['spin', 'sleep'])
def test_tuner_keeps_the_faster_policy(faster, caplog):
    before = threads.get_blocktime()
    tuner = threads.WaitPolicyTuner(warmup=2, rounds=3)
    seen = []
    try:
        with caplog.at_level('INFO'):
            for it in range(14):
                tuner.begin(it)
                policy = 'spin' if threads.get_blocktime() == 200 else 'sleep'
                seen.append(policy)
                tuner.end(it, 1.0 if policy == faster else 1.5)
        assert tuner.chosen == faster
        # Interleaved after the warm-up, then the choice for good.
        assert seen[2:8] == ['spin', 'sleep'] * 3
        assert set(seen[8:]) == {faster}
        assert f'CPU wait policy: {faster}' in caplog.text
    finally:
        threads.set_blocktime(before)


def test_user_setting_and_config_fix_the_policy(monkeypatch):
    cfg = {'config_path': 'x.yml'}
    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    monkeypatch.setenv('KMP_BLOCKTIME', '0')
    assert threads.wait_policy_tuner(cfg) is None
    monkeypatch.delenv('KMP_BLOCKTIME')
    assert threads.wait_policy_tuner({**cfg, 'cpu_wait': 'spin'}) is None
    assert threads.wait_policy_tuner({**cfg, 'use_gpu': True}) is None
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    assert threads.wait_policy_tuner(cfg) is None
    with pytest.raises(PPKDError, match="cpu_wait must be auto, spin or sleep; got 'fast'"):
        threads.wait_policy_tuner({**cfg, 'cpu_wait': 'fast'})
    if threads._openmp() is not None:
        monkeypatch.setenv('OMP_NUM_THREADS', '2')
        assert isinstance(threads.wait_policy_tuner(cfg), threads.WaitPolicyTuner)
    assert os.environ.get('KMP_BLOCKTIME') is None
