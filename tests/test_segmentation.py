"""Segmentation through PaddleSeg: the registered losses against NumPy, the
checked data set, the compat fixes, and train / auto-encoder / distill /
eval end to end on generated shapes."""
import json
import os
import random

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from conftest import CONFIGS, run_script
from ppkd import compat
from ppkd import config as cfgmod
from ppkd.data.synthetic import make_shapes_segmentation
from ppkd.errors import PPKDError
from ppkd.losses import FeatureAutoEncoder, FitNetDistill, KnowledgeAdaptation, PixelKD
from ppkd.tasks import segmentation as seg_task
from ppkd.tasks import task_of

CAMVID = os.path.join(CONFIGS, 'camvid')
TEACHER = os.path.join(CAMVID, 'teacher_deeplabv3p_resnet18.yml')


def seg_opts(root, *extra):
    """Tiny runs: 5 shape classes at 64×80, batch 2, 4 iterations."""
    return [f'dataset_dir={root}', 'batch_size=2', 'iters=4', 'log_iter=1', 'model.num_classes=5',
            'train_dataset.num_classes=5', 'val_dataset.num_classes=5',
            'train_dataset.transforms=[{type: RandomHorizontalFlip}, {type: Normalize}]',
            'val_dataset.transforms=[{type: Normalize}]', *extra]


@pytest.fixture(scope='session')
def tiny_seg(tmp_path_factory):
    return make_shapes_segmentation(str(tmp_path_factory.mktemp('tiny_seg')), num_images=12, height=64, width=80,
                                    seed=1)


@pytest.fixture(scope='session')
def seg_teacher(tiny_seg, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('seg_teacher'))
    assert run_script('tools/train.py', ['-c', TEACHER, '--output_dir', out, '-o', *seg_opts(tiny_seg)]) == 0
    return os.path.join(out, 'model_final.pdparams')


# ---- losses --------------------------------------------------------------------------------------------------


