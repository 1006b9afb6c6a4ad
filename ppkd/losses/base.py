"""The contract every distillation loss follows."""
import paddle.nn as nn


class DistillLoss(nn.Layer):
    """A distillation loss reads the recorded outputs of named student and
    teacher parts and returns its terms by name.

    The distiller records `student_layers` and `teacher_layers` (paths as
    `named_sublayers()` gives them, or a sublayer's callable attribute, see
    `OutputRecorder`) and adds `weight · term` for every term to the
    detection loss. A loss with trainable parts (an adapter) creates them in
    `bind`, so they train with the student and are saved beside it.

    `det_loss_scale` ({student loss term: factor}) lets a method re-weight the
    student's own detection terms, e.g. the hard share μ of a classification
    loss that is mixed with soft labels.
    """

    def __init__(self, weight, student_layers, teacher_layers):
        super().__init__()
        self.weight = float(weight)
        self.student_layers = list(student_layers)
        self.teacher_layers = list(teacher_layers)
        self.det_loss_scale = {}

    def bind(self, student, teacher):
        """Called once by the distiller with both models, before training:
        check they suit this loss, create adapters."""

    def gather(self, student, teacher):
        """The last recorded output of each layer this loss reads, in its
        layer order: (student list, teacher list)."""
        return [student[n][-1] for n in self.student_layers], [teacher[n][-1] for n in self.teacher_layers]

    def forward(self, student, teacher):
        """`student`/`teacher`: {name: [output of each call]}. Returns {term: loss}."""
        raise NotImplementedError
