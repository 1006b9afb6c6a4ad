"""COCO-format data: a VOC folder split to COCO JSON, then training,
evaluation (AP@[.5:.95] and per-class AP over every test image) and
distillation on it; malformed or inconsistent files are one error line."""
import json
import os

import pytest

from ppkd import config as cfgmod
from ppkd.data.split import split_voc
from ppkd.errors import PPKDError

from conftest import CONFIGS, run_script, tiny_opts

pytestmark = pytest.mark.smoke


@pytest.fixture(scope='module')
def coco_root(tiny_voc, tmp_path_factory):
    """The tiny VOC set split into COCO JSON lists in another folder."""
    out = str(tmp_path_factory.mktemp('coco'))
    split_voc(tiny_voc, ratio=0.6, seed=0, out_dir=out, fmt='coco')
    return out


def _config(tmp_path, student=os.path.join(CONFIGS, 'demo', 'student_yolov3_mobilenet_v1_x0.5.yml')):
    path = tmp_path / 'coco_student.yml'
    path.write_text(f'_BASE_: [{student}, {os.path.join(CONFIGS, "datasets", "coco_lists.yml")}]\n')
    return str(path)


def test_split_writes_coco_json_matching_the_voc_lists(coco_root):
    train = json.load(open(os.path.join(coco_root, 'trainval.json')))
    test = json.load(open(os.path.join(coco_root, 'test.json')))
    lines = open(os.path.join(coco_root, 'test.txt')).read().split('\n')
    assert [i['file_name'] for i in test['images']] == [line.split()[0] for line in lines if line]
    names = open(os.path.join(coco_root, 'label_list.txt')).read().split()
    assert [c['name'] for c in train['categories']] == names
    assert all(len(a['bbox']) == 4 and a['bbox'][2] > 0 for a in train['annotations'])


def test_train_eval_and_distill_on_coco(coco_root, tmp_path, capsys):
    cfg = _config(tmp_path)
    opts = tiny_opts(coco_root)
    assert run_script('tools/train.py', ['-c', cfg, '--eval', '--output_dir', str(tmp_path / 's'), '-o', *opts]) == 0
    capsys.readouterr()
    assert run_script('tools/eval.py', ['-c', cfg, '--json', '-o', *opts,
                                        f'weights={tmp_path / "s" / "model_final.pdparams"}']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    n_test = len(json.load(open(os.path.join(coco_root, 'test.json')))['images'])
    assert result['images'] == n_test and 'AP50' in result and 0 <= result['mAP'] <= result['AP50'] <= 100
    assert list(result['per_class']) == open(os.path.join(coco_root, 'label_list.txt')).read().split()
    distill = tmp_path / 'coco_distill.yml'
    distill.write_text(f'_BASE_: [{cfg}]\ndistill:\n  losses: [YOLOv3FineGrainedDistill]\n'
                       'YOLOv3FineGrainedDistill:\n  weight: 0.01\n')
    # A teacher trained on the COCO split (its class order: the split's sorted names).
    teacher_cfg = tmp_path / 'coco_teacher.yml'
    teacher_cfg.write_text(f'_BASE_: [{os.path.join(CONFIGS, "demo", "teacher_yolov3_r18.yml")}, '
                           f'{os.path.join(CONFIGS, "datasets", "coco_lists.yml")}]\n')
    assert run_script('tools/train.py', ['-c', str(teacher_cfg), '--output_dir', str(tmp_path / 't'), '-o', *opts]) == 0
    assert run_script('slim/distillation/distill.py', [
        '-c', str(distill), '-t', str(teacher_cfg), '--teacher_pretrained', str(tmp_path / 't' / 'model_final.pdparams'),
        '--eval', '--output_dir', str(tmp_path / 'd'), '--teacher_opt', f'dataset_dir={coco_root}', '-o', *opts]) == 0
    with open(tmp_path / 'd' / 'metrics.jsonl') as f:
        assert '"AP50"' in f.read()


@pytest.mark.parametrize('damage, message', [
    (lambda d: '{"images": [', 'malformed JSON'),
    (lambda d: json.dumps({**d, 'annotations': [{**d['annotations'][0], 'category_id': 99}]}),
     'has unknown category id 99'),
    (lambda d: json.dumps({**d, 'images': [{**d['images'][0], 'file_name': 'JPEGImages/none.jpg'}]
                                          + d['images'][1:]}), 'image file not found'),
])
def test_bad_coco_files_are_named(coco_root, tmp_path, damage, message):
    bad = tmp_path  # a sibling of coco_root: the files' relative paths still hold
    for name in ('trainval.json', 'test.json', 'label_list.txt'):
        (bad / name).write_text(open(os.path.join(coco_root, name)).read())
    data = json.load(open(bad / 'trainval.json'))
    (bad / 'trainval.json').write_text(damage(data))
    cfg = cfgmod.load_config(_config(tmp_path), tiny_opts(str(bad)))
    with pytest.raises(PPKDError, match=message) as e:
        cfg['TrainDataset'].parse_dataset()
    assert 'trainval.json' in str(e.value)
