"""Faster R-CNN distillation (docs/methods.md §4, Chen et al. 2017): weighted soft
labels and teacher-bounded regression on the R-CNN head and the RPN, and a
hint between intermediate features through an adaptation layer.

The R-CNN terms compare teacher and student on the student's sampled RoIs
(the teacher's RoI head runs on them, see `ppkd.teacher`); the RPN terms
compare them anchor by anchor, so they need the same anchors and strides and
are switched off, with a warning, when those differ.
"""
import logging

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from ppdet.core.workspace import register
from ppdet.modeling.bbox_utils import bbox2delta

from ppkd.errors import PPKDError
from ppkd.losses.base import DistillLoss, layer_channels, per_location
from ppkd.teacher import STUDENT_ROIS

logger = logging.getLogger('ppkd')

RCNN_SCORES, RCNN_DELTAS = 'bbox_head.bbox_score', 'bbox_head.bbox_delta'
RPN_SCORES, RPN_DELTAS = 'rpn_head.rpn_rois_score', 'rpn_head.rpn_rois_delta'
RPN_TARGETS = 'rpn_head.rpn_target_assign'


def weighted_soft_ce(student_logits, teacher_logits, temperature=1.0, background_weight=1.5, background_index=-1):
    """T² · mean over rows of −Σ_c w_c · softmax(t/T)_c · log softmax(s/T)_c
    for `[R, C+1]` logits, w = `background_weight` at `background_index`,
    1 elsewhere."""
    num = student_logits.shape[-1]
    weights = [1.0] * num
    weights[background_index] = background_weight
    t = F.softmax(teacher_logits.detach() / temperature, axis=-1)
    log_s = F.log_softmax(student_logits / temperature, axis=-1)
    per_row = -(t * log_s * paddle.to_tensor(weights, dtype=log_s.dtype)).sum(axis=-1)
    return temperature ** 2 * per_row.mean()


def weighted_soft_bce(student_logits, teacher_logits, temperature=1.0, background_weight=1.5):
    """The two-class form for one objectness logit per row:
    T² · mean of −[σ(t/T)·log σ(s/T) + w_bg·(1−σ(t/T))·log(1−σ(s/T))]."""
    t = F.sigmoid(teacher_logits.detach() / temperature)
    s = student_logits / temperature
    # log σ(x) = −softplus(−x), log(1 − σ(x)) = −softplus(x): finite for any logit.
    per_item = t * F.softplus(-s) + background_weight * (1 - t) * F.softplus(s)
    return temperature ** 2 * per_item.mean()


def bounded_regression(student_reg, teacher_reg, target, margin=0.0):
    """Mean over rows of ‖s−y‖² where ‖s−y‖² + m > ‖t−y‖², else 0, for
    `[R, 4]` regressions: the student is pushed towards the target only
    while it is not (by margin m) better than the teacher."""
    if student_reg.shape[0] == 0:  # no foreground: nothing to bound
        return paddle.zeros([1], dtype=student_reg.dtype)
    student_error = paddle.square(student_reg - target).sum(axis=-1)
    teacher_error = paddle.square(teacher_reg.detach() - target).sum(axis=-1)
    worse = (student_error + margin > teacher_error).astype(student_error.dtype)
    return (student_error * worse).mean()


def hint_loss(student_adapted, teacher_feature, norm='l2'):
    """Mean squared (`l2`) or absolute (`l1`) difference of two feature maps."""
    diff = student_adapted - teacher_feature.detach()
    if norm == 'l2':
        return paddle.square(diff).mean()
    if norm == 'l1':
        return paddle.abs(diff).mean()
    raise PPKDError(f"hint norm must be 'l2' or 'l1', got {norm!r}")


def _anchor_settings(model):
    gen = model.rpn_head.anchor_generator
    return {'anchor_sizes': gen.anchor_sizes, 'aspect_ratios': gen.aspect_ratios,
            'strides': gen.strides, 'offset': gen.offset}


def _check_faster_rcnn(model, role):
    if not hasattr(model, 'rpn_head') or not hasattr(model, 'bbox_head'):
        raise PPKDError(f'{role} is a {type(model).__name__}; this loss needs a Faster R-CNN')


