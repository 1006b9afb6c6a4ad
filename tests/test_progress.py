"""The demo's live progress line, read from a training run's log."""
import io
import subprocess
import sys
import textwrap

import pytest

from ppkd.progress import follow, last_progress, render

LOG = ('[2026-11-25 06:31:15,163] [    INFO] trainer.py:189 - Epoch: [2] [  17/120] learning_rate: 0.000117  '
       'loss_xy: 2.787749  loss: 38.957703  distill_fine_grained: 1.5  eta: 0:02:31  batch_cost: 0.5887  '
       'data_cost: 0.0001  ips: 3.3975 images/s\n')


def test_last_progress_reads_the_newest_training_line():
    older = LOG.replace('[2] [  17/120]', '[1] [ 100/120]').replace('loss: 38.957703', 'loss: 50.0')
    assert last_progress('noise\n' + older + LOG + 'saved checkpoint\n') == {
        'epoch': 2, 'step': 18, 'steps': 120, 'loss': 38.957703, 'eta_seconds': 151}
    assert last_progress(LOG.replace('eta: 0:02:31', 'eta: 1 day, 2:00:01'))['eta_seconds'] == 86400 + 7201
    assert last_progress('no training yet\n') is None


def test_render_estimates_the_share_done_from_elapsed_time_and_eta():
    line = render('teacher', last_progress(LOG), elapsed=151.)
    assert line == 'teacher [############------------]  50%  epoch 2  step 18/120  loss 38.958  eta 0:02:31'
    assert render('teacher', None, 3.2) == 'teacher starting (3 s)'


def test_follow_prints_one_line_per_epoch_off_a_terminal(tmp_path):
    # Once any test has loaded a kernel's modules (the notebook test does),
    # a buffer given as the stream must still get plain lines.
    pytest.importorskip('ipykernel')
    log = tmp_path / 'run.log'
    writer = textwrap.dedent(f'''
        import sys, time
        lines = {[LOG.replace('[2]', f'[{e}]') for e in (0, 0, 1)]!r}
        with open({str(log)!r}, 'a') as f:
            for line in lines:
                f.write(line); f.flush(); time.sleep(0.3)
        sys.exit(3)
    ''')
    log.write_text('')
    out = io.StringIO()
    code = follow(subprocess.Popen([sys.executable, '-c', writer]), str(log), 'student', interval=0.1, stream=out)
    assert code == 3
    lines = out.getvalue().splitlines()
    epochs = [int(line.split('epoch ')[1].split()[0]) for line in lines]
    # One line per epoch seen (a slow poll may see epoch 0 only after epoch 1 began), the last one shown.
    assert epochs == sorted(set(epochs)) and epochs[-1] == 1, lines
