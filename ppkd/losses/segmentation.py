"""Segmentation distillation (docs/methods.md §9): the functional forms
(pixel KD on the logits, the affinity matrices and loss of knowledge
adaptation; tensors in, an unweighted loss out, the teacher side always a
constant) and the registered losses a PaddleSeg distillation config names:
`PixelKD`, `FitNetDistill`, `KnowledgeAdaptation` (with its auto-encoder)."""
import os

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ppdet.core.workspace import register

from ppkd.errors import PPKDError
from ppkd.losses.base import DistillLoss, layer_channels
from ppkd.utils import hold_outside_tree


def _same_size(student, teacher, what):
    if list(student.shape[2:]) != list(teacher.shape[2:]):
        raise PPKDError(f'{what}: student {list(student.shape)} and teacher {list(teacher.shape)} differ in size; '
                        'resize one to the other first')


def pixel_kd(student_logits, teacher_logits, temperature=1.0, ignore_mask=None):
    """T² · mean over the pixels not ignored of KL(p_t ‖ p_s), p =
    softmax over C of logits / T, for `[N, C, H, W]` logits of one size;
    `ignore_mask` `[N, H, W]` is true where a pixel is ignored. 0 when every
    pixel is."""
    _same_size(student_logits, teacher_logits, 'pixel_kd')
    log_t = F.log_softmax(teacher_logits.detach() / temperature, axis=1)
    log_s = F.log_softmax(student_logits / temperature, axis=1)
    per_pixel = (paddle.exp(log_t) * (log_t - log_s)).sum(axis=1)  # [N, H, W]
    if ignore_mask is None:
        return temperature ** 2 * per_pixel.mean()
    kept = paddle.logical_not(ignore_mask.astype('bool')).astype(per_pixel.dtype)
    return temperature ** 2 * (per_pixel * kept).sum() / paddle.clip(kept.sum(), min=1.)


def affinity_matrix(feature):
    """`[N, C, H, W]` → `[N, H·W, H·W]`: the cosine similarity of the feature
    vectors at every pair of positions (row-major positions)."""
    n, c = feature.shape[:2]
    flat = F.normalize(feature.reshape([n, c, -1]), axis=1)  # unit vectors per position
    return paddle.matmul(flat, flat, transpose_x=True)


def affinity_loss(student_feature, teacher_feature):
    """Mean over positions (and images) of the L2 norm of the difference of
    the two affinity rows, for features of one size (channels may differ)."""
    _same_size(student_feature, teacher_feature, 'affinity_loss')
    diff = affinity_matrix(student_feature) - affinity_matrix(teacher_feature.detach())
    return paddle.sqrt(paddle.square(diff).sum(axis=2) + 1e-12).mean()


def resize_to(feature, size):
    """Bilinear resize of `[N, C, H, W]` to `size` (H, W); as it is when it fits."""
    if list(feature.shape[2:]) == list(size):
        return feature
    return F.interpolate(feature, size=list(size), mode='bilinear', align_corners=False)


def _larger(a, b):
    return a.shape[2:] if a.shape[2] * a.shape[3] >= b.shape[2] * b.shape[3] else b.shape[2:]


def ignored_pixels(inputs, size, ignore_index):
    """`[N, H, W]` true where the batch's label (resized, nearest) is
    `ignore_index`; None for a batch without labels."""
    label = inputs.get('label') if isinstance(inputs, dict) else None
    if label is None:
        return None
    label = label.astype('float32')
    if label.ndim == 3:
        label = label.unsqueeze(1)
    label = F.interpolate(label, size=list(size), mode='nearest')
    return label.squeeze(1) == float(ignore_index)


def _conv_bn_relu(in_channels, out_channels):
    return nn.Sequential(nn.Conv2D(in_channels, out_channels, 3, padding=1, bias_attr=False),
                         nn.BatchNorm2D(out_channels), nn.ReLU())


