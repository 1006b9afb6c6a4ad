"""Distillation losses, one module per method family.

Each family offers functional forms (tensors in, an unweighted loss out) and
registered `nn.Layer`s with a `weight` that name the recorded layers they
read, so a config picks a method by name.
"""
from ppkd.losses.base import DistillLoss
from ppkd.losses.faster_rcnn import (FasterRCNNBoundedRegression, FasterRCNNHint, FasterRCNNSoftLabel,
                                     bounded_regression, hint_loss, weighted_soft_bce, weighted_soft_ce)
from ppkd.losses.imitation import FineGrainedImitation, fgfi_imitation_loss, imitation_mask
from ppkd.losses.segmentation import (FeatureAutoEncoder, FitNetDistill, KnowledgeAdaptation, PixelKD, affinity_loss,
                                      affinity_matrix, pixel_kd)
from ppkd.losses.ssd import SSDDistill, weighted_soft_kl
from ppkd.losses.yolov3 import (YOLOv3FineGrainedDistill, YOLOv3L2Distill, yolov3_fine_grained_distill,
                                yolov3_l2_distill)

__all__ = ['DistillLoss', 'FasterRCNNBoundedRegression', 'FasterRCNNHint', 'FasterRCNNSoftLabel', 'FeatureAutoEncoder',
           'FineGrainedImitation', 'FitNetDistill', 'KnowledgeAdaptation', 'PixelKD', 'SSDDistill', 'YOLOv3FineGrainedDistill', 'YOLOv3L2Distill', 'affinity_loss', 'affinity_matrix', 'bounded_regression',
           'fgfi_imitation_loss', 'hint_loss', 'imitation_mask', 'pixel_kd', 'weighted_soft_bce', 'weighted_soft_ce', 'weighted_soft_kl',
           'yolov3_fine_grained_distill', 'yolov3_l2_distill']
