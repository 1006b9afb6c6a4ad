import os
import runpy
import sys

import pytest

import ppkd  # noqa: F401  (first, as every entry point)
from ppkd.data.synthetic import make_shapes_voc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BCCD = os.path.normpath(os.path.join(ROOT, '..', 'shared', 'datasets', 'BCCD'))
CONFIGS = os.path.join(ROOT, 'configs')

# Tiny runs: 64 px, batch 2, one epoch, in-process loading. A teacher
# trained for seconds has BatchNorm statistics far from its activations, so
# its eval-mode outputs are huge: the L2 weight is scaled down to match.
TINY = ['YOLOv3L2Distill.weight=0.0001', 'input_size=64', 'epoch=1', 'worker_num=0', 'log_iter=1', 'TrainReader.batch_size=2',
        'EvalReader.batch_size=2', 'LearningRate.base_lr=0.0005', 'OptimizerBuilder.clip_grad_by_norm=10',
        'LearningRate.schedulers=[{name: PiecewiseDecay, milestones: [100], use_warmup: false}]']


# For runs compared bit for bit (a resumed run with an uninterrupted one): a
# run measures its CPU settings afresh, and another BLAS thread count
# changes the last bits of the sums.
PINNED_BLAS = ['cpu_blas_threads=1']


@pytest.fixture
def restored_cpu_settings():
    """Whatever a test sets, the process's CPU settings as they were after it."""
    from ppkd import threads
    blocktime, blas, kept = threads.get_blocktime(), threads.get_blas_threads(), threads._blas_threads
    yield
    if blocktime is not None:
        threads.set_blocktime(blocktime)
    if blas is not None:
        threads.set_blas_threads(blas)
    threads._blas_threads = kept


@pytest.fixture(scope='session')
def tiny_voc(tmp_path_factory):
    """12 generated images at 64 px, 8 for training and 4 for testing."""
    root = str(tmp_path_factory.mktemp('tiny_voc'))
    return make_shapes_voc(root, num_images=12, image_size=64, seed=1, test_ratio=0.34,
                           min_size=12, max_size=30, max_objects=2)


def tiny_opts(root, *extra):
    return TINY + [f'dataset_dir={root}'] + list(extra)


def run_script(relpath, argv):
    """Run a command-line script's main() in this process; returns its exit
    code (0 when it returns normally). The environment is restored after:
    a script may set flags for its own process (tools/export.py chooses
    Paddle's legacy IR), which must not leak into the tests that follow."""
    old_environ, old_argv = dict(os.environ), sys.argv
    module = runpy.run_path(os.path.join(ROOT, relpath), run_name='ppkd_test')
    sys.argv = [relpath] + list(argv)
    try:
        module['main'](list(argv))
        return 0
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = old_argv
        os.environ.clear()
        os.environ.update(old_environ)


@pytest.fixture(scope='session')
def tiny_teacher(tiny_voc, tmp_path_factory):
    """A demo teacher trained one tiny epoch: (config path, weights path)."""
    out = str(tmp_path_factory.mktemp('teacher'))
    cfg = os.path.join(CONFIGS, 'demo', 'teacher_yolov3_r18.yml')
    assert run_script('tools/train.py', ['-c', cfg, '--output_dir', out, '-o'] + tiny_opts(tiny_voc)) == 0
    return cfg, os.path.join(out, 'model_final.pdparams')


# Faster R-CNN on the tiny set: 4 classes; a random-weight teacher's
# eval-mode features are far from unit scale, so the hint weight is scaled
# down to keep the runs finite.
FRCNN_TINY = ['num_classes=4', 'FasterRCNNHint.weight=0.000001']


@pytest.fixture(scope='session')
def frcnn_teacher(tiny_voc, tmp_path_factory):
    """An (untrained) ResNet50-FPN Faster R-CNN teacher saved to disk."""
    import paddle
    from ppkd import config as cfgmod
    from ppkd.builder import build_model
    cfg = cfgmod.load_config(os.path.join(CONFIGS, 'bccd', 'teacher_faster_rcnn_r50_fpn.yml'),
                             tiny_opts(tiny_voc, *FRCNN_TINY))
    path = str(tmp_path_factory.mktemp('frcnn_teacher') / 'teacher.pdparams')
    paddle.save(build_model(cfg).state_dict(), path)
    return path
