"""Segmentation distillation's functional forms (docs/methods.md §9): pixel
KD on the logits, and the affinity matrices and loss of knowledge
adaptation. They take tensors and return unweighted losses; the teacher side
is always a constant."""
import paddle
import paddle.nn.functional as F

from ppkd.errors import PPKDError


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
