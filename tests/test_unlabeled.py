"""Distillation on unlabeled images: the data, the step, the split script,
and bad input."""
import os

import numpy as np
import paddle
import pytest

from ppkd import config as cfgmod
from ppkd.builder import build_distiller
from ppkd.data.loader import build_reader, build_unlabeled_reader, epoch_batches
from ppkd.data.split import split_voc
from ppkd.data.synthetic import make_shapes_voc

from conftest import CONFIGS, FRCNN_TINY, run_script, tiny_opts

DISTILL = os.path.join(CONFIGS, 'demo', 'distill_l2.yml')


@pytest.fixture(scope='module')
def unlabeled_dir(tmp_path_factory):
    """Six generated images without annotations (absolute folder path)."""
    root = str(tmp_path_factory.mktemp('unlabeled'))
    make_shapes_voc(root, num_images=2, image_size=64, seed=3, test_ratio=0.5, min_size=12, max_size=30,
                    max_objects=2, num_unlabeled=6)
    return os.path.join(root, 'unlabeled')


def _unlabeled_opts(root, folder, *extra):
    return tiny_opts(root, f'distill.unlabeled={{image_dir: {folder}, batch_size: 3, weight: 0.5}}', *extra)


def _batches(cfg):
    return next(epoch_batches(build_reader(cfg, 'Train'))), next(epoch_batches(build_unlabeled_reader(cfg)))


def test_unlabeled_reader_uses_train_transforms_without_boxes(tiny_voc, unlabeled_dir):
    cfg = cfgmod.load_config(DISTILL, _unlabeled_opts(tiny_voc, unlabeled_dir))
    labelled, unlabeled = _batches(cfg)
    assert unlabeled['image'].shape[0] == 3  # its own batch size
    assert unlabeled['image'].shape[1:] == labelled['image'].shape[1:]
    # Normalised like the labelled images, and no box survives.
    assert abs(float(unlabeled['image'].mean())) < 3
    assert float(unlabeled['gt_bbox'].abs().sum()) == 0


@pytest.mark.smoke
def test_unlabeled_batch_adds_distillation_not_detection(tiny_voc, tiny_teacher, unlabeled_dir):
    opts = _unlabeled_opts(tiny_voc, unlabeled_dir, 'distill.losses=[YOLOv3FineGrainedDistill]',
                           'YOLOv3FineGrainedDistill.weight=2')
    cfg = cfgmod.load_config(DISTILL, opts)
    model = build_distiller(cfg, cfgmod.load_config(tiny_teacher[0], tiny_opts(tiny_voc)), tiny_teacher[1])
    model.train()
    labelled, unlabeled = _batches(cfg)
    paddle.seed(0)
    plain = model(labelled)
    with_unlabeled = model(labelled, unlabeled)
    terms = ['distill_reg', 'distill_cls', 'distill_obj']
    # The detection loss reads the labelled batch only.
    np.testing.assert_allclose(float(with_unlabeled['det_loss']), float(plain['det_loss']), rtol=1e-6)
    for t in terms:
        assert float(with_unlabeled[t + '_unlabeled']) > 0
    extra = sum(float(with_unlabeled[t + '_unlabeled']) for t in terms)
    np.testing.assert_allclose(float(with_unlabeled['loss']) - float(plain['loss']), 2 * 0.5 * extra, rtol=1e-4)
    # labeled_weight 0: the teacher teaches on the unlabeled images only.
    model.labeled_weight = 0.
    only_unlabeled = model(labelled, unlabeled)
    np.testing.assert_allclose(float(only_unlabeled['loss']) - float(only_unlabeled['det_loss']), 2 * 0.5 * extra,
                               rtol=1e-4)
    model.labeled_weight = 1.
    # A different unlabeled batch changes the distillation terms, never the detection loss.
    flipped = dict(unlabeled, image=paddle.flip(unlabeled['image'], axis=[3]))
    other = model(labelled, flipped)
    np.testing.assert_allclose(float(other['det_loss']), float(plain['det_loss']), rtol=1e-6)
    assert float(other['distill_obj_unlabeled']) != float(with_unlabeled['distill_obj_unlabeled'])
    # The unlabeled terms train the student, never the teacher.
    paddle.add_n([with_unlabeled[t + '_unlabeled'] for t in terms]).backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.student.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())


@pytest.mark.smoke
def test_losses_that_need_boxes_skip_unlabeled_images(tiny_voc, frcnn_teacher, unlabeled_dir, caplog):
    student = os.path.join(CONFIGS, 'bccd', 'distill_faster_rcnn.yml')
    teacher = os.path.join(CONFIGS, 'bccd', 'teacher_faster_rcnn_r50_fpn.yml')
    opts = _unlabeled_opts(tiny_voc, unlabeled_dir, *FRCNN_TINY, 'distill.compile_teacher=dygraph')
    cfg = cfgmod.load_config(student, opts)
    with caplog.at_level('WARNING'):
        model = build_distiller(cfg, cfgmod.load_config(teacher, tiny_opts(tiny_voc, *FRCNN_TINY)), frcnn_teacher)
    assert 'FasterRCNNSoftLabel, FasterRCNNBoundedRegression need ground truth' in caplog.text
    model.train()
    outputs = model(*_batches(cfg))
    assert 'distill_hint_unlabeled' in outputs and 'distill_rcnn_soft' in outputs
    assert not [k for k in outputs if k.endswith('_unlabeled') and 'hint' not in k]


