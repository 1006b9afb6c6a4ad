"""Fine-grained feature imitation: the mask and the loss against loop-form
NumPy references, the adapters, and the loss inside a Distiller."""
import os

import cv2
import numpy as np
import paddle
import pytest

from ppkd import config as cfgmod
from ppkd.builder import build_distiller
from ppkd.data.loader import build_reader, epoch_batches
from ppkd.errors import PPKDError
from ppkd.losses import FineGrainedImitation, fgfi_imitation_loss, imitation_mask
from ppkd.recorders import OutputRecorder

from conftest import CONFIGS, FRCNN_TINY, run_script, tiny_opts

pytestmark = pytest.mark.smoke


def _np_anchors(h, w, stride, shapes):
    """Row, column, anchor order; anchors centred on cells."""
    rows = []
    for i in range(h):
        for j in range(w):
            cx, cy = (j + 0.5) * stride, (i + 0.5) * stride
            for aw, ah in shapes:
                rows.append([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2])
    return np.array(rows, 'float32')


def _np_iou(a, b):
    iw = max(0., min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0., min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _np_mask(anchors, boxes, h, w, psi):
    k = len(anchors) // (h * w)
    mask = np.zeros((h, w), 'float32')
    for box in boxes:
        ious = [_np_iou(a, box) for a in anchors]
        best = max(ious)
        for idx, iou in enumerate(ious):
            if best > 0 and iou > psi * best:
                cell = idx // k
                mask[cell // w, cell % w] = 1.
    return mask


SHAPES = [(8, 8), (16, 10), (24, 24)]


@pytest.mark.parametrize('psi', [0.5, 0.8, 0.0])
def test_mask_matches_numpy(psi):
    anchors = _np_anchors(6, 5, 8, SHAPES)
    boxes = np.array([[3, 4, 20, 30], [25, 10, 39, 17], [0, 0, 40, 48]], 'float32')
    got = imitation_mask(anchors, boxes, 6, 5, psi).numpy()
    expected = _np_mask(anchors, boxes, 6, 5, psi)
    assert got.shape == (6, 5) and set(np.unique(got)) <= {0., 1.}
    np.testing.assert_array_equal(got, expected)
    assert 0 < expected.sum() < 30 or psi == 0.0


def test_mask_without_boxes_is_zero():
    anchors = _np_anchors(4, 4, 8, SHAPES)
    got = imitation_mask(anchors, np.zeros((0, 4), 'float32'), 4, 4)
    np.testing.assert_array_equal(got.numpy(), np.zeros((4, 4)))


def test_box_smaller_than_every_anchor_keeps_its_best_cell():
    anchors = _np_anchors(4, 4, 8, SHAPES)
    box = np.array([[17, 9, 19, 11]], 'float32')  # 2×2 pixels, inside cell (row 1, column 2)
    got = imitation_mask(anchors, box, 4, 4).numpy()
    np.testing.assert_array_equal(got, _np_mask(anchors, box, 4, 4, 0.5))
    assert got[1, 2] == 1.


def test_loss_matches_numpy_and_is_zero_on_an_empty_mask():
    rng = np.random.RandomState(0)
    s, t = rng.randn(2, 3, 4, 5).astype('float32'), rng.randn(2, 3, 4, 5).astype('float32')
    mask = (rng.rand(2, 4, 5) > 0.6).astype('float32')
    expected = sum(mask[n, i, j] * ((s[n, :, i, j] - t[n, :, i, j]) ** 2).sum()
                   for n in range(2) for i in range(4) for j in range(5)) / (2 * mask.sum())
    got = fgfi_imitation_loss(paddle.to_tensor(s), paddle.to_tensor(t), paddle.to_tensor(mask))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    empty = fgfi_imitation_loss(paddle.to_tensor(s), paddle.to_tensor(t), paddle.zeros([2, 4, 5]))
    assert float(empty) == 0.0


def test_gradient_reaches_student_not_teacher():
    paddle.seed(0)
    student, teacher = paddle.nn.Conv2D(3, 4, 1), paddle.nn.Conv2D(3, 4, 1)
    x = paddle.randn([2, 3, 4, 4])
    loss = fgfi_imitation_loss(student(x), teacher(x), paddle.ones([2, 4, 4]))
    loss.backward()
    assert float(student.weight.grad.abs().sum()) > 0
    assert teacher.weight.grad is None


class _FakeNeck(paddle.nn.Layer):
    def __init__(self, channels, strides):
        super().__init__()
        self.convs = paddle.nn.LayerList([paddle.nn.Conv2D(3, c, 3, stride=s, padding=1)
                                          for c, s in zip(channels, strides)])

    def forward(self, x):
        return [conv(x) for conv in self.convs]


def test_recorder_records_one_element_of_a_list_output():
    neck = _FakeNeck([4, 6], [2, 4])
    holder = paddle.nn.Layer()
    holder.neck = neck
    recorder = OutputRecorder(holder, ['neck[1]', 'neck[0]'])
    holder.neck(paddle.randn([1, 3, 8, 8]))
    assert recorder.outputs['neck[1]'][0].shape == [1, 6, 2, 2]
    assert recorder.outputs['neck[0]'][0].shape == [1, 4, 4, 4]


def test_refuses_bad_settings():
    with pytest.raises(PPKDError, match='mask must be one of'):
        FineGrainedImitation(mask='boxes')
    with pytest.raises(PPKDError, match='psi must be in'):
        FineGrainedImitation(psi=2)


# In a Distiller, on the tiny generated set.

def _yolo_distiller(tiny_voc, teacher_weights, *extra):
    student = cfgmod.load_config(os.path.join(CONFIGS, 'bccd', 'distill_fgfi_yolov3.yml'),
                                 tiny_opts(tiny_voc, 'num_classes=4', *extra))
    teacher = cfgmod.load_config(os.path.join(CONFIGS, 'demo', 'teacher_yolov3_r18.yml'), tiny_opts(tiny_voc))
    return build_distiller(student, teacher, teacher_weights), student


def _batch_boxes_in_pixels(batch, n):
    """The YOLOv3 reader's normalised (cx, cy, w, h) boxes of image n, back in pixels, in NumPy."""
    size = batch['image'].shape[2]
    boxes = batch['gt_bbox'][n].numpy() * size
    boxes = boxes[(boxes[:, 2] > 0) & (boxes[:, 3] > 0)]
    return np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], axis=1)


