"""The teacher is scored on the student's first test images before it
teaches: near zero, or far below its own record, is refused."""
import json
import os
import shutil

import pytest

from conftest import CONFIGS, run_script, tiny_opts
from ppkd.data.synthetic import make_shapes_voc
from ppkd.errors import PPKDError
from ppkd.teacher_check import check_teacher, recorded_score


class _Task:
    metric = 'mAP'

    def __init__(self, score, images):
        self.score, self.images = score, images

    def eval_reader(self, limit=None):
        return None

    def evaluate(self, model, reader):
        return {'mAP': self.score, 'images': self.images}


def _record(tmp_path, rows):
    weights = tmp_path / 'model_final.pdparams'
    weights.write_bytes(b'')
    with open(tmp_path / 'metrics.jsonl', 'w') as f:
        for row in rows:
            f.write(json.dumps(row) + '\n')
    return str(weights)


def test_recorded_score_is_the_last_evaluation_of_the_teachers_run(tmp_path):
    weights = _record(tmp_path, [{'type': 'train', 'loss': 1}, {'type': 'eval', 'mAP': 20., 'images': 72},
                                 {'type': 'eval', 'mAP': 31.5, 'images': 72}])
    assert recorded_score(weights, 'mAP') == (31.5, 72)
    assert recorded_score(weights, 'mIoU') is None
    assert recorded_score(str(tmp_path / 'elsewhere' / 'w.pdparams'), 'mAP') is None


@pytest.mark.parametrize('score, images, record, refused', [
    (0.3, 32, None, 'nothing to teach'),        # near zero, no record
    (0.3, 32, 40., 'nothing to teach'),         # near zero, once good
    (0.3, 32, 2., None),                        # near zero, and so it always was
    (12., 32, 40., 'far below'),                # under half its record, 28 points down
    (25., 32, 40., None),                       # within half
    (3., 32, 9., None),                         # under half but only 6 points: noise on few images
    (0.0, 8, 40., None),                        # too few images to judge by
])
def test_rules(tmp_path, score, images, record, refused):
    weights = _record(tmp_path, [] if record is None else [{'type': 'eval', 'mAP': record, 'images': 100}])
    if refused:
        with pytest.raises(PPKDError, match=refused + '.*--skip_teacher_check'):
            check_teacher(_Task(score, images), None, weights)
    else:
        assert check_teacher(_Task(score, images), None, weights)['mAP'] == score


def test_distill_refuses_a_teacher_far_below_its_record(tiny_teacher, tmp_path, capsys):
    data = make_shapes_voc(str(tmp_path / 'voc'), num_images=30, image_size=64, seed=2, test_ratio=0.6,
                           min_size=12, max_size=30, max_objects=2)  # 18 test images: enough to judge
    cfg, weights = tiny_teacher
    teacher_dir = tmp_path / 'teacher'
    teacher_dir.mkdir()
    shutil.copy(weights, teacher_dir / 'model_final.pdparams')
    with open(teacher_dir / 'metrics.jsonl', 'w') as f:
        f.write(json.dumps({'type': 'eval', 'mAP': 60.0, 'images': 18}) + '\n')
    args = ['-c', os.path.join(CONFIGS, 'demo', 'distill_l2.yml'), '-t', cfg,
            '--teacher_pretrained', str(teacher_dir / 'model_final.pdparams'), '--output_dir', str(tmp_path / 'out'),
            '-o', *tiny_opts(data)]
    assert run_script('slim/distillation/distill.py', args) == 2
    err = capsys.readouterr().err
    assert 'error: the teacher scores mAP' in err and 'on the first 18 test images' in err
    assert '(its own record: 60.00% over 18 images)' in err and not os.path.exists(tmp_path / 'out')
    assert run_script('slim/distillation/distill.py', args + ['--skip_teacher_check']) == 0
