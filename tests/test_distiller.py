import gc
import logging
import os
import shutil

import numpy as np
import paddle
import pytest

from ppkd import config as cfgmod
from ppkd.builder import build_distiller, build_model
from ppkd.data.loader import build_reader, epoch_batches
from ppkd.engine.checkpoint import save_checkpoint
from ppkd.engine.trainer import Trainer
from ppkd.errors import PPKDError
from ppkd.recorders import OutputRecorder

from conftest import CONFIGS, tiny_opts


def _student_cfg(root, *extra):
    return cfgmod.load_config(os.path.join(CONFIGS, 'demo', 'distill_l2.yml'), tiny_opts(root, *extra))


def _teacher_cfg(root):
    return cfgmod.load_config(os.path.join(CONFIGS, 'demo', 'teacher_yolov3_r18.yml'), tiny_opts(root))


def _bn_state(layer):
    return {k: v.numpy().copy() for k, v in layer.state_dict().items()}


@pytest.mark.smoke
@pytest.mark.parametrize('fold', [False, True], ids=['plain', 'folded'])
def test_teacher_frozen_through_training_steps(tiny_voc, tiny_teacher, tmp_path, fold):
    _, weights = tiny_teacher
    # In dygraph: the form whose weights training could touch (a predictor's are its own, and the dygraph
    # teacher's are released once it runs).
    model = build_distiller(_student_cfg(tiny_voc, f'distill.fold_teacher_bn={fold}', 'distill.compile_teacher=dygraph'),
                            _teacher_cfg(tiny_voc), weights)
    if fold:  # the fold happens once, before the first step; from then on nothing changes
        model.prepare_teacher(next(epoch_batches(build_reader(_student_cfg(tiny_voc), 'Train'))))
        assert not any(isinstance(m, paddle.nn.BatchNorm2D) for m in model.teacher.sublayers())
    else:
        assert any(k.endswith('_mean') for k in model.teacher.state_dict())
    before_teacher, before_student = _bn_state(model.teacher), _bn_state(model.student)
    trainer = Trainer(_student_cfg(tiny_voc), model, str(tmp_path))
    trainer.train()  # 4 steps
    assert not model.teacher.training
    assert all(p.stop_gradient for p in model.teacher.parameters())
    after = _bn_state(model.teacher)
    # Every teacher tensor, BatchNorm running mean/variance included, is unchanged.
    for k, v in before_teacher.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    moved = [k for k, v in _bn_state(model.student).items() if not np.array_equal(v, before_student[k])]
    assert any(k.endswith('_mean') for k in moved) and any(k.endswith('weight') for k in moved)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not trainable & {id(p) for p in model.teacher.parameters()}


@pytest.mark.smoke
def test_distill_step_outputs_and_no_teacher_gradient(tiny_voc, tiny_teacher):
    model = build_distiller(_student_cfg(tiny_voc), _teacher_cfg(tiny_voc), tiny_teacher[1])
    model.train()
    cfg = _student_cfg(tiny_voc)
    batch = next(epoch_batches(build_reader(cfg, 'Train')))
    out = model(batch)
    total = float(out['det_loss']) + 0.0001 * float(out['distill_l2'])
    assert float(out['loss']) == pytest.approx(total, rel=1e-5)
    out['loss'].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert any(p.grad is not None for p in model.student.parameters())


def test_checkpoint_holds_only_student_keys(tiny_voc, tiny_teacher, tmp_path):
    model = build_distiller(_student_cfg(tiny_voc), _teacher_cfg(tiny_voc), tiny_teacher[1])
    save_checkpoint(str(tmp_path / 'ck'), model.student)
    saved = paddle.load(str(tmp_path / 'ck.pdparams'))
    assert set(saved) == set(build_model(_student_cfg(tiny_voc)).state_dict())
    assert not any(k.startswith('teacher') for k in saved)
    assert not [p for p in os.listdir(tmp_path) if '.tmp' in p]