def test_distill_cli_with_unlabeled_images(tiny_voc, tiny_teacher, unlabeled_dir, tmp_path, caplog):
    cfg, weights = tiny_teacher
    with caplog.at_level('INFO'):
        code = run_script('slim/distillation/distill.py',
                          ['-c', DISTILL, '-t', cfg, '--teacher_pretrained', weights, '--output_dir', str(tmp_path),
                           '-o', *_unlabeled_opts(tiny_voc, unlabeled_dir)])
    assert code == 0
    assert 'unlabeled images: 6 from' in caplog.text
    assert 'distill_l2_unlabeled:' in caplog.text


@pytest.mark.parametrize('case', ['missing dir', 'empty dir', 'missing list', 'empty list', 'unreadable image',
                                  'both keys', 'unknown key'])
def test_bad_unlabeled_input_is_one_error_line(tiny_voc, tiny_teacher, tmp_path, capsys, case):
    empty = tmp_path / 'empty'
    empty.mkdir()
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'a.jpg').write_bytes(b'')
    (tmp_path / 'empty.txt').write_text('\n')
    section, message = {
        'missing dir': ('{image_dir: /no/such/dir}', 'error: distill.unlabeled.image_dir does not exist: /no/such/dir'),
        'empty dir': (f'{{image_dir: {empty}}}', f'error: distill.unlabeled: no images in {empty}'),
        'missing list': ('{image_list: /no/list.txt}', 'error: distill.unlabeled.image_list not found: /no/list.txt'),
        'empty list': (f'{{image_list: {tmp_path}/empty.txt}}',
                       f'error: distill.unlabeled: no images in {tmp_path}/empty.txt'),
        'unreadable image': (f'{{image_dir: {bad}}}', f'error: {bad}: unreadable image {bad}/a.jpg'),
        'both keys': (f'{{image_dir: {bad}, image_list: x.txt}}',
                      'error: distill.unlabeled: give exactly one of image_dir and image_list'),
        'unknown key': (f'{{image_dirs: {bad}}}', f'error: {DISTILL}: distill.unlabeled has unknown keys '
                        "['image_dirs'] (known: ['batch_size', 'image_dir', 'image_list', 'weight'])"),
    }[case]
    cfg, weights = tiny_teacher
    out = tmp_path / 'out'
    code = run_script('slim/distillation/distill.py',
                      ['-c', DISTILL, '-t', cfg, '--teacher_pretrained', weights, '--output_dir', str(out),
                       '-o', *tiny_opts(tiny_voc, f'distill.unlabeled={section}')])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(message)
    assert not os.path.exists(out / 'model_final.pdparams')


def _list_stems(path):
    with open(path) as f:
        return [os.path.basename(line.split()[0]).rsplit('.', 1)[0] for line in f if line.strip()]


def test_labeled_fraction_writes_disjoint_lists_covering_trainval(tiny_voc, tmp_path):
    full = split_voc(tiny_voc, ratio=0.75, seed=0, out_dir=str(tmp_path / 'full'))
    part = split_voc(tiny_voc, ratio=0.75, seed=0, out_dir=str(tmp_path / 'part'), labeled_fraction=0.25)
    labelled, unlabeled = _list_stems(tmp_path / 'part' / 'trainval.txt'), _list_stems(tmp_path / 'part' / 'unlabeled.txt')
    assert not set(labelled) & set(unlabeled)
    assert sorted(labelled + unlabeled) == sorted(_list_stems(tmp_path / 'full' / 'trainval.txt'))
    assert _list_stems(tmp_path / 'part' / 'test.txt') == _list_stems(tmp_path / 'full' / 'test.txt')
    assert (part['trainval'], part['unlabeled']) == (round(full['trainval'] * 0.25), full['trainval'] - part['trainval'])
    # Images only: the annotations are withheld.
    with open(tmp_path / 'part' / 'unlabeled.txt') as f:
        assert all(len(line.split()) == 1 for line in f)
    # A data set config reads the lists, and distill.unlabeled the rest.
    assert split_voc(tiny_voc, ratio=0.75, seed=1, out_dir=str(tmp_path / 'other'), labeled_fraction=0.25)


def test_labeled_fraction_script_and_range(tiny_voc, tmp_path, capsys):
    assert run_script('tools/split_voc.py', [tiny_voc, '--out_dir', str(tmp_path), '--labeled_fraction', '0.5']) == 0
    assert 'unlabeled:' in capsys.readouterr().out
    assert run_script('tools/split_voc.py', [tiny_voc, '--out_dir', str(tmp_path), '--labeled_fraction', '1.5']) == 2
    assert capsys.readouterr().err.strip() == 'error: labeled_fraction must be between 0 and 1, got 1.5'
