"""The cheaper teacher: BatchNorm folded into convolutions, or the forward
compiled (to_static, or exported to Paddle Inference), gives the same
distillation losses as the plain teacher; a fold that would change the
outputs is undone; a teacher that cannot be compiled runs in dygraph with a
warning."""
import ctypes
import logging
import os
import random

import numpy as np
import paddle
import pytest

from ppkd import compat
from ppkd import compiled_teacher as compiling
from ppkd import config as cfgmod
from ppkd import threads as cpu_threads
from ppkd.builder import build_distiller
from ppkd.data.loader import build_reader, epoch_batches
from ppkd.engine.trainer import seed_everything
from ppkd.errors import PPKDError
from ppkd.folding import fold_batch_norms
from ppkd import teacher as teachermod
from ppkd.teacher import TEACHER_FORWARDS

from conftest import CONFIGS, FRCNN_TINY, tiny_opts

pytestmark = pytest.mark.smoke


def _yolov3_cfgs(root, *extra):
    opts = tiny_opts(root, 'use_fine_grained_loss=true', *extra)
    return (cfgmod.load_config(os.path.join(CONFIGS, 'demo', 'distill_l2.yml'), opts),
            cfgmod.load_config(os.path.join(CONFIGS, 'demo', 'teacher_yolov3_r18.yml'), tiny_opts(root)))


def _frcnn_cfgs(root, *extra):
    opts = tiny_opts(root, *FRCNN_TINY)
    bccd = os.path.join(CONFIGS, 'bccd')
    return (cfgmod.load_config(os.path.join(bccd, 'distill_faster_rcnn.yml'), opts + list(extra)),
            cfgmod.load_config(os.path.join(bccd, 'teacher_faster_rcnn_r50_fpn.yml'), opts))


def _prepared(student_cfg, teacher_cfg, weights, batch):
    seed_everything(0)  # the same student weights
    model = build_distiller(student_cfg, teacher_cfg, weights)
    model.train()
    model.prepare_teacher(batch)
    return model


def _losses(model, batch):
    paddle.seed(1)
    return {k: float(v) for k, v in model(batch).items() if k.startswith('distill')}


def _batch_norms(model):
    return sum(isinstance(layer, paddle.nn.BatchNorm2D) for layer in model.teacher.sublayers())


@pytest.mark.parametrize('fold,engine', [(True, 'dygraph'), (False, 'to_static'), (False, 'inference'),
                                         (True, 'inference')],
                         ids=['folded', 'to_static', 'inference', 'folded+inference'])
def test_cheap_yolov3_teacher_gives_the_same_losses(tiny_voc, tiny_teacher, fold, engine):
    plain_cfgs = _yolov3_cfgs(tiny_voc, 'distill.compile_teacher=dygraph')
    batch = next(epoch_batches(build_reader(plain_cfgs[0], 'Train')))
    plain = _prepared(*plain_cfgs, tiny_teacher[1], batch)
    assert plain.compiled_teacher is None and _batch_norms(plain) > 0
    cheap = _prepared(*_yolov3_cfgs(tiny_voc, f'distill.compile_teacher={engine}', f'distill.fold_teacher_bn={fold}'),
                      tiny_teacher[1], batch)
    assert (_batch_norms(cheap) == 0) == fold
    if engine != 'dygraph':
        assert cheap.compiled_teacher is not None and cheap.compiled_teacher.engine == engine
    expected, got = _losses(plain, batch), _losses(cheap, batch)
    assert expected.keys() == got.keys() and expected
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-3, abs=1e-5), k


# precision → (the most its losses may differ from float32's, relative; the CPU instructions it needs)
LOW_PRECISIONS = {'bfloat16': (0.05, 'AVX-512 bf16'), 'int8': (0.15, 'AVX2')}


@pytest.mark.parametrize('precision', list(LOW_PRECISIONS))
def test_low_precision_teacher_gives_close_losses(tiny_voc, tiny_teacher, caplog, precision):
    if not compiling.CPU_SUPPORT[precision][0]():
        pytest.skip(f'this CPU has no {LOW_PRECISIONS[precision][1]}')
    plain_cfgs = _yolov3_cfgs(tiny_voc, 'distill.compile_teacher=dygraph')
    batch = next(epoch_batches(build_reader(plain_cfgs[0], 'Train')))
    plain = _prepared(*plain_cfgs, tiny_teacher[1], batch)
    with caplog.at_level(logging.INFO, logger='ppkd'):
        cheap = _prepared(*_yolov3_cfgs(tiny_voc, f'distill.teacher_precision={precision}'), tiny_teacher[1], batch)
    assert cheap.compiled_teacher.engine == 'inference' and cheap.compiled_teacher.precision == precision
    assert f'convolutions in {precision}' in caplog.text
    expected, got = _losses(plain, batch), _losses(cheap, batch)
    assert expected.keys() == got.keys() and expected
    differences = [abs(got[k] - expected[k]) / abs(expected[k]) for k in expected]
    # The precision's rounding, not float32's agreement: close, but not equal.
    assert max(differences) < LOW_PRECISIONS[precision][0] and max(differences) > 1e-6, differences