def test_teacher_weights_that_do_not_fit_are_named(tiny_voc, tmp_path):
    student = build_model(_student_cfg(tiny_voc))
    paddle.save(student.state_dict(), str(tmp_path / 'wrong.pdparams'))
    with pytest.raises(PPKDError) as e:
        build_distiller(_student_cfg(tiny_voc), _teacher_cfg(tiny_voc), str(tmp_path / 'wrong.pdparams'))
    msg = str(e.value)
    assert 'wrong.pdparams does not fit the teacher' in msg
    assert 'shape mismatch: yolo_head.yolo_output.' in msg or 'keys missing' in msg
    assert '\n' not in msg


def test_different_class_lists_refused(tiny_voc, tiny_teacher, tmp_path):
    other = tmp_path / 'labels'
    other.mkdir()
    for name in ('trainval.txt', 'test.txt'):
        (other / name).write_text(open(os.path.join(tiny_voc, name)).read())
    (other / 'label_list.txt').write_text('a\nb\nc\nd\n')
    teacher_cfg = _teacher_cfg(tiny_voc)
    teacher_cfg['EvalDataset'].dataset_dir = str(other)
    with pytest.raises(PPKDError, match='class lists differ'):
        build_distiller(_student_cfg(tiny_voc), teacher_cfg, tiny_teacher[1])
    teacher_cfg = _teacher_cfg(tiny_voc)
    teacher_cfg['num_classes'] = 3
    with pytest.raises(PPKDError, match='has 3 classes, student .* has 4'):
        build_distiller(_student_cfg(tiny_voc), teacher_cfg, tiny_teacher[1])


def test_teacher_trained_in_another_class_order_is_refused_with_the_mapping(tiny_voc, tiny_teacher, tmp_path):
    """The same classes listed in another order (e.g. the data set re-split
    with sorted names) for student and teacher config alike: only the record
    of the order the teacher was trained in shows the permutation."""
    permuted = tmp_path / 'permuted'
    shutil.copytree(tiny_voc, permuted)
    names = open(os.path.join(tiny_voc, 'label_list.txt')).read().split()
    (permuted / 'label_list.txt').write_text('\n'.join(names[::-1]) + '\n')
    student = _student_cfg(str(permuted))
    teacher = cfgmod.load_config(os.path.join(CONFIGS, 'demo', 'teacher_yolov3_r18.yml'), tiny_opts(str(permuted)))
    with pytest.raises(PPKDError, match=f"same classes in another order: teacher channel 0 = '{names[0]}', "
                                        f"student's = '{names[-1]}'"):
        build_distiller(student, teacher, tiny_teacher[1])
    build_distiller(_student_cfg(tiny_voc), _teacher_cfg(tiny_voc), tiny_teacher[1])  # its own order passes


def test_other_teacher_normalisation_is_warned(tiny_voc, tiny_teacher, caplog):
    teacher = _teacher_cfg(tiny_voc)
    for op in teacher['EvalReader']['sample_transforms']:
        if 'NormalizeImage' in op:
            op['NormalizeImage'] = {**op['NormalizeImage'], 'mean': [0.5, 0.5, 0.5]}
    with caplog.at_level(logging.WARNING, logger='ppkd'):
        build_distiller(_student_cfg(tiny_voc), teacher, tiny_teacher[1])
    assert "normalises images with {" in caplog.text and "'mean': [0.5, 0.5, 0.5]" in caplog.text


def test_recorder_names_unknown_layer():
    layer = paddle.nn.Sequential(paddle.nn.Linear(2, 2))
    with pytest.raises(PPKDError, match="no layer named '1'"):
        OutputRecorder(layer, ['1'], 'student')
    rec = OutputRecorder(layer, ['0'])
    layer(paddle.ones([1, 2]))
    assert list(rec.outputs) == ['0']


