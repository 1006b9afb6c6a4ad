"""The cheaper teacher: BatchNorm folded into convolutions, or the forward
compiled, gives the same distillation losses as the plain teacher; a fold
that would change the outputs is undone, a teacher that cannot be compiled
runs in dygraph with a warning."""
import logging
import os

import numpy as np
import paddle
import pytest

from ppkd import config as cfgmod
from ppkd.builder import build_distiller
from ppkd.data.loader import build_reader, epoch_batches
from ppkd.engine.trainer import seed_everything
from ppkd.folding import fold_batch_norms

from conftest import CONFIGS, FRCNN_TINY, tiny_opts

pytestmark = pytest.mark.smoke


def _losses(student_cfg, teacher_cfg, weights, batch, fold, compile=False):
    seed_everything(0)  # the same student weights
    model = build_distiller(student_cfg, teacher_cfg, weights)
    model._fold_pending, model._compile_pending = fold, compile
    model.train()
    model.prepare_teacher(batch)
    paddle.seed(1)
    out = model(batch)
    bn = sum(isinstance(layer, paddle.nn.BatchNorm2D) for layer in model.teacher.sublayers())
    if compile:
        assert model._compiled_teacher is not None
    return {k: float(v) for k, v in out.items() if k.startswith('distill')}, bn


def _check_same(student_cfg, teacher_cfg, weights, compile=False):
    batch = next(epoch_batches(build_reader(student_cfg, 'Train')))
    plain, bn_plain = _losses(student_cfg, teacher_cfg, weights, batch, fold=False)
    cheap, bn_cheap = _losses(student_cfg, teacher_cfg, weights, batch, fold=True, compile=compile)
    assert bn_plain > 0 and bn_cheap == 0
    assert plain.keys() == cheap.keys() and plain
    for k in plain:
        assert cheap[k] == pytest.approx(plain[k], rel=1e-3, abs=1e-5), k


@pytest.mark.parametrize('compile', [False, True], ids=['folded', 'folded+compiled'])
def test_cheap_yolov3_teacher_gives_the_same_losses(tiny_voc, tiny_teacher, compile):
    opts = tiny_opts(tiny_voc, 'use_fine_grained_loss=true')
    _check_same(cfgmod.load_config(os.path.join(CONFIGS, 'demo', 'distill_l2.yml'), opts),
                cfgmod.load_config(os.path.join(CONFIGS, 'demo', 'teacher_yolov3_r18.yml'), tiny_opts(tiny_voc)),
                tiny_teacher[1], compile)


def test_folded_faster_rcnn_teacher_gives_the_same_losses(tiny_voc, frcnn_teacher):
    opts = tiny_opts(tiny_voc, *FRCNN_TINY)
    bccd = os.path.join(CONFIGS, 'bccd')
    _check_same(cfgmod.load_config(os.path.join(bccd, 'distill_faster_rcnn.yml'), opts),
                cfgmod.load_config(os.path.join(bccd, 'teacher_faster_rcnn_r50_fpn.yml'), opts), frcnn_teacher)


class _ConvBNWithSideOutput(paddle.nn.Layer):
    """conv → bn, but the raw conv output is also used: folding would change it."""

    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3, padding=1)
        self.bn = paddle.nn.BatchNorm2D(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_fold_that_changes_outputs_is_undone(caplog):
    paddle.seed(0)
    model = _ConvBNWithSideOutput()
    model.bn._mean.set_value(paddle.full([4], 0.5))
    model.bn._variance.set_value(paddle.full([4], 4.0))
    model.eval()
    x = paddle.randn([1, 3, 8, 8])
    before = model(x).numpy()
    with caplog.at_level(logging.WARNING, logger='ppkd'):
        assert fold_batch_norms(model, lambda: model(x)) == 0
    assert 'running it unfolded' in caplog.text
    assert isinstance(model.bn, paddle.nn.BatchNorm2D)
    np.testing.assert_allclose(model(x).numpy(), before, rtol=1e-6)


def test_fold_matches_conv_bn():
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3, bias_attr=False), paddle.nn.BatchNorm2D(4), paddle.nn.ReLU())
    model[1]._mean.set_value(paddle.to_tensor([0.1, -0.2, 0.3, 0.0]))
    model[1]._variance.set_value(paddle.to_tensor([0.5, 2.0, 1.5, 1.0]))
    model[1].weight.set_value(paddle.to_tensor([1.0, 2.0, -1.0, 0.5]))
    model.eval()
    x = paddle.randn([2, 3, 6, 6])
    before = model(x).numpy()
    assert fold_batch_norms(model, lambda: model(x)) == 1
    assert isinstance(model[1], paddle.nn.Identity)
    np.testing.assert_allclose(model(x).numpy(), before, rtol=1e-5, atol=1e-6)


def test_faster_rcnn_teacher_is_not_compiled_and_says_so(tiny_voc, frcnn_teacher, caplog):
    opts = tiny_opts(tiny_voc, *FRCNN_TINY)
    bccd = os.path.join(CONFIGS, 'bccd')
    student_cfg = cfgmod.load_config(os.path.join(bccd, 'distill_faster_rcnn.yml'), opts)
    model = build_distiller(student_cfg, cfgmod.load_config(os.path.join(bccd, 'teacher_faster_rcnn_r50_fpn.yml'), opts),
                            frcnn_teacher)
    model._fold_pending, model._compile_pending = False, True
    batch = next(epoch_batches(build_reader(student_cfg, 'Train')))
    model.train()
    with caplog.at_level(logging.WARNING, logger='ppkd'):
        model.prepare_teacher(batch)
    assert model._compiled_teacher is None and 'is not compiled; running it in dygraph' in caplog.text
    assert np.isfinite(float(model(batch)['loss']))
