"""End to end: the command-line tools on the tiny generated set."""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import BCCD, CONFIGS, PINNED_BLAS, ROOT, run_script, tiny_opts
from ppkd import heap

DISTILL = os.path.join(CONFIGS, 'demo', 'distill_l2.yml')
STUDENT = os.path.join(CONFIGS, 'demo', 'student_yolov3_mobilenet_v1_x0.5.yml')


def _distill(teacher, out, *extra, opts=()):
    cfg, weights = teacher
    return run_script('slim/distillation/distill.py',
                      ['-c', DISTILL, '-t', cfg, '--teacher_pretrained', weights, '--output_dir', str(out),
                       *extra, '-o', *opts])


@pytest.mark.smoke
def test_distill_train_eval_and_logs(tiny_voc, tiny_teacher, tmp_path, caplog):
    with caplog.at_level('INFO'):
        assert _distill(tiny_teacher, tmp_path, '--eval', '--amp', opts=tiny_opts(tiny_voc)) == 0
    log = '\n'.join(r.getMessage() for r in caplog.records)
    for field in ('Epoch: [0]', 'learning_rate:', 'det_loss:', 'distill_l2:', 'loss:', 'eta:',
                  'batch_cost:', 'ips:', 'mAP(0.50, 11point)', 'CPU threads:',
                  '--amp needs a GPU') + (('heap: freed memory kept',) if heap.applies_here() else ()):
        assert field in log, field
    for name in ('model_final', 'best_model'):
        assert os.path.isfile(tmp_path / f'{name}.pdparams')
    assert not [f for f in os.listdir(tmp_path) if '.tmp' in f]
    # The student checkpoint is a plain detector for tools/eval.py.
    code = run_script('tools/eval.py', ['-c', STUDENT, '-o', *tiny_opts(tiny_voc),
                                         f'weights={tmp_path / "model_final.pdparams"}'])
    assert code == 0


@pytest.mark.smoke
def test_resume_is_exact(tiny_voc, tiny_teacher, tmp_path):
    two = tiny_opts(tiny_voc, 'epoch=2', *PINNED_BLAS)
    assert _distill(tiny_teacher, tmp_path / 'straight', opts=two) == 0
    assert _distill(tiny_teacher, tmp_path / 'split', opts=two + ['epoch=1']) == 0
    assert _distill(tiny_teacher, tmp_path / 'split', '-r', str(tmp_path / 'split' / 'model_final'),
                    opts=two) == 0
    a = paddle.load(str(tmp_path / 'straight' / 'model_final.pdparams'))
    b = paddle.load(str(tmp_path / 'split' / 'model_final.pdparams'))
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-4, atol=1e-5, err_msg=k)
    sa = paddle.load(str(tmp_path / 'straight' / 'model_final.pdstate'))
    sb = paddle.load(str(tmp_path / 'split' / 'model_final.pdstate'))
    assert sa['epoch'] == sb['epoch'] == 1
    assert sa['optimizer']['LR_Scheduler'] == sb['optimizer']['LR_Scheduler']


@pytest.mark.smoke
def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_voc, tiny_teacher, tmp_path, capsys):
    assert _distill(tiny_teacher, tmp_path, opts=tiny_opts(tiny_voc)) == 0
    good = open(tmp_path / 'model_final.pdparams', 'rb').read()
    code = _distill(tiny_teacher, tmp_path, '-r', str(tmp_path / 'model_final'),
                    opts=tiny_opts(tiny_voc, 'epoch=2', 'YOLOv3L2Distill.weight=1e38'))  # overflows float32
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    # The weighted term overflows: the loss or, one step later, the weights stop the run.
    assert err[-1].startswith(('error: loss became inf at epoch 1', 'error: parameter student.'))
    assert 'stopped, the last good checkpoint' in err[-1]
    assert open(tmp_path / 'model_final.pdparams', 'rb').read() == good


