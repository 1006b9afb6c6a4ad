"""A comparison report of trained detectors (teacher, baseline, distilled):
one table, a per-class AP chart, the training curves from each run's
`metrics.jsonl`, and the same test images with each model's detections side
by side; written as `report.md` and `report.html` with its pictures."""
import html
import io
import json
import os

import cv2
import matplotlib
import numpy as np
import paddle

from ppkd import config as cfgmod
from ppkd.builder import build_model
from ppkd.data.loader import build_reader, epoch_batches
from ppkd.engine.evaluator import evaluate
from ppkd.errors import PPKDError
from ppkd.teacher import load_weights
from ppkd.utils import atomic_write_bytes, atomic_write_png, atomic_write_text

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)

COLOURS = [(0, 200, 0), (0, 0, 230), (230, 120, 0), (200, 0, 200), (0, 200, 200), (120, 120, 0)]


def parse_spec(spec, role):
    """`CONFIG.yml:WEIGHTS` → (config, weights file), both checked to exist."""
    config, sep, weights = spec.rpartition(':')
    if not sep or not config or not weights:
        raise PPKDError(f'{role}: expected CONFIG.yml:WEIGHTS, got {spec!r}')
    if not os.path.isfile(config):
        raise PPKDError(f'{role}: config not found: {config}')
    if not os.path.isfile(weights) and os.path.isfile(weights + '.pdparams'):
        weights += '.pdparams'
    if not os.path.isfile(weights):
        raise PPKDError(f'{role}: weights not found: {weights}')
    return config, weights


def _detections(cfg, model, num_images, threshold):
    """{image file: [(class id, score, x1, y1, x2, y2)]} for the first
    `num_images` test images, boxes in the original image's pixels."""
    loader = build_reader(cfg, 'Eval')
    files = {int(r['im_id'][0]): r['im_file'] for r in loader.dataset.roidbs}
    found = {}
    model.eval()
    with paddle.no_grad():
        for batch in epoch_batches(loader):
            out = model(batch)
            boxes, counts = out['bbox'].numpy(), out['bbox_num'].numpy()
            start = 0
            for im_id, count in zip(batch['im_id'].numpy().reshape(-1), counts):
                rows = boxes[start:start + count]
                start += count
                found[files[int(im_id)]] = [tuple(r) for r in rows if r[1] >= threshold]
                if len(found) == num_images:
                    return found
    return found


def run_model(name, config, weights, overrides, num_images, threshold):
    """Evaluate one model and detect on the first test images."""
    cfg = cfgmod.load_config(config, overrides)
    if cfg.get('task') == 'segmentation':
        raise PPKDError(f'{name}: {config} is a segmentation config; the comparison report is for detectors '
                        '(compare segmenters with tools/eval.py --json)')
    model = build_model(cfg)
    load_weights(model, weights, role=f'{name} ({config})')
    result = evaluate(cfg, model)
    result.update(name=name, config=config, weights=weights, params=sum(int(p.size) for p in model.parameters()),
                  detections=_detections(cfg, model, num_images, threshold), classes=cfgmod.label_names(cfg))
    return result


def _run_metrics(weights):
    path = os.path.join(os.path.dirname(os.path.abspath(weights)), 'metrics.jsonl')
    if not os.path.isfile(path):
        return [], []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r['type'] == 'train'], [r for r in rows if r['type'] == 'eval']


def _save_figure(fig, path):
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format='png', dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, png.getvalue())


def per_class_chart(results, path):
    classes = list(results[0]['per_class'])
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(classes), 3.2))
    for k, r in enumerate(results):
        ax.bar(np.arange(len(classes)) + k * width, [r['per_class'][c] for c in classes], width, label=r['name'])
    ax.set_xticks(np.arange(len(classes)) + width * (len(results) - 1) / 2, classes)
    ax.set_ylabel('AP (%)')
    ax.legend(fontsize=8)
    _save_figure(fig, path)


