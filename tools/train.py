"""Train one detector alone: a teacher, or the baseline student.

    python tools/train.py -c config.yml [-o key=value ...] [--eval] [-r CHECKPOINT]
"""
import ppkd  # noqa: F401  (first: sets the CPU thread count before paddle loads)
from ppkd import config as cfgmod
from ppkd.builder import build_model
from ppkd.cli import main_guard, train_parser
from ppkd.engine.trainer import setup_logging, setup_run, train_from_args


@main_guard
def main(argv=None):
    args = train_parser(__doc__.strip().splitlines()[0]).parse_args(argv)
    setup_logging()
    cfg = cfgmod.load_config(args.config, args.opt)
    setup_run(cfg, args.seed)
    train_from_args(cfg, build_model(cfg), args)


if __name__ == '__main__':
    main()
