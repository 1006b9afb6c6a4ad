"""SSD: training on the pinned stack (the hard-mining type-promotion fix),
the weighted soft KL against NumPy, SSDDistill on MultiBox's sample, the
prior-mismatch refusal, and an end-to-end distill.py run."""
import json
import os

import numpy as np
import paddle
import pytest

from ppkd import compat
from ppkd import config as cfgmod
from ppkd.builder import build_distiller, build_model
from ppkd.data.loader import build_reader, epoch_batches
from ppkd.errors import PPKDError
from ppkd.losses import weighted_soft_kl

from conftest import CONFIGS, run_script, tiny_opts

pytestmark = pytest.mark.smoke

SSD_CFG = os.path.join(CONFIGS, 'bccd', 'ssd')
# The tiny set has 4 classes; 96 px keeps SSD-MobileNetV1's six levels (3, 2, 1, 1, 1, 1 cells).
SSD_TINY = ['num_classes=4', 'input_size=96']


def _cfg(name, root, *extra):
    return cfgmod.load_config(os.path.join(SSD_CFG, name), tiny_opts(root, *SSD_TINY, *extra))


@pytest.fixture(scope='module')
def ssd_teacher(tiny_voc, tmp_path_factory):
    """An (untrained) SSD-MobileNetV1 teacher with the student's priors."""
    path = str(tmp_path_factory.mktemp('ssd_teacher') / 'teacher.pdparams')
    paddle.save(build_model(_cfg('teacher_ssd_mobilenet_v1.yml', tiny_voc)).state_dict(), path)
    return path


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_weighted_soft_kl_matches_numpy(temperature):
    rng = np.random.RandomState(0)
    s, t = rng.randn(7, 5).astype('float32'), rng.randn(7, 5).astype('float32')
    log_t, log_s = _np_log_softmax(t / temperature), _np_log_softmax(s / temperature)
    assert np.allclose(np.exp(log_t).sum(-1), 1.0)  # rows are distributions
    w = np.array([1.5, 1.0, 1.0, 1.0, 1.0])  # background at index 0
    expected = temperature ** 2 * sum(w[c] * np.exp(log_t[r, c]) * (log_t[r, c] - log_s[r, c])
                                      for r in range(7) for c in range(5))
    got = weighted_soft_kl(paddle.to_tensor(s), paddle.to_tensor(t), temperature, 1.5, 1.0, background_index=0)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    same = weighted_soft_kl(paddle.to_tensor(t), paddle.to_tensor(t), temperature)
    assert abs(float(same)) < 1e-5  # KL of a distribution with itself


def test_weighted_soft_kl_gradient_reaches_student_not_teacher():
    student, teacher = paddle.nn.Linear(3, 4), paddle.nn.Linear(3, 4)
    x = paddle.randn([6, 3])
    weighted_soft_kl(student(x), teacher(x)).backward()
    assert float(student.weight.grad.abs().sum()) > 0 and teacher.weight.grad is None


@pytest.mark.skipif(not compat.FIXES['ssd_hard_mining_promotion'][0](), reason='fix not needed on this Paddle')
def test_ssd_training_needs_the_hard_mining_fix(tiny_voc):
    cfg = _cfg('student_ssd_mobilenet_v1.yml', tiny_voc)
    model = build_model(cfg)
    model.train()
    batch = next(epoch_batches(build_reader(cfg, 'Train')))
    assert np.isfinite(float(model(batch)['loss']))
    with compat.disabled('ssd_hard_mining_promotion'), pytest.raises(TypeError, match='Type promotion'):
        model(batch)


# (μ settings, the step's iteration of 5, μ at that step): fixed, and moving from 0 to 1 over the run
MU_SETTINGS = [([], 2, 0.8), (['SSDDistill.mu=0', 'SSDDistill.mu_end=1'], 1, 0.25),
               (['SSDDistill.mu=0', 'SSDDistill.mu_end=1'], 4, 1.0)]