@pytest.mark.smoke
def test_to_static_distill(tiny_voc, tiny_teacher, tmp_path):
    assert _distill(tiny_teacher, tmp_path, '--to_static', opts=tiny_opts(tiny_voc)) == 0
    assert os.path.isfile(tmp_path / 'model_final.pdparams')


@pytest.mark.parametrize('argv, message', [
    (['-c', '/nope.yml'], 'config not found: /nope.yml'),
    (['-c', STUDENT, '-o', 'dataset_dir=/no/data'], 'dataset_dir does not exist: /no/data'),
])
def test_bad_input_is_one_line(argv, message, tiny_teacher, capsys):
    cfg, weights = tiny_teacher
    code = run_script('slim/distillation/distill.py', argv + ['-t', cfg, '--teacher_pretrained', weights])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f'error: {message}'


def test_missing_teacher_weights(tiny_voc, tiny_teacher, capsys):
    code = run_script('slim/distillation/distill.py', ['-c', DISTILL, '-t', tiny_teacher[0],
                                                       '--teacher_pretrained', '/no/w.pdparams', '-o', *tiny_opts(tiny_voc)])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == 'error: weights not found: /no/w.pdparams'


@pytest.mark.skipif(not os.path.isdir(BCCD), reason='BCCD not available')
def test_bccd_few_iterations(tmp_path, capsys):
    """Split BCCD's official sets, train the student a few iterations, and
    evaluate it on the test split."""
    lists = tmp_path / 'bccd'
    assert run_script('tools/split_voc.py', [BCCD, '--imagesets', 'trainval', 'test', '--out_dir', str(lists)]) == 0
    cfg = os.path.join(CONFIGS, 'bccd', 'student_yolov3_mobilenet_v1.yml')
    opts = ['input_size=128', 'epoch=1', 'worker_num=0', 'TrainReader.batch_size=2', 'log_iter=1',
            f'dataset_dir={lists}', 'TrainDataset.sample_num=6', 'EvalDataset.sample_num=8']
    assert run_script('tools/train.py', ['-c', cfg, '--output_dir', str(tmp_path / 'out'), '-o', *opts]) == 0
    capsys.readouterr()
    assert run_script('tools/eval.py', ['-c', cfg, '-o', *opts, f'weights={tmp_path / "out" / "model_final"}']) == 0
    out = capsys.readouterr().out
    assert 'mAP(0.50, 11point) =' in out and 'Platelets' in out and 'WBC' in out
    assert '8 images' in out


