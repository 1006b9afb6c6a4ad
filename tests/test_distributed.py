"""Data-parallel distillation: two CPU processes through
`paddle.distributed.launch` (gloo)."""
import glob
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT, CONFIGS, tiny_opts


def test_two_processes_train_one_student(tiny_voc, tiny_teacher, tmp_path):
    cfg, weights = tiny_teacher
    out, dump, logs = tmp_path / 'out', tmp_path / 'dump', tmp_path / 'log'
    dump.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2', '--log_dir', str(logs),
           os.path.join(ROOT, 'tests', 'helpers', 'distill_rank_dump.py'), str(dump),
           '-c', os.path.join(CONFIGS, 'demo', 'distill_l2.yml'), '-t', cfg, '--teacher_pretrained', weights,
           '--output_dir', str(out), '--eval', '-o', *tiny_opts(tiny_voc, 'epoch=2', 'snapshot_epoch=1')]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    worker_logs = {os.path.basename(p): open(p).read() for p in glob.glob(str(logs / 'workerlog.*'))}
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + str(worker_logs)[-3000:]
    ranks = [dict(np.load(dump / f'rank{r}.npz')) for r in (0, 1)]

    # Each rank trained on its own half of the images, yet holds the same student.
    assert set(ranks[0]['first_epoch']).isdisjoint(ranks[1]['first_epoch'])
    student = [k for k in ranks[0] if k.startswith('student/')]
    assert student and all(np.array_equal(ranks[0][k], ranks[1][k]) for k in student)
    assert ranks[0]['teacher_params'] > 0
    assert all(int(r['teacher_params_wrapped']) == 0 for r in ranks)

    # Rank 0 alone writes: the checkpoints are rank 0's student; metrics and progress come from it only.
    assert sorted(os.listdir(out)) == ['0.pdparams', '0.pdstate', 'best_model.pdparams', 'best_model.pdstate',
                                       'metrics.jsonl', 'model_final.pdparams', 'model_final.pdstate']
    import paddle
    saved = paddle.load(str(out / 'model_final.pdparams'))
    assert all(np.array_equal(saved[k[len('student/'):]].numpy(), ranks[0][k]) for k in student)
    evals = [line for line in open(out / 'metrics.jsonl') if '"type": "eval"' in line]
    assert len(evals) == 2 and all('"images": 4' in line for line in evals)  # the whole test split, not a shard
    assert 'Epoch: [1]' in worker_logs['workerlog.0'] and 'Epoch:' not in worker_logs['workerlog.1']