@pytest.mark.parametrize('mu_opts, iteration, mu', MU_SETTINGS)
def test_ssd_distill_terms_on_multibox_sample(tiny_voc, ssd_teacher, mu_opts, iteration, mu):
    """μ (of this step, with `mu_end`) scales the student's own confidence
    loss, 1 − μ the soft term: the weighted KL over the student's positives
    and mined negatives; the bounded term is the teacher-bounded L2 over its
    positives, both / positives: recomputed here in NumPy from the recorded
    maps."""
    student_cfg = _cfg('distill_ssd.yml', tiny_voc, 'SSDDistill.nu=1.0', 'SSDDistill.margin=100.', *mu_opts)
    paddle.seed(0)  # the random teacher and student: the sample has positives
    model = build_distiller(student_cfg, _cfg('teacher_ssd_mobilenet_v1.yml', tiny_voc), ssd_teacher)
    model.begin_step(iteration, 5, 5)
    assert float(model.student.ssd_head.loss.conf_loss_weight) == pytest.approx(mu)
    model.train()
    out = model(next(epoch_batches(build_reader(student_cfg, 'Train'))))
    rec_s, rec_t = model.student_recorder.outputs, model.teacher_recorder.outputs
    levels = len(model.student.ssd_head.box_convs)
    per_prior = lambda maps, w: np.concatenate(  # noqa: E731
        [m[-1].numpy().transpose(0, 2, 3, 1).reshape(m[-1].shape[0], -1, w) for m in maps], axis=1)
    classes = model.student.ssd_head.num_classes
    s_scores = per_prior([rec_s[f'ssd_head.scores{i}'] for i in range(levels)], classes)
    t_scores = per_prior([rec_t[f'ssd_head.scores{i}'] for i in range(levels)], classes)
    s_boxes = per_prior([rec_s[f'ssd_head.boxes{i}'] for i in range(levels)], 4)
    t_boxes = per_prior([rec_t[f'ssd_head.boxes{i}'] for i in range(levels)], 4)
    targets_bbox, targets_label = (x.numpy() for x in rec_s['ssd_head.loss._bipartite_match_for_batch'][-1])
    sample = rec_s['ssd_head.loss._mine_hard_example'][-1].numpy()
    positive = targets_label[..., 0] != classes - 1
    num_pos = max(positive.sum(), 1)
    log_s, log_t = _np_log_softmax(s_scores[sample]), _np_log_softmax(t_scores[sample])
    w = np.ones(classes)
    w[-1] = 1.5
    soft = (np.exp(log_t) * (log_t - log_s) * w).sum() / num_pos
    np.testing.assert_allclose(float(out['distill_ssd_soft']), (1 - mu) * soft, rtol=1e-4, atol=1e-7)
    # a positive counts while the student is not (by the margin) better than the teacher
    err = ((s_boxes[positive] - targets_bbox[positive]) ** 2).sum(-1)
    teacher_err = ((t_boxes[positive] - targets_bbox[positive]) ** 2).sum(-1)
    bounded = (err * (err + 100. > teacher_err)).mean() if positive.any() else 0.
    np.testing.assert_allclose(float(out['distill_ssd_bounded']), bounded, rtol=1e-4)
    out['loss'].backward()
    assert all(p.grad is None for p in model.teacher.parameters())


def _level_priors(model, size):
    """Each level's priors (normalised x1, y1, x2, y2) on a `size` image."""
    feats = model.backbone({'image': paddle.zeros([1, 3, size, size])})
    return [p.numpy() for p in model.ssd_head.anchor_generator(feats, paddle.zeros([1, 3, size, size]))]


# VGG16-SSD's last extra blocks are unpadded 3x3 convolutions: below ~270 px its last level has no cells.
@pytest.mark.parametrize('config, size', [('student_ssd_mobilenet_v1.yml', 160), ('teacher_ssd_vgg16.yml', 272)])
def test_priors_keep_their_share_of_the_image_at_any_input_size(tiny_voc, config, size):
    """SSD300's prior sizes are pixels of a 300-pixel image: on a smaller
    input the smallest prior stays 20 % (MobileNet) or 10 % (VGG16) of the
    image, not 60 or 30 pixels, and every level's priors are centred on it
    (VGG16's fixed steps 100 and 300 would shift its last levels)."""
    smallest = []
    for side in (300, size):
        levels = _level_priors(build_model(_cfg(config, tiny_voc, f'input_size={side}')), side)
        smallest.append(min((p[:, 2] - p[:, 0]).min() for p in levels))
    np.testing.assert_allclose(smallest[1], smallest[0], rtol=1e-5)
    for p in levels:
        np.testing.assert_allclose(((p[:, 0] + p[:, 2]) / 2).mean(), 0.5, atol=1e-5)
        np.testing.assert_allclose(((p[:, 1] + p[:, 3]) / 2).mean(), 0.5, atol=1e-5)


def test_teacher_config_takes_the_students_input_size(tiny_voc):
    """The teacher reads the student's batches: its config takes the
    student's input_size (SSD's priors follow it) unless its own overrides
    set one, or its architecture cannot take that size."""
    student = _cfg('distill_ssd.yml', tiny_voc, 'input_size=160')
    teacher_path = os.path.join(SSD_CFG, 'teacher_ssd_mobilenet_v1.yml')
    teacher = cfgmod.load_teacher_config(teacher_path, ['num_classes=4'], student)
    assert teacher['input_size'] == 160 and teacher['SSDHead']['anchor_generator']['min_sizes'][0] == 32
    own = cfgmod.load_teacher_config(teacher_path, ['num_classes=4', 'input_size=300'], student)
    assert own['input_size'] == 300 and own['SSDHead']['anchor_generator']['min_sizes'][0] == 60
    yolo = cfgmod.load_teacher_config(os.path.join(CONFIGS, 'bccd', 'teacher_yolov3_r34.yml'), [],
                                      _cfg('distill_ssd.yml', tiny_voc, 'input_size=100'))
    assert yolo['input_size'] == 320  # YOLOv3 needs a multiple of 32