@pytest.mark.parametrize('precision', list(LOW_PRECISIONS))
def test_low_precision_teacher_without_the_cpu_support_runs_in_float32(tiny_voc, tiny_teacher, monkeypatch, caplog,
                                                                        precision):
    instructions = LOW_PRECISIONS[precision][1]
    monkeypatch.setitem(compiling.CPU_SUPPORT, precision, (lambda: False, instructions))
    cfgs = _yolov3_cfgs(tiny_voc, f'distill.teacher_precision={precision}')
    with caplog.at_level(logging.WARNING, logger='ppkd'):
        model = _prepared(*cfgs, tiny_teacher[1], next(epoch_batches(build_reader(cfgs[0], 'Train'))))
    assert f'{precision} not used (this CPU has no {instructions}); float32 instead' in caplog.text
    assert model.compiled_teacher.engine == 'inference' and model.compiled_teacher.precision == 'float32'


@pytest.mark.parametrize('opts,message', [
    (['distill.teacher_precision=int4'], "teacher_precision must be one of float32, bfloat16, int8; got 'int4'"),
    (['distill.teacher_precision=bfloat16', 'distill.compile_teacher=dygraph'],
     'teacher_precision bfloat16 needs the teacher on Paddle Inference')])
def test_teacher_precision_is_checked(tiny_voc, tiny_teacher, opts, message):
    with pytest.raises(PPKDError, match=message):
        build_distiller(*_yolov3_cfgs(tiny_voc, *opts), tiny_teacher[1])


def _initialized(teacher):
    return [t._is_initialized() for t in teacher.state_dict().values()]


def test_inference_teacher_releases_the_dygraph_weights_and_reads_them_back_on_failure(tiny_voc, tiny_teacher,
                                                                                      monkeypatch, caplog):
    plain_cfgs = _yolov3_cfgs(tiny_voc, 'distill.compile_teacher=dygraph')
    batch = next(epoch_batches(build_reader(plain_cfgs[0], 'Train')))
    expected = _losses(_prepared(*plain_cfgs, tiny_teacher[1], batch), batch)
    with caplog.at_level(logging.INFO, logger='ppkd'):
        model = _prepared(*_yolov3_cfgs(tiny_voc, 'distill.compile_teacher=inference'), tiny_teacher[1], batch)
    assert 'its dygraph copy of the weights released' in caplog.text
    assert not any(_initialized(model.teacher))
    assert _losses(model, batch) == pytest.approx(expected, rel=1e-3, abs=1e-5)

    def lost(image):
        raise RuntimeError('predictor lost')
    monkeypatch.setattr(model.compiled_teacher, 'record', lost)
    got = _losses(model, batch)  # the dygraph teacher takes over, its weights read back
    assert model.compiled_teacher is None and all(_initialized(model.teacher))
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-5)


def test_inference_is_the_default_for_yolov3(tiny_voc, tiny_teacher):
    cfgs = _yolov3_cfgs(tiny_voc)
    model = _prepared(*cfgs, tiny_teacher[1], next(epoch_batches(build_reader(cfgs[0], 'Train'))))
    assert model.compiled_teacher.engine == 'inference'


