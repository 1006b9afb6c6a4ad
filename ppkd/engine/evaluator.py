"""VOC mAP evaluation with per-class AP, through ppdet's VOCMetric."""
import contextlib
import io
import os
import time

import paddle

from ppdet.metrics import VOCMetric

from ppkd import config as cfgmod
from ppkd.data.loader import build_reader, epoch_batches
from ppkd.errors import PPKDError


def evaluate(cfg, model, loader=None):
    """mAP (percent), per-class AP, image count and images/s of `model` on
    the config's EvalDataset."""
    if cfg.get('metric', 'VOC') != 'VOC':
        raise PPKDError(f'{cfg.get("config_path")}: metric {cfg.get("metric")!r} is not supported (VOC only)')
    loader = loader or build_reader(cfg, 'Eval')
    dataset = cfg['EvalDataset']
    label_path = os.path.join(dataset.dataset_dir, dataset.label_list)
    metric = VOCMetric(label_list=label_path, class_num=cfg['num_classes'],
                       map_type=cfg.get('map_type', '11point'), classwise=False)
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
    # ppdet prints its own per-class table; ppkd returns the numbers instead.
    with contextlib.redirect_stdout(io.StringIO()):
        metric.accumulate()
    if was_training:
        model.train()
    names = cfgmod.label_names(cfg)
    per_class = {names[i]: 0. for i in range(len(names))}
    for r in metric.detection_map.eval_results:
        per_class[r['class']] = 100. * float(r['ap'])
    return {'mAP': 100. * float(metric.get_results()['bbox'][0]), 'per_class': per_class,
            'images': images, 'images_per_s': images / seconds if seconds else 0.}
