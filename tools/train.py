"""Train one detector alone: a teacher, or the baseline student.

    python tools/train.py -c config.yml [-o key=value ...] [--eval] [-r CHECKPOINT]
"""
import ppkd  # noqa: F401  (first: sets the CPU thread count before paddle loads)
from ppkd import config as cfgmod
from ppkd.builder import build_model
from ppkd.cli import main_guard, train_parser
from ppkd.engine.trainer import Trainer, setup_logging, setup_run


@main_guard
def main(argv=None):
    args = train_parser(__doc__.strip().splitlines()[0]).parse_args(argv)
    setup_logging()
    cfg = cfgmod.load_config(args.config, args.opt)
    setup_run(cfg, args.seed)
    trainer = Trainer(cfg, build_model(cfg), args.output_dir, eval=args.eval, seed=args.seed,
                      to_static=args.to_static)
    if args.resume:
        trainer.resume(args.resume)
    trainer.train()


if __name__ == '__main__':
    main()