@pytest.mark.parametrize('fold,engine', [(True, 'dygraph'), (False, 'inference'), (False, 'to_static')])
def test_cheap_faster_rcnn_teacher_gives_the_same_losses(tiny_voc, frcnn_teacher, fold, engine, monkeypatch, caplog):
    """The image part (backbone, FPN, RPN convolutions) compiled, and the
    RoI head's layers after RoIAlign compiled apart (they read the
    student's RoIs); on Paddle Inference both, so the dygraph teacher's
    weights are released, and read back when the RoI head fails later."""
    plain_cfgs = _frcnn_cfgs(tiny_voc, 'distill.compile_teacher=dygraph')
    batch = next(epoch_batches(build_reader(plain_cfgs[0], 'Train')))
    plain = _prepared(*plain_cfgs, frcnn_teacher, batch)
    with caplog.at_level(logging.INFO, logger='ppkd'):
        cheap = _prepared(*_frcnn_cfgs(tiny_voc, f'distill.compile_teacher={engine}',
                                       f'distill.fold_teacher_bn={fold}'), frcnn_teacher, batch)
    assert _batch_norms(plain) > 0 and (_batch_norms(cheap) == 0) == fold
    if engine != 'dygraph':
        assert cheap.compiled_teacher.engine == engine and cheap.compiled_roi_layers.engine == engine
        assert "teacher's RoI head: compiled by " + engine in caplog.text
    assert all(_initialized(cheap.teacher)) == (engine != 'inference')
    expected, got = _losses(plain, batch), _losses(cheap, batch)
    assert expected.keys() == got.keys() and {'distill_rcnn_soft', 'distill_rpn_soft'} <= set(expected)
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-5)
    if engine == 'inference':
        def lost(roi_feats):
            raise RuntimeError('predictor lost')
        monkeypatch.setattr(cheap.compiled_roi_layers, 'record', lost)
        got = _losses(cheap, batch)  # the RoI head runs in dygraph, on the teacher's weights read back
        assert cheap.compiled_roi_layers is None and cheap.compiled_teacher is not None
        assert all(_initialized(cheap.teacher))
        assert got == pytest.approx(expected, rel=1e-3, abs=1e-5)


def _omp_max_threads():
    return ctypes.CDLL(os.path.join(os.path.dirname(paddle.__file__), 'libs', 'libiomp5.so')).omp_get_max_threads()


def _inference_teacher(tiny_voc, tiny_teacher, **kwargs):
    student_cfg, teacher_cfg = _yolov3_cfgs(tiny_voc, 'distill.compile_teacher=dygraph')
    model = _prepared(student_cfg, teacher_cfg, tiny_teacher[1], None)
    image = next(epoch_batches(build_reader(student_cfg, 'Train')))['image']
    program = compiling._FeatureProgram(model.teacher, model.teacher_recorder, TEACHER_FORWARDS['YOLOv3'][0])
    program.eval()
    with paddle.no_grad():
        return compiling.InferenceTeacher(program, image, **kwargs), image


def test_inference_teacher_takes_other_batch_and_input_sizes(tiny_voc, tiny_teacher):
    """Multi-scale training changes the input size from batch to batch."""
    student_cfg, teacher_cfg = _yolov3_cfgs(tiny_voc)
    model = _prepared(student_cfg, teacher_cfg, tiny_teacher[1], next(epoch_batches(build_reader(student_cfg, 'Train'))))
    assert model.compiled_teacher.engine == 'inference'
    image = paddle.rand([3, 3, 96, 96])
    recorded, _ = model.compiled_teacher.record(image)
    plain = _prepared(*_yolov3_cfgs(tiny_voc, 'distill.compile_teacher=dygraph'), tiny_teacher[1], None)
    with paddle.no_grad():
        TEACHER_FORWARDS['YOLOv3'][0](plain.teacher, {'image': image}, set(plain.teacher_recorder.names))
    for name in model.teacher_recorder.names:
        for got, expected in zip(recorded[name], plain.teacher_recorder.outputs[name], strict=True):
            assert got.shape == expected.shape and got.shape[0] == 3
            np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-3,
                                       atol=1e-4 * float(np.abs(expected.numpy()).max()))


@pytest.mark.skipif(not os.path.isfile(os.path.join(os.path.dirname(paddle.__file__), 'libs', 'libiomp5.so')),
                    reason='Paddle built without Intel OpenMP')
def test_inference_teacher_gives_the_student_its_threads_back(tiny_voc, tiny_teacher, restored_cpu_settings):
    threads = int(os.environ['OMP_NUM_THREADS'])
    assert threads > 1, 'the test needs OMP_NUM_THREADS > 1'
    teacher, image = _inference_teacher(tiny_voc, tiny_teacher)
    compiling._run_predictor(teacher._predictor, image)
    assert _omp_max_threads() == 1  # what a bare predictor run leaves behind
    teacher(image)
    assert _omp_max_threads() == threads
    if cpu_threads._mkl() is not None:  # and the BLAS threads the tuner chose
        cpu_threads.set_blas_threads(1)
        teacher(image)
        assert _omp_max_threads() == threads and cpu_threads.get_blas_threads() == 1