def rpn_matches(student, teacher):
    """Whether the RPN terms can compare anchor by anchor; logs why not."""
    s, t = _anchor_settings(student), _anchor_settings(teacher)
    if s != t:
        differ = ', '.join(f'{k} {t[k]} (teacher) vs {s[k]} (student)' for k in s if s[k] != t[k])
        logger.warning('RPN distillation terms disabled: anchor settings differ: %s; '
                       'the R-CNN and hint terms still run', differ)
        return False
    return True


def _per_anchor(maps, width):
    """Per-level RPN maps → `[N·M, width]` in the anchor order of ppdet's RPN targets."""
    return paddle.reshape(per_location(maps, width), [-1, width])


def _class_deltas(deltas, labels):
    """The 4 regression outputs of each row's own class (class-specific
    `[R, 4C]`) or the row's only 4 (class-agnostic `[R, 4]`)."""
    if deltas.shape[1] == 4:
        return deltas
    per_class = paddle.reshape(deltas, [deltas.shape[0], -1, 4])
    rows = paddle.arange(labels.shape[0], dtype=labels.dtype)
    return paddle.gather_nd(per_class, paddle.stack([rows, labels], axis=1))


class _FasterRCNNHeadLoss(DistillLoss):
    """Shared by the soft-label and bounded losses: which parts they read,
    and whether the RPN part is on (λ = `rpn_distill_weight`, shared)."""
    # Sampled RoIs and anchor targets come from the ground truth.
    needs_ground_truth = True

    def __init__(self, weight, rpn_distill_weight, rcnn_layers, rpn_layers):
        super().__init__(weight, [STUDENT_ROIS, *rcnn_layers, *rpn_layers, RPN_TARGETS],
                         [*rcnn_layers, *rpn_layers])
        self.rpn_distill_weight = float(rpn_distill_weight)
        self.use_rpn = rpn_distill_weight > 0

    def bind(self, student, teacher):
        _check_faster_rcnn(student, 'the student')
        _check_faster_rcnn(teacher, 'the teacher')
        self.use_rpn = self.use_rpn and rpn_matches(student, teacher)
        if not self.use_rpn:
            rpn = ('rpn_head.',)
            self.student_layers = [n for n in self.student_layers if not n.startswith(rpn)]
            self.teacher_layers = [n for n in self.teacher_layers if not n.startswith(rpn)]
        self.bbox_weight = student.bbox_head.bbox_weight
        self.num_classes = student.bbox_head.num_classes

    def rcnn_rows(self, student):
        """The student's sampled RoIs (concatenated), labels and boxes."""
        rois, _, (labels, boxes, _) = student[STUDENT_ROIS][-1]
        return paddle.concat(rois), paddle.concat(labels).astype('int64'), paddle.concat(boxes)

    def rpn_rows(self, student):
        scores, _, deltas, _ = student[RPN_TARGETS][-1]
        return paddle.concat(scores), paddle.concat(deltas)


@register
class FasterRCNNSoftLabel(_FasterRCNNHeadLoss):
    """L_cls = μ·L_hard + (1−μ)·L_soft on the R-CNN head (C+1 classes, the
    student's sampled RoIs) and, times λ, on the RPN (objectness, the
    sampled anchors). The student's own classification losses are scaled
    by μ; the terms returned already carry (1−μ) and λ."""
    __shared__ = ['rpn_distill_weight']

    def __init__(self, weight=1.0, mu=0.8, temperature=1.0, background_weight=1.5, rpn_distill_weight=1.0):
        super().__init__(weight, rpn_distill_weight, [RCNN_SCORES], [RPN_SCORES])
        if not 0 <= mu <= 1:
            raise PPKDError(f'FasterRCNNSoftLabel.mu must be in [0, 1], got {mu}')
        self.mu, self.temperature, self.background_weight = float(mu), float(temperature), float(background_weight)

    def bind(self, student, teacher):
        super().bind(student, teacher)
        self.det_loss_scale = {'loss_bbox_cls': self.mu}
        if self.use_rpn:
            self.det_loss_scale['loss_rpn_cls'] = self.mu

    def forward(self, student, teacher, inputs):
        soft = 1 - self.mu
        terms = {'distill_rcnn_soft': soft * weighted_soft_ce(
            student[RCNN_SCORES][-1], teacher[RCNN_SCORES][-1], self.temperature, self.background_weight)}
        if self.use_rpn:
            labels, _ = self.rpn_rows(student)
            sampled = paddle.nonzero(labels >= 0).flatten()
            s = paddle.gather(_per_anchor(student[RPN_SCORES], 1).flatten(), sampled)
            t = paddle.gather(_per_anchor(teacher[RPN_SCORES], 1).flatten(), sampled)
            terms['distill_rpn_soft'] = self.rpn_distill_weight * soft * weighted_soft_bce(
                s, t, self.temperature, self.background_weight)
        return terms


