"""The contract every distillation loss follows."""
import paddle.nn as nn


class DistillLoss(nn.Layer):
    """A distillation loss reads the recorded outputs of named student and
    teacher layers and returns its unweighted terms by name.

    The distiller records `student_layers` and `teacher_layers` (paths as
    `named_sublayers()` gives them) and adds `weight · term` for every term
    to the detection loss. A loss with trainable parts (an adapter) owns
    them, so they train with the student and are saved beside it.
    """

    def __init__(self, weight, student_layers, teacher_layers):
        super().__init__()
        self.weight = float(weight)
        self.student_layers = list(student_layers)
        self.teacher_layers = list(teacher_layers)

    def gather(self, student, teacher):
        """The recorded outputs this loss reads, in its layer order:
        (student list, teacher list)."""
        return [student[n] for n in self.student_layers], [teacher[n] for n in self.teacher_layers]

    def forward(self, student, teacher):
        """`student`/`teacher`: {layer name: output}. Returns {term: loss}."""
        raise NotImplementedError