def test_teacher_with_other_priors_is_refused_with_the_remedies(tiny_voc, ssd_teacher, tmp_path):
    vgg = _cfg('teacher_ssd_vgg16.yml', tiny_voc, 'input_size=320')
    path = str(tmp_path / 'vgg.pdparams')
    paddle.save(build_model(vgg).state_dict(), path)
    with pytest.raises(PPKDError, match=r'priors differ: 6 levels with \[4, 6, 6, 6, 4, 4\] priors a location '
                                        r"\(teacher\) vs 6 with \[3, 6, 6, 6, 6, 6\].*Remedies: train a teacher "
                                        r"with the student's head layout"):
        build_distiller(_cfg('distill_ssd.yml', tiny_voc, 'input_size=320'), vgg, path)


def test_vgg16_teacher_with_the_student_layout(tiny_voc, tmp_path):
    """The remedy: a VGG16-SSD's weights load into VGGFromFC7 under the
    student's head; its priors and grids are the student's, so SSDDistill
    runs. Plain VGG under the same head has the student's prior settings
    but conv4_3's finer grid: refused at the first step, saying so."""
    vgg = build_model(_cfg('teacher_ssd_vgg16.yml', tiny_voc, 'input_size=300'))
    vgg_path = str(tmp_path / 'vgg.pdparams')
    paddle.save(vgg.state_dict(), vgg_path)
    teacher_cfg = _cfg('teacher_ssd_vgg16_student_layout.yml', tiny_voc, 'input_size=300',
                       f'pretrain_weights={vgg_path}')
    teacher = build_model(teacher_cfg)
    for key in ('conv_block_0.conv0.weight', 'conv_block_4.conv2.weight', 'fc6.weight', 'fc7.weight'):
        np.testing.assert_array_equal(teacher.backbone.state_dict()[key].numpy(), vgg.backbone.state_dict()[key].numpy())
    teacher_path = str(tmp_path / 'teacher.pdparams')
    paddle.save(teacher.state_dict(), teacher_path)
    for config in ('distill_ssd.yml', 'distill_ssd_confidence.yml'):
        student_cfg = _cfg(config, tiny_voc, 'input_size=300', 'TrainReader.batch_size=1')
        model = build_distiller(student_cfg, teacher_cfg, teacher_path)
        model.train()
        out = model(next(epoch_batches(build_reader(student_cfg, 'Train'))))
        assert np.isfinite(float(out['distill_ssd_soft'])) and ('distill_ssd_bounded' in out) == (config == 'distill_ssd.yml')
    student_cfg = _cfg('distill_ssd.yml', tiny_voc, 'input_size=300', 'TrainReader.batch_size=1')
    plain_cfg = _cfg('teacher_ssd_vgg16_student_layout.yml', tiny_voc, 'input_size=300', 'SSD.backbone=VGG',
                     'pretrain_weights=')
    plain_path = str(tmp_path / 'plain.pdparams')
    paddle.save(build_model(plain_cfg).state_dict(), plain_path)
    model = build_distiller(student_cfg, plain_cfg, plain_path)
    model.train()
    with pytest.raises(PPKDError, match=r"teacher's levels have \[\[38, 38\], \[19, 19\].* cells on this "
                                        r"300-pixel input, the student's \[\[19, 19\], \[10, 10\]"):
        model(next(epoch_batches(build_reader(student_cfg, 'Train'))))


@pytest.mark.parametrize('flag, mu_opts', [('--eval', []), ('--to_static', ['SSDDistill.mu=0', 'SSDDistill.mu_end=1'])])
def test_distill_cli_ssd_end_to_end(tiny_voc, ssd_teacher, tmp_path, flag, mu_opts):
    """Also compiled into one program, where μ moving from 0 to 1 must
    reach the step: the soft term's share is 1 at the first iteration and
    0 at the last."""
    code = run_script('slim/distillation/distill.py', [
        '-c', os.path.join(SSD_CFG, 'distill_ssd.yml'), '-t', os.path.join(SSD_CFG, 'teacher_ssd_mobilenet_v1.yml'),
        '--teacher_pretrained', ssd_teacher, flag, '--output_dir', str(tmp_path),
        '--teacher_opt', *SSD_TINY, f'dataset_dir={tiny_voc}', '-o', *tiny_opts(tiny_voc, *SSD_TINY, *mu_opts)])
    assert code == 0
    with open(tmp_path / 'metrics.jsonl') as f:
        rows = [json.loads(line) for line in f]
    soft = [r['distill_ssd_soft'] for r in rows if r['type'] == 'train']
    assert all(np.isfinite(soft))
    if flag == '--eval':
        assert any(r['type'] == 'eval' for r in rows)
    else:
        assert len(soft) >= 3 and soft[0] > 0 and soft[-1] == 0


@pytest.mark.parametrize('opt, message', [
    ('SSDDistill.mu_end=1.5', r'SSDDistill.mu_end must be a number in \[0, 1\], got 1.5'),
    ('SSDDistill.mu=-0.1', r'SSDDistill.mu must be a number in \[0, 1\], got -0.1')])
def test_mu_out_of_range_is_refused(tiny_voc, ssd_teacher, opt, message):
    with pytest.raises(PPKDError, match=message):
        build_distiller(_cfg('distill_ssd.yml', tiny_voc, opt), _cfg('teacher_ssd_mobilenet_v1.yml', tiny_voc),
                        ssd_teacher)