@register
class FasterRCNNBoundedRegression(_FasterRCNNHeadLoss):
    """L_reg = smoothL1 (the student's own) + ν·L_b, on the R-CNN head's
    foreground RoIs and, times λ, the RPN's positive anchors; L_b bounds the
    student by the teacher's error plus margin m."""
    __shared__ = ['rpn_distill_weight']

    def __init__(self, weight=1.0, nu=0.5, margin=0.0, rpn_distill_weight=1.0):
        super().__init__(weight, rpn_distill_weight, [RCNN_DELTAS], [RPN_DELTAS])
        self.nu, self.margin = float(nu), float(margin)

    def forward(self, student, teacher, inputs):
        rois, labels, boxes = self.rcnn_rows(student)
        fg = paddle.nonzero(paddle.logical_and(labels >= 0, labels < self.num_classes)).flatten()
        fg_labels = paddle.gather(labels, fg)
        target = paddle.gather(bbox2delta(rois, boxes, self.bbox_weight), fg).detach()
        s = _class_deltas(paddle.gather(student[RCNN_DELTAS][-1], fg), fg_labels)
        t = _class_deltas(paddle.gather(teacher[RCNN_DELTAS][-1], fg), fg_labels)
        terms = {'distill_rcnn_bounded': self.nu * bounded_regression(s, t, target, self.margin)}
        if self.use_rpn:
            labels, targets = self.rpn_rows(student)
            pos = paddle.nonzero(labels == 1).flatten()
            s = paddle.gather(_per_anchor(student[RPN_DELTAS], 4), pos)
            t = paddle.gather(_per_anchor(teacher[RPN_DELTAS], 4), pos)
            terms['distill_rpn_bounded'] = self.rpn_distill_weight * self.nu * bounded_regression(
                s, t, paddle.gather(targets, pos).detach(), self.margin)
        return terms


@register
class FasterRCNNHint(DistillLoss):
    """L_hint = ‖adapt(V_s) − Z_t‖² (or L1) between a named student layer
    and a named teacher layer (default: both FPNs' stride-8 output); adapt
    is a trainable 1×1 convolution to the teacher's channels, followed by a
    resize when the maps differ in size. weight = γ (0.5)."""

    def __init__(self, weight=0.5, student_layer='neck.fpn_res3_sum', teacher_layer='neck.fpn_res3_sum',
                 norm='l2', student_channels=None, teacher_channels=None):
        super().__init__(weight, [student_layer], [teacher_layer])
        if norm not in ('l2', 'l1'):
            raise PPKDError(f"FasterRCNNHint.norm must be 'l2' or 'l1', got {norm!r}")
        self.norm = norm
        self.channels = (student_channels, teacher_channels)

    def bind(self, student, teacher):
        (s_name,), (t_name,) = self.student_layers, self.teacher_layers
        s_ch = self.channels[0] or layer_channels(student, s_name, 'FasterRCNNHint (student)')
        t_ch = self.channels[1] or layer_channels(teacher, t_name, 'FasterRCNNHint (teacher)')
        self.adapter = nn.Conv2D(s_ch, t_ch, 1)

    def forward(self, student, teacher, inputs):
        (s,), (t,) = self.gather(student, teacher)
        adapted = self.adapter(s)
        if adapted.shape[2:] != t.shape[2:]:
            adapted = F.interpolate(adapted, size=t.shape[2:], mode='bilinear', align_corners=False)
        return {'distill_hint': hint_loss(adapted, t, self.norm)}
