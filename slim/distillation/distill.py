"""Distill a student detector from a frozen teacher.

    python slim/distillation/distill.py -c student.yml -t teacher.yml \
        --teacher_pretrained teacher.pdparams [-o key=value ...] [--teacher_opt key=value ...] [--eval]
"""
import ppkd  # noqa: F401  (first: sets the CPU thread count before paddle loads)
from ppkd import config as cfgmod
from ppkd.builder import build_distiller
from ppkd.cli import main_guard, train_parser
from ppkd.engine.trainer import setup_logging, setup_run, train_from_args


@main_guard
def main(argv=None):
    p = train_parser(__doc__.strip().splitlines()[0])
    p.add_argument('-t', '--teacher_config', required=True, help='teacher config (YAML)')
    p.add_argument('--teacher_pretrained', required=True, help='teacher weights (.pdparams)')
    p.add_argument('--teacher_opt', nargs='*', default=[], help='teacher config overrides, key=value')
    args = p.parse_args(argv)
    setup_logging()
    student_cfg = cfgmod.load_config(args.config, args.opt)
    teacher_cfg = cfgmod.load_config(args.teacher_config, args.teacher_opt)
    setup_run(student_cfg, args.seed)
    train_from_args(student_cfg, build_distiller(student_cfg, teacher_cfg, args.teacher_pretrained), args)


if __name__ == '__main__':
    main()
