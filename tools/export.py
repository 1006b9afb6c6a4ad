"""Export a trained detector for deployment, in PaddleDetection's inference
format (model.pdmodel/.json + model.pdiparams + infer_cfg.yml), through
ppdet's own exporter.

    python tools/export.py -c config.yml -o weights=PATH [--output_dir output_inference]
"""
import argparse
import os

# ppdet 2.6 exports through the legacy static IR; on Paddle 3 it must be
# chosen before paddle loads (see ppkd.compat).
os.environ.setdefault('FLAGS_enable_pir_api', '0')

import ppkd  # noqa: E402,F401  (before paddle: sets the CPU thread count)
from ppkd.cli import main_guard
from ppkd.engine.trainer import setup_logging
from ppkd.predictor import ppdet_trainer


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('-c', '--config', required=True)
    p.add_argument('-o', '--opt', nargs='*', default=[])
    p.add_argument('--output_dir', default='output_inference')
    args = p.parse_args(argv)
    setup_logging()
    with ppdet_trainer(args.config, args.opt) as trainer:
        trainer.export(args.output_dir)


if __name__ == '__main__':
    main()