def _export_cmd(teacher, out, disable_fix=False):
    cfg, weights = teacher
    code = ('import os, sys, runpy\n'
            "os.environ.setdefault('FLAGS_enable_pir_api', '0')\n"
            'from ppkd import compat\n'
            + ("compat.FIXES.pop('ppdet_export_full_graph')\n" if disable_fix else '')
            + f"sys.argv = ['export', '-c', {cfg!r}, '-o', 'weights={weights}', '--output_dir', {str(out)!r}]\n"
            f"runpy.run_path({os.path.join(ROOT, 'tools', 'export.py')!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)


@pytest.mark.smoke
def test_export_writes_inference_model(tiny_teacher, tmp_path):
    r = _export_cmd(tiny_teacher, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    files = set(os.listdir(tmp_path / 'teacher_yolov3_r18'))
    assert {'infer_cfg.yml', 'model.pdiparams'} <= files
    assert files & {'model.pdmodel', 'model.json'}


@pytest.mark.smoke
def test_export_needs_the_compat_fix(tiny_teacher, tmp_path):
    r = _export_cmd(tiny_teacher, tmp_path, disable_fix=True)
    assert r.returncode != 0
    assert "Can't call main_program when full_graph=False" in r.stderr


def test_infer_draws_boxes(tiny_voc, tiny_teacher, tmp_path):
    cfg, weights = tiny_teacher
    img = os.path.join(tiny_voc, 'JPEGImages', 'shapes_0000.jpg')
    code = run_script('tools/infer.py', ['-c', cfg, '-o', *tiny_opts(tiny_voc), f'weights={weights}',
                                          '--infer_img', img, '--output_dir', str(tmp_path), '--draw_threshold', '0'])
    assert code == 0
    assert os.path.isfile(tmp_path / 'shapes_0000.jpg')


def test_eval_set_checked_before_training(tiny_voc, tmp_path, capsys):
    """A missing test list fails at start, not after the training it would throw away."""
    import shutil
    data = tmp_path / 'data'
    shutil.copytree(tiny_voc, data)
    os.remove(data / 'test.txt')
    out = tmp_path / 'out'
    code = run_script('tools/train.py', ['-c', STUDENT, '--eval', '--output_dir', str(out),
                                          '-o', *tiny_opts(str(data), 'epoch=2')])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f'error: list file not found: {data}/test.txt'
    assert not os.path.exists(out / 'metrics.jsonl')


def test_ctrl_c_is_one_line_exit_130_and_leaves_no_partial_file(tiny_voc, tmp_path):
    """SIGINT in the middle of training: exit 130, one `error:` line, no
    traceback, and no temporary or half-written file in the output folder."""
    out = tmp_path / 'run'
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'tools', 'train.py'), '-c', STUDENT,
                             '--output_dir', str(out), '-o', *tiny_opts(tiny_voc, 'epoch=500', 'snapshot_epoch=1')],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if 'Epoch: [2]' in line:  # checkpoints of epochs 0 and 1 are written by now
            proc.send_signal(2)
            break
    rest, _ = proc.communicate(timeout=120)
    text = ''.join(lines) + rest
    assert proc.returncode == 130, text[-2000:]
    assert text.count('error: interrupted') == 1 and 'Traceback' not in text
    names = os.listdir(out)
    assert 'model_final.pdparams' not in names and not [n for n in names if n.startswith('.tmp')]


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')  # the swallowed one, on purpose
def test_ctrl_c_swallowed_by_a_finalizer_still_stops_training(tiny_voc, tmp_path, monkeypatch, capsys):
    """Python ignores a KeyboardInterrupt raised inside a `__del__` (it
    prints it and goes on): a Ctrl-C that lands there must still stop the
    run (the training loop remembers it), not train on to the end."""
    import signal
    import time
    from ppkd.engine import trainer

    class InterruptedWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs here, inside the finalizer

    epochs_begun = []

    def seed_and_interrupt_in_epoch_1(seed):
        epochs_begun.append(seed)
        if len(epochs_begun) == 2:
            InterruptedWhileCollected()  # collected at once
        return seed_everything(seed)

    seed_everything = trainer.seed_everything
    monkeypatch.setattr(trainer, 'seed_everything', seed_and_interrupt_in_epoch_1)
    out = tmp_path / 'run'
    code = run_script('tools/train.py', ['-c', STUDENT, '--output_dir', str(out), '-o',
                                         *tiny_opts(tiny_voc, 'epoch=3', 'snapshot_epoch=1')])
    assert code == 130 and 'error: interrupted' in capsys.readouterr().err
    assert len(epochs_begun) == 2 and not os.path.exists(out / 'model_final.pdparams')


def test_resume_refuses_a_state_saved_with_other_weights(tiny_voc, tmp_path, capsys):
    """An interruption between the .pdstate and the .pdparams renames leaves
    one epoch's state beside another's weights: resuming says so."""
    out = tmp_path / 'run'
    opts = tiny_opts(tiny_voc, 'epoch=2', 'snapshot_epoch=1')
    assert run_script('tools/train.py', ['-c', STUDENT, '--output_dir', str(out), '-o', *opts]) == 0
    os.replace(out / 'model_final.pdstate', out / '0.pdstate')  # the last epoch's state, epoch 0's weights
    code = run_script('tools/train.py', ['-c', STUDENT, '--output_dir', str(tmp_path / 'r'), '-r', str(out / '0'),
                                         '-o', *opts])
    assert code == 2
    assert 'was not saved with' in capsys.readouterr().err


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tiny_voc, tmp_path, capsys):
    out = tmp_path / 'run'
    opts = tiny_opts(tiny_voc)
    assert run_script('tools/train.py', ['-c', STUDENT, '--output_dir', str(out), '-o', *opts]) == 0
    code = run_script('tools/train.py', ['-c', STUDENT, '--output_dir', str(out), '-r', str(out / 'model_final'),
                                         '-o', *opts])
    assert code == 2
    assert 'saved after epoch 1 of 1; nothing left to train' in capsys.readouterr().err


