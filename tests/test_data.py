import logging
import os
import shutil
import subprocess
import sys

import pytest

from ppkd import config as cfgmod
from ppkd.data.split import split_voc
from ppkd.data.synthetic import make_shapes_voc
from ppkd.data.voc import CheckedVOCDataSet, parse_voc_xml
from ppkd.errors import PPKDError

from conftest import BCCD, CONFIGS, ROOT, tiny_opts


def _copy(tiny_voc, tmp_path):
    root = str(tmp_path / 'voc')
    shutil.copytree(tiny_voc, root)
    return root


def _dataset(root, anno='trainval.txt'):
    ds = CheckedVOCDataSet(dataset_dir=root, anno_path=anno, label_list='label_list.txt',
                           data_fields=['image', 'gt_bbox', 'gt_class', 'difficult'])
    ds.parse_dataset()
    return ds


def test_demo_data_is_deterministic(tmp_path):
    a = make_shapes_voc(str(tmp_path / 'a'), num_images=5, image_size=64, seed=3)
    b = make_shapes_voc(str(tmp_path / 'b'), num_images=5, image_size=64, seed=3)
    for sub in ('Annotations/shapes_0004.xml', 'JPEGImages/shapes_0004.jpg', 'trainval.txt'):
        assert open(os.path.join(a, sub), 'rb').read() == open(os.path.join(b, sub), 'rb').read()


def test_split_ratio_seed_and_report(tiny_voc, tmp_path):
    root = _copy(tiny_voc, tmp_path)
    os.remove(os.path.join(root, 'Annotations', 'shapes_0000.xml'))
    open(os.path.join(root, 'Annotations', 'shapes_0001.xml'), 'w').write('<annotation><size>')
    out = split_voc(root, ratio=0.7, seed=5)
    assert out['trainval'] + out['test'] == 10 and out['test'] == 3
    assert out['skipped'] == {'shapes_0000': 'no annotation',
                              'shapes_0001': out['skipped']['shapes_0001']}
    assert 'malformed XML' in out['skipped']['shapes_0001']
    lines = open(os.path.join(root, 'trainval.txt')).read().split('\n')
    assert lines[0].startswith('JPEGImages/') and ' Annotations/' in lines[0]
    first = open(os.path.join(root, 'test.txt')).read()
    split_voc(root, ratio=0.7, seed=5)
    assert open(os.path.join(root, 'test.txt')).read() == first
    assert open(os.path.join(root, 'label_list.txt')).read().split() == sorted(out['classes'])
    with pytest.raises(PPKDError, match='ratio must be between 0 and 1'):
        split_voc(root, ratio=1.5)


def test_split_skips_file_names_with_spaces_and_refuses_folders_with_them(tiny_voc, tmp_path):
    """List lines are space-separated: an image named `a b.jpg` cannot be
    listed (it is skipped with the reason), nor can any image under a
    folder with a space in the path the lists hold."""
    root = _copy(tiny_voc, tmp_path)
    for sub in ('JPEGImages/shapes_0002.jpg', 'Annotations/shapes_0002.xml'):
        os.replace(os.path.join(root, sub), os.path.join(root, sub.replace('shapes_0002', 'shapes 0002')))
    out = split_voc(root, ratio=0.7)
    assert 'has a space' in out['skipped']['shapes 0002']
    listed = open(os.path.join(root, 'trainval.txt')).read() + open(os.path.join(root, 'test.txt')).read()
    assert len(listed.splitlines()) == 11 and all(len(line.split()) == 2 for line in listed.splitlines())
    spaced = str(tmp_path / 'my data')
    shutil.copytree(tiny_voc, spaced)
    with pytest.raises(PPKDError, match='a space in the path the lists would hold'):
        split_voc(spaced, out_dir=str(tmp_path / 'lists'))
    assert not os.path.exists(tmp_path / 'lists' / 'trainval.txt')


@pytest.mark.skipif(not os.path.isdir(BCCD), reason='BCCD not available')
def test_split_bccd_official_sets_into_another_folder(tmp_path, caplog):
    out = split_voc(BCCD, imagesets=('trainval', 'test'), out_dir=str(tmp_path))
    assert (out['trainval'], out['test']) == (292, 72)
    assert out['classes'] == ['Platelets', 'RBC', 'WBC']
    with caplog.at_level(logging.WARNING, logger='ppkd.data'):
        ds = _dataset(str(tmp_path))
    assert len(ds.roidbs) == 292
    # BCCD's two zero-area boxes are dropped and counted.
    assert any('dropped 2 zero-area or inverted boxes in 2 annotation files' in r.message
               for r in caplog.records)
    caplog.clear()  # another reader of the same list (int8's calibration) says it once only
    with caplog.at_level(logging.WARNING, logger='ppkd.data'):
        assert len(_dataset(str(tmp_path)).roidbs) == 292
    assert not any('zero-area' in r.message for r in caplog.records)


