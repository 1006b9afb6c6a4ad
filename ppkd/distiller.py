"""The merged model: a trainable student, a frozen teacher, recorders on
both, and the losses that read them."""
import logging

import paddle
import paddle.nn as nn

from ppkd.compiled_teacher import compile_teacher
from ppkd.folding import fold_batch_norms
from ppkd.recorders import OutputRecorder
from ppkd.teacher import TEACHER_FORWARDS, freeze, run_for_features

logger = logging.getLogger('ppkd')


class Distiller(nn.Layer):
    """In training, returns the student's loss dict plus each distillation
    term and `det_loss`, with `loss` = det_loss + Σ weight · term. In eval,
    it is the student alone.

    The teacher stays in eval mode whatever `train()` is called on this
    layer, and none of its parameters is trainable; `trainable_parameters()`
    are the student's and the losses' own (adapters).

    `compile_teacher`: 'auto', 'inference', 'to_static' or None (dygraph),
    as `distill.compile_teacher` (see `ppkd.compiled_teacher`).
    """

    def __init__(self, student, teacher, losses, fold_teacher_bn=False, compile_teacher='auto',
                 tensorrt_max_size=0):
        super().__init__()
        self._fold_pending = fold_teacher_bn
        self._compile_pending = compile_teacher
        self._tensorrt_max_size = tensorrt_max_size
        self.compiled_teacher = None
        self.student = student
        self.teacher = freeze(teacher)
        self._teacher_forwards = TEACHER_FORWARDS.get(type(teacher).__name__)
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

    def prepare_teacher(self, inputs, in_program=False):
        """Before the first step (and outside any compiled program): fold
        the teacher's BatchNorms into its convolutions if asked, and compile
        its forward, both checked on `inputs`. `in_program`: the whole step
        is compiled with the teacher inside (`--to_static`), so the teacher
        is not compiled apart."""
        if self._fold_pending:
            self._fold_teacher(inputs)
        if self._compile_pending:
            self._compile_teacher(inputs, in_program)

    def _compile_teacher(self, inputs, in_program):
        engine, self._compile_pending = self._compile_pending, False
        arch = type(self.teacher).__name__
        if in_program:
            logger.info('teacher: compiled with the student in one program')
        elif self._teacher_forwards is None:
            (logger.info if engine == 'auto' else logger.warning)(
                'teacher: no feature forward known for %s; running its whole forward in dygraph', arch)
        else:
            self.compiled_teacher = compile_teacher(
                self.teacher, self.teacher_recorder, self._teacher_forwards[0], inputs,
                'inference' if engine == 'auto' else engine, self._tensorrt_max_size)

    def _fold_teacher(self, inputs):
        self._fold_pending = False

        def teacher_outputs():
            self.teacher_recorder.clear()
            run_for_features(self.teacher, self._teacher_forwards, inputs, {}, set(self.teacher_recorder.names))
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

    def run_teacher(self, inputs):
        """The teacher's part of a step: its recorder filled for `inputs`."""
        names = set(self.teacher_recorder.names)
        if self.compiled_teacher is not None:
            try:
                outputs, feats = self.compiled_teacher.record(inputs['image'])
            except Exception as e:  # noqa: BLE001  e.g. an input the compiled form refuses: fall back, say so
                logger.warning('compiled teacher failed (%s: %s); running it in dygraph', type(e).__name__,
                               str(e).strip().splitlines()[-1] if str(e).strip() else '')
                self.compiled_teacher = None
            else:
                self.teacher_recorder.outputs = outputs
                rest = self._teacher_forwards[1]
                if rest is not None:  # in dygraph: it reads the student's outputs of this step
                    rest(self.teacher, feats, inputs, self.student_recorder.outputs, names)
                return
        run_for_features(self.teacher, self._teacher_forwards, inputs, self.student_recorder.outputs, names)

    def forward(self, inputs):
        if not self.training:
            return self.student(inputs)
        self.student_recorder.clear()
        self.teacher_recorder.clear()
        outputs = dict(self.student(inputs))
        with paddle.no_grad():
            self.run_teacher(inputs)
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