def test_compare_writes_the_report(tiny_voc, tiny_teacher, tmp_path, capsys):
    cfg, weights = tiny_teacher
    out = tmp_path / 'report'
    code = run_script('tools/compare.py', ['-t', f'{cfg}:{weights}', '-b', f'{cfg}:{weights[:-len(".pdparams")]}',
                                           '--images', '2', '--output_dir', str(out), '-o', *tiny_opts(tiny_voc)])
    assert code == 0
    for name in ('report.md', 'report.html', 'per_class_ap.png', 'curves.png', 'detections.png', 'results.json'):
        assert (out / name).is_file(), name
    report = (out / 'report.md').read_text()
    assert '| teacher |' in report and '| baseline |' in report and '![Per-class AP](per_class_ap.png)' in report
    grid = __import__('cv2').imread(str(out / 'detections.png'))
    assert grid.shape[1] == 2 * 256 and grid.shape[0] == 24 + 2 * 256  # two models, two images
    capsys.readouterr()
    assert run_script('tools/compare.py', ['-t', f'{cfg}:{weights}', '-b', f'{cfg}:/no/such.pdparams']) == 2
    assert 'error: baseline: weights not found: /no/such.pdparams' in capsys.readouterr().err


def test_visualdl_log_holds_every_term_and_evaluation(tiny_voc, tiny_teacher, tmp_path):
    import glob
    from visualdl import LogReader
    assert _distill(tiny_teacher, tmp_path / 'run', '--eval', '--use_vdl', '--vdl_log_dir', str(tmp_path / 'vdl'),
                    opts=tiny_opts(tiny_voc)) == 0
    (log,) = glob.glob(str(tmp_path / 'vdl' / 'vdlrecords.*.log'))
    reader = LogReader(file_path=log)
    tags = set(reader.get_tags()['scalar'])
    assert {'train/loss', 'train/det_loss', 'train/distill_l2', 'train/lr', 'train/images_per_s',
            'eval/mAP'} <= tags and any(t.startswith('eval/AP/') for t in tags)
    with open(tmp_path / 'run' / 'metrics.jsonl') as f:
        evals = [line for line in f if '"eval"' in line]
    logged = [(r.id, r.value) for r in reader.get_data('scalar', 'eval/mAP')]
    assert len(logged) == len(evals) == 1
    assert logged[0][1] == pytest.approx(__import__('json').loads(evals[0])['mAP'], rel=1e-5)


def test_console_starts_with_ppkd_own_lines(tmp_path):
    """ppdet's and Paddle's import-time notices (optional tracking
    dependencies, the OMP advice) stay off the console: a bad config gives
    exactly one line."""
    env = {**os.environ, 'OMP_NUM_THREADS': '2'}
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'eval.py'), '-c', str(tmp_path / 'none.yml')],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 2
    assert out.stdout == '' and out.stderr == f'error: config not found: {tmp_path / "none.yml"}\n'