def test_script_cli(tiny_voc, tmp_path):
    root = _copy(tiny_voc, tmp_path)
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'split_voc.py'), root, '--ratio', '0.5'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'trainval: 6 images, test: 6 images' in r.stdout
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'split_voc.py'), str(tmp_path / 'none')],
                       capture_output=True, text=True)
    assert r.returncode == 2
    # Paddle prints its own import-time notices first; ppkd adds one line.
    assert r.stderr.strip().splitlines()[-1] == f'error: dataset root does not exist: {tmp_path / "none"}'
    assert 'Traceback' not in r.stderr


def test_missing_dataset_root():
    with pytest.raises(PPKDError, match='dataset_dir does not exist: /no/such'):
        _dataset('/no/such')


def test_list_line_with_missing_image_or_xml(tiny_voc, tmp_path):
    root = _copy(tiny_voc, tmp_path)
    os.remove(os.path.join(root, 'JPEGImages', 'shapes_0006.jpg'))
    with pytest.raises(PPKDError, match=r'trainval.txt:\d+: image not found: .*shapes_0006.jpg'):
        _dataset(root)
    root = _copy(tiny_voc, tmp_path / 'b')
    os.remove(os.path.join(root, 'Annotations', 'shapes_0007.xml'))
    with pytest.raises(PPKDError, match=r'annotation not found: .*shapes_0007.xml'):
        _dataset(root)


def test_malformed_xml_named(tiny_voc, tmp_path):
    root = _copy(tiny_voc, tmp_path)
    open(os.path.join(root, 'Annotations', 'shapes_0005.xml'), 'w').write('<annotation><size>')
    with pytest.raises(PPKDError, match=r'shapes_0005.xml: malformed XML'):
        _dataset(root)


def test_unknown_class_named_with_file(tiny_voc, tmp_path):
    root = _copy(tiny_voc, tmp_path)
    p = os.path.join(root, 'Annotations', 'shapes_0009.xml')
    text = open(p).read()
    for c in ('circle', 'square', 'triangle', 'cross'):
        text = text.replace(f'<name>{c}</name>', '<name>hexagon</name>')
    open(p, 'w').write(text)
    with pytest.raises(PPKDError, match=r"shapes_0009.xml: class 'hexagon' is not in the label list"):
        _dataset(root)


def test_zero_area_and_inverted_boxes_dropped(tmp_path):
    p = tmp_path / 'a.xml'
    p.write_text('<annotation><size><width>100</width><height>80</height></size>'
                 '<object><name>a</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>'
                 '<object><name>a</name><bndbox><xmin>30</xmin><ymin>10</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>'
                 '<object><name>a</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>50</xmax><ymax>90</ymax></bndbox></object>'
                 '</annotation>')
    ann, dropped = parse_voc_xml(str(p), {'a': 0})
    assert dropped == 2
    assert ann['boxes'].tolist() == [[1, 2, 50, 79]]


@pytest.mark.smoke
def test_reader_transform_error_does_not_hang(tiny_voc, tmp_path):
    """A corrupt image with worker_num 0 used to hang the process; now it
    is an error naming the image. Run in a child with a timeout, so a
    regression fails instead of hanging the suite."""
    root = _copy(tiny_voc, tmp_path)
    open(os.path.join(root, 'JPEGImages', 'shapes_0006.jpg'), 'wb').write(b'not a jpeg\xff\xd9')  # ends like a JPEG: the decoder fails
    code = ('import ppkd, sys\nfrom ppkd import config as C\nfrom ppkd.errors import PPKDError\n'
            f'cfg = C.load_config({os.path.join(CONFIGS, "demo", "student_yolov3_mobilenet_v1_x0.5.yml")!r}, '
            f'{tiny_opts(root)!r} + ["TrainReader.shuffle=false"])\n'
            'loader = C.build(cfg, "TrainReader")(cfg["TrainDataset"], 0)\n'
            'try:\n    [b for b in loader]\nexcept PPKDError as e:\n    print("CAUGHT", e); sys.exit(3)\n')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr[-2000:]
    assert 'shapes_0006.jpg: reader transform failed' in r.stdout


