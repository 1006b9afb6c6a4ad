"""YOLOv3 logit distillation (METHODS.md §1)."""
import paddle

from ppdet.core.workspace import register

from ppkd.errors import PPKDError
from ppkd.losses.base import DistillLoss

YOLOV3_HEAD_OUTPUTS = ['yolo_head.yolo_output.0', 'yolo_head.yolo_output.1', 'yolo_head.yolo_output.2']


def check_same_layout(student_outputs, teacher_outputs):
    """Refuse teacher outputs whose head layout (levels, channels = anchors ×
    (5 + classes), map size) differs from the student's."""
    if len(student_outputs) != len(teacher_outputs):
        raise PPKDError(f'teacher head has {len(teacher_outputs)} output levels, '
                        f'student has {len(student_outputs)}')
    for level, (s, t) in enumerate(zip(student_outputs, teacher_outputs)):
        # The batch dimension may be unknown (-1) while compiling.
        if list(s.shape[1:]) != list(t.shape[1:]):
            raise PPKDError(f'head output level {level}: student shape {list(s.shape)} '
                            f'and teacher shape {list(t.shape)} differ '
                            '(classes, anchors or strides do not match)')


def yolov3_l2_distill(student_outputs, teacher_outputs):
    """Σ over levels of mean((s − t)²) for raw YOLOv3 head maps
    `[N, A·(5+C), H, W]`. The teacher side is treated as a constant."""
    check_same_layout(student_outputs, teacher_outputs)
    losses = [paddle.mean(paddle.square(s - t.detach())) for s, t in zip(student_outputs, teacher_outputs)]
    return paddle.add_n(losses)


@register
class YOLOv3L2Distill(DistillLoss):
    """L2 distillation of the three YOLOv3 head outputs; weight 100 as in
    PaddleDetection's original distill.py."""

    def __init__(self, weight=100., student_layers=None, teacher_layers=None):
        super().__init__(weight, student_layers or YOLOV3_HEAD_OUTPUTS,
                         teacher_layers or YOLOV3_HEAD_OUTPUTS)

    def forward(self, student, teacher):
        s = [student[n] for n in self.student_layers]
        t = [teacher[n] for n in self.teacher_layers]
        return {'distill_l2': yolov3_l2_distill(s, t)}
