"""slim/distillation/distill.py as a `paddle.distributed.launch` worker
that also writes, per rank, what the test checks: the student's parameters
after training (its trainable ones: BatchNorm statistics stay per rank, as in
Paddle's DataParallel), the images this rank trained on in its first epoch, and how
many of the teacher's parameters the data-parallel wrapper holds.

    python -m paddle.distributed.launch --nproc_per_node 2 tests/helpers/distill_rank_dump.py DUMP_DIR DISTILL_ARGS...
"""
import os
import runpy
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import ppkd  # noqa: E402,F401
import paddle  # noqa: E402
from ppkd.engine import trainer as trainer_module  # noqa: E402

dump_dir, distill_args = sys.argv[1], sys.argv[2:]
train = trainer_module.Trainer.train


def train_and_dump(self):
    history = train(self)
    rank = paddle.distributed.get_rank()
    wrapped = {id(p) for p in self.train_model.parameters()}
    teacher = [p for p in self.model.teacher.parameters()]
    first_epoch = [int(i) for batch in self.loader._batch_sampler for i in batch]
    np.savez(os.path.join(dump_dir, f'rank{rank}.npz'),
             teacher_params_wrapped=sum(id(p) in wrapped for p in teacher), teacher_params=len(teacher),
             first_epoch=np.array(first_epoch),
             **{f'student/{k}': p.numpy() for k, p in self.student.named_parameters() if p.trainable})
    return history


trainer_module.Trainer.train = train_and_dump
sys.argv = ['distill.py'] + distill_args
runpy.run_path(os.path.join(ROOT, 'slim', 'distillation', 'distill.py'), run_name='__main__')