def curves_chart(results, path):
    """Training loss (and its distillation share) and mAP against iteration, per run."""
    fig, (loss_ax, map_ax) = plt.subplots(1, 2, figsize=(10, 3.4))
    plotted = False
    for r in results:
        train, evals = _run_metrics(r['weights'])
        if train:
            plotted = True
            loss_ax.plot([t['iteration'] for t in train], [t.get('det_loss', t['loss']) for t in train],
                         label=f'{r["name"]}: detection loss')
            if any('det_loss' in t for t in train):
                loss_ax.plot([t['iteration'] for t in train], [t['loss'] - t['det_loss'] for t in train], '--',
                             label=f'{r["name"]}: distillation (weighted)')
        if evals:
            map_ax.plot([e['iteration'] for e in evals], [e['mAP'] for e in evals], 'o-', label=r['name'])
    loss_ax.set_yscale('log')
    loss_ax.set_xlabel('iteration')
    loss_ax.set_title('training loss')
    map_ax.set_xlabel('iteration')
    map_ax.set_title('mAP (%) at each evaluation')
    for ax in (loss_ax, map_ax):
        if ax.lines:
            ax.legend(fontsize=7)
    _save_figure(fig, path)
    return plotted


def detection_grid(results, path, threshold):
    """Rows: test images; columns: the models, detections drawn."""
    images = list(results[0]['detections'])
    if not images:
        return False
    cell = 256
    rows = []
    header = []
    for r in results:
        top = np.full((24, cell, 3), 255, np.uint8)
        cv2.putText(top, r['name'], (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        header.append(top)
    rows.append(np.hstack(header))
    for image in images:
        original = cv2.imread(image, cv2.IMREAD_COLOR)
        if original is None:
            raise PPKDError(f'{image}: not a readable image')
        scale = cell / max(original.shape[:2])
        base = cv2.resize(original, (round(original.shape[1] * scale), round(original.shape[0] * scale)))
        canvas = np.full((cell, cell, 3), 255, np.uint8)
        canvas[:base.shape[0], :base.shape[1]] = base
        row = []
        for r in results:
            panel = canvas.copy()
            for cls, score, x1, y1, x2, y2 in r['detections'].get(image, []):
                colour = COLOURS[int(cls) % len(COLOURS)]
                p1, p2 = (int(x1 * scale), int(y1 * scale)), (int(x2 * scale), int(y2 * scale))
                cv2.rectangle(panel, p1, p2, colour, 2)
                cv2.putText(panel, f'{r["classes"][int(cls)]} {score:.2f}', (p1[0], max(p1[1] - 3, 10)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
            row.append(panel)
        rows.append(np.hstack(row))
    atomic_write_png(path, np.vstack(rows))
    return True


def table(results):
    classes = list(results[0]['per_class'])
    head = ['model', 'mAP', *classes, 'params (M)', 'images/s', 'test images']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in results:
        cells = [r['name'], f'{r["mAP"]:.2f}', *(f'{r["per_class"][c]:.2f}' for c in classes),
                 f'{r["params"] / 1e6:.2f}', f'{r["images_per_s"]:.1f}', str(r['images'])]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_report(results, out_dir, threshold):
    """report.md, report.html, per_class_ap.png, curves.png, detections.png in `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    per_class_chart(results, os.path.join(out_dir, 'per_class_ap.png'))
    has_curves = curves_chart(results, os.path.join(out_dir, 'curves.png'))
    has_grid = detection_grid(results, os.path.join(out_dir, 'detections.png'), threshold)
    sections = [('VOC mAP@0.5 and per-class AP (%) over the whole test list', table(results), None),
                ('Per-class AP', None, 'per_class_ap.png')]
    if has_curves:
        sections.append(('Training curves (from each run\'s metrics.jsonl)', None, 'curves.png'))
    if has_grid:
        sections.append((f'Detections on the first test images (score ≥ {threshold:g})', None, 'detections.png'))
    md = ['# Comparison report', '']
    page = ['<!doctype html><meta charset="utf-8"><title>Comparison report</title>', '<h1>Comparison report</h1>']
    for title, text, picture in sections:
        md += [f'## {title}', '']
        page.append(f'<h2>{html.escape(title)}</h2>')
        if text:
            md += [text, '']
            page.append('<pre>' + html.escape(text) + '</pre>')
        if picture:
            md += [f'![{title}]({picture})', '']
            page.append(f'<img src="{picture}" alt="{html.escape(title)}">')
    md += ['Models:', ''] + [f'- {r["name"]}: `{r["config"]}`, weights `{r["weights"]}`' for r in results]
    atomic_write_text(os.path.join(out_dir, 'report.md'), '\n'.join(md) + '\n')
    atomic_write_text(os.path.join(out_dir, 'report.html'), '\n'.join(page) + '\n')
    rows = [{k: v for k, v in r.items() if k != 'detections'} for r in results]
    atomic_write_text(os.path.join(out_dir, 'results.json'), json.dumps(rows, indent=1) + '\n')
