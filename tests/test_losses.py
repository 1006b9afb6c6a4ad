import numpy as np
import paddle
import pytest

from ppkd.errors import PPKDError
from ppkd.losses import yolov3_l2_distill

SHAPES = [(2, 3 * 9, 2, 2), (2, 3 * 9, 4, 4), (2, 3 * 9, 8, 8)]


def _maps(seed):
    rng = np.random.RandomState(seed)
    return [rng.randn(*s).astype('float32') for s in SHAPES]


def test_l2_matches_numpy():
    s, t = _maps(0), _maps(1)
    expected = sum(((a - b) ** 2).mean() for a, b in zip(s, t))
    got = yolov3_l2_distill([paddle.to_tensor(a) for a in s], [paddle.to_tensor(b) for b in t])
    assert got.size == 1
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_l2_hand_value():
    s = [paddle.to_tensor(np.full((1, 1, 1, 2), 3., 'float32'))]
    t = [paddle.to_tensor(np.array([[[[1., 3.]]]], 'float32'))]
    assert float(yolov3_l2_distill(s, t)) == pytest.approx((4 + 0) / 2)


def test_l2_gradient_reaches_student_not_teacher():
    paddle.seed(0)
    student, teacher = paddle.nn.Conv2D(4, 27, 1), paddle.nn.Conv2D(4, 27, 1)
    x = paddle.randn([2, 4, 4, 4])
    loss = yolov3_l2_distill([student(x)], [teacher(x)])
    loss.backward()
    assert student.weight.grad is not None and float(student.weight.grad.abs().sum()) > 0
    assert teacher.weight.grad is None


def test_l2_refuses_other_head_layout():
    s = [paddle.zeros(s) for s in SHAPES]
    t = [paddle.zeros((2, 3 * 10, 2, 2))] + s[1:]
    with pytest.raises(PPKDError, match=r'student shape \[2, 27, 2, 2\] and teacher shape \[2, 30, 2, 2\]'):
        yolov3_l2_distill(s, t)
    with pytest.raises(PPKDError, match='2 output levels'):
        yolov3_l2_distill(s, s[:2])