def test_recorder_records_callables_and_every_call():
    class Scaler:  # a plain callable held by a layer, as ppdet's target assigners are
        def __call__(self, x):
            return x * 2

    layer = paddle.nn.Sequential(paddle.nn.Linear(2, 2))
    layer.scale = Scaler()
    rec = OutputRecorder(layer, ['0', 'scale'])
    for _ in range(2):
        layer.scale(layer(paddle.ones([1, 2])))
    assert len(rec.outputs['0']) == 2 and len(rec.outputs['scale']) == 2
    np.testing.assert_allclose(rec.outputs['scale'][-1].numpy(), rec.outputs['0'][-1].numpy() * 2)
    rec.remove()
    assert isinstance(layer.scale, Scaler)
    with pytest.raises(PPKDError, match="no layer named 'scale.x'"):
        OutputRecorder(layer, ['scale.x'])


def test_use_fine_grained_loss_switch(tiny_voc, tiny_teacher):
    cfg = _student_cfg(tiny_voc, 'use_fine_grained_loss=true', 'YOLOv3FineGrainedDistill.weight=0.001')
    model = build_distiller(cfg, _teacher_cfg(tiny_voc), tiny_teacher[1])
    assert [type(loss).__name__ for loss in model.distill_losses] == ['YOLOv3FineGrainedDistill']
    assert model.distill_losses[0].num_classes == 4  # shared num_classes
    model.train()
    batch = next(epoch_batches(build_reader(cfg, 'Train')))
    out = model(batch)
    terms = sum(float(out[k]) for k in ('distill_reg', 'distill_cls', 'distill_obj'))
    assert float(out['loss']) == pytest.approx(float(out['det_loss']) + 0.001 * terms, rel=1e-5)


def test_student_recorder_records_only_inside_training_steps(tiny_voc, tiny_teacher):
    """Evaluating the student between steps must not pile up its head maps."""
    from ppkd.engine.evaluator import evaluate
    cfg = _student_cfg(tiny_voc)
    model = build_distiller(cfg, _teacher_cfg(tiny_voc), tiny_teacher[1])
    model.train()
    model(next(epoch_batches(build_reader(cfg, 'Train'))))
    recorded = {k: len(v) for k, v in model.student_recorder.outputs.items()}
    assert recorded and set(recorded.values()) == {1}
    evaluate(cfg, model.student, build_reader(cfg, 'Eval'))
    assert {k: len(v) for k, v in model.student_recorder.outputs.items()} == recorded


def _live_tensors():
    """Distinct Paddle tensors referenced from Python containers (tensors
    themselves are not tracked by the garbage collector)."""
    gc.collect()
    return len({id(r) for o in gc.get_objects() for r in gc.get_referents(o) if isinstance(r, paddle.Tensor)})


def test_evaluation_memory_does_not_grow_with_the_test_list(tiny_voc, tiny_teacher):
    """Ten times the test list leaves no more tensors alive than once.
    Counted, not measured as RSS: the process's native memory moves by tens
    of MB from one pass to the next over the same images (allocator caches),
    which would hide a leak and fail at random. The positive control, the
    recorder kept on during evaluation (the old leak), must show up."""
    from ppkd.engine.evaluator import evaluate
    with open(os.path.join(tiny_voc, 'test.txt')) as f:
        lines = f.read()
    with open(os.path.join(tiny_voc, 'test_x10.txt'), 'w') as f:
        f.write(lines * 10)
    once, tenfold = _student_cfg(tiny_voc), _student_cfg(tiny_voc, 'EvalDataset.anno_path=test_x10.txt')
    model = build_distiller(once, _teacher_cfg(tiny_voc), tiny_teacher[1])
    model.train()
    model(next(epoch_batches(build_reader(once, 'Train'))))
    assert evaluate(once, model.student, build_reader(once, 'Eval'))['images'] * 10 == evaluate(
        tenfold, model.student, build_reader(tenfold, 'Eval'))['images']
    before = _live_tensors()
    evaluate(tenfold, model.student, build_reader(tenfold, 'Eval'))
    assert _live_tensors() == before
    with model.student_recorder.recording():
        evaluate(tenfold, model.student, build_reader(tenfold, 'Eval'))
    assert _live_tensors() > before + 10