@pytest.mark.skipif(not compat.inference_needs_legacy_ir(), reason='the legacy IR is only needed on Paddle 3')
def test_inference_teacher_needs_the_legacy_ir(tiny_voc, tiny_teacher):
    with pytest.raises(compiling.CompileError, match='killed by signal'):
        _inference_teacher(tiny_voc, tiny_teacher, legacy_ir=False)


def test_teacher_that_fails_to_compile_runs_in_dygraph(tiny_voc, tiny_teacher, monkeypatch, caplog):
    """A predictor that crashes (here: PIR passes on Paddle 3) or outputs
    that differ leave the dygraph teacher in place, with a warning."""
    cfgs = _yolov3_cfgs(tiny_voc, 'distill.compile_teacher=inference')
    batch = next(epoch_batches(build_reader(cfgs[0], 'Train')))
    if compat.inference_needs_legacy_ir():
        monkeypatch.setattr(compat, 'inference_needs_legacy_ir', lambda: False)
        why = 'the predictor failed in a probe process'
    else:
        monkeypatch.setitem(compiling.TOLERANCES, 'float32', -1.0)
        why = 'differ from dygraph'
    with caplog.at_level(logging.WARNING, logger='ppkd'):
        model = _prepared(*cfgs, tiny_teacher[1], batch)
    assert model.compiled_teacher is None
    assert 'teacher: inference' in caplog.text and why in caplog.text and 'running it in dygraph' in caplog.text
    assert np.isfinite(float(model(batch)['loss']))


@pytest.mark.parametrize('precision', list(LOW_PRECISIONS))
def test_low_precision_teacher_that_fails_its_check_runs_in_float32(tiny_voc, tiny_teacher, monkeypatch, caplog,
                                                                    precision):
    """Outputs too far from dygraph in the lower precision (measured: the
    BCCD ResNet-34 teacher in int8 with scales from augmented batches, 0.5)
    leave the float32 predictor, not the dygraph teacher."""
    if not compiling.CPU_SUPPORT[precision][0]():
        pytest.skip(f'this CPU has no {LOW_PRECISIONS[precision][1]}')
    monkeypatch.setitem(compiling.TOLERANCES, precision, -1.0)
    cfgs = _yolov3_cfgs(tiny_voc, f'distill.teacher_precision={precision}')
    with caplog.at_level(logging.WARNING, logger='ppkd'):
        model = _prepared(*cfgs, tiny_teacher[1], next(epoch_batches(build_reader(cfgs[0], 'Train'))))
    assert f'teacher: inference ({precision}) outputs differ from dygraph by' in caplog.text
    assert 'float32 instead' in caplog.text and 'running it in dygraph' not in caplog.text
    assert model.compiled_teacher.engine == 'inference' and model.compiled_teacher.precision == 'float32'


def test_int8_scales_come_from_test_transformed_training_images(tiny_voc, tiny_teacher, monkeypatch):
    """int8's scales are measured on the training images through the test
    transform (the same every time: no augmentation), all but their last
    batch, and the check runs on that last one and on the training batch."""
    if not compiling.CPU_SUPPORT['int8'][0]():
        pytest.skip('this CPU has no AVX2')
    scaled, checked = [], []
    quantize, reference = compiling.quantize_int8, compiling._reference
    monkeypatch.setattr(compiling, 'quantize_int8', lambda prefix, images: scaled.append(images) or
                        quantize(prefix, images))
    monkeypatch.setattr(compiling, '_reference', lambda model, recorder, part, image, name: checked.append(
        image.numpy()) or reference(model, recorder, part, image, name))
    # Which batches are scaled on and checked, not whether the tiny teacher passes on its augmented ones.
    monkeypatch.setitem(compiling.TOLERANCES, 'int8', float('inf'))
    cfgs = _yolov3_cfgs(tiny_voc, 'distill.teacher_precision=int8', 'EvalReader.batch_size=2')
    batch = next(epoch_batches(build_reader(cfgs[0], 'Train')))
    model = _prepared(*cfgs, tiny_teacher[1], batch)
    assert model.compiled_teacher.precision == 'int8'
    calibration = [x.numpy() for x in model.task.calibration_images(compiling.CALIBRATION_IMAGES)]
    again = [x.numpy() for x in model.task.calibration_images(compiling.CALIBRATION_IMAGES)]
    training_images = len(cfgs[0]['TrainDataset'].roidbs)
    assert sum(len(x) for x in calibration) == min(training_images, compiling.CALIBRATION_IMAGES) > 2
    assert all(np.array_equal(a, b) for a, b in zip(calibration, again))
    assert len(scaled) == 1 and len(scaled[0]) == len(calibration) - 1
    assert all(np.array_equal(a, b) for a, b in zip(scaled[0], calibration))
    # dygraph's reference: first on the training batch, then on the held-out calibration batch, then on
    # the augmented training batches
    assert np.array_equal(checked[0], batch['image'].numpy()) and np.array_equal(checked[1], calibration[-1])
    assert len(checked) == 2 + compiling.INT8_CHECK_BATCHES


