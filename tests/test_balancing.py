"""Weight schedules and `weight: auto`: the factor, the log, and resume."""
import json
import math
import os

import paddle
import pytest

from ppkd.balancing import AutoBalance, WeightSchedule
from ppkd.errors import PPKDError

from conftest import CONFIGS, PINNED_BLAS, run_script, tiny_opts

DISTILL = os.path.join(CONFIGS, 'demo', 'distill_l2.yml')


def test_warmup_stop_and_decay():
    warm = WeightSchedule(warmup_iters=4)
    assert [warm.factor(i, 100, 10) for i in range(6)] == [0., .25, .5, .75, 1., 1.]
    stop = WeightSchedule(stop_epoch=2)
    assert [stop.factor(i, 40, 10) for i in (0, 19, 20, 39)] == [1., 1., 0., 0.]
    cos = WeightSchedule(decay='cosine', decay_to=0.1)
    assert cos.factor(0, 100, 10) == pytest.approx(1.)
    assert cos.factor(50, 100, 10) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cos.factor(100, 100, 10) == pytest.approx(0.1)
    lin = WeightSchedule(warmup_iters=10, decay='linear')
    assert lin.factor(5, 20, 10) == pytest.approx(0.5 * (1 - 5 / 20))
    with pytest.raises(PPKDError, match="distill.decay must be cosine, linear or none; got 'step'"):
        WeightSchedule(decay='step')


def test_auto_balance_ratio_after_its_iterations():
    balance, loss = AutoBalance(ratio=0.5, iters=3), object()
    assert balance.observe(0, 10., {loss: 2.}) == {}
    assert balance.observe(1, 20., {loss: 4.}) == {}
    chosen = balance.observe(2, 30., {loss: 6.})
    assert chosen[loss] == pytest.approx(0.5 * 20. / 4.)
    assert balance.observe(3, 1., {loss: 1.}) == {}  # once only
    with pytest.raises(PPKDError, match='weight auto cannot be calibrated'):
        AutoBalance(iters=1).observe(0, 1., {loss: 0.})


def _train_rows(out):
    with open(os.path.join(out, 'metrics.jsonl')) as f:
        return [r for r in map(json.loads, f) if r['type'] == 'train']


def _distill(teacher, out, *extra, opts=()):
    cfg, weights = teacher
    return run_script('slim/distillation/distill.py', ['-c', DISTILL, '-t', cfg, '--teacher_pretrained', weights,
                                                       '--output_dir', str(out), *extra, '-o', *opts])


@pytest.mark.smoke
def test_auto_weight_with_warmup_logged_and_kept_on_resume(tiny_voc, tiny_teacher, tmp_path, caplog):
    # 4 iterations an epoch: calibrated over iterations 0-1, ramped over 0-3.
    opts = tiny_opts(tiny_voc, 'epoch=2', 'YOLOv3L2Distill.weight=auto', 'distill.balance=0.5',
                     'distill.balance_iters=2', 'distill.warmup_iters=4', *PINNED_BLAS)
    with caplog.at_level('INFO'):
        assert _distill(tiny_teacher, tmp_path / 'straight', opts=opts) == 0
    logged = [r.getMessage() for r in caplog.records if 'weight auto =' in r.getMessage()]
    assert len(logged) == 1
    chosen = float(logged[0].split('weight auto = ')[1].split()[0])
    rows = _train_rows(tmp_path / 'straight')
    weights = [r['weight_YOLOv3L2Distill'] for r in rows]
    expected = [0., 0., chosen * 0.5, chosen * 0.75, chosen, chosen, chosen, chosen]
    assert weights == pytest.approx(expected, rel=1e-3)
    # The chosen weight makes the term half the detection loss over the first two iterations.
    det = sum(r['det_loss'] for r in rows[:2]) / 2
    term = sum(r['distill_l2'] for r in rows[:2]) / 2
    assert chosen == pytest.approx(0.5 * det / term, rel=1e-3)
    # Resumed after the first epoch: the calibrated weight is kept, not re-measured.
    caplog.clear()
    with caplog.at_level('INFO'):
        assert _distill(tiny_teacher, tmp_path / 'split', opts=opts + ['epoch=1']) == 0
        assert _distill(tiny_teacher, tmp_path / 'split', '-r', str(tmp_path / 'split' / 'model_final'),
                        opts=opts) == 0
    assert sum('weight auto =' in r.getMessage() for r in caplog.records) == 1
    resumed = [r['weight_YOLOv3L2Distill'] for r in _train_rows(tmp_path / 'split')]
    assert resumed == pytest.approx(expected, rel=1e-3)
    a = paddle.load(str(tmp_path / 'straight' / 'model_final.pdparams'))
    b = paddle.load(str(tmp_path / 'split' / 'model_final.pdparams'))
    assert all(math.isclose(float((a[k] - b[k]).abs().max()), 0., abs_tol=1e-6) for k in a)


@pytest.mark.parametrize('opt, message', [
    ('distill.warmup=10', 'unknown key distill.warmup'),
    ('YOLOv3L2Distill.weight=heavy', "YOLOv3L2Distill.weight must be a number or auto, got 'heavy'"),
    ('distill.decay=step', "distill.decay must be cosine, linear or none; got 'step'"),
    ('YOLOv3L2Distill.weight=-5', 'YOLOv3L2Distill.weight must be finite and ≥ 0, got -5'),
    ('YOLOv3L2Distill.weight=.inf', 'YOLOv3L2Distill.weight must be finite and ≥ 0, got inf'),
])
def test_bad_schedule_keys_are_one_error_line(tiny_voc, tiny_teacher, tmp_path, capsys, opt, message):
    assert _distill(tiny_teacher, tmp_path, opts=tiny_opts(tiny_voc, opt)) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
