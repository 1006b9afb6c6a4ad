"""Fine-grained feature imitation (docs/methods.md §5): the student imitates
the teacher's features only near objects, where the anchors that match a
ground-truth box well sit. The mask depends on anchors and boxes alone, so
teacher and student may have different backbones; a trainable adapter per
level maps the student's channels to the teacher's."""
import re

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from ppdet.core.workspace import register

from ppkd.errors import PPKDError
from ppkd.losses.base import DistillLoss, layer_channels

MASK_KINDS = ('anchors', 'full')


def _pairwise_iou(anchors, boxes):
    """IoU of `boxes` [N, G, 4] with `anchors` [A, 4] (x1, y1, x2, y2) → [N, G, A]."""
    a = anchors.unsqueeze([0, 1])
    b = boxes.unsqueeze(2)
    inter_w = paddle.clip(paddle.minimum(a[..., 2], b[..., 2]) - paddle.maximum(a[..., 0], b[..., 0]), min=0)
    inter_h = paddle.clip(paddle.minimum(a[..., 3], b[..., 3]) - paddle.maximum(a[..., 1], b[..., 1]), min=0)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / paddle.clip(area_a + area_b - inter, min=1e-9)


def imitation_masks(anchors, gt_boxes, valid, feat_h, feat_w, psi=0.5):
    """Batched `imitation_mask`: `gt_boxes` [N, G, 4] with `valid` [N, G]
    (padding rows False) → [N, H, W]."""
    iou = _pairwise_iou(anchors.astype('float32'), gt_boxes.astype('float32'))
    best = paddle.max(iou, axis=2, keepdim=True)
    keep = paddle.logical_and(iou > psi * best, best > 0)
    keep = paddle.logical_and(keep, valid.astype('bool').unsqueeze(2))
    per_anchor = paddle.any(keep, axis=1)  # union over boxes: [N, A]
    num = per_anchor.shape[0]
    per_cell = paddle.any(per_anchor.reshape([num, feat_h, feat_w, -1]), axis=3)
    return per_cell.astype('float32')


def imitation_mask(anchors, gt_boxes, feat_h, feat_w, psi=0.5):
    """The imitation mask of one image: `anchors` [H·W·K, 4] in pixels
    (x1, y1, x2, y2; ordered by row, then column, then anchor), `gt_boxes`
    [G, 4] → [H, W] of 0/1: per box, M = its best IoU with any anchor, and
    the anchors with IoU > ψ·M are kept; a cell is 1 where any kept anchor
    sits. No boxes: all zeros."""
    anchors = paddle.to_tensor(anchors, dtype='float32')
    boxes = paddle.to_tensor(gt_boxes, dtype='float32').reshape([1, -1, 4])
    if boxes.shape[1] == 0:
        return paddle.zeros([feat_h, feat_w], dtype='float32')
    valid = paddle.ones(boxes.shape[:2], dtype='bool')
    return imitation_masks(anchors, boxes, valid, feat_h, feat_w, psi)[0]


def fgfi_imitation_loss(student_adapted, teacher_feature, mask):
    """Σ mask·(s − t)² / (2·Σ mask) for `[N, C, H, W]` features and an
    `[N, H, W]` mask (the sum runs over channels too); 0 when the mask is
    empty. The teacher side is a constant."""
    squared = paddle.square(student_adapted - teacher_feature.detach()).sum(axis=1)
    num_points = paddle.clip(mask.sum(), min=1.)  # an empty mask has a zero numerator
    return (squared * mask).sum() / (2. * num_points)


def _grid(feat_h, feat_w, stride, offset):
    """Row-major (x, y) positions (offset + column, offset + row) · stride → [H·W, 1, 2]."""
    ys, xs = paddle.meshgrid((paddle.arange(feat_h, dtype='float32') + offset) * stride,
                             (paddle.arange(feat_w, dtype='float32') + offset) * stride)
    return paddle.stack([xs, ys], axis=-1).reshape([-1, 1, 2])


# Per architecture, (model) → (anchor strides or None, anchors(layer name,
# stride, image (H, W), H, W) → [H·W·K, 4] in the input's pixels, ordered as
# the mask reshapes them); plain numbers are kept, not the model.
def _yolov3_anchor_grid(model):
    strides = [int(s) for s in model.yolo_head.loss.downsample]
    shapes = {s: [[float(v) for v in a] for a in model.yolo_head.anchors[i]] for i, s in enumerate(strides)}

    def anchors(name, stride, image_hw, feat_h, feat_w):
        half = paddle.to_tensor(shapes[stride], dtype='float32').unsqueeze(0) / 2
        centres = _grid(feat_h, feat_w, stride, 0.5)  # YOLOv3 anchors sit at cell centres
        return paddle.concat([centres - half, centres + half], axis=-1).reshape([-1, 4])
    return strides, anchors