@pytest.mark.smoke
def test_zero_byte_test_image_with_workers_is_one_line_and_exits(tiny_voc, tiny_teacher, tmp_path):
    """tools/eval.py with worker_num 2 and an empty test image: the worker's
    error comes back as one line naming the image, and the process exits
    (it used to wait forever for the workers)."""
    root = _copy(tiny_voc, tmp_path)
    with open(os.path.join(root, 'test.txt')) as f:
        first = f.readline().split()[0]
    open(os.path.join(root, first), 'wb').close()
    cfg, weights = tiny_teacher
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'eval.py'), '-c', cfg, '-o',
                        *tiny_opts(root, 'worker_num=2'), f'weights={weights}'],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and first in errors[0] and 'Traceback' not in errors[0]


def test_loader_error_needs_the_compat_fix(tiny_voc, tmp_path):
    """Without ppkd's compat fix the same failure blocks forever: the child
    must still be running when the timeout hits."""
    root = _copy(tiny_voc, tmp_path)
    open(os.path.join(root, 'JPEGImages', 'shapes_0006.jpg'), 'wb').write(b'not a jpeg\xff\xd9')  # ends like a JPEG: the decoder fails
    code = ('import ppkd, sys\nfrom ppkd import compat\ncompat.FIXES.clear()\nfrom ppkd import config as C\n'
            f'cfg = C.load_config({os.path.join(CONFIGS, "demo", "student_yolov3_mobilenet_v1_x0.5.yml")!r}, '
            f'{tiny_opts(root)!r} + ["TrainReader.shuffle=false"])\n'
            'loader = C.build(cfg, "TrainReader")(cfg["TrainDataset"], 0)\n[b for b in loader]\n')
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, '-c', code], capture_output=True, timeout=40)


@pytest.mark.smoke
def test_worker_killed_in_the_middle_of_a_message_does_not_hang_the_exit(tiny_voc, tmp_path):
    """A worker stopped after a loading error may have written part of a
    batch to the data queue; Paddle's shutdown reads that queue dry, and a
    message that never ends blocks the read forever (1 exit in 25 under
    load). Here, as the workers are stopped, the queue holds a message's
    length and none of its bytes: the error must still come back."""
    root = _copy(tiny_voc, tmp_path)
    open(os.path.join(root, 'JPEGImages', 'shapes_0006.jpg'), 'wb').write(b'not a jpeg\xff\xd9')
    code = ('import multiprocessing, os, struct\nimport multiprocessing.process as processes\n'
            'from ppkd import config as C\nfrom ppkd.data.loader import build_reader, stop_workers_on_error\n'
            f'cfg = C.load_config({os.path.join(CONFIGS, "demo", "student_yolov3_mobilenet_v1_x0.5.yml")!r}, '
            f'{tiny_opts(root, "worker_num=2")!r} + ["TrainReader.shuffle=false"])\n'
            'batches = iter(build_reader(cfg, "Train").dataloader)\n'
            'terminate = processes.BaseProcess.terminate\n'
            'def stopped_mid_message(worker):\n'
            '    unfinished = multiprocessing.Queue()\n'
            '    os.write(unfinished._writer.fileno(), struct.pack("!i", 1 << 20))  # a frame\'s length: 1 MB, none sent\n'
            '    batches._data_queue = unfinished\n'
            '    terminate(worker)\n'
            'processes.BaseProcess.terminate = stopped_mid_message\n'
            'try:\n    [b for b in stop_workers_on_error(batches)]\n'
            'except Exception as e:\n    print("failed:", e)\n')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert 'failed:' in r.stdout and 'shapes_0006.jpg' in r.stdout, r.stderr[-2000:]


def test_evaluation_scores_every_listed_image(tiny_voc, tmp_path):
    """No dropped last batch, and background-only images are scored too
    (their false positives count)."""
    from ppkd.builder import build_model
    from ppkd.engine.evaluator import evaluate
    root = _copy(tiny_voc, tmp_path)
    with open(os.path.join(root, 'test.txt')) as f:
        first = f.readline().split()
    shutil.copy(os.path.join(root, first[0]), os.path.join(root, 'JPEGImages', 'empty.jpg'))
    with open(os.path.join(root, 'Annotations', 'empty.xml'), 'w') as f:
        f.write('<annotation><size><width>64</width><height>64</height><depth>3</depth></size></annotation>\n')
    with open(os.path.join(root, 'test.txt'), 'a') as f:
        f.write('JPEGImages/empty.jpg Annotations/empty.xml\n')
    with open(os.path.join(root, 'test.txt')) as f:
        listed = sum(1 for line in f if line.strip())
    assert listed == 5
    cfg = cfgmod.load_config(os.path.join(CONFIGS, 'demo', 'student_yolov3_mobilenet_v1_x0.5.yml'),
                             tiny_opts(root, 'EvalReader.batch_size=3'))
    assert evaluate(cfg, build_model(cfg))['images'] == 5
