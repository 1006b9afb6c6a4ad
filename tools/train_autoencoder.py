"""Knowledge adaptation, stage 1: train the auto-encoder on the frozen
teacher's feature map, then save it where the distillation config's
`KnowledgeAdaptation.autoencoder` points (stage 2 loads it, frozen).

    python tools/train_autoencoder.py -c distill_ka.yml -t teacher.yml --teacher_pretrained teacher.pdparams \
        [-o key=value ...] [--teacher_opt key=value ...]

The settings come from `KnowledgeAdaptation.autoencoder_training` (epochs,
learning_rate, weight_decay, alpha, strides, code_channels, batch_size);
the images are the student config's training set.
"""
import argparse
import os

import ppkd  # noqa: F401  (first: sets the CPU thread count before paddle loads)
from ppkd import config as cfgmod
from ppkd.cli import add_teacher_arguments, main_guard
from ppkd.engine.trainer import setup_logging, setup_run
from ppkd.knowledge_adaptation import train_autoencoder


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('-c', '--config', required=True, help='the student\'s distillation config (YAML)')
    p.add_argument('-o', '--opt', nargs='*', default=[], help='config overrides, key=value')
    p.add_argument('--seed', type=int, default=0)
    add_teacher_arguments(p)
    args = p.parse_args(argv)
    setup_logging()
    student_cfg = cfgmod.load_config(args.config, args.opt)
    teacher_cfg = cfgmod.load_teacher_config(args.teacher_config, args.teacher_opt, student_cfg)
    setup_run(student_cfg, args.seed)
    path = train_autoencoder(student_cfg, teacher_cfg, args.teacher_pretrained)
    print(f'auto-encoder saved to {os.path.abspath(path)}')


if __name__ == '__main__':
    main()