def _rpn_anchor_grid(model):
    gen = model.rpn_head.anchor_generator
    strides = [int(s) for s in gen.strides]
    cells = {s: gen.cell_anchors[i].numpy().tolist() for i, s in enumerate(strides)}

    def anchors(name, stride, image_hw, feat_h, feat_w):
        # ppdet's RPN anchors: its cell anchors shifted to (offset + column, offset + row) · stride
        shifts = paddle.tile(_grid(feat_h, feat_w, stride, gen.offset), [1, 1, 2])
        return (shifts + paddle.to_tensor(cells[stride], dtype='float32').unsqueeze(0)).reshape([-1, 4])
    return strides, anchors


def _ssd_level(name, levels):
    """The SSD head input a layer name is: `backbone[k]` → level k."""
    match = re.fullmatch(r'backbone\[(-?\d+)\]', name)
    if match is None or not -levels <= int(match.group(1)) < levels:
        raise PPKDError(f'FineGrainedImitation: an SSD student\'s imitated layers are its head\'s inputs, '
                        f'backbone[0] … backbone[{levels - 1}] (their priors make the mask); got {name!r}')
    return int(match.group(1)) % levels


def _ssd_anchor_grid(model):
    """SSD's priors: per level, named by the layer (not found from the
    stride: at small inputs several levels are 1×1); its generator gives
    them in [0, 1] of the image."""
    gen, levels = model.ssd_head.anchor_generator, len(model.ssd_head.box_convs)

    def anchors(name, stride, image_hw, feat_h, feat_w):
        image_h, image_w = image_hw
        maps = [paddle.zeros([1, 1, feat_h, feat_w])] * levels  # only their sizes are read
        priors = gen(maps, paddle.zeros([1, 1, image_h, image_w]))[_ssd_level(name, levels)]
        return priors * paddle.to_tensor([image_w, image_h, image_w, image_h], dtype='float32')
    return None, anchors


def _yolov3_boxes(inputs):
    """YOLOv3 readers normalise boxes to (cx, cy, w, h) in [0, 1], padded with zeros."""
    boxes = inputs['gt_bbox']
    height, width = inputs['image'].shape[2:]
    scale = paddle.to_tensor([width, height, width, height], dtype=boxes.dtype)
    cx, cy, w, h = paddle.unstack(boxes * scale, axis=-1)
    valid = paddle.logical_and(w > 0, h > 0)
    return paddle.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1), valid


def _pixel_boxes(inputs):
    """Faster R-CNN readers give one [G, 4] pixel (x1, y1, x2, y2) tensor per image."""
    per_image = list(inputs['gt_bbox'])
    most = max([int(b.shape[0]) for b in per_image] + [1])
    boxes = paddle.stack([F.pad(b.astype('float32').reshape([-1, 4]), [0, most - b.shape[0], 0, 0])
                          for b in per_image])
    valid = paddle.stack([paddle.arange(most) < b.shape[0] for b in per_image])
    return boxes, valid


def _ssd_boxes(inputs):
    """SSD readers normalise boxes to (x1, y1, x2, y2) in [0, 1], padded with zeros."""
    boxes = inputs['gt_bbox'].astype('float32')
    height, width = inputs['image'].shape[2:]
    valid = paddle.logical_and(boxes[..., 2] > boxes[..., 0], boxes[..., 3] > boxes[..., 1])
    return boxes * paddle.to_tensor([width, height, width, height], dtype='float32'), valid


# Per architecture: (the default imitated layers, the anchor grid, the
# batch's boxes in pixels with a validity mask).
ANCHOR_LAYOUTS = {
    'YOLOv3': (lambda m: [f'neck[{i}]' for i in range(len(m.yolo_head.anchors))],
               _yolov3_anchor_grid, _yolov3_boxes),
    'FasterRCNN': (lambda m: [f'neck[{i}]' for i in range(len(m.rpn_head.anchor_generator.strides))]
                   if m.neck is not None else ['backbone[-1]'],
                   _rpn_anchor_grid, _pixel_boxes),
    'SSD': (lambda m: [f'backbone[{i}]' for i in range(len(m.ssd_head.box_convs))], _ssd_anchor_grid, _ssd_boxes),
}