def _ssd_boxes_in_pixels(batch, n):
    """The SSD reader's normalised (x1, y1, x2, y2) boxes of image n, zero rows dropped, in pixels, in NumPy."""
    boxes = batch['gt_bbox'][n].numpy() * batch['image'].shape[2]
    return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def _random_weights(cfg, path):
    """A model of `cfg` with its initial weights, saved to `path` (a teacher for distiller tests)."""
    from ppkd.builder import build_model
    paddle.save(build_model(cfg).state_dict(), path)
    return path


def _training_step(student, teacher, teacher_weights):
    """The distiller, one training batch and the outputs of one step on it."""
    model = build_distiller(student, teacher, teacher_weights)
    model.train()
    batch = next(epoch_batches(build_reader(student, 'Train')))
    return model, batch, model(batch)


def test_yolov3_masks_follow_the_batch_boxes_and_the_students_anchors(tiny_voc, tiny_teacher):
    """Different backbones (ResNet-18 teacher, MobileNetV1 student): one
    adapter per neck level, each mask the NumPy mask of the batch's boxes
    on the student's anchors of that level."""
    model, cfg = _yolo_distiller(tiny_voc, tiny_teacher[1])
    loss = model.distill_losses[0]
    assert loss.student_layers == ['neck[0]', 'neck[1]', 'neck[2]']
    model.train()
    batch = next(epoch_batches(build_reader(cfg, 'Train')))
    out = model(batch)
    assert np.isfinite(float(out['distill_imitation'])) and float(out['distill_imitation']) > 0
    size = batch['image'].shape[2]
    anchors_cfg, masks_cfg = cfg['YOLOv3Head']['anchors'], cfg['YOLOv3Head']['anchor_masks']
    sizes = [(size // s, size // s) for s in (32, 16, 8)]
    masks = loss.level_masks(batch, sizes)
    for level, ((h, w), mask) in enumerate(zip(sizes, masks)):
        anchors = _np_anchors(h, w, size // h, [anchors_cfg[i] for i in masks_cfg[level]])
        for n in range(batch['image'].shape[0]):
            expected = _np_mask(anchors, _batch_boxes_in_pixels(batch, n), h, w, 0.5)
            np.testing.assert_array_equal(mask[n].numpy(), expected, err_msg=f'level {level}, image {n}')
    out['loss'].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(a.weight.grad is not None for a in loss.adapters)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert {id(p) for p in loss.adapters.parameters()} <= trainable


def test_full_mask_is_the_whole_map_hint(tiny_voc, tiny_teacher):
    model, cfg = _yolo_distiller(tiny_voc, tiny_teacher[1], 'FineGrainedImitation.mask=full')
    batch = next(epoch_batches(build_reader(cfg, 'Train')))
    masks = model.distill_losses[0].level_masks(batch, [(2, 2), (4, 4)])
    assert all(float(m.min()) == 1. for m in masks)


def test_faster_rcnn_masks_on_rpn_anchors_with_different_backbones(tiny_voc, frcnn_teacher):
    student = cfgmod.load_config(os.path.join(CONFIGS, 'bccd', 'distill_fgfi_faster_rcnn.yml'),
                                 tiny_opts(tiny_voc, *FRCNN_TINY))
    teacher = cfgmod.load_config(os.path.join(CONFIGS, 'bccd', 'teacher_faster_rcnn_r50_fpn.yml'),
                                 tiny_opts(tiny_voc, *FRCNN_TINY))
    model, batch, out = _training_step(student, teacher, frcnn_teacher)
    loss = model.distill_losses[0]
    assert loss.student_layers == [f'neck[{i}]' for i in range(5)]
    assert np.isfinite(float(out['distill_imitation']))
    # The stride-8 level's mask is the NumPy mask of ppdet's own RPN anchors there.
    size = batch['image'].shape[2]
    h = w = size // 8
    gen = model.student.rpn_head.anchor_generator
    ppdet_anchors = gen([paddle.zeros([1, 1, size // s, size // s]) for s in gen.strides])[1].numpy()
    mask = loss.level_masks(batch, [(size // 4, size // 4), (h, w)])[1]
    assert float(mask.sum()) > 0
    for n, boxes in enumerate(batch['gt_bbox']):
        np.testing.assert_array_equal(mask[n].numpy(), _np_mask(ppdet_anchors, boxes.numpy(), h, w, 0.5))
    out['loss'].backward()
    assert all(p.grad is None for p in model.teacher.parameters())


@pytest.mark.parametrize('flag', ['--eval', '--to_static'])
def test_distill_cli_with_imitation(tiny_voc, tiny_teacher, tmp_path, flag):
    code = run_script('slim/distillation/distill.py', [
        '-c', os.path.join(CONFIGS, 'bccd', 'distill_fgfi_yolov3.yml'), '-t', tiny_teacher[0],
        '--teacher_pretrained', tiny_teacher[1], flag, '--output_dir', str(tmp_path),
        '-o', *tiny_opts(tiny_voc, 'num_classes=4')])
    assert code == 0
    with open(tmp_path / 'metrics.jsonl') as f:
        text = f.read()
    assert '"distill_imitation"' in text and ('"mAP"' in text or flag != '--eval')


def test_show_imitation_mask_writes_a_png(tiny_voc, tmp_path, capsys):
    image = os.path.join(tiny_voc, 'JPEGImages', 'shapes_0000.jpg')
    out = tmp_path / 'mask.png'
    code = run_script('tools/show_imitation_mask.py', [
        '-c', os.path.join(CONFIGS, 'bccd', 'distill_fgfi_yolov3.yml'), '--image', image, '--psi', '0.3',
        '--output', str(out), '-o', 'input_size=64', 'num_classes=4'])
    assert code == 0
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[1] == 3 * picture.shape[0] - 3 * 22
    printed = capsys.readouterr().out
    assert 'neck[2] 8x8' in printed and '% of the map), psi 0.3' in printed
    assert run_script('tools/show_imitation_mask.py', ['-c', os.path.join(CONFIGS, 'bccd', 'distill_fgfi_yolov3.yml'),
                                                       '--image', str(tmp_path / 'none.jpg')]) == 2
    assert 'error: file not found' in capsys.readouterr().err


@pytest.mark.parametrize('family', ['faster_rcnn', 'ssd'])
def test_distill_cli_with_imitation_on_the_other_families(tiny_voc, frcnn_teacher, tmp_path, family):
    """End to end through distill.py: Faster R-CNN (MobileNetV1-FPN student, R50-FPN
    teacher) and SSD (MobileNetV1 student and teacher at 96 px)."""
    if family == 'faster_rcnn':
        student, teacher = (os.path.join(CONFIGS, 'bccd', name) for name in
                            ('distill_fgfi_faster_rcnn.yml', 'teacher_faster_rcnn_r50_fpn.yml'))
        extra, weights = FRCNN_TINY, frcnn_teacher
    else:
        student, teacher = (os.path.join(CONFIGS, 'bccd', 'ssd', name) for name in
                            ('distill_fgfi_ssd.yml', 'teacher_ssd_mobilenet_v1.yml'))
        extra = ['num_classes=4', 'input_size=96']
        weights = _random_weights(cfgmod.load_config(teacher, tiny_opts(tiny_voc, *extra)),
                                  str(tmp_path / 'ssd_teacher.pdparams'))
    out = tmp_path / 'run'
    assert run_script('slim/distillation/distill.py', [
        '-c', student, '-t', teacher, '--teacher_pretrained', weights, '--eval', '--output_dir', str(out),
        '--teacher_opt', *extra, f'dataset_dir={tiny_voc}', '-o', *tiny_opts(tiny_voc, *extra)]) == 0
    with open(out / 'metrics.jsonl') as f:
        text = f.read()
    assert '"distill_imitation"' in text and '"mAP"' in text


def test_ssd_masks_on_the_students_priors_with_a_teacher_of_other_priors(tiny_voc, tmp_path):
    """SSD-MobileNetV1 student, VGG16-SSD teacher (8732 priors, which
    SSDDistill refuses): the masks need the student's priors only; each
    level's mask is the NumPy mask of ppdet's own priors there."""
    ssd = os.path.join(CONFIGS, 'bccd', 'ssd')
    opts = tiny_opts(tiny_voc, 'num_classes=4', 'input_size=300', 'TrainReader.batch_size=2')
    student = cfgmod.load_config(os.path.join(ssd, 'distill_fgfi_ssd.yml'), opts)
    teacher = cfgmod.load_config(os.path.join(ssd, 'teacher_ssd_vgg16.yml'), opts)
    model, batch, out = _training_step(student, teacher, _random_weights(teacher, str(tmp_path / 'vgg.pdparams')))
    loss = model.distill_losses[0]
    assert loss.student_layers == [f'backbone[{i}]' for i in range(6)]
    assert np.isfinite(float(out['distill_imitation'])) and float(out['distill_imitation']) > 0
    sizes = [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    gen = model.student.ssd_head.anchor_generator
    priors = gen([paddle.zeros([1, 1, h, w]) for h, w in sizes], paddle.zeros([1, 3, 300, 300]))
    masks = loss.level_masks(batch, sizes)
    assert float(masks[1].sum()) > 0
    for level in (0, 1, 5):
        h, w = sizes[level]
        for n in range(2):
            np.testing.assert_array_equal(masks[level][n].numpy(), _np_mask(
                priors[level].numpy() * 300, _ssd_boxes_in_pixels(batch, n), h, w, 0.5))
    out['loss'].backward()
    assert all(p.grad is None for p in model.teacher.parameters())


def test_ssd_imitated_layers_are_named_head_inputs(tiny_voc, tmp_path):
    """One level picked by name gets that level's priors; a layer that is
    not a head input is refused with one line."""
    ssd = os.path.join(CONFIGS, 'bccd', 'ssd')
    opts = tiny_opts(tiny_voc, 'num_classes=4', 'input_size=96')
    teacher = cfgmod.load_config(os.path.join(ssd, 'teacher_ssd_mobilenet_v1.yml'), opts)
    path = _random_weights(teacher, str(tmp_path / 'teacher.pdparams'))
    student = cfgmod.load_config(os.path.join(ssd, 'distill_fgfi_ssd.yml'),
                                 [*opts, "FineGrainedImitation.student_layers=['backbone[1]']"])
    model = build_distiller(student, teacher, path)
    loss = model.distill_losses[0]
    batch = next(epoch_batches(build_reader(student, 'Train')))
    sizes = [(6, 6), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1)]  # SSD-MobileNetV1's levels at 96 px
    priors = model.student.ssd_head.anchor_generator([paddle.zeros([1, 1, h, w]) for h, w in sizes],
                                                     paddle.zeros([1, 3, 96, 96]))[1].numpy() * 96
    mask = loss.level_masks(batch, [sizes[1]])[0]
    for n in range(batch['image'].shape[0]):
        np.testing.assert_array_equal(mask[n].numpy(), _np_mask(priors, _ssd_boxes_in_pixels(batch, n), 3, 3, 0.5))
    loss.student_layers = ['backbone']
    with pytest.raises(PPKDError, match=r"head's inputs, backbone\[0\] … backbone\[5\].*got 'backbone'"):
        loss.level_masks(batch, [sizes[1]])
