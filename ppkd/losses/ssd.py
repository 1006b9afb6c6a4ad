"""SSD distillation (docs/methods.md §8): on MultiBox's own sample — the
positive priors and the hard negatives the student's loss mines — a
background-weighted soft KL towards the teacher's class distribution, and an
L2 regression term bounded by the teacher's error on the positive priors;
both divided by the number of positives, as MultiBox's own terms are."""
import logging

import paddle
import paddle.nn.functional as F
from ppdet.core.workspace import register

from ppkd.errors import PPKDError
from ppkd.losses.base import DistillLoss, per_location
from ppkd.losses.faster_rcnn import bounded_regression

logger = logging.getLogger('ppkd')

SSD_MATCH = 'ssd_head.loss._bipartite_match_for_batch'
SSD_MINED = 'ssd_head.loss._mine_hard_example'
# The prior layout: two models compare prior by prior only if these agree.
PRIOR_SETTINGS = ('steps', 'aspect_ratios', 'min_ratio', 'max_ratio', 'base_size', 'min_sizes', 'max_sizes',
                  'offset', 'flip', 'clip', 'min_max_aspect_ratios_order')


def weighted_soft_kl(student_logits, teacher_logits, temperature=1.0, background_weight=1.5,
                     foreground_weight=1.0, background_index=0):
    """T² · Σ over rows of Σ_c w_c · p_t,c · (log p_t,c − log p_s,c), p =
    softmax(logits / T), w = `background_weight` at `background_index` and
    `foreground_weight` elsewhere, for `[R, C]` logits: a sum, the caller
    divides (SSD: by the number of positive priors). The teacher side is a
    constant."""
    num = student_logits.shape[-1]
    weights = [float(foreground_weight)] * num
    weights[background_index] = float(background_weight)
    log_t = F.log_softmax(teacher_logits.detach() / temperature, axis=-1)
    log_s = F.log_softmax(student_logits / temperature, axis=-1)
    per_class = paddle.exp(log_t) * (log_t - log_s) * paddle.to_tensor(weights, dtype=log_s.dtype)
    return temperature ** 2 * per_class.sum()


def prior_layout(model):
    """An SSD's prior settings and prior count per location and level."""
    gen = model.ssd_head.anchor_generator
    return {k: getattr(gen, k, None) for k in PRIOR_SETTINGS}, list(gen.num_priors)


def check_same_priors(student, teacher):
    """Refuse a teacher whose priors are not the student's, with the remedies."""
    (s_set, s_num), (t_set, t_num) = prior_layout(student), prior_layout(teacher)
    levels_s, levels_t = len(student.ssd_head.box_convs), len(teacher.ssd_head.box_convs)
    if s_set != t_set or s_num != t_num or levels_s != levels_t:
        differ = ', '.join(f'{k} {t_set[k]} (teacher) vs {s_set[k]} (student)' for k in s_set if s_set[k] != t_set[k])
        raise PPKDError(
            'SSD distillation compares teacher and student prior by prior, and their priors differ: '
            f'{levels_t} levels with {t_num} priors a location (teacher) vs {levels_s} with {s_num} (student)'
            f'{"; " + differ if differ else ""}. Remedies: train a teacher with the student\'s head layout '
            '(the teacher backbone under the student\'s SSDHead settings, fine-tuned from the teacher; '
            'configs/bccd/ssd/teacher_ssd_vgg16_student_layout.yml does it for a VGG16-SSD teacher), then '
            'distill every term or the confidence head only (configs/bccd/ssd/distill_ssd_confidence.yml); or '
            'imitate features instead (configs/bccd/ssd/distill_fgfi_ssd.yml: its masks need the student\'s '
            'priors only)')


