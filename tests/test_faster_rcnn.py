"""Faster R-CNN on the pinned stack (the 0-D compatibility fixes) and its
distillation: same RoIs for teacher and student, frozen teacher, μ, the RPN
switch, the hint adapter, and an end-to-end distill.py run."""
import logging
import os

import numpy as np
import paddle
import pytest

from ppkd import compat
from ppkd import config as cfgmod
from ppkd.builder import build_distiller, build_model
from ppkd.data.loader import build_reader, epoch_batches
from ppkd.teacher import STUDENT_ROIS

from conftest import CONFIGS, FRCNN_TINY, run_script, tiny_opts

pytestmark = pytest.mark.smoke

BCCD_CFG = os.path.join(CONFIGS, 'bccd')


def _cfg(name, root, *extra):
    return cfgmod.load_config(os.path.join(BCCD_CFG, name), tiny_opts(root, *FRCNN_TINY, *extra))


def _batch(cfg, mode='Train'):
    return next(epoch_batches(build_reader(cfg, mode)))


def _distiller(tiny_voc, frcnn_teacher, *extra, teacher_extra=()):
    student_cfg = _cfg('distill_faster_rcnn.yml', tiny_voc, *extra)
    teacher_cfg = _cfg('teacher_faster_rcnn_r50_fpn.yml', tiny_voc, *teacher_extra)
    return build_distiller(student_cfg, teacher_cfg, frcnn_teacher), student_cfg


def _fails_in(excinfo, function):
    return any(entry.name == function for entry in excinfo.traceback)


@pytest.mark.parametrize('fix,function', [('rpn_proposals_0d', '_gen_proposal'),
                                          ('proposal_targets_0d', 'generate_proposal_target')])
def test_training_needs_the_fix(tiny_voc, fix, function):
    cfg = _cfg('student_faster_rcnn_r18_fpn.yml', tiny_voc)
    model, batch = build_model(cfg), _batch(cfg)
    model.train()
    with compat.disabled(fix), pytest.raises(Exception) as excinfo:
        model(batch)
    assert _fails_in(excinfo, function)
    assert np.isfinite(float(model(batch)['loss']))


def test_mobilenet_fpn_backbone_reports_its_strides(tiny_voc):
    """MobileNetForFPN: the strides its out_shape gives FPN are the image's
    size over each output's, and the student trains."""
    cfg = _cfg('student_faster_rcnn_mobilenet_v1_fpn.yml', tiny_voc)
    model, batch = build_model(cfg), _batch(cfg)
    feats = model.backbone(batch)
    size = batch['image'].shape[2]
    assert [s.stride for s in model.backbone.out_shape] == [size // f.shape[2] for f in feats] == [4, 8, 16, 32]
    assert [s.channels for s in model.backbone.out_shape] == [f.shape[1] for f in feats]
    model.train()
    assert np.isfinite(float(model(batch)['loss']))


def test_prediction_needs_the_get_pred_fix(tiny_voc):
    cfg = _cfg('student_faster_rcnn_r18_fpn.yml', tiny_voc)
    model, batch = build_model(cfg), _batch(cfg, 'Eval')
    model.eval()
    with compat.disabled('bbox_get_pred_0d'), pytest.raises(Exception) as excinfo:
        model(batch)
    assert _fails_in(excinfo, 'get_pred')
    out = model(batch)
    assert out['bbox'].shape[1] == 6 and int(out['bbox_num'].sum()) == out['bbox'].shape[0]


def test_teacher_rcnn_head_runs_on_the_students_rois(tiny_voc, frcnn_teacher):
    model, cfg = _distiller(tiny_voc, frcnn_teacher)
    seen = []
    model.teacher.bbox_head.roi_extractor.register_forward_pre_hook(lambda layer, inputs: seen.append(inputs))
    model.train()
    out = model(_batch(cfg))
    student_rois, student_num, _ = model.student_recorder.outputs[STUDENT_ROIS][-1]
    (_, teacher_rois, teacher_num), = seen
    assert len(teacher_rois) == len(student_rois) == 2
    for t, s in zip(teacher_rois, student_rois):
        np.testing.assert_array_equal(t.numpy(), s.numpy())
    np.testing.assert_array_equal(teacher_num.numpy(), student_num.numpy())
    t_scores = model.teacher_recorder.outputs['bbox_head.bbox_score'][-1]
    s_scores = model.student_recorder.outputs['bbox_head.bbox_score'][-1]
    assert t_scores.shape == s_scores.shape == [int(student_num.sum()), 5]
    assert {'distill_rcnn_soft', 'distill_rpn_soft', 'distill_rcnn_bounded', 'distill_rpn_bounded',
            'distill_hint'} <= set(out)


def test_teacher_frozen_and_mu_scales_the_hard_losses(tiny_voc, frcnn_teacher):
    model, cfg = _distiller(tiny_voc, frcnn_teacher, 'FasterRCNNSoftLabel.mu=0.7')
    before = {k: v.numpy().copy() for k, v in model.teacher.state_dict().items()}
    model.train()
    out = model(_batch(cfg))
    expected = (0.7 * (float(out['loss_bbox_cls']) + float(out['loss_rpn_cls']))
                + float(out['loss_bbox_reg']) + float(out['loss_rpn_reg']))
    assert float(out['det_loss']) == pytest.approx(expected, rel=1e-5)
    distill = sum(float(out[k]) for k in ('distill_rcnn_soft', 'distill_rpn_soft', 'distill_rcnn_bounded',
                                          'distill_rpn_bounded')) + 0.000001 * float(out['distill_hint'])
    assert float(out['loss']) == pytest.approx(float(out['det_loss']) + distill, rel=1e-4)
    out['loss'].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.distill_losses[2].adapter.weight.grad is not None
    assert not model.teacher.training
    for k, v in model.teacher.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)


