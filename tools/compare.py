"""Compare a teacher, a baseline student and a distilled student: one
report with the table, a per-class AP chart, the training curves and the
same test images with each model's detections.

    python tools/compare.py -t T.yml:T.pdparams -b S.yml:S.pdparams -d D.yml:D.pdparams \
        [-o dataset_dir=DIR] [--images 4] [--output_dir report]

Each weights file's folder may hold its run's metrics.jsonl (ppkd writes
one): the curves come from there.
"""
import argparse

import ppkd  # noqa: F401  (first: sets the CPU thread count before paddle loads)
from ppkd.cli import main_guard
from ppkd.engine.trainer import setup_logging, setup_run
from ppkd.errors import PPKDError
from ppkd.report import parse_spec, run_model, write_report


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('-t', '--teacher', help='CONFIG.yml:WEIGHTS')
    p.add_argument('-b', '--baseline', help='CONFIG.yml:WEIGHTS')
    p.add_argument('-d', '--distilled', help='CONFIG.yml:WEIGHTS')
    p.add_argument('-o', '--opt', nargs='*', default=[], help='overrides for every model (e.g. dataset_dir=DIR)')
    p.add_argument('--images', type=int, default=4, help='test images in the detection grid')
    p.add_argument('--threshold', type=float, default=0.1,
                   help='score threshold of drawn detections (small students score low: 0.1 shows what they find)')
    p.add_argument('--output_dir', default='report')
    args = p.parse_args(argv)
    setup_logging()
    specs = [(name, spec) for name, spec in (('teacher', args.teacher), ('baseline', args.baseline),
                                             ('distilled', args.distilled)) if spec]
    if len(specs) < 2:
        raise PPKDError('give at least two of -t, -b, -d (CONFIG.yml:WEIGHTS each)')
    if args.images < 0:
        raise PPKDError(f'--images must be ≥ 0, got {args.images}')
    # every path checked before the first model spends minutes on evaluation
    models = [(name, *parse_spec(spec, name)) for name, spec in specs]
    setup_run({})
    results = []
    for name, config, weights in models:
        results.append(run_model(name, config, weights, args.opt, args.images, args.threshold))
        print(f'{name}: mAP {results[-1]["mAP"]:.2f}% over {results[-1]["images"]} images', flush=True)
    if len({tuple(r['classes']) for r in results}) > 1:
        raise PPKDError('the models have different class lists: ' +
                        '; '.join(f'{r["name"]} {r["classes"]}' for r in results))
    write_report(results, args.output_dir, args.threshold)
    print(f'written to {args.output_dir}/report.md (and report.html, per_class_ap.png, curves.png, detections.png)')


if __name__ == '__main__':
    main()
