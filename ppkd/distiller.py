"""The merged model: a trainable student, a frozen teacher, recorders on
both, and the losses that read them."""
import logging

import paddle
import paddle.nn as nn

from ppkd.folding import fold_batch_norms
from ppkd.recorders import OutputRecorder
from ppkd.teacher import compile_teacher, freeze, run_for_features

logger = logging.getLogger('ppkd')


class Distiller(nn.Layer):
    """In training, returns the student's loss dict plus each distillation
    term and `det_loss`, with `loss` = det_loss + Σ weight · term. In eval,
    it is the student alone.

    The teacher stays in eval mode whatever `train()` is called on this
    layer, and none of its parameters is trainable; `trainable_parameters()`
    are the student's and the losses' own (adapters).
    """

    def __init__(self, student, teacher, losses, fold_teacher_bn=False, compile_teacher=False):
        super().__init__()
        self._fold_pending = fold_teacher_bn
        self._compile_pending = compile_teacher
        self._compiled_teacher = None
        self.student = student
        self.teacher = freeze(teacher)
        self.distill_losses = nn.LayerList(losses)
        for loss in losses:
            loss.bind(student, teacher)
        self.student_recorder = OutputRecorder(
            student, [n for loss in losses for n in loss.student_layers], 'student')
        self.teacher_recorder = OutputRecorder(
            teacher, [n for loss in losses for n in loss.teacher_layers], 'teacher')

    def train(self):
        super().train()
        self.teacher.eval()
        return self

    def prepare_teacher(self, inputs):
        """Before the first step (and outside any compiled program): fold
        the teacher's BatchNorms into its convolutions, checked on `inputs`,
        and compile its forward if asked."""
        if self._fold_pending:
            self._fold_teacher(inputs)
        if self._compile_pending:
            self._compile_pending = False
            self._compiled_teacher = compile_teacher(self.teacher, self.teacher_recorder)

    def _fold_teacher(self, inputs):
        self._fold_pending = False

        def teacher_outputs():
            self.teacher_recorder.clear()
            run_for_features(self.teacher, inputs, {}, set(self.teacher_recorder.names))
            return dict(self.teacher_recorder.outputs)

        folded = fold_batch_norms(self.teacher, teacher_outputs, keep=self.teacher_recorder.names)
        self.teacher_recorder.clear()
        logger.info('teacher: %d BatchNorm layers folded into the convolutions before them', folded)

    def trainable_parameters(self):
        return [p for p in self.parameters() if not p.stop_gradient]

    def _detection_loss(self, outputs):
        """The student's own loss, its terms re-weighted where a method asks
        (`DistillLoss.det_loss_scale`)."""
        scale = {}
        for loss in self.distill_losses:
            for name, factor in loss.det_loss_scale.items():
                scale[name] = scale.get(name, 1.) * factor
        if not scale:
            return outputs['loss']
        return paddle.add_n([value * scale.get(name, 1.) for name, value in outputs.items() if name != 'loss'])

    def _run_teacher(self, inputs):
        if self._compiled_teacher is not None:
            try:
                outputs = self._compiled_teacher(inputs['image'])
            except Exception as e:  # noqa: BLE001  any tracing failure: fall back, say so
                logger.warning('compiled teacher failed (%s: %s); running it in dygraph', type(e).__name__,
                               str(e).strip().splitlines()[-1] if str(e).strip() else '')
                self._compiled_teacher = None
            else:
                self.teacher_recorder.outputs = dict(zip(self.teacher_recorder.names, outputs))
                return
        run_for_features(self.teacher, inputs, self.student_recorder.outputs, set(self.teacher_recorder.names))

    def forward(self, inputs):
        if not self.training:
            return self.student(inputs)
        self.student_recorder.clear()
        self.teacher_recorder.clear()
        outputs = dict(self.student(inputs))
        with paddle.no_grad():
            self._run_teacher(inputs)
        det_loss = self._detection_loss(outputs)
        total = det_loss
        for loss in self.distill_losses:
            terms = loss(self.student_recorder.outputs, self.teacher_recorder.outputs)
            for name, value in terms.items():
                outputs[name] = value
                total = total + loss.weight * value
        outputs['det_loss'] = det_loss
        outputs['loss'] = total
        return outputs