def test_rpn_terms_off_when_anchors_differ(tiny_voc, frcnn_teacher, caplog):
    other = 'RPNHead.anchor_generator.anchor_sizes=[[32], [64], [128], [256], [512]]'
    with caplog.at_level(logging.WARNING, logger='ppkd'):
        model, cfg = _distiller(tiny_voc, frcnn_teacher, teacher_extra=[other])
    assert 'RPN distillation terms disabled: anchor settings differ: anchor_sizes' in caplog.text
    model.train()
    out = model(_batch(cfg))
    assert 'distill_rcnn_soft' in out and 'distill_rcnn_bounded' in out
    assert 'distill_rpn_soft' not in out and 'distill_rpn_bounded' not in out
    # With no soft RPN term, the RPN's hard loss keeps its full weight.
    assert model.distill_losses[0].det_loss_scale == {'loss_bbox_cls': 0.8}


def test_hint_adapts_channels_and_size(tiny_voc, frcnn_teacher):
    model, cfg = _distiller(tiny_voc, frcnn_teacher, 'FasterRCNNHint.student_layer=neck.fpn_res4_sum',
                            'FasterRCNNHint.norm=l1')
    hint = model.distill_losses[2]
    assert hint.adapter.weight.shape == [256, 128, 1, 1]
    assert {id(p) for p in hint.parameters()} <= {id(p) for p in model.trainable_parameters()}
    model.train()
    out = model(_batch(cfg))
    assert np.isfinite(float(out['distill_hint']))


def _distill_cli(tiny_voc, frcnn_teacher, out, flag):
    return run_script('slim/distillation/distill.py', [
        '-c', os.path.join(BCCD_CFG, 'distill_faster_rcnn.yml'),
        '-t', os.path.join(BCCD_CFG, 'teacher_faster_rcnn_r50_fpn.yml'), '--teacher_pretrained', frcnn_teacher,
        flag, '--output_dir', str(out), '--teacher_opt', 'num_classes=4', f'dataset_dir={tiny_voc}',
        '-o', *tiny_opts(tiny_voc, *FRCNN_TINY)])


def test_distill_cli_end_to_end(tiny_voc, frcnn_teacher, tmp_path):
    assert _distill_cli(tiny_voc, frcnn_teacher, tmp_path, '--eval') == 0
    state = paddle.load(str(tmp_path / 'model_final.pdparams'))
    assert state and all(not k.startswith(('teacher', 'distill_losses')) for k in state)
    with open(tmp_path / 'metrics.jsonl') as f:
        text = f.read()
    assert '"distill_rcnn_soft"' in text and '"mAP"' in text


def test_distill_cli_to_static(tiny_voc, frcnn_teacher, tmp_path):
    assert _distill_cli(tiny_voc, frcnn_teacher, tmp_path, '--to_static') == 0
    assert os.path.isfile(tmp_path / 'model_final.pdparams')


def test_c4_student_trains_evaluates_and_distills_without_rpn_terms(tiny_voc, frcnn_teacher, tmp_path, caplog):
    """Faster R-CNN without FPN: trains and evaluates; distilled from the
    FPN teacher, its different anchors switch the RPN terms off."""
    cfg = os.path.join(BCCD_CFG, 'student_faster_rcnn_r50_c4.yml')
    # Its RoI head is a ResNet stage: few RoIs keep the test quick.
    opts = tiny_opts(tiny_voc, *FRCNN_TINY, 'BBoxAssigner.batch_size_per_im=16',
                     'RPNHead.test_proposal.post_nms_top_n=16')
    assert run_script('tools/train.py', ['-c', cfg, '--eval', '--output_dir', str(tmp_path), '-o', *opts]) == 0
    student_cfg = cfgmod.load_config(cfg, opts + ['distill.losses=[FasterRCNNSoftLabel, FasterRCNNBoundedRegression]'])
    teacher_cfg = _cfg('teacher_faster_rcnn_r50_fpn.yml', tiny_voc)
    with caplog.at_level(logging.WARNING, logger='ppkd'):
        model = build_distiller(student_cfg, teacher_cfg, frcnn_teacher)
    assert 'strides [4, 8, 16, 32, 64] (teacher) vs [16] (student)' in caplog.text
    model.train()
    out = model(_batch(student_cfg))
    assert {'distill_rcnn_soft', 'distill_rcnn_bounded'} <= set(out) and 'distill_rpn_soft' not in out
