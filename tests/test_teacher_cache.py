"""The teacher's outputs kept per image between epochs: which readers
qualify, the store itself, and a distillation run that reads them back
with the same distillation terms as one that runs the teacher every step."""
import json
import os

import numpy as np
import paddle
import pytest

from ppkd import config as cfgmod
from ppkd.data.synthetic import make_shapes_voc
from ppkd.teacher_cache import TeacherOutputCache, random_transforms

from conftest import CONFIGS, PINNED_BLAS, run_script, tiny_opts

DISTILL = os.path.join(CONFIGS, 'demo', 'distill_l2.yml')
DEMO_ANCHORS = [[10, 10], [14, 14], [18, 18], [24, 24], [30, 30], [36, 36], [44, 44], [56, 56], [70, 70]]
DETERMINISTIC_READER = {
    'sample_transforms': [{'Decode': {}}],
    'batch_transforms': [
        {'BatchRandomResize': {'target_size': [64], 'random_size': True, 'random_interp': False, 'keep_ratio': False}},
        {'NormalizeBox': {}}, {'PadBox': {'num_max_boxes': 50}}, {'BboxXYXY2XYWH': {}},
        {'NormalizeImage': {'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225], 'is_scale': True}},
        {'Permute': {}},
        {'Gt2YoloTarget': {'anchor_masks': [[6, 7, 8], [3, 4, 5], [0, 1, 2]], 'anchors': DEMO_ANCHORS,
                           'downsample_ratios': [32, 16, 8]}}]}


def test_random_transforms_are_named_and_a_fixed_reader_has_none():
    demo = cfgmod.load_config(DISTILL)
    assert random_transforms(demo) == ['RandomDistort', 'RandomFlip', 'BatchRandomResize with random_interp']
    assert random_transforms({'TrainReader': DETERMINISTIC_READER}) == []
    two_sizes = {'BatchRandomResize': {'target_size': [64, 96], 'random_interp': False}}
    assert random_transforms({'TrainReader': {'batch_transforms': [two_sizes]}}) == ['BatchRandomResize with 2 sizes']
    assert random_transforms({'TrainReader': {'sample_transforms': [{'SomeNewOp': {}}]}}) == ['SomeNewOp']


def _outputs(rows, width=3):
    """Recorder-like outputs for images `rows`: one name, two calls, row r filled with r."""
    base = np.array(rows, 'float32').reshape(-1, 1, 1)
    return {'head': [paddle.to_tensor(base * np.ones((1, 2, width), 'float32')),
                     paddle.to_tensor(base[:, 0] * np.ones((1, 4), 'float32') + 0.5)]}


def test_cache_puts_a_shuffled_batch_together_from_its_images():
    cache = TeacherOutputCache()
    assert cache.store([10, 11], _outputs([10, 11])) and cache.store([12, 13], _outputs([12, 13]))
    assert cache.lookup([13, 10, 14]) is None  # 14 not seen yet
    held = cache.lookup([13, 10, 12])
    expected = _outputs([13, 10, 12])
    assert [len(held['head']), cache.hits, cache.misses] == [2, 1, 1]
    for got, want in zip(held['head'], expected['head']):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    # An image stored again in another shape (a batch padded to another size) no longer matches the others.
    assert cache.store([12], _outputs([12], width=5))
    assert cache.lookup([13, 12]) is None and cache.lookup([12]) is not None


def test_cache_refuses_outputs_that_are_not_one_row_per_image():
    assert not TeacherOutputCache().store([1, 2, 3], _outputs([1, 2]))


def test_cache_stops_storing_at_its_size_and_says_so(caplog):
    one_image = sum(t[0].numpy().nbytes for t in _outputs([0])['head'])
    cache = TeacherOutputCache(max_bytes=3 * one_image)
    with caplog.at_level('WARNING'):
        assert cache.store([0, 1], _outputs([0, 1])) and cache.store([2, 3], _outputs([2, 3]))
    assert sorted(cache.entries) == [0, 1, 2] and cache.bytes == 3 * one_image
    assert 'images not kept yet run the teacher every epoch' in caplog.text
    cache.store([4], _outputs([4]))
    assert sorted(cache.entries) == [0, 1, 2]


def _fixed_reader_config(tmp_path):
    student = tmp_path / 'student.yml'
    student.write_text(json.dumps({'_BASE_': [DISTILL], 'TrainReader': DETERMINISTIC_READER}))
    return student


def test_a_batch_read_back_and_one_without_image_ids(tiny_voc, tiny_teacher, tmp_path, caplog):
    from ppkd.builder import build_distiller
    from ppkd.data.loader import build_reader, epoch_batches
    cfg = cfgmod.load_config(str(_fixed_reader_config(tmp_path)),
                             tiny_opts(tiny_voc, 'distill.compile_teacher=dygraph'))
    model = build_distiller(cfg, cfgmod.load_config(tiny_teacher[0], tiny_opts(tiny_voc)), tiny_teacher[1])
    model.train()
    batch = next(epoch_batches(build_reader(cfg, 'Train')))
    with caplog.at_level('INFO'):
        first, again = float(model(batch)['distill_l2']), float(model(batch)['distill_l2'])
        assert 'outputs read back' in caplog.text and again == pytest.approx(first, rel=1e-6)
        del batch['im_id']
        assert float(model(batch)['distill_l2']) == pytest.approx(first, rel=1e-6)
    assert 'teacher: outputs not kept (the batch has no image ids)' in caplog.text
    assert model._labelled_outputs is None and model._unlabeled_outputs is None


def _distill_terms(tmp_path, tiny_voc, tiny_teacher, unlabeled_dir, reuse, caplog):
    cfg, weights = tiny_teacher
    student = _fixed_reader_config(tmp_path)
    out = tmp_path / f'reuse_{reuse}'
    opts = tiny_opts(tiny_voc, 'epoch=3', f'distill.reuse_teacher_outputs={str(reuse).lower()}',
                     f'distill.unlabeled={{image_dir: {unlabeled_dir}, batch_size: 3, weight: 0.5}}', *PINNED_BLAS)
    caplog.clear()
    with caplog.at_level('INFO'):
        assert run_script('slim/distillation/distill.py', ['-c', str(student), '-t', cfg, '--teacher_pretrained',
                                                           weights, '--output_dir', str(out), '-o', *opts]) == 0
    with open(out / 'metrics.jsonl') as f:
        rows = [json.loads(line) for line in f]
    return [(r['distill_l2'], r['distill_l2_unlabeled']) for r in rows if r['type'] == 'train'], caplog.text


@pytest.mark.smoke
def test_distillation_reads_kept_outputs_back_with_the_same_terms(tiny_voc, tiny_teacher, tmp_path, caplog):
    make_shapes_voc(str(tmp_path / 'u'), num_images=2, image_size=64, seed=3, test_ratio=0.5, min_size=12,
                    max_size=30, max_objects=2, num_unlabeled=6)
    images = str(tmp_path / 'u' / 'unlabeled')
    kept, log = _distill_terms(tmp_path, tiny_voc, tiny_teacher, images, True, caplog)
    assert 'outputs kept per image from epoch to epoch' in log
    assert 'outputs read back for images seen in an earlier epoch' in log
    fresh, log = _distill_terms(tmp_path, tiny_voc, tiny_teacher, images, False, caplog)
    assert 'read back' not in log
    # Epochs 2 and 3 read the teacher's outputs back (labelled and unlabeled): the terms are those it gives.
    assert len(kept) == len(fresh) == 12
    np.testing.assert_allclose(kept, fresh, rtol=1e-5)


def test_reuse_is_off_where_images_change_and_a_bad_value_is_one_error(tiny_voc, tiny_teacher, tmp_path, caplog,
                                                                        capsys):
    cfg, weights = tiny_teacher
    argv = ['-c', DISTILL, '-t', cfg, '--teacher_pretrained', weights, '--output_dir', str(tmp_path / 'run'), '-o',
            *tiny_opts(tiny_voc)]
    with caplog.at_level('INFO'):
        assert run_script('slim/distillation/distill.py', argv) == 0
    assert ('teacher: runs on every batch (TrainReader transforms that change images between epochs: '
            'RandomDistort, RandomFlip, BatchRandomResize with random_interp)') in caplog.text
    assert run_script('slim/distillation/distill.py', argv + ['distill.reuse_teacher_outputs=maybe']) == 2
    assert capsys.readouterr().err.strip().endswith('distill.reuse_teacher_outputs must be true or false; '
                                                   "got 'maybe'")