@register
class SSDDistill(DistillLoss):
    """Soft KL (×(1−μ)) and bounded L2 (×ν) on SSD's MultiBox sample; the
    student's own confidence loss is scaled by μ (`SSDLoss.conf_loss_weight`),
    so its classification is μ·hard + (1−μ)·soft. Defaults as the notes:
    μ = 0.8 (lower did not converge there), T = 1, background weight 1.5,
    foreground 1.0, ν = 0.5, margin 0. With `mu_end`, μ moves linearly from
    `mu` at the first iteration to `mu_end` at the last (the notes' other
    try: 0 → 1, the teacher first, the labels last)."""
    needs_ground_truth = True  # the sample comes from the student's matching

    def __init__(self, weight=1.0, mu=0.8, temperature=1.0, background_weight=1.5, foreground_weight=1.0,
                 nu=0.5, margin=0.0, mu_end=None):
        super().__init__(weight, [], [])
        mu_end = mu if mu_end is None else mu_end
        for key, value in (('mu', mu), ('mu_end', mu_end)):
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise PPKDError(f'SSDDistill.{key} must be a number in [0, 1], got {value!r}')
        self.mu, self.mu_end = float(mu), float(mu_end)
        self.temperature, self.nu, self.margin = float(temperature), float(nu), float(margin)
        self.class_weights = (float(background_weight), float(foreground_weight))

    def bind(self, student, teacher):
        for role, model in (('student', student), ('teacher', teacher)):
            if not hasattr(model, 'ssd_head'):
                raise PPKDError(f'SSDDistill: the {role} is a {type(model).__name__}, not an SSD')
        check_same_priors(student, teacher)
        levels = range(len(student.ssd_head.box_convs))
        heads = [f'ssd_head.boxes{i}' for i in levels] + [f'ssd_head.scores{i}' for i in levels]
        self.student_layers = heads + [SSD_MATCH, SSD_MINED]
        self.teacher_layers = list(heads)
        self.num_levels = len(levels)
        self.num_classes = student.ssd_head.num_classes  # with the background, which is last
        ssd_loss = student.ssd_head.loss
        self.conf_loss_weight = float(ssd_loss.conf_loss_weight)
        # μ · weight as a tensor, so that a compiled step reads each step's value. A tensor attribute of a
        # Layer is its buffer (not saved): the student's loss and this one share it.
        ssd_loss.conf_loss_weight = paddle.full([], self.conf_loss_weight * self.mu, 'float32')
        self.hard_weight = ssd_loss.conf_loss_weight

    def set_progress(self, fraction):
        mu = self.mu + (self.mu_end - self.mu) * fraction
        self.hard_weight.set_value(paddle.full([], self.conf_loss_weight * mu, 'float32'))

    def forward(self, student, teacher, inputs):
        s_maps, t_maps = self.gather(student, teacher)
        n = self.num_levels
        s_grid, t_grid = [list(m.shape[2:]) for m in s_maps[:n]], [list(m.shape[2:]) for m in t_maps[:n]]
        if s_grid != t_grid:  # same prior settings, other strides: the priors sit on other cells
            raise PPKDError(f'SSDDistill: the teacher\'s levels have {t_grid} cells on this {inputs["image"].shape[2]}'
                            f'-pixel input, the student\'s {s_grid}; prior-by-prior distillation needs the same '
                            'grid (another input size, or a teacher backbone with the student\'s strides)')
        s_boxes, s_scores = per_location(s_maps[:n], 4), per_location(s_maps[n:2 * n], self.num_classes)
        t_boxes, t_scores = per_location(t_maps[:n], 4), per_location(t_maps[n:], self.num_classes)
        targets_bbox, targets_label = s_maps[2 * n]
        sample = s_maps[2 * n + 1]  # positives and mined negatives, [N, P] bool
        labels = targets_label.squeeze(-1)
        positive = labels != self.num_classes - 1
        num_pos = paddle.clip(positive.astype('float32').sum(), min=1.)
        picked = paddle.nonzero(sample.flatten()).flatten()
        soft = weighted_soft_kl(paddle.gather(s_scores.reshape([-1, self.num_classes]), picked),
                                paddle.gather(t_scores.reshape([-1, self.num_classes]), picked),
                                self.temperature, *self.class_weights, background_index=self.num_classes - 1)
        # (1 − μ) · weight: what the student's own confidence loss gave up
        terms = {'distill_ssd_soft': (self.conf_loss_weight - self.hard_weight) * soft / num_pos}
        if self.nu > 0:
            pos = paddle.nonzero(positive.flatten()).flatten()
            rows = [paddle.gather(x.reshape([-1, 4]), pos) for x in (s_boxes, t_boxes, targets_bbox)]
            # bounded_regression is a mean over the positives, i.e. their sum / their number
            terms['distill_ssd_bounded'] = self.nu * bounded_regression(*rows, margin=self.margin)
        return terms