def test_unwritable_output_is_one_line(tiny_voc, tmp_path, capsys):
    """An output folder under a file, or a disk that fills up: the path and
    the reason on one `error:` line, exit 2."""
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    cfg = os.path.join(CONFIGS, 'demo', 'teacher_yolov3_r18.yml')
    code = run_script('tools/train.py', ['-c', cfg, '--output_dir', str(blocker / 'out'), '-o', *tiny_opts(tiny_voc)])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f'error: {blocker / "out"}: Not a directory'
    code = run_script('tools/split_voc.py', [tiny_voc, '--out_dir', str(blocker / 'lists')])
    assert code == 2 and 'Not a directory' in capsys.readouterr().err

    import errno
    from ppkd.cli import main_guard

    @main_guard
    def full_disk():
        raise OSError(errno.ENOSPC, 'No space left on device', str(tmp_path / '.tmp-x'))

    with pytest.raises(SystemExit) as stop:
        full_disk()
    assert stop.value.code == 2
    assert capsys.readouterr().err == f'error: {tmp_path / ".tmp-x"}: No space left on device\n'


def test_truncated_jpeg_is_named_not_trained_on(tiny_voc, tmp_path, capsys):
    """A JPEG cut short decodes into grey rows without an error: refused,
    the file named."""
    import shutil
    data = str(tmp_path / 'voc')
    shutil.copytree(tiny_voc, data)
    first = open(os.path.join(data, 'trainval.txt')).readline().split()[0]
    image = os.path.join(data, first)
    raw = open(image, 'rb').read()
    open(image, 'wb').write(raw[:len(raw) * 2 // 3])
    cfg = os.path.join(CONFIGS, 'demo', 'teacher_yolov3_r18.yml')
    assert run_script('tools/train.py', ['-c', cfg, '--output_dir', str(tmp_path / 'out'), '-o', *tiny_opts(data)]) == 2
    assert f'error: {image}: truncated JPEG' in capsys.readouterr().err


def test_resume_inside_an_epoch_is_exact(tiny_voc, tiny_teacher, tmp_path):
    """snapshot_iter writes `latest` inside an epoch; resuming from it skips
    the batches already trained and ends where an uninterrupted run does."""
    two = tiny_opts(tiny_voc, 'epoch=2', *PINNED_BLAS)
    assert _distill(tiny_teacher, tmp_path / 'straight', opts=two) == 0
    # 4 iterations an epoch: `latest` at iteration 5 is epoch 1 after its first batch.
    assert _distill(tiny_teacher, tmp_path / 'snap', opts=two + ['snapshot_iter=5']) == 0
    state = paddle.load(str(tmp_path / 'snap' / 'latest.pdstate'))
    assert (state['epoch'], state['step']) == (1, 1)
    assert _distill(tiny_teacher, tmp_path / 'snap', '-r', str(tmp_path / 'snap' / 'latest'), opts=two) == 0
    a = paddle.load(str(tmp_path / 'straight' / 'model_final.pdparams'))
    b = paddle.load(str(tmp_path / 'snap' / 'model_final.pdparams'))
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-4, atol=1e-5, err_msg=k)


def test_sigterm_saves_latest_and_exits_143(tiny_voc, tmp_path):
    """A preempted job (SIGTERM) saves where it is, says how to go on, and
    `-r latest` goes on from there."""
    out = tmp_path / 'run'
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'train.py'), '-c', STUDENT, '--output_dir', str(out),
           '-o', *tiny_opts(tiny_voc, 'epoch=500', 'snapshot_epoch=1000')]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if 'Epoch: [1] [   1/4]' in line:
            proc.send_signal(15)
            break
    rest, _ = proc.communicate(timeout=120)
    text = ''.join(lines) + rest
    assert proc.returncode == 143, text[-2000:]
    assert text.count('error: terminated (SIGTERM)') == 1 and f'resume with -r {out / "latest"}' in text
    state = paddle.load(str(out / 'latest.pdstate'))
    assert state['epoch'] >= 1 and 0 < state['step'] < 4
    done = subprocess.run(cmd[:-1] + ['epoch=3', '-r', str(out / 'latest')], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'resumed from' in done.stderr + done.stdout and os.path.isfile(out / 'model_final.pdparams')