def _np_softmax(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _records(student, teacher, s_name='s', t_name='t'):
    return {s_name: [student]}, {t_name: [teacher]}


def test_pixel_kd_layer_resizes_to_the_larger_map_and_ignores_labels():
    rng = np.random.RandomState(0)
    s = rng.randn(1, 3, 2, 2).astype('float32')
    t = rng.randn(1, 3, 4, 4).astype('float32')
    label = np.zeros((1, 1, 4, 4), 'int64')
    label[0, 0, :2] = 255  # top half ignored
    loss = PixelKD(temperature=2., student_layer='s', teacher_layer='t')
    student = paddle.to_tensor(s, stop_gradient=False)
    teacher = paddle.to_tensor(t, stop_gradient=False)
    got = loss(*_records(student, teacher), {'label': paddle.to_tensor(label)})['pixel_kd']
    # NumPy: the student's map upsampled (bilinear, half-pixel centres) to 4×4
    up = paddle.nn.functional.interpolate(paddle.to_tensor(s), size=[4, 4], mode='bilinear').numpy()
    p_t, p_s = _np_softmax(t / 2, 1), _np_softmax(up / 2, 1)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(1)[0]
    np.testing.assert_allclose(float(got), 4 * kl[2:].mean(), rtol=1e-5)
    got.backward()
    assert teacher.grad is None and float(student.grad.abs().sum()) > 0


def test_fitnet_layer_is_the_mean_squared_gap_after_its_adapter():
    rng = np.random.RandomState(1)
    s, t = rng.randn(2, 3, 2, 2).astype('float32'), rng.randn(2, 5, 2, 2).astype('float32')
    loss = FitNetDistill(student_layer='s', teacher_layer='t', student_channels=3, teacher_channels=5)
    loss.bind(None, None)
    teacher = paddle.to_tensor(t, stop_gradient=False)
    got = loss(*_records(paddle.to_tensor(s), teacher), {})['fitnet']
    w = loss.adapter.weight.numpy()[:, :, 0, 0]
    b = loss.adapter.bias.numpy()
    adapted = np.einsum('oc,nchw->nohw', w, s) + b[None, :, None, None]
    np.testing.assert_allclose(float(got), ((adapted - t) ** 2).mean(), rtol=1e-5)
    got.backward()
    assert teacher.grad is None and loss.adapter.weight.grad is not None


def test_autoencoder_loss_is_reconstruction_plus_scaled_code_l1():
    paddle.seed(0)
    ae = FeatureAutoEncoder(4, 6, strides=(1, 2, 1), alpha=0.5, scale=0.25)
    x = paddle.to_tensor(np.random.RandomState(2).randn(2, 4, 5, 7).astype('float32'))
    terms = ae.loss(x)
    code, reconstruction = ae(x)
    assert code.shape == [2, 6, 3, 4] and reconstruction.shape == [2, 4, 5, 7]
    scaled = x.numpy() * 0.25
    np.testing.assert_allclose(float(terms['reconstruction']), ((reconstruction.numpy() - scaled) ** 2).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(float(terms['code_l1']), 0.5 * np.abs(code.numpy()).sum() / scaled.size, rtol=1e-5)


def test_knowledge_adaptation_terms_match_numpy(tmp_path):
    paddle.seed(1)
    ae = FeatureAutoEncoder(4, 3, strides=(1, 1, 1))
    path = str(tmp_path / 'ae.pdparams')
    paddle.save({'config': ae.config, 'teacher_layer': 't', 'state': ae.state_dict()}, path)

    class Net(nn.Layer):
        def __init__(self, channels):
            super().__init__()
            self.t = nn.Conv2D(2, channels, 1)
            self.s = nn.Conv2D(2, channels, 1)

    loss = KnowledgeAdaptation(path, adaptation_weight=2., affinity_weight=3., student_layer='s', teacher_layer='t')
    loss.bind(Net(5), Net(4))
    loss.eval()  # BatchNorm of the adapters with running statistics: a fixed function to compare with
    rng = np.random.RandomState(3)
    s, t = rng.randn(1, 5, 4, 4).astype('float32'), rng.randn(1, 4, 4, 4).astype('float32')
    teacher = paddle.to_tensor(t, stop_gradient=False)
    got = loss(*_records(paddle.to_tensor(s), teacher), {})
    code = ae.encode(paddle.to_tensor(t)).numpy()
    adapted = loss.feature_adapter(paddle.to_tensor(s)).numpy()
    affine = loss.affinity_adapter(paddle.to_tensor(s)).numpy()

    def unit(f):
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    adaptation = np.sqrt(((unit(code) - unit(adapted)) ** 2).sum(1)).mean()

    def affinity(f):  # [1, C, H, W] → [H·W, H·W]
        v = unit(f)[0].reshape(f.shape[1], -1)
        return v.T @ v

    affinity_gap = np.sqrt(((affinity(affine) - affinity(code)) ** 2).sum(1) + 1e-12).mean()
    np.testing.assert_allclose(float(got['ka_adaptation']), 2 * adaptation, rtol=1e-4)
    np.testing.assert_allclose(float(got['ka_affinity']), 3 * affinity_gap, rtol=1e-4)
    (got['ka_adaptation'] + got['ka_affinity']).backward()
    assert teacher.grad is None
    assert all(p.grad is None for p in ae.parameters())  # the auto-encoder stays as stage 1 left it
    assert not any(p is q for p in loss.parameters() for q in ae.parameters())


def test_knowledge_adaptation_refuses_a_missing_or_mismatched_autoencoder(tmp_path):
    with pytest.raises(PPKDError, match='autoencoder not found: .*train_autoencoder.py'):
        KnowledgeAdaptation(str(tmp_path / 'none.pdparams')).bind(None, None)
    with pytest.raises(PPKDError, match='unknown key .epoch.'):
        KnowledgeAdaptation('x', autoencoder_training={'epoch': 1})


# ---- data set ------------------------------------------------------------------------------------------------


def _dataset(root, mode='train', **kwargs):
    from ppkd.data.segmentation import CheckedSegDataset
    from paddleseg.transforms import Normalize
    paths = {'train_path': os.path.join(root, 'train.txt')} if mode == 'train' else {
        'val_path': os.path.join(root, 'test.txt')}
    return CheckedSegDataset(mode, root, [Normalize()], 5, label_list='labels.txt', **paths, **kwargs)


def test_dataset_maps_ignore_labels_and_names_bad_masks(tmp_path):
    import cv2
    import shutil
    root = make_shapes_segmentation(str(tmp_path / 'd'), num_images=4, height=16, width=20, seed=3)
    first_mask = os.path.join(root, 'labels', '00001.png')
    mask = cv2.imread(first_mask, cv2.IMREAD_UNCHANGED)
    mask[0, 0] = 7
    cv2.imwrite(first_mask, mask)
    data = _dataset(root, ignore_labels=[7])
    assert data.class_names == ['background', 'circle', 'square', 'triangle', 'cross']
    _, label = data.read(0)
    assert label[0, 0] == 255 and label.max() == 255
    with pytest.raises(PPKDError, match=r'00001.png: labels \[7\] outside the 5 classes'):
        _dataset(root).read(0)
    cv2.imwrite(first_mask, mask[:10])
    with pytest.raises(PPKDError, match=r'00001.png: mask is 20×10, its image .*00001.jpg is 20×16'):
        _dataset(root).read(0)
    os.remove(os.path.join(root, 'images', '00002.jpg'))
    with pytest.raises(PPKDError, match=r'train.txt: listed file not found: .*00002.jpg'):
        _dataset(root)
    shutil.rmtree(root)
    with pytest.raises(PPKDError, match='dataset_root does not exist'):
        _dataset(root)


# ---- compatibility fixes --------------------------------------------------------------------------------------


@pytest.mark.skipif(not compat.PADDLESEG_FIXES['paddleseg_ce_float_weights'][0](), reason='not needed here')
def test_cross_entropy_fix_is_needed_and_works():
    from paddleseg.models.losses import CrossEntropyLoss
    logits = paddle.randn([2, 3, 4, 4])
    label = paddle.randint(0, 3, [2, 4, 4]).astype('int64')
    assert float(CrossEntropyLoss()(logits, label)) > 0
    with compat.disabled('paddleseg_ce_float_weights'), pytest.raises(Exception, match='(?i)type promotion|dtype'):
        CrossEntropyLoss()(logits, label)


@pytest.mark.skipif(not compat.PADDLESEG_FIXES['paddleseg_area_0d'][0](), reason='not needed here')
def test_area_fix_is_needed_and_works():
    from paddleseg.utils import metrics
    pred = paddle.to_tensor([[[0, 1], [1, 1]]], 'int64')
    label = paddle.to_tensor([[[0, 1], [0, 255]]], 'int64')
    intersect, pred_area, label_area = metrics.calculate_area(pred, label, 2)
    assert intersect.numpy().tolist() == [1, 1] and pred_area.numpy().tolist() == [1, 2]
    assert label_area.numpy().tolist() == [2, 1]
    with compat.disabled('paddleseg_area_0d'), pytest.raises(Exception):
        metrics.calculate_area(pred, label, 2)


def _numpy_ohem(logit, label, thresh, min_kept, ignore=255, eps=1e-5):
    """PaddleSeg 2.8's OHEM cross entropy as documented, in NumPy."""
    e = np.exp(logit - logit.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    valid = label != ignore
    own = np.take_along_axis(p, np.where(valid, label, 0)[:, None], 1)[:, 0]
    kept = valid.copy()
    if 0 < min_kept < valid.sum():
        kth = np.sort(np.where(valid, own, 2.).ravel())[min_kept - 1]
        kept = valid & (own < max(thresh, kth))
    return (-np.log(own) * kept).mean() / (kept.mean() + eps)


@pytest.mark.smoke
def test_ohem_cross_entropy_matches_numpy_and_needs_its_fix_on_paddle_3():
    """On Paddle 2.6 PaddleSeg's own loss is checked against the NumPy
    value; on Paddle 3 it fails (type promotion) and ppkd's fix is."""
    from paddleseg.models.losses import OhemCrossEntropyLoss
    rng = np.random.RandomState(0)
    logit = rng.randn(2, 3, 6, 7).astype('float32')
    label = rng.randint(0, 3, (2, 6, 7))
    label[0, :2] = 255
    for thresh, min_kept in ((0.7, 10), (0.2, 5), (0.7, 0), (0.7, 1000)):
        loss = OhemCrossEntropyLoss(thresh=thresh, min_kept=min_kept)
        value = float(loss(paddle.to_tensor(logit), paddle.to_tensor(label)))
        assert abs(value - _numpy_ohem(logit.astype('float64'), label, thresh, min_kept)) < 1e-5
    if compat.PADDLESEG_FIXES['paddleseg_ohem_promotion'][0]():
        with compat.disabled('paddleseg_ohem_promotion'), pytest.raises(Exception, match='(?i)type promotion'):
            OhemCrossEntropyLoss(min_kept=10)(paddle.to_tensor(logit), paddle.to_tensor(label))


# ---- configs and commands -------------------------------------------------------------------------------------


def test_seg_config_overrides_are_checked(tiny_seg):
    from ppkd import config as cfgmod
    cfg = cfgmod.load_config(TEACHER, seg_opts(tiny_seg))
    assert cfg['task'] == 'segmentation' and cfg['train_dataset']['dataset_root'] == tiny_seg
    assert cfg['val_dataset']['val_path'] == os.path.join(tiny_seg, 'test.txt')
    # A set's own list or root on the command line wins over dataset_dir's re-rooting.
    elsewhere = os.path.join(os.path.dirname(tiny_seg), 'lists', 'labelled.txt')
    cfg = cfgmod.load_config(TEACHER, seg_opts(tiny_seg, f'train_dataset.train_path={elsewhere}',
                                               'val_dataset.dataset_root=/data/other'))
    assert cfg['train_dataset']['train_path'] == elsewhere and cfg['train_dataset']['dataset_root'] == tiny_seg
    assert cfg['val_dataset']['dataset_root'] == '/data/other'
    assert cfg['val_dataset']['val_path'] == os.path.join(tiny_seg, 'test.txt')
    with pytest.raises(PPKDError, match="unknown top-level key 'iter' \\(did you mean iters\\?\\)"):
        cfgmod.load_config(TEACHER, ['iter=3'])
    with pytest.raises(PPKDError, match='iters must be a positive integer'):
        cfgmod.load_config(TEACHER, ['iters=0'])
    with pytest.raises(PPKDError, match="unknown PixelKD key 'temprature'"):
        cfgmod.load_config(os.path.join(CAMVID, 'distill_pixel_kd.yml'), ['PixelKD.temprature=3'])


def test_train_eval_and_both_knowledge_adaptation_stages(tiny_seg, seg_teacher, tmp_path, capsys):
    teacher = ['-t', TEACHER, '--teacher_pretrained', seg_teacher, '--teacher_opt', *seg_opts(tiny_seg)]
    ae = str(tmp_path / 'ae.pdparams')
    ka = os.path.join(CAMVID, 'distill_ka.yml')
    opts = seg_opts(tiny_seg, f'KnowledgeAdaptation.autoencoder={ae}', 'KnowledgeAdaptation.autoencoder_training.learning_rate=0.01')
    # Stage 2 before stage 1: one line saying what to run first.
    assert run_script('slim/distillation/distill.py', ['-c', ka, *teacher, '-o', *opts]) == 2
    assert 'train_autoencoder.py' in capsys.readouterr().err
    assert run_script('tools/train_autoencoder.py', ['-c', ka, *teacher, '-o', *opts]) == 0
    saved = paddle.load(ae)
    assert saved['teacher_layer'] == 'head.aspp' and saved['config']['in_channels'] == 256
    out = str(tmp_path / 'ka')
    assert run_script('slim/distillation/distill.py', ['-c', ka, *teacher, '--output_dir', out, '--eval', '-o', *opts]) == 0
    rows = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]
    train = [r for r in rows if r['type'] == 'train']
    assert len(train) == 4 and all(np.isfinite(r['ka_adaptation']) and r['ka_affinity'] > 0 for r in train)
    assert all(abs(r['loss'] - r['task_loss'] - r['ka_adaptation'] - r['ka_affinity']) < 1e-3 * r['loss']
               for r in train)
    evals = [r for r in rows if r['type'] == 'eval']
    assert len(evals) == 1 and evals[0]['images'] == 3 and set(evals[0]['per_class']) == {
        'background', 'circle', 'square', 'triangle', 'cross'}
    # Neither term reads a mask: with raw images beside the labelled ones both run on them too.
    raw_out = str(tmp_path / 'ka_raw')
    assert run_script('slim/distillation/distill.py', [
        '-c', os.path.join(CAMVID, 'distill_ka_unlabeled.yml'), *teacher, '--output_dir', raw_out, '-o', *opts,
        'distill.unlabeled.image_list=test.txt', 'distill.unlabeled.batch_size=3']) == 0
    raw = [json.loads(line) for line in open(os.path.join(raw_out, 'metrics.jsonl')) if '"train"' in line]
    terms = ('ka_adaptation', 'ka_affinity', 'ka_adaptation_unlabeled', 'ka_affinity_unlabeled')
    assert len(raw) == 4 and all(r[t] > 0 for r in raw for t in terms)
    assert all(abs(r['loss'] - r['task_loss'] - sum(r[t] for t in terms)) < 1e-3 * r['loss'] for r in raw)
    # The saved student is a plain PaddleSeg model: tools/eval.py scores it alone.
    capsys.readouterr()
    student = os.path.join(CAMVID, 'student_deeplabv3p_mobilenetv2.yml')
    weights = os.path.join(out, 'model_final.pdparams')
    assert run_script('tools/eval.py', ['-c', student, '--json', '-o', *seg_opts(tiny_seg), f'weights={weights}']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(result['mIoU'] - evals[0]['mIoU']) < 1e-6 and 0 <= result['pixel_accuracy'] <= 100


@pytest.mark.parametrize('config', ['distill_pixel_kd.yml', 'distill_fitnet.yml'])
def test_baseline_methods_distill(tiny_seg, seg_teacher, tmp_path, config):
    out = str(tmp_path / 'run')
    args = ['-c', os.path.join(CAMVID, config), '-t', TEACHER, '--teacher_pretrained', seg_teacher,
            '--teacher_opt', *seg_opts(tiny_seg), '--output_dir', out, '-o', *seg_opts(tiny_seg)]
    assert run_script('slim/distillation/distill.py', args) == 0
    rows = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]
    term = 'pixel_kd' if 'pixel' in config else 'fitnet'
    assert all(np.isfinite(r[term]) and r[term] > 0 for r in rows if r['type'] == 'train')


def test_teacher_of_another_task_is_refused(tiny_seg, seg_teacher, capsys):
    args = ['-c', os.path.join(CAMVID, 'distill_pixel_kd.yml'), '-t', os.path.join(CONFIGS, 'demo', 'teacher_yolov3_r18.yml'),
            '--teacher_pretrained', seg_teacher, '-o', *seg_opts(tiny_seg)]
    assert run_script('slim/distillation/distill.py', args) == 2
    assert 'configs of different tasks (detection, segmentation)' in capsys.readouterr().err


def test_seg_task_module_applies_its_fixes_on_import():
    assert all(name in compat._applied or not needed() for name, (needed, _) in compat.PADDLESEG_FIXES.items())
    assert seg_task.SegmentationTask.metric == 'mIoU'


def test_detection_only_tools_say_so(tiny_seg, capsys):
    args = ['-c', TEACHER, '-o', *seg_opts(tiny_seg), 'weights=x.pdparams']
    assert run_script('tools/export.py', args) == 2
    assert 'export it with PaddleSeg' in capsys.readouterr().err


def test_pixel_kd_on_unlabeled_images(tiny_seg, seg_teacher, tmp_path, capsys):
    """`distill.unlabeled` for a segmenter: raw images (no masks) in batches
    of their own size through the training transforms, the teacher's
    pixel distribution their only target; a missing image is one error."""
    out = str(tmp_path / 'run')
    args = ['-c', os.path.join(CAMVID, 'distill_pixel_kd_unlabeled.yml'), '-t', TEACHER, '--teacher_pretrained',
            seg_teacher, '--teacher_opt', *seg_opts(tiny_seg), '--output_dir', out, '-o', *seg_opts(tiny_seg),
            'distill.unlabeled.image_list=test.txt', 'distill.unlabeled.batch_size=3']
    assert run_script('slim/distillation/distill.py', args) == 0
    rows = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl')) if '"train"' in line]
    assert len(rows) == 4 and all(np.isfinite(r['pixel_kd_unlabeled']) and r['pixel_kd_unlabeled'] > 0 for r in rows)
    with open(os.path.join(tiny_seg, 'test.txt')) as f:
        first = f.readline().split()[0]
    (tmp_path / 'raw.txt').write_text(f'{os.path.join(tiny_seg, first)}\n{tiny_seg}/images/missing.jpg\n')
    args[args.index('distill.unlabeled.image_list=test.txt')] = f'distill.unlabeled.image_list={tmp_path / "raw.txt"}'
    assert run_script('slim/distillation/distill.py', args) == 2
    assert 'image not found' in capsys.readouterr().err.splitlines()[-1]


def test_unlabeled_segmentation_batches_are_transformed_images_only(tiny_seg):
    """Full batches of the listed images; a list shorter than a batch still gives one."""
    for listed, batch_size in (('train.txt', 4), ('test.txt', 5)):
        cfg = cfgmod.load_config(os.path.join(CAMVID, 'distill_pixel_kd_unlabeled.yml'), seg_opts(
            tiny_seg, f'distill.unlabeled.image_list={listed}', f'distill.unlabeled.batch_size={batch_size}'))
        task = task_of(cfg)
        with open(os.path.join(tiny_seg, listed)) as f:
            images = sum(1 for line in f if line.strip())
        sizes = [list(b['img'].shape) for b in task.batches(task.unlabeled_reader()) if set(b) == {'img'}]
        expected = [[batch_size, 3, 64, 80]] * (images // batch_size) or [[images, 3, 64, 80]]
        assert sizes == expected, (listed, images)
    # The raw images get the training set's own transforms: same random draws, same pixels.
    opts = seg_opts(tiny_seg, 'distill.unlabeled.image_list=train.txt', 'train_dataset.transforms=[{type: '
                    'ResizeStepScaling, min_scale_factor: 0.5, max_scale_factor: 1.5, scale_step_size: 0.25}, '
                    '{type: RandomPaddingCrop, crop_size: [48, 40]}, {type: RandomHorizontalFlip}, {type: Normalize}]')
    task = task_of(cfgmod.load_config(os.path.join(CAMVID, 'distill_pixel_kd_unlabeled.yml'), opts))
    labelled, raw = task.train_reader().dataset, task.unlabeled_reader().dataset
    for seed in range(4):
        random.seed(seed), np.random.seed(seed)  # PaddleSeg's transforms draw from both
        expected = labelled[0]['img']
        random.seed(seed), np.random.seed(seed)
        np.testing.assert_array_equal(raw[raw.paths.index(labelled.file_list[0][0])]['img'], expected)
