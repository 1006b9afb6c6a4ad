"""Evaluation with per-class AP: VOC mAP through ppdet's VOCMetric, COCO
AP through pycocotools (the detections converted by ppdet)."""
import contextlib
import io
import os
import time

import paddle

from ppdet.metrics import VOCMetric
from ppdet.metrics.json_results import get_det_res

from ppkd import config as cfgmod
from ppkd.data.loader import build_reader, epoch_batches
from ppkd.errors import PPKDError


class _COCOScores:
    """Collects detections per batch; `results()` scores them with COCOeval
    over the images read (the reader reads every image of the annotation
    file): mAP is AP@[.5:.95], with AP50 and per-class AP beside it."""

    def __init__(self, dataset):
        self.anno_file = dataset.get_anno()
        self.clsid2catid = {v: k for k, v in dataset.catid2clsid.items()}
        self.detections = []
        self.image_ids = set()  # scored over the images read (all of them, or a check's first few)

    def update(self, batch, outputs):
        boxes, counts = outputs['bbox'].numpy(), outputs['bbox_num'].numpy()
        self.detections += get_det_res(boxes, counts, batch['im_id'].numpy(), self.clsid2catid)
        self.image_ids.update(int(i) for i in batch['im_id'].numpy().reshape(-1))

    def results(self, names):
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        with contextlib.redirect_stdout(io.StringIO()):
            truth = COCO(self.anno_file)
            truth.dataset.setdefault('info', {})  # optional in COCO files, but pycocotools' loadRes copies it
            if not self.detections:
                return 0., 0., {n: 0. for n in names}
            scored = COCOeval(truth, truth.loadRes(self.detections), 'bbox')
            scored.params.imgIds = sorted(self.image_ids)
            scored.evaluate()
            scored.accumulate()
            scored.summarize()
        precision = scored.eval['precision']  # [IoU, recall, class, area, max dets]
        per_class = {}
        for k, name in enumerate(names):
            p = precision[:, :, k, 0, -1]
            per_class[name] = 100. * float(p[p > -1].mean()) if (p > -1).any() else 0.
        return 100. * float(scored.stats[0]), 100. * float(scored.stats[1]), per_class


def evaluate(cfg, model, loader=None):
    """mAP (percent), per-class AP, image count and images/s of `model` on
    the config's EvalDataset (VOC: mAP@0.5; COCO: AP@[.5:.95], and AP50)."""
    metric_name = cfg.get('metric', 'VOC')
    if metric_name not in ('VOC', 'COCO'):
        raise PPKDError(f'{cfg.get("config_path")}: metric {metric_name!r} is not supported (VOC or COCO)')
    loader = loader or build_reader(cfg, 'Eval')
    if metric_name == 'COCO':
        return _evaluate_coco(cfg, model, loader)
    dataset = cfg['EvalDataset']
    label_path = os.path.join(dataset.dataset_dir, dataset.label_list)
    metric = VOCMetric(label_list=label_path, class_num=cfg['num_classes'],
                       map_type=cfg.get('map_type', '11point'), classwise=False)
    images, speed = _run(model, loader, metric)
    # ppdet prints its own per-class table; ppkd returns the numbers instead.
    with contextlib.redirect_stdout(io.StringIO()):
        metric.accumulate()
    names = cfgmod.label_names(cfg)
    per_class = {names[i]: 0. for i in range(len(names))}
    for r in metric.detection_map.eval_results:
        per_class[r['class']] = 100. * float(r['ap'])
    return {'mAP': 100. * float(metric.get_results()['bbox'][0]), 'per_class': per_class,
            'images': images, 'images_per_s': speed}


def _run(model, loader, metric):
    was_training = model.training
    model.eval()
    images, seconds = 0, 0.
    with paddle.no_grad():
        for batch in epoch_batches(loader):
            start = time.perf_counter()
            outputs = model(batch)
            seconds += time.perf_counter() - start
            metric.update(batch, outputs)
            images += len(batch['im_id'])
    if was_training:
        model.train()
    return images, images / seconds if seconds else 0.


def _evaluate_coco(cfg, model, loader):
    scores = _COCOScores(loader.dataset)
    images, speed = _run(model, loader, scores)
    ap, ap50, per_class = scores.results(cfgmod.label_names(cfg))
    return {'mAP': ap, 'AP50': ap50, 'per_class': per_class, 'images': images, 'images_per_s': speed}