@register
class FineGrainedImitation(DistillLoss):
    """L = λ · Σ over imitated levels of `fgfi_imitation_loss(adapt(s), t,
    mask)`, the mask from the student's anchors (YOLOv3, the RPN of Faster
    R-CNN, SSD's priors) of that level and the batch's ground-truth boxes
    (ψ = `psi`). weight = λ (0.01).

    `student_layers`/`teacher_layers`: one per level, paired in order
    (default: every level of the student's neck (SSD: backbone) that feeds its anchors, and
    the teacher's same-named levels). `adapter_kernel`: the adapter's kernel
    (3, or 1). A teacher map of another size is resized to the student's.
    `mask: full` imitates the whole map (the naive hint, for comparison)."""
    needs_ground_truth = True  # the mask is built from the boxes

    def __init__(self, weight=0.01, psi=0.5, mask='anchors', adapter_kernel=3, student_layers=None,
                 teacher_layers=None, student_channels=None, teacher_channels=None):
        super().__init__(weight, student_layers or [], teacher_layers or [])
        if mask not in MASK_KINDS:
            raise PPKDError(f"FineGrainedImitation.mask must be one of {', '.join(MASK_KINDS)}, got {mask!r}")
        if not 0. <= float(psi) <= 1.:
            raise PPKDError(f'FineGrainedImitation.psi must be in [0, 1], got {psi!r}')
        if adapter_kernel not in (1, 3):
            raise PPKDError(f'FineGrainedImitation.adapter_kernel must be 1 or 3, got {adapter_kernel!r}')
        self.psi, self.mask, self.adapter_kernel = float(psi), mask, adapter_kernel
        self.channels = (student_channels, teacher_channels)

    def use_anchors_of(self, student):
        """Take the student's anchor layout (and default imitated layers)."""
        arch = type(student).__name__
        if arch not in ANCHOR_LAYOUTS:
            raise PPKDError(f'FineGrainedImitation: no anchor layout known for a {arch} student '
                            f'(known: {", ".join(ANCHOR_LAYOUTS)})')
        default_layers, anchor_grid, self._boxes = ANCHOR_LAYOUTS[arch]
        self.student_layers = self.student_layers or default_layers(student)
        self.strides, self._anchors = anchor_grid(student)

    def bind(self, student, teacher):
        self.use_anchors_of(student)
        self.teacher_layers = self.teacher_layers or list(self.student_layers)
        if len(self.student_layers) != len(self.teacher_layers):
            raise PPKDError(f'FineGrainedImitation: {len(self.student_layers)} student layers but '
                            f'{len(self.teacher_layers)} teacher layers; they are imitated in pairs')
        channels = []
        for role, model, names, given in (('student', student, self.student_layers, self.channels[0]),
                                          ('teacher', teacher, self.teacher_layers, self.channels[1])):
            if given is not None and len(given) != len(names):
                raise PPKDError(f'FineGrainedImitation.{role}_channels: {len(given)} values for '
                                f'{len(names)} layers')
            channels.append(list(given) if given is not None else
                            [layer_channels(model, n, f'FineGrainedImitation ({role})') for n in names])
        self.adapters = nn.LayerList([nn.Conv2D(s, t, self.adapter_kernel, padding=self.adapter_kernel // 2)
                                      for s, t in zip(*channels)])

    def _stride(self, image_h, feat_h, name):
        """The student's anchor stride nearest image height / map height
        (None for a layout placed per level, not per stride)."""
        if self.strides is None:
            return None
        ratio = image_h / feat_h
        stride = min(self.strides, key=lambda s: abs(s - ratio))
        if abs(stride - ratio) > 0.25 * stride:
            raise PPKDError(f'FineGrainedImitation: {name!r} is {feat_h} high on a {image_h}-pixel input '
                            f'(stride {ratio:.1f}); the student has anchors at strides {self.strides} only')
        return stride

    def level_masks(self, inputs, sizes):
        """The imitation mask [N, H, W] of each level, for the batch `inputs`
        and the student's map sizes `sizes` ([(H, W)] in layer order)."""
        if self.mask == 'full':
            return [paddle.ones([inputs['image'].shape[0], h, w], dtype='float32') for h, w in sizes]
        boxes, valid = self._boxes(inputs)
        return self.masks_for_boxes(boxes, valid, inputs['image'].shape[2], sizes, inputs['image'].shape[3])

    def masks_for_boxes(self, boxes, valid, image_h, sizes, image_w=None):
        """`level_masks` for pixel boxes [N, G, 4] (x1, y1, x2, y2) with `valid`
        [N, G] on an image_h × image_w input (square if no width)."""
        image_hw = (image_h, image_w or image_h)
        masks = []  # a loop, not a comprehension: Paddle's bytecode translator (to_static) loses `self` in one
        for name, (h, w) in zip(self.student_layers, sizes):
            anchors = self._anchors(name, self._stride(image_h, h, name), image_hw, h, w)
            masks.append(imitation_masks(anchors, boxes, valid, h, w, self.psi))
        return masks

    def image_masks(self, boxes, image_size, sizes):
        """`masks_for_boxes` for one square image's pixel boxes [G, 4] (NumPy),
        as NumPy [H, W] masks: the tools' view of a single image."""
        masks = self.masks_for_boxes(paddle.to_tensor(boxes[None]), paddle.ones([1, len(boxes)], dtype='bool'),
                                     image_size, sizes)
        return [m[0].numpy() for m in masks]

    def forward(self, student, teacher, inputs):
        s_feats, t_feats = self.gather(student, teacher)
        adapted = [adapter(s) for adapter, s in zip(self.adapters, s_feats)]
        masks = self.level_masks(inputs, [a.shape[2:] for a in adapted])
        losses = []
        for a, t, mask in zip(adapted, t_feats, masks):
            if t.shape[2:] != a.shape[2:]:
                t = F.interpolate(t, size=a.shape[2:], mode='bilinear', align_corners=False)
            losses.append(fgfi_imitation_loss(a, t, mask.astype(a.dtype)))
        return {'distill_imitation': paddle.add_n(losses)}
