"""Evaluate a model: a detector's mAP and per-class AP (VOC mAP@0.5,
11-point by default; COCO AP), a segmenter's mIoU, per-class IoU and pixel
accuracy.

    python tools/eval.py -c config.yml -o weights=PATH
"""
import argparse
import json

import ppkd  # noqa: F401  (first: sets the CPU thread count before paddle loads)
from ppkd import config as cfgmod
from ppkd.builder import build_model
from ppkd.cli import main_guard
from ppkd.engine.trainer import setup_logging, setup_run
from ppkd.errors import PPKDError
from ppkd.tasks import task_of
from ppkd.teacher import load_weights


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('-c', '--config', required=True)
    p.add_argument('-o', '--opt', nargs='*', default=[])
    p.add_argument('--json', action='store_true', help='print the result as JSON')
    args = p.parse_args(argv)
    setup_logging()
    cfg = cfgmod.load_config(args.config, args.opt)
    if not cfg.get('weights'):
        raise PPKDError('no weights to evaluate: pass -o weights=PATH')
    setup_run(cfg)
    model = build_model(cfg)
    load_weights(model, cfg['weights'], role=f'model ({args.config})')
    task = task_of(cfg)
    result = task.evaluate(model)
    result['params'] = sum(int(p.size) for p in model.parameters())
    if args.json:
        print(json.dumps(result))
        return
    if task.metric == 'mIoU':
        print(f'mIoU = {result["mIoU"]:.2f}%, pixel accuracy {result["pixel_accuracy"]:.2f}%')
        label = 'IoU'
    else:
        print(f'mAP(0.50, {cfg.get("map_type", "11point")}) = {result["mAP"]:.2f}%')
        label = 'AP'
    for name, value in result['per_class'].items():
        print(f'  {name:<16} {label} {value:6.2f}%')
    print(f'{result["images"]} images, {result["images_per_s"]:.1f} images/s')

if __name__ == '__main__':
    main()
