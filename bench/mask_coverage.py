"""How much of each imitated level the fine-grained imitation mask keeps:
the share of a level's cells inside the mask, over a VOC set's images, for
each student config and ψ. A mask that keeps most of the map leaves FGFI
little to tell apart from imitating the whole map.

    .venv/bin/python bench/mask_coverage.py [--configs distill_fgfi_yolov3.yml=160 ...] [--psi 0.3 0.5 0.7]

Each config is a BCCD config (configs/bccd/) with its input size, as the
FGFI bench trains it; images are resized to a square, as its readers do.
Writes bench/results/mask_coverage.{md,json}.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import ppkd  # noqa: E402,F401  (first: sets the CPU thread count before paddle loads)
import numpy as np  # noqa: E402
import paddle  # noqa: E402

from common import BCCD, mean  # noqa: E402
from ppkd import config as cfgmod  # noqa: E402
from ppkd.builder import build_model  # noqa: E402
from ppkd.data.voc import parse_voc_xml  # noqa: E402
from ppkd.losses.imitation import FineGrainedImitation  # noqa: E402
from ppkd.teacher import feature_sizes  # noqa: E402
from ppkd.utils import atomic_write_text  # noqa: E402

CONFIGS = ['distill_fgfi_yolov3.yml=160', 'distill_fgfi_faster_rcnn.yml=256']


def coverage(config, size, annotations, psis):
    """{ψ: [mean share of cells kept, per level]} and the levels' names and sizes."""
    cfg = cfgmod.load_config(os.path.join(ROOT, 'configs', 'bccd', config), [f'input_size={size}'])
    model = build_model(cfg)
    model.eval()
    losses = {psi: FineGrainedImitation(psi=psi) for psi in psis}
    for loss in losses.values():
        loss.use_anchors_of(model)
    layers = losses[psis[0]].student_layers  # the same for every ψ: the student's
    sizes = feature_sizes(model, layers, paddle.zeros([1, 3, size, size]))
    # Boxes in the square input's pixels, as the readers resize the images.
    scaled = [ann['boxes'] * np.array([size / ann['w'], size / ann['h']] * 2, np.float32) for ann in annotations]
    shares = {}
    for psi, loss in losses.items():
        per_level = [[] for _ in sizes]
        for boxes in scaled:
            for level, m in zip(per_level, loss.image_masks(boxes, size, sizes)):
                level.append(float(m.mean()))
        shares[psi] = [mean(level) for level in per_level]
    return shares, [f'{name} {h}x{w}' for name, (h, w) in zip(layers, sizes)]


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--dataset', default=BCCD)
    p.add_argument('--imageset', default='trainval', help='the VOC list whose images are read')
    p.add_argument('--configs', nargs='+', default=CONFIGS, help='<config under configs/bccd>=<input size>')
    p.add_argument('--psi', type=float, nargs='+', default=[0.3, 0.5, 0.7])
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'mask_coverage'))
    args = p.parse_args()
    with open(os.path.join(args.dataset, 'ImageSets', 'Main', f'{args.imageset}.txt')) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    annotations = [parse_voc_xml(os.path.join(args.dataset, 'Annotations', f'{i}.xml'))[0] for i in ids]
    rows = []
    for spec in args.configs:
        config, _, size = spec.partition('=')
        shares, levels = coverage(config, int(size), annotations, args.psi)
        rows.append({'config': config, 'input_size': int(size), 'levels': levels,
                     'share_kept': {str(psi): s for psi, s in shares.items()}})
    most_levels = max(len(r['levels']) for r in rows)
    lines = ['| config | input | ψ | ' + ' | '.join(f'level {i}' for i in range(most_levels)) + ' |',
             '|---|---|---|' + '---|' * most_levels]
    for r in rows:
        for psi, s in r['share_kept'].items():
            lines.append(f"| {r['config']} | {r['input_size']} px | {psi} | "
                         + ' | '.join(f'{level}: {100 * v:.0f} %' for level, v in zip(r['levels'], s)) + ' |')
    lines += ['', f'Share of each level\'s cells inside the FGFI mask (the student\'s anchors, IoU > ψ · the best '
                  f'IoU of each box), the mean over the {len(annotations)} images of {args.imageset} in '
                  f'{os.path.basename(os.path.normpath(args.dataset))}. The whole-map hint keeps 100 % everywhere.']
    atomic_write_text(args.out + '.md', '\n'.join(lines) + '\n')
    atomic_write_text(args.out + '.json', json.dumps({'settings': vars(args), 'rows': rows}, indent=1))
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
