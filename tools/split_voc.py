"""Split a VOC-style folder (JPEGImages/, Annotations/) into trainval.txt
and test.txt, and write label_list.txt from the class names found.

    python tools/split_voc.py DATASET_ROOT [--ratio 0.9] [--seed 0]
    python tools/split_voc.py DATASET_ROOT --imagesets trainval test [--out_dir DIR]
    python tools/split_voc.py DATASET_ROOT --labeled_fraction 0.25    # + unlabeled.txt
    python tools/split_voc.py DATASET_ROOT --format coco              # + trainval.json, test.json
"""
import argparse

import ppkd  # noqa: F401  (first: sets the CPU thread count before paddle loads)
from ppkd.cli import main_guard
from ppkd.data.split import split_voc


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('root', help='the VOC-style folder')
    p.add_argument('--ratio', type=float, default=0.9, help='share of images in trainval (default 0.9)')
    p.add_argument('--seed', type=int, default=0, help='seed of the random split')
    p.add_argument('--imagesets', nargs=2, metavar=('TRAIN', 'TEST'),
                   help='use ImageSets/Main/TRAIN.txt and TEST.txt instead of a random split')
    p.add_argument('--out_dir', default=None, help='where the list files go (default: the root)')
    p.add_argument('--labeled_fraction', type=float, default=None,
                   help='keep this share of trainval labelled; list the rest in unlabeled.txt, images only')
    p.add_argument('--format', default='voc', choices=('voc', 'coco'),
                   help='coco: also write trainval.json and test.json (COCO detection format)')
    p.add_argument('--image_dir', default='JPEGImages')
    p.add_argument('--anno_dir', default='Annotations')
    args = p.parse_args(argv)
    out = split_voc(args.root, ratio=args.ratio, seed=args.seed, imagesets=args.imagesets,
                    out_dir=args.out_dir, image_dir=args.image_dir, anno_dir=args.anno_dir,
                    labeled_fraction=args.labeled_fraction, fmt=args.format)
    unlabeled = f', unlabeled: {out["unlabeled"]} images' if args.labeled_fraction is not None else ''
    print(f'trainval: {out["trainval"]} images{unlabeled}, test: {out["test"]} images, '
          f'classes: {", ".join(out["classes"])}')
    if out['skipped']:
        print(f'skipped {len(out["skipped"])} images:')
        for reason, n in sorted(out['skip_reasons'].items()):
            print(f'  {n} × {reason}')


if __name__ == '__main__':
    main()
