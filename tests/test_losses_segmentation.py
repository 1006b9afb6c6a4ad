"""Segmentation distillation's functional forms against loop-form NumPy."""
import numpy as np
import paddle
import pytest

from ppkd.errors import PPKDError
from ppkd.losses import affinity_loss, affinity_matrix, pixel_kd

pytestmark = pytest.mark.smoke


def _np_softmax(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_pixel_kd_matches_numpy_with_and_without_ignored_pixels(temperature):
    rng = np.random.RandomState(0)
    s, t = rng.randn(2, 5, 3, 4).astype('float32'), rng.randn(2, 5, 3, 4).astype('float32')
    ignore = rng.rand(2, 3, 4) > 0.7
    p_t, p_s = _np_softmax(t / temperature, 1), _np_softmax(s / temperature, 1)
    kl = [[[(p_t[n, :, i, j] * (np.log(p_t[n, :, i, j]) - np.log(p_s[n, :, i, j]))).sum()
            for j in range(4)] for i in range(3)] for n in range(2)]
    kl = np.array(kl)
    got = pixel_kd(paddle.to_tensor(s), paddle.to_tensor(t), temperature)
    np.testing.assert_allclose(float(got), temperature ** 2 * kl.mean(), rtol=1e-5)
    got = pixel_kd(paddle.to_tensor(s), paddle.to_tensor(t), temperature, paddle.to_tensor(ignore))
    np.testing.assert_allclose(float(got), temperature ** 2 * kl[~ignore].mean(), rtol=1e-5)
    all_ignored = pixel_kd(paddle.to_tensor(s), paddle.to_tensor(t), temperature, paddle.ones([2, 3, 4], 'bool'))
    assert float(all_ignored) == 0.0


def test_affinity_matrix_and_loss_match_numpy():
    rng = np.random.RandomState(1)
    s, t = rng.randn(2, 3, 2, 3).astype('float32'), rng.randn(2, 6, 2, 3).astype('float32')  # other channels

    def np_affinity(f):
        n, c = f.shape[:2]
        v = f.reshape(n, c, -1).transpose(0, 2, 1)
        v = v / np.linalg.norm(v, axis=2, keepdims=True)
        return np.array([[[v[k, i] @ v[k, j] for j in range(6)] for i in range(6)] for k in range(n)])

    a_s, a_t = np_affinity(s), np_affinity(t)
    np.testing.assert_allclose(affinity_matrix(paddle.to_tensor(s)).numpy(), a_s, rtol=1e-5, atol=1e-6)
    assert np.allclose(np.diagonal(a_s, axis1=1, axis2=2), 1.0, atol=1e-5)
    expected = np.mean([np.linalg.norm(a_s[k, i] - a_t[k, i]) for k in range(2) for i in range(6)])
    got = affinity_loss(paddle.to_tensor(s), paddle.to_tensor(t))
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)


def test_gradients_reach_student_not_teacher_and_sizes_must_agree():
    student, teacher = paddle.nn.Conv2D(3, 4, 1), paddle.nn.Conv2D(3, 4, 1)
    x = paddle.randn([2, 3, 4, 4])
    (pixel_kd(student(x), teacher(x), 2.0) + affinity_loss(student(x), teacher(x))).backward()
    assert float(student.weight.grad.abs().sum()) > 0 and teacher.weight.grad is None
    with pytest.raises(PPKDError, match='differ in size'):
        pixel_kd(paddle.zeros([1, 4, 4, 4]), paddle.zeros([1, 4, 2, 2]))
