"""Detect objects in images with a trained detector and draw the boxes,
through ppdet's own predictor.

    python tools/infer.py -c config.yml -o weights=PATH --infer_img IMG | --infer_dir DIR
"""
import argparse
import glob
import os

import ppkd  # noqa: F401  (first: sets the CPU thread count before paddle loads)
from ppkd.cli import main_guard
from ppkd.data.split import IMAGE_EXTS
from ppkd.engine.trainer import setup_logging
from ppkd.errors import PPKDError
from ppkd.predictor import ppdet_trainer


def _images(img, folder):
    if img:
        if not os.path.isfile(img):
            raise PPKDError(f'image not found: {img}')
        return [img]
    if not folder or not os.path.isdir(folder):
        raise PPKDError(f'pass --infer_img FILE or --infer_dir DIR (got {folder!r})')
    found = sorted(f for f in glob.glob(os.path.join(folder, '*')) if f.lower().endswith(IMAGE_EXTS))
    if not found:
        raise PPKDError(f'no image in {folder}')
    return found


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('-c', '--config', required=True)
    p.add_argument('-o', '--opt', nargs='*', default=[])
    p.add_argument('--infer_img', default=None)
    p.add_argument('--infer_dir', default=None)
    p.add_argument('--draw_threshold', type=float, default=0.5)
    p.add_argument('--output_dir', default='output')
    p.add_argument('--save_results', action='store_true', help='also write bbox.json')
    args = p.parse_args(argv)
    setup_logging()
    images = _images(args.infer_img, args.infer_dir)
    with ppdet_trainer(args.config, args.opt) as trainer:
        trainer.predict(images, draw_threshold=args.draw_threshold, output_dir=args.output_dir,
                        save_results=args.save_results)


if __name__ == '__main__':
    main()
