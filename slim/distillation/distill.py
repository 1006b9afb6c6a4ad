"""Distill a student (a detector or a segmenter) from a frozen teacher.

    python slim/distillation/distill.py -c student.yml -t teacher.yml \
        --teacher_pretrained teacher.pdparams [-o key=value ...] [--teacher_opt key=value ...] [--eval]

Before training, the teacher is scored on the first test images of the
student's data; one that scores near zero there, or far below what it
scored when trained, is refused (--skip_teacher_check to distill anyway).
"""
import ppkd  # noqa: F401  (first: sets the CPU thread count before paddle loads)
from ppkd import config as cfgmod
from ppkd.builder import build_distiller
from ppkd.cli import add_teacher_arguments, main_guard, train_parser
from ppkd.engine.trainer import setup_logging, setup_run, train_from_args


@main_guard
def main(argv=None):
    p = add_teacher_arguments(train_parser(__doc__.strip().splitlines()[0]))
    p.add_argument('--skip_teacher_check', action='store_true',
                   help='distill even from a teacher that scores near zero (or far below its own record) on the '
                        'first test images')
    args = p.parse_args(argv)
    setup_logging()
    student_cfg = cfgmod.load_config(args.config, args.opt)
    teacher_cfg = cfgmod.load_teacher_config(args.teacher_config, args.teacher_opt, student_cfg)
    setup_run(student_cfg, args.seed)
    train_from_args(student_cfg, build_distiller(student_cfg, teacher_cfg, args.teacher_pretrained,
                                                 check_teacher=not args.skip_teacher_check), args)


if __name__ == '__main__':
    main()
