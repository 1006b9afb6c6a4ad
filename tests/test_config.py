import glob
import re
import os

import pytest

from ppdet.core import workspace

import ppkd.losses  # noqa: F401  (registers the losses)
from ppkd import config as cfgmod
from ppkd.errors import PPKDError

from conftest import CONFIGS

STUDENT = os.path.join(CONFIGS, 'demo', 'student_yolov3_mobilenet_v1_x0.5.yml')


def test_parse_overrides_nested_and_typed():
    assert cfgmod.parse_overrides(['a.b=1', 'c=[1, 2]', 'd=true', 'e=x']) == \
        {'a': {'b': 1}, 'c': [1, 2], 'd': True, 'e': 'x'}
    with pytest.raises(PPKDError, match="'novalue' is not key=value"):
        cfgmod.parse_overrides(['novalue'])


def test_missing_config_is_named(tmp_path):
    with pytest.raises(PPKDError, match='config not found: .*nope.yml'):
        cfgmod.load_config(str(tmp_path / 'nope.yml'))


def test_missing_base_is_named(tmp_path):
    p = tmp_path / 'c.yml'
    p.write_text('_BASE_: [gone.yml]\narchitecture: YOLOv3\n')
    with pytest.raises(PPKDError, match='gone.yml'):
        cfgmod.load_config(str(p))


def test_invalid_yaml_is_named(tmp_path):
    p = tmp_path / 'bad.yml'
    p.write_text('a: [1, 2\n')
    with pytest.raises(PPKDError, match=r'bad.yml: invalid YAML'):
        cfgmod.load_config(str(p))


def test_not_a_model_config(tmp_path):
    p = tmp_path / 'x.yml'
    p.write_text('epoch: 3\n')
    with pytest.raises(PPKDError, match='no "architecture" key'):
        cfgmod.load_config(str(p))


def test_input_size_and_dataset_dir_apply_everywhere():
    cfg = cfgmod.load_config(STUDENT, ['input_size=224', 'dataset_dir=/data/x'])
    train_ops = cfg['TrainReader']['batch_transforms']
    assert {'target_size': [224]}.items() <= train_ops[0]['BatchRandomResize'].items()
    assert cfg['EvalReader']['sample_transforms'][1]['Resize']['target_size'] == [224, 224]
    assert cfg['TestReader']['inputs_def']['image_shape'] == [3, 224, 224]
    assert cfg['TrainDataset'].dataset_dir == cfg['EvalDataset'].dataset_dir == '/data/x'
    with pytest.raises(PPKDError, match='multiple of 32'):
        cfgmod.load_config(STUDENT, ['input_size=100'])


def test_override_reaches_dataset_object_and_rejects_unknown_field():
    cfg = cfgmod.load_config(STUDENT, ['TrainDataset.anno_path=other.txt'])
    assert cfg['TrainDataset'].anno_path == 'other.txt'
    with pytest.raises(PPKDError, match="TrainDataset.nonsense: CheckedVOCDataSet has no field 'nonsense'"):
        cfgmod.load_config(STUDENT, ['TrainDataset.nonsense=1'])


def test_configs_are_isolated():
    a = cfgmod.load_config(STUDENT, ['MobileNet.scale=0.25'])
    b = cfgmod.load_config(STUDENT)
    assert a['MobileNet']['scale'] == 0.25 and b['MobileNet']['scale'] == 0.5


def test_loading_leaves_ppdet_registry_untouched():
    """ppdet's _load_config_with_base merges a file's first base into the
    process-wide config, so a Momentum optimizer from one config leaked into
    an Adam one loaded later."""
    from ppdet.core import workspace
    cfgmod.load_config(os.path.join(CONFIGS, 'bccd', 'student_yolov3_mobilenet_v1.yml'))
    assert dict(workspace.get_registered_modules()['OptimizerBuilder']) == {}
    demo = cfgmod.load_config(os.path.join(CONFIGS, 'demo', 'teacher_yolov3_r18.yml'))
    assert demo['OptimizerBuilder']['optimizer'] == {'type': 'Adam'}


def test_base_cycle_refused(tmp_path):
    (tmp_path / 'a.yml').write_text('_BASE_: [b.yml]\n')
    (tmp_path / 'b.yml').write_text('_BASE_: [a.yml]\n')
    with pytest.raises(PPKDError, match='includes itself'):
        cfgmod.load_config(str(tmp_path / 'a.yml'))


SHIPPED = sorted(p for p in glob.glob(os.path.join(CONFIGS, '*', '*.yml'))
                 if os.path.basename(os.path.dirname(p)) in ('demo', 'bccd', 'voc')
                 and not os.path.basename(p).startswith('_'))


@pytest.mark.parametrize('path', SHIPPED, ids=lambda p: os.path.relpath(p, CONFIGS))
def test_shipped_configs_load_and_name_known_losses(path):
    cfg = cfgmod.load_config(path)
    assert cfg['num_classes'] and cfg['TrainDataset'].dataset_dir == cfg['dataset_dir']
    for name in (cfg.get('distill') or {}).get('losses', []):
        assert name in workspace.get_registered_modules(), name


@pytest.mark.parametrize('override, message', [
    ('epcoh=3', "unknown top-level key 'epcoh' (did you mean epoch?)"),
    ('TrainReader.batchsize=4', "unknown TrainReader key 'batchsize' (did you mean batch_size?)"),
    ('YOLOv3Loss.ignore_threshhold=0.5', "unknown YOLOv3Loss key 'ignore_threshhold' (did you mean ignore_thresh?)"),
    ('epoch=0', 'epoch must be a positive integer, got 0'),
    ('TrainReader.batch_size=0', 'TrainReader.batch_size must be a positive integer, got 0'),
    ('EvalReader.batch_size=two', "EvalReader.batch_size must be a positive integer, got 'two'"),
])
def test_overrides_that_nothing_would_read_or_that_train_nothing_are_refused(override, message):
    with pytest.raises(PPKDError, match=re.escape(message)):
        cfgmod.load_config(STUDENT, [override])


def test_keys_ppdet_reads_through_kwargs_and_command_line_keys_pass():
    cfg = cfgmod.load_config(STUDENT, ['TrainReader.use_shared_memory=false', 'TrainReader.mixup_epoch=3',
                                       'weights=w.pdparams', 'distill.losses=[YOLOv3L2Distill]'])
    assert cfg['TrainReader']['mixup_epoch'] == 3 and cfg['weights'] == 'w.pdparams'


def test_a_datasets_own_dataset_dir_wins_over_the_top_level_one():
    """PaddleDetection's way (`-o TrainDataset.dataset_dir=X`) is the more
    specific key: the config file's top-level dataset_dir must not undo it."""
    cfg = cfgmod.load_config(STUDENT, ['TrainDataset.dataset_dir=/data/train', 'EvalDataset.dataset_dir=/data/eval'])
    assert cfg['TrainDataset'].dataset_dir == '/data/train' and cfg['EvalDataset'].dataset_dir == '/data/eval'
    assert cfg['TestDataset'].dataset_dir == cfg['dataset_dir']
