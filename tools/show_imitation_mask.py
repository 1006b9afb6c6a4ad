"""Draw the fine-grained imitation mask of an image over it, one panel per
imitated level, and save a PNG: tune FineGrainedImitation.psi by looking.

    python tools/show_imitation_mask.py -c configs/bccd/distill_fgfi_yolov3.yml \
        --image dataset/bccd/JPEGImages/BloodImage_00000.jpg [--psi 0.5] [--output mask.png]

The annotation defaults to the VOC layout's `../Annotations/<stem>.xml`. The
image is resized to the config's input size, as the student sees it in
training; the mask comes from the student's anchors and the boxes alone.
"""
import argparse
import os

import ppkd  # noqa: F401  (first: sets the CPU thread count before paddle loads)
import cv2
import numpy as np
import paddle

from ppkd import config as cfgmod
from ppkd.builder import build_model
from ppkd.cli import main_guard
from ppkd.data.voc import parse_voc_xml
from ppkd.errors import PPKDError
from ppkd.losses.imitation import FineGrainedImitation
from ppkd.teacher import feature_sizes
from ppkd.utils import atomic_write_png


def _annotation_of(image):
    stem = os.path.splitext(os.path.basename(image))[0]
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(image))), 'Annotations', stem + '.xml')


def _loss_from(cfg, psi):
    """The config's FineGrainedImitation settings (defaults if it has none), ψ overridden."""
    section = dict(cfg.get('FineGrainedImitation') or {})
    section.pop('weight', None)
    if psi is not None:
        section['psi'] = psi
    try:
        return FineGrainedImitation(**section)
    except TypeError as e:
        raise PPKDError(f'{cfg["config_path"]}: FineGrainedImitation: {e}') from None


def draw_panels(image_bgr, boxes, masks, titles):
    """The image with each mask's cells shaded and the boxes outlined, side
    by side (small inputs enlarged, so that cells can be told apart)."""
    zoom = max(1, 320 // image_bgr.shape[0])
    image_bgr = cv2.resize(image_bgr, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    boxes = boxes * zoom
    size = image_bgr.shape[0]
    panels = []
    for mask, title in zip(masks, titles):
        shade = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_NEAREST)
        panel = image_bgr.astype(np.float32)
        panel[shade > 0] = 0.5 * panel[shade > 0] + 0.5 * np.array([0, 0, 255], np.float32)
        panel = panel.astype(np.uint8)
        for x1, y1, x2, y2 in boxes.astype(int):
            cv2.rectangle(panel, (x1, y1), (x2, y2), (0, 255, 0), 1)
        header = np.full((22, size, 3), 255, np.uint8)
        cv2.putText(header, title, (3, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        panels.append(np.vstack([header, panel]))
    return np.hstack(panels)


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('-c', '--config', required=True, help='the student (or distillation) config')
    p.add_argument('--image', required=True)
    p.add_argument('--annotation', default=None, help='VOC XML (default: ../Annotations/<stem>.xml)')
    p.add_argument('--psi', type=float, default=None, help='ψ (default: the config\'s, else 0.5)')
    p.add_argument('--output', default=None, help='PNG to write (default: <stem>_imitation_mask.png here)')
    p.add_argument('-o', '--opt', nargs='*', default=[], help='config overrides, key=value')
    args = p.parse_args(argv)
    annotation = args.annotation or _annotation_of(args.image)
    for path in (args.image, annotation):
        if not os.path.isfile(path):
            raise PPKDError(f'file not found: {path}')
    original = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if original is None:
        raise PPKDError(f'{args.image}: not a readable image')
    ann, _ = parse_voc_xml(annotation)
    cfg = cfgmod.load_config(args.config, args.opt)
    size = int(cfg.get('input_size', 320))
    model = build_model(cfg)
    model.eval()
    loss = _loss_from(cfg, args.psi)
    loss.use_anchors_of(model)
    height, width = original.shape[:2]
    boxes = ann['boxes'] * np.array([size / width, size / height] * 2, np.float32)
    resized = cv2.resize(original, (size, size))
    image = paddle.to_tensor(resized[None, :, :, ::-1].transpose(0, 3, 1, 2).astype('float32') / 255.)
    sizes = feature_sizes(model, loss.student_layers, image)
    masks = loss.image_masks(boxes, size, sizes)
    titles = [f'{name} {h}x{w}: {int(m.sum())} cells, psi {loss.psi:g}'
              for name, (h, w), m in zip(loss.student_layers, sizes, masks)]
    picture = draw_panels(resized, boxes, masks, titles)
    output = args.output or os.path.splitext(os.path.basename(args.image))[0] + '_imitation_mask.png'
    atomic_write_png(output, picture)
    for name, (h, w), m in zip(loss.student_layers, sizes, masks):
        print(f'{name} {h}x{w}: {int(m.sum())} cells ({100 * m.mean():.0f} % of the map), psi {loss.psi:g}')
    print(f'written to {output}')


if __name__ == '__main__':
    main()