@register
class PixelKD(DistillLoss):
    """Pixel-wise distillation of the logits (`pixel_kd`): both resized to
    the larger of their sizes, pixels whose label is `ignore_index` left out.
    Term `pixel_kd`."""

    def __init__(self, weight=1., temperature=2., student_layer='head[0]', teacher_layer='head[0]', ignore_index=255):
        super().__init__(weight, [student_layer], [teacher_layer])
        self.temperature = float(temperature)
        self.ignore_index = ignore_index

    def forward(self, student, teacher, inputs):
        (s,), (t,) = self.gather(student, teacher)
        size = _larger(s, t)
        s, t = resize_to(s, size), resize_to(t, size)
        return {'pixel_kd': pixel_kd(s, t, self.temperature, ignored_pixels(inputs, size, self.ignore_index))}


@register
class FitNetDistill(DistillLoss):
    """FitNet-style hint: a 1×1 convolution maps the student's feature to
    the teacher's channels, resized to the teacher's size; mean squared
    difference. Term `fitnet`."""

    def __init__(self, weight=1., student_layer='head.aspp', teacher_layer='head.aspp', student_channels=None,
                 teacher_channels=None):
        super().__init__(weight, [student_layer], [teacher_layer])
        self.channels = (student_channels, teacher_channels)

    def bind(self, student, teacher):
        s_c = self.channels[0] or layer_channels(student, self.student_layers[0], 'FitNetDistill (student)')
        t_c = self.channels[1] or layer_channels(teacher, self.teacher_layers[0], 'FitNetDistill (teacher)')
        self.adapter = nn.Conv2D(s_c, t_c, 1)

    def forward(self, student, teacher, inputs):
        (s,), (t,) = self.gather(student, teacher)
        s = resize_to(self.adapter(s), t.shape[2:])
        return {'fitnet': F.mse_loss(s, t.detach())}


class FeatureAutoEncoder(nn.Layer):
    """Knowledge adaptation's auto-encoder on the teacher's feature map:
    three 3×3 convolutions down (`strides`), their mirror up (a transposed
    convolution for each stride 2), ReLU between; the code is the encoder's
    output. `loss(x)` = mean squared reconstruction error + α · mean |code|
    (both per element of `x`, so α keeps its ratio to the reconstruction).

    `scale` multiplies the input first: stage 1 sets it to 1 / the RMS of
    the teacher's feature on the first batch, so that one learning rate
    suits teachers whose features differ in scale by orders of magnitude."""

    def __init__(self, in_channels, code_channels=None, strides=(1, 2, 1), alpha=1e-7, scale=1.):
        super().__init__()
        code_channels = code_channels or in_channels
        self.config = {'in_channels': int(in_channels), 'code_channels': int(code_channels),
                       'strides': [int(s) for s in strides], 'alpha': float(alpha), 'scale': float(scale)}
        widths = [in_channels] + [code_channels] * len(strides)
        down, up = [], []
        for k, stride in enumerate(strides):
            down += [nn.Conv2D(widths[k], widths[k + 1], 3, stride=stride, padding=1)]
            down += [nn.ReLU()] if k < len(strides) - 1 else []
        for k, stride in reversed(list(enumerate(strides))):
            up += [nn.Conv2DTranspose(widths[k + 1], widths[k], 4, stride=2, padding=1) if stride == 2
                   else nn.Conv2D(widths[k + 1], widths[k], 3, padding=1)]
            up += [nn.ReLU()] if k > 0 else []
        self.encoder, self.decoder = nn.Sequential(*down), nn.Sequential(*up)

    def encode(self, x):
        return self.encoder(x * self.config['scale'])

    def forward(self, x):
        """(code, reconstruction of the scaled input)."""
        code = self.encode(x)
        return code, resize_to(self.decoder(code), x.shape[2:])

    def loss(self, x):
        code, reconstruction = self(x)
        x = x * self.config['scale']
        terms = {'reconstruction': F.mse_loss(reconstruction, x),
                 'code_l1': self.config['alpha'] * paddle.abs(code).sum() / x.size}
        terms['loss'] = terms['reconstruction'] + terms['code_l1']
        return terms