def test_int8_without_calibration_images_runs_in_float32(tiny_voc, tiny_teacher, monkeypatch, caplog):
    if not compiling.CPU_SUPPORT['int8'][0]():
        pytest.skip('this CPU has no AVX2')
    from ppkd.tasks.detection import DetectionTask
    monkeypatch.setattr(DetectionTask, 'calibration_images', lambda self, limit: [])
    cfgs = _yolov3_cfgs(tiny_voc, 'distill.teacher_precision=int8')
    with caplog.at_level(logging.WARNING, logger='ppkd'):
        model = _prepared(*cfgs, tiny_teacher[1], next(epoch_batches(build_reader(cfgs[0], 'Train'))))
    assert 'int8 needs two batches of calibration images' in caplog.text and 'float32 instead' in caplog.text
    assert model.compiled_teacher.engine == 'inference' and model.compiled_teacher.precision == 'float32'


def test_int8_off_on_a_training_batch_runs_in_float32(tiny_voc, tiny_teacher, monkeypatch, caplog):
    """Scales from test-transformed images clip training images far outside
    their ranges (measured: the BCCD teacher 0.94-0.99 off on half its
    augmented batches, its student 8.7 mAP points below float32's): int8
    is checked on training batches too, here one of images 50x brighter
    than any calibration image."""
    if not compiling.CPU_SUPPORT['int8'][0]():
        pytest.skip('this CPU has no AVX2')
    from ppkd.tasks.detection import DetectionTask
    training_images = DetectionTask.training_images
    monkeypatch.setattr(DetectionTask, 'training_images', lambda self, n: [
        x * 50 if i == n - 1 else x for i, x in enumerate(training_images(self, n))])
    cfgs = _yolov3_cfgs(tiny_voc, 'distill.teacher_precision=int8')
    with caplog.at_level(logging.WARNING, logger='ppkd'):
        model = _prepared(*cfgs, tiny_teacher[1], next(epoch_batches(build_reader(cfgs[0], 'Train'))))
    assert 'teacher: inference (int8) outputs differ from dygraph by' in caplog.text
    assert 'on a training batch' in caplog.text and 'float32 instead' in caplog.text
    assert model.compiled_teacher.engine == 'inference' and model.compiled_teacher.precision == 'float32'


def test_int8_calibration_and_check_leave_the_random_streams_as_they_were(tiny_voc):
    """The side readers int8 draws from (a multiprocess loader takes its
    workers' seed from numpy's stream) must not change the student's
    augmentations from the next epoch on."""
    from ppkd.tasks import task_of
    task = task_of(_yolov3_cfgs(tiny_voc, 'worker_num=2')[0])
    np.random.seed(3)
    random.seed(3)
    assert task.calibration_images(4) and len(task.training_images(2)) == 2
    assert np.random.randint(1 << 30) == np.random.RandomState(3).randint(1 << 30)
    assert random.random() == random.Random(3).random()


def test_unknown_compile_engine_is_refused(tiny_voc, tiny_teacher):
    with pytest.raises(PPKDError, match="distill.compile_teacher must be one of .*got 'fast'"):
        build_distiller(*_yolov3_cfgs(tiny_voc, 'distill.compile_teacher=fast'), tiny_teacher[1])


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


@pytest.mark.parametrize('engine,level', [('inference', logging.WARNING), ('auto', logging.INFO)])
def test_teacher_without_a_feature_forward_is_not_compiled_and_says_so(tiny_voc, tiny_teacher, monkeypatch, caplog,
                                                                       engine, level):
    monkeypatch.delitem(teachermod.TEACHER_FORWARDS, 'YOLOv3')
    cfgs = _yolov3_cfgs(tiny_voc, f'distill.compile_teacher={engine}')
    batch = next(epoch_batches(build_reader(cfgs[0], 'Train')))
    with caplog.at_level(logging.INFO, logger='ppkd'):
        model = _prepared(*cfgs, tiny_teacher[1], batch)
    assert model.compiled_teacher is None
    said = [r for r in caplog.records if 'no feature forward known for YOLOv3' in r.message]
    assert [r.levelno for r in said] == [level]
    assert np.isfinite(float(model(batch)['loss']))
