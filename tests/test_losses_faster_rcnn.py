"""The Faster R-CNN functional forms against independent NumPy values and
small hand-computed ones, and their gradients."""
import numpy as np
import paddle
import pytest

from ppkd.errors import PPKDError
from ppkd.losses import bounded_regression, hint_loss, weighted_soft_bce, weighted_soft_ce

pytestmark = pytest.mark.smoke


def _t(a):
    return paddle.to_tensor(np.asarray(a, dtype='float32'))


def _np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize('temperature,bg_weight,bg_index', [(1.0, 1.5, -1), (2.0, 1.5, -1), (3.0, 2.0, 0)])
def test_weighted_soft_ce_matches_numpy(temperature, bg_weight, bg_index):
    rng = np.random.RandomState(0)
    s, t = rng.randn(7, 4) * 3, rng.randn(7, 4) * 3
    w = np.ones(4)
    w[bg_index] = bg_weight
    p_t = _np_softmax(t / temperature)
    log_p_s = np.log(_np_softmax(s / temperature))
    expected = temperature ** 2 * np.mean(-(w * p_t * log_p_s).sum(axis=1))
    got = weighted_soft_ce(_t(s), _t(t), temperature, bg_weight, bg_index)
    assert got.size == 1
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_weighted_soft_ce_hand_value():
    # Equal logits over 2 classes: p = (½, ½); −[1.5·½·log ½ + ½·log ½] = 1.25·log 2.
    got = weighted_soft_ce(_t([[0., 0.]]), _t([[5., 5.]]))
    assert float(got) == pytest.approx(1.25 * np.log(2), rel=1e-6)


def test_weighted_soft_bce_matches_numpy():
    rng = np.random.RandomState(1)
    s, t = rng.randn(50) * 4, rng.randn(50) * 4
    for temperature, w_bg in ((1.0, 1.5), (2.0, 1.0)):
        sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
        p_t, p_s = sig(t / temperature), sig(s / temperature)
        expected = temperature ** 2 * np.mean(-(p_t * np.log(p_s) + w_bg * (1 - p_t) * np.log(1 - p_s)))
        got = weighted_soft_bce(_t(s), _t(t), temperature, w_bg)
        np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_weighted_soft_bce_is_finite_for_extreme_logits():
    got = weighted_soft_bce(_t([80., -80.]), _t([-80., 80.]))
    assert np.isfinite(float(got)) and float(got) == pytest.approx((1.5 * 80 + 80) / 2, rel=1e-4)


def test_bounded_regression_matches_numpy():
    rng = np.random.RandomState(2)
    s, t, y = rng.randn(9, 4), rng.randn(9, 4), rng.randn(9, 4)
    for margin in (0.0, 1.0, -0.5):
        e_s, e_t = ((s - y) ** 2).sum(1), ((t - y) ** 2).sum(1)
        expected = np.mean(np.where(e_s + margin > e_t, e_s, 0.))
        np.testing.assert_allclose(float(bounded_regression(_t(s), _t(t), _t(y), margin)), expected, rtol=1e-5)


def test_bounded_regression_hand_value():
    y = np.zeros((2, 4))
    s = [[1, 0, 0, 0], [1, 1, 0, 0]]     # errors 1 and 2
    t = [[2, 0, 0, 0], [1, 0, 0, 0]]     # errors 4 and 1: only row 2 is worse than the teacher
    assert float(bounded_regression(_t(s), _t(t), _t(y))) == pytest.approx((0 + 2) / 2)
    assert float(bounded_regression(_t(s), _t(t), _t(y), margin=3.5)) == pytest.approx((1 + 2) / 2)
    assert float(bounded_regression(_t(np.zeros((0, 4))), _t(np.zeros((0, 4))), _t(np.zeros((0, 4))))) == 0


def test_hint_loss_l2_l1():
    a, b = np.arange(8.).reshape(1, 2, 2, 2), np.ones((1, 2, 2, 2))
    assert float(hint_loss(_t(a), _t(b))) == pytest.approx(((a - b) ** 2).mean())
    assert float(hint_loss(_t(a), _t(b), 'l1')) == pytest.approx(np.abs(a - b).mean())
    with pytest.raises(PPKDError, match="'l3'"):
        hint_loss(_t(a), _t(b), 'l3')


def test_gradients_reach_student_not_teacher():
    paddle.seed(0)
    student, teacher = paddle.nn.Linear(3, 4), paddle.nn.Linear(3, 4)
    x = paddle.randn([6, 3])
    s, t = student(x), teacher(x)
    y = paddle.zeros([6, 4])
    total = (weighted_soft_ce(s, t) + weighted_soft_bce(s[:, 0], t[:, 0])
             + bounded_regression(s, t * 0, y, margin=1.) + hint_loss(s, t))
    total.backward()
    assert float(student.weight.grad.abs().sum()) > 0
    assert teacher.weight.grad is None