def load_autoencoder(path):
    """A FeatureAutoEncoder saved by tools/train_autoencoder.py, frozen."""
    if not os.path.isfile(path):
        raise PPKDError(f'KnowledgeAdaptation.autoencoder not found: {path} (train it first: '
                        'tools/train_autoencoder.py, with the same -c/-t/--teacher_pretrained)')
    saved = paddle.load(path)
    if not isinstance(saved, dict) or 'config' not in saved or 'state' not in saved:
        raise PPKDError(f'{path}: not an auto-encoder saved by tools/train_autoencoder.py')
    model = FeatureAutoEncoder(**saved['config'])
    model.set_state_dict(saved['state'])
    model.eval()
    for p in model.parameters():
        p.stop_gradient = True
    return model, saved.get('teacher_layer')


# Stage 1's defaults (docs/methods.md §9): one pass, SGD lr 0.1, weight decay 1e-4, α 1e-7.
AUTOENCODER_TRAINING = {'epochs': 1, 'learning_rate': 0.1, 'weight_decay': 1e-4, 'alpha': 1e-7, 'strides': [1, 2, 1],
                        'code_channels': None, 'batch_size': None}


@register
class KnowledgeAdaptation(DistillLoss):
    """Knowledge adaptation (docs/methods.md §9): the frozen auto-encoder's
    code of the teacher's feature is what the student imitates, through an
    adapter C_f (3×3 conv + BN + ReLU) with per-position normalised features
    (`ka_adaptation`, × `adaptation_weight` β), and through the pairwise
    affinities of a second adapter C_a's output (`ka_affinity`, ×
    `affinity_weight` γ); student features resized to the code's size.
    `weight` scales both (and is what schedules and `auto` act on)."""

    def __init__(self, autoencoder, weight=1., adaptation_weight=50., affinity_weight=1., student_layer='head.aspp',
                 teacher_layer='head.aspp', student_channels=None, autoencoder_training=None):
        super().__init__(weight, [student_layer], [teacher_layer])
        self.autoencoder_path = autoencoder
        # Stage 1's settings (tools/train_autoencoder.py), kept with the loss they serve.
        self.autoencoder_training = dict(AUTOENCODER_TRAINING, **(autoencoder_training or {}))
        unknown = sorted(set(self.autoencoder_training) - set(AUTOENCODER_TRAINING))
        if unknown:
            raise PPKDError(f'KnowledgeAdaptation.autoencoder_training: unknown key {unknown[0]!r} '
                            f'(known: {", ".join(AUTOENCODER_TRAINING)})')
        self.adaptation_weight, self.affinity_weight = float(adaptation_weight), float(affinity_weight)
        self.student_channels = student_channels

    def bind(self, student, teacher):
        encoder, layer = load_autoencoder(self.autoencoder_path)
        if layer is not None and layer != self.teacher_layers[0]:
            raise PPKDError(f'{self.autoencoder_path}: trained on the teacher\'s {layer!r}, KnowledgeAdaptation '
                            f'reads {self.teacher_layers[0]!r}')
        t_c = layer_channels(teacher, self.teacher_layers[0], 'KnowledgeAdaptation (teacher)')
        if t_c != encoder.config['in_channels']:
            raise PPKDError(f'{self.autoencoder_path}: trained on {encoder.config["in_channels"]} channels, the '
                            f'teacher\'s {self.teacher_layers[0]!r} has {t_c}')
        hold_outside_tree(self, 'autoencoder', encoder)  # frozen, not trained: not among the loss's parameters
        s_c = self.student_channels or layer_channels(student, self.student_layers[0], 'KnowledgeAdaptation (student)')
        code_c = encoder.config['code_channels']
        self.feature_adapter, self.affinity_adapter = _conv_bn_relu(s_c, code_c), _conv_bn_relu(s_c, code_c)

    def forward(self, student, teacher, inputs):
        (s,), (t,) = self.gather(student, teacher)
        with paddle.no_grad():
            code = self.autoencoder.encode(t.detach())
        size = code.shape[2:]
        adapted = resize_to(self.feature_adapter(s), size)
        gap = F.normalize(code, axis=1) - F.normalize(adapted, axis=1)
        adaptation = paddle.sqrt(paddle.square(gap).sum(axis=1) + 1e-12).mean()
        affinity = affinity_loss(resize_to(self.affinity_adapter(s), size), code)
        return {'ka_adaptation': self.adaptation_weight * adaptation, 'ka_affinity': self.affinity_weight * affinity}
