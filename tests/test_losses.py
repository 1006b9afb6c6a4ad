import numpy as np
import paddle
import pytest

from ppkd.errors import PPKDError
from ppkd.losses import yolov3_fine_grained_distill, yolov3_l2_distill

pytestmark = pytest.mark.smoke

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


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _bce(x, p):
    return np.maximum(x, 0) - x * p + np.log1p(np.exp(-np.abs(x)))


def _numpy_fine_grained(s_maps, t_maps, c, a=3):
    out = {'reg': 0., 'cls': 0., 'obj': 0.}
    for s, t in zip(s_maps, t_maps):
        n, _, h, w = s.shape
        s, t = s.reshape(n, a, 5 + c, h, w), t.reshape(n, a, 5 + c, h, w)
        gate = _sigmoid(t[:, :, 4])
        box = (_bce(s[:, :, 0], _sigmoid(t[:, :, 0])) + _bce(s[:, :, 1], _sigmoid(t[:, :, 1]))
               + np.abs(s[:, :, 2] - t[:, :, 2]) + np.abs(s[:, :, 3] - t[:, :, 3]))
        out['reg'] += (box * gate).mean()
        out['cls'] += (_bce(s[:, :, 5:], _sigmoid(t[:, :, 5:])) * gate[:, :, None]).mean()
        out['obj'] += _bce(s[:, :, 4], (t[:, :, 4] > 0).astype('float32')).mean()
    return out


def test_fine_grained_matches_numpy():
    s, t = _maps(2), _maps(3)  # 27 channels = 3 anchors × (5 + 4 classes)
    got = yolov3_fine_grained_distill([paddle.to_tensor(a) for a in s], [paddle.to_tensor(b) for b in t],
                                      num_classes=4)
    expected = _numpy_fine_grained(s, t, 4)
    for k in ('reg', 'cls', 'obj'):
        np.testing.assert_allclose(float(got[k]), expected[k], rtol=1e-5, err_msg=k)


def test_fine_grained_equals_ppdet_distill_yolov3_loss():
    """ppdet's DistillYOLOv3Loss reads [x, y, w, h, obj, cls] slices from each
    model's YOLOv3Loss.distill_pairs; feed it the same maps."""
    from types import SimpleNamespace
    from ppdet.slim.distill_loss import DistillYOLOv3Loss

    def as_model(maps, c=4, a=3):
        pairs = []
        for m in maps:
            n, _, h, w = m.shape
            p = paddle.to_tensor(m).reshape([n, a, 5 + c, h, w]).transpose([0, 1, 3, 4, 2])
            pairs.append([p[..., 0:1], p[..., 1:2], p[..., 2:3], p[..., 3:4], p[..., 4:5], p[..., 5:]])
        return SimpleNamespace(yolo_head=SimpleNamespace(loss=SimpleNamespace(distill_pairs=pairs)))

    s, t = _maps(4), _maps(5)
    theirs = float(DistillYOLOv3Loss(weight=1000)(as_model(t), as_model(s)))
    ours = yolov3_fine_grained_distill([paddle.to_tensor(a) for a in s], [paddle.to_tensor(b) for b in t], 4)
    np.testing.assert_allclose(1000 * float(ours['reg'] + ours['cls'] + ours['obj']), theirs, rtol=1e-5)


def test_fine_grained_gradient_reaches_student_not_teacher():
    paddle.seed(0)
    student, teacher = paddle.nn.Conv2D(4, 27, 1), paddle.nn.Conv2D(4, 27, 1)
    x = paddle.randn([2, 4, 4, 4])
    terms = yolov3_fine_grained_distill([student(x)], [teacher(x)], num_classes=4)
    paddle.add_n(list(terms.values())).backward()
    assert float(student.weight.grad.abs().sum()) > 0
    assert teacher.weight.grad is None


def test_fine_grained_refuses_wrong_class_count():
    s = [paddle.zeros(s) for s in SHAPES]
    with pytest.raises(PPKDError, match=r'27 channels, expected 3 anchors × \(5 \+ 3 classes\) = 24'):
        yolov3_fine_grained_distill(s, s, num_classes=3)


def _numpy_fm_nms(obj, cls, k=3):
    """Loop form: a candidate (anchor, cell) survives unless a candidate of
    the same top class within k×k cells (any anchor) has a higher objectness."""
    n, a, h, w = obj.shape
    top = cls.argmax(axis=2)
    keep = np.zeros_like(obj)
    r = k // 2
    for b in range(n):
        for i in range(a):
            for y in range(h):
                for x in range(w):
                    rivals = [obj[b, j, yy, xx] for j in range(a)
                              for yy in range(max(0, y - r), min(h, y + r + 1))
                              for xx in range(max(0, x - r), min(w, x + r + 1))
                              if top[b, j, yy, xx] == top[b, i, y, x]]
                    keep[b, i, y, x] = float(obj[b, i, y, x] >= max(rivals))
    return keep


def test_feature_map_nms_matches_numpy():
    from ppkd.losses.yolov3 import feature_map_nms
    rng = np.random.RandomState(7)
    obj, cls = rng.randn(2, 3, 5, 6).astype('float32'), rng.randn(2, 3, 4, 5, 6).astype('float32')
    got = feature_map_nms(paddle.to_tensor(obj), paddle.to_tensor(cls)).numpy()
    expected = _numpy_fm_nms(obj, cls)
    np.testing.assert_array_equal(got, expected)
    assert 0 < expected.mean() < 1  # some candidates kept, some dropped


def test_fine_grained_with_fm_nms_matches_numpy():
    """Dropped candidates count as background: gate 0 and objectness target 0."""
    s, t = _maps(8), _maps(9)
    got = yolov3_fine_grained_distill([paddle.to_tensor(a) for a in s], [paddle.to_tensor(b) for b in t],
                                      num_classes=4, fm_nms=True)
    expected = {'reg': 0., 'cls': 0., 'obj': 0.}
    for sm, tm in zip(s, t):
        n, _, h, w = sm.shape
        sr, tr = sm.reshape(n, 3, 9, h, w), tm.reshape(n, 3, 9, h, w)
        keep = _numpy_fm_nms(tr[:, :, 4], tr[:, :, 5:])
        gate = _sigmoid(tr[:, :, 4]) * keep
        box = (_bce(sr[:, :, 0], _sigmoid(tr[:, :, 0])) + _bce(sr[:, :, 1], _sigmoid(tr[:, :, 1]))
               + np.abs(sr[:, :, 2] - tr[:, :, 2]) + np.abs(sr[:, :, 3] - tr[:, :, 3]))
        expected['reg'] += (box * gate).mean()
        expected['cls'] += (_bce(sr[:, :, 5:], _sigmoid(tr[:, :, 5:])) * gate[:, :, None]).mean()
        expected['obj'] += _bce(sr[:, :, 4], (tr[:, :, 4] > 0) * keep).mean()
    for k in expected:
        np.testing.assert_allclose(float(got[k]), expected[k], rtol=1e-5, err_msg=k)
    plain = yolov3_fine_grained_distill([paddle.to_tensor(a) for a in s], [paddle.to_tensor(b) for b in t], 4)
    assert float(got['reg']) < float(plain['reg'])
