"""The merged model: a trainable student, a frozen teacher, recorders on
both, and the losses that read them."""
import logging
import os
import tempfile

import numpy as np
import paddle
import paddle.nn as nn

from ppkd.balancing import AutoBalance, WeightSchedule
from ppkd.compiled_teacher import CALIBRATION_IMAGES, INT8_CHECK_BATCHES, compile_teacher
from ppkd.errors import PPKDError, describe
from ppkd.folding import fold_batch_norms
from ppkd.recorders import OutputRecorder
from ppkd.tasks.detection import DetectionTask
from ppkd.teacher_cache import TeacherOutputCache
from ppkd.teacher import ROI_FEATURES, freeze, run_for_features
from ppkd.utils import hold_outside_tree

logger = logging.getLogger('ppkd')


class Distiller(nn.Layer):
    """In training, returns the student's loss dict plus each distillation
    term and its own loss (`det_loss`; a segmenter's `task_loss`), with
    `loss` = own loss + Σ weight · term. In eval,
    it is the student alone.

    The teacher stays in eval mode whatever `train()` is called on this
    layer, and none of its parameters is trainable; `trainable_parameters()`
    are the student's and the losses' own (adapters).

    `compile_teacher`: 'auto', 'inference', 'to_static' or None (dygraph),
    as `distill.compile_teacher` (see `ppkd.compiled_teacher`);
    `teacher_precision` ('float32', 'bfloat16' or 'int8') that of the predictor.
    `reuse_teacher_outputs`: keep the teacher's outputs per image and read
    them back in later epochs (for readers whose images are the same every
    epoch: `ppkd.teacher_cache`).

    `forward(inputs, unlabeled)`: with a batch of unlabeled images, the
    student's and the teacher's image parts also run on it and every loss
    that needs no ground truth adds its terms (named `<term>_unlabeled`,
    weighted × `unlabeled_weight`); the detection loss reads `inputs` only.
    The terms on the labelled batch are weighted × `labeled_weight`.

    `begin_step`/`end_step` around each training step apply the weight
    schedule and calibrate `weight: auto` losses (`ppkd.balancing`).
    """

    def __init__(self, student, teacher, losses, fold_teacher_bn=False, compile_teacher='auto',
                 tensorrt_max_size=0, schedule=None, balance=None, unlabeled_weight=None, labeled_weight=1.,
                 task=None, teacher_precision='float32', reuse_teacher_outputs=False):
        super().__init__()
        self.task = task or DetectionTask(None)
        self.labeled_weight = float(labeled_weight)
        self.schedule = schedule or WeightSchedule()
        self.balance = balance or AutoBalance()
        self.unlabeled_weight = unlabeled_weight
        self._term_names = {}
        self._fold_pending = fold_teacher_bn
        self._compile_pending = compile_teacher
        self._tensorrt_max_size = tensorrt_max_size
        self._teacher_precision = teacher_precision
        self.compiled_teacher = None
        self.compiled_roi_layers = None  # the second part's end, compiled (`ppkd.teacher.TEACHER_TAILS`)
        self._released_teacher = None  # where the dygraph teacher's weights wait while a predictor runs it
        self.student = student
        self.teacher = freeze(teacher)
        self._teacher_forwards = self.task.teacher_forwards(teacher)
        self._teacher_tail = self.task.teacher_tail(teacher)
        # The teacher's outputs per image, when kept from epoch to epoch: on labelled images (not where its second
        # part reads the student's outputs) and on unlabeled ones. Two attributes, not a dict: Paddle 2.6's
        # to_static translator fails on a dict lookup in the traced step.
        reads_student = bool(self._teacher_forwards) and self._teacher_forwards[1] is not None
        self._labelled_outputs = TeacherOutputCache() if reuse_teacher_outputs and not reads_student else None
        self._unlabeled_outputs = TeacherOutputCache() if reuse_teacher_outputs else None
        # The student's image part, for unlabeled images (looked up here, outside traced code).
        self._student_image_part = (self.task.teacher_forwards(student) or (None, None))[0]
        self.distill_losses = nn.LayerList(losses)
        for loss in losses:
            loss.bind(student, teacher)
        # The student also runs alone (evaluation): record inside training steps only.
        self.student_recorder = OutputRecorder(
            student, [n for loss in losses for n in loss.student_layers], 'student', active=False)
        self.teacher_recorder = OutputRecorder(
            teacher, [n for loss in losses for n in loss.teacher_layers], 'teacher')
        if unlabeled_weight is not None:
            self._check_unlabeled()

    def _check_unlabeled(self):
        for role, model, forwards in (('teacher', self.teacher, self._teacher_forwards),
                                      ('student', self.student, self._student_image_part)):
            if not forwards:
                raise PPKDError(f'distill.unlabeled: no image-only forward known for the {role} '
                                f'({type(model).__name__})')
        skipped = [type(loss).__name__ for loss in self.distill_losses if loss.needs_ground_truth]
        if len(skipped) == len(self.distill_losses):
            raise PPKDError(f'distill.unlabeled: every loss ({", ".join(skipped)}) needs ground truth; '
                            'none can run on unlabeled images')
        if skipped:
            logger.warning('unlabeled images: %s need ground truth and run on labelled images only',
                           ', '.join(skipped))

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
        if in_program and (self._labelled_outputs or self._unlabeled_outputs):
            logger.info('teacher: outputs not kept from epoch to epoch (the teacher runs inside the compiled step)')
            self._stop_keeping_outputs()

    def _compile_teacher(self, inputs, in_program):
        engine, self._compile_pending = self._compile_pending, False
        arch = type(self.teacher).__name__
        if in_program:
            logger.info('teacher: compiled with the student in one program')
        elif self._teacher_forwards is None:
            (logger.info if engine == 'auto' and self._teacher_precision == 'float32' else logger.warning)(
                'teacher: no feature forward known for %s; running its whole forward in dygraph', arch)
        else:
            engine = 'inference' if engine == 'auto' else engine
            self.compiled_teacher = compile_teacher(
                self.teacher, self.teacher_recorder, self._teacher_forwards[0], inputs,
                engine, self._tensorrt_max_size, self._teacher_precision,
                calibration=lambda: self.task.calibration_images(CALIBRATION_IMAGES),
                training_images=lambda: self.task.training_images(INT8_CHECK_BATCHES))
            if self._teacher_tail is not None:
                self._compile_roi_layers(inputs, engine)
            rest_in_dygraph = self._teacher_forwards[1] is not None and self.compiled_roi_layers is None
            if getattr(self.compiled_teacher, 'engine', None) == 'inference' and not rest_in_dygraph:
                self._release_teacher_weights()

    def _compile_roi_layers(self, inputs, engine):
        """The second part's end (Faster R-CNN: the RoI head after RoIAlign,
        whose FC layers dygraph runs slowly on a CPU), compiled in float32
        and checked on the RoI features of the batch's true boxes."""
        sample, layers = self._teacher_tail
        names = set(self.teacher_recorder.names)
        with paddle.no_grad():
            roi_feats = sample(self.teacher, self._teacher_forwards[0](self.teacher, inputs, names), inputs, names)
        self.teacher_recorder.clear()
        if roi_feats is not None:
            self.compiled_roi_layers = compile_teacher(self.teacher, self.teacher_recorder, layers,
                                                       {ROI_FEATURES: roi_feats}, engine, input_name=ROI_FEATURES)

    def _run_compiled_roi_layers(self, model, inputs, names):
        """`roi_layers` for the teacher's second part: the compiled end's
        outputs added to the teacher's record."""
        recorded_so_far = dict(self.teacher_recorder.outputs)  # a to_static program that traces again clears it
        try:
            outputs, _ = self.compiled_roi_layers.record(inputs[ROI_FEATURES])
        except Exception as e:  # noqa: BLE001  as the compiled image part: fall back, say so
            self.teacher_recorder.outputs = recorded_so_far
            self.compiled_roi_layers = None
            self._fall_back_to_dygraph("teacher's RoI head", e)
            return self._teacher_tail[1](model, inputs, names)
        self.teacher_recorder.outputs = recorded_so_far
        for name, recorded in outputs.items():
            if recorded:
                self.teacher_recorder.outputs.setdefault(name, []).extend(recorded)
        return []

    def _fall_back_to_dygraph(self, part, error):
        """A compiled part of the teacher failed in training: say so, and give
        the dygraph teacher back the weights it will now run on."""
        logger.warning('compiled %s failed (%s); running it in dygraph', part, describe(error))
        self._restore_teacher_weights()

    def _release_teacher_weights(self):
        """The predictor holds its own copy of the weights and nothing else
        reads the dygraph teacher's: free them, kept in a file that is read
        back if the predictor fails later."""
        self._released_teacher = tempfile.TemporaryDirectory(prefix='ppkd-teacher-')
        size = 0
        # One tensor at a time: a whole state dict saved at once would copy every weight first.
        for k, tensor in enumerate(self.teacher.state_dict().values()):
            value = tensor.numpy()
            np.save(os.path.join(self._released_teacher.name, f'{k}.npy'), value)
            size += value.nbytes
            tensor._clear_data()
        logger.info('teacher: its dygraph copy of the weights released (%.0f MB), the predictor has its own',
                    size / 2 ** 20)

    def _restore_teacher_weights(self):
        if self._released_teacher is not None:
            for k, tensor in enumerate(self.teacher.state_dict().values()):
                # From NumPy, onto the current device: set_state_dict, or a tensor value, needs tensors that
                # still hold data (a cleared one no longer knows its device).
                tensor.set_value(np.load(os.path.join(self._released_teacher.name, f'{k}.npy')))
            self._released_teacher.cleanup()
            self._released_teacher = None

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

    def data_parallel_part(self):
        """The layer `paddle.DataParallel` wraps: it runs this distiller's
        step but owns only the student and the losses' layers, so the
        teacher is neither broadcast nor hooked for gradient averaging."""
        return _TrainedPart(self)

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

    def begin_step(self, iteration, total_iters, steps_per_epoch):
        """Set every loss's weight for this iteration (outside the compiled step)."""
        factor = self.schedule.factor(iteration, total_iters, steps_per_epoch)
        progress = min(1., iteration / max(total_iters - 1, 1))
        for loss in self.distill_losses:
            loss.step_weight.set_value(paddle.full([], loss.weight * factor, 'float32'))
            loss.set_progress(progress)

    def end_step(self, iteration, outputs):
        """Calibrate `weight: auto` losses from this step's unweighted terms."""
        waiting = [loss for loss in self.distill_losses if not loss.calibrated]
        if not waiting:
            return
        value = lambda name: float(outputs[name].numpy().reshape(-1)[0])  # noqa: E731
        terms = {}
        for loss in waiting:
            labelled, unlabeled = self._term_names.get(id(loss), ([], []))
            terms[loss] = (self.labeled_weight * sum(value(n) for n in labelled)
                           + (self.unlabeled_weight or 0.) * sum(value(n) for n in unlabeled))
        for loss, weight in self.balance.observe(iteration, value(self.task.own_loss_key), terms).items():
            loss.weight = weight

    def _add_terms(self, outputs, total, inputs, suffix='', scale=1.):
        for loss in self.distill_losses:
            if suffix and loss.needs_ground_truth:
                continue
            terms = loss(self.student_recorder.outputs, self.teacher_recorder.outputs, inputs)
            self._term_names.setdefault(id(loss), ([], []))[1 if suffix else 0][:] = [n + suffix for n in terms]
            for name, value in terms.items():
                outputs[name + suffix] = value
                total = total + (loss.step_weight * scale) * value
        return total

    def run_teacher(self, inputs, image_part_only=False):
        """The teacher's part of a step: its recorder filled for `inputs`
        (with `image_part_only`, not the part that reads the student); read
        back from `reuse_teacher_outputs`'s store when it holds every image."""
        cache = self._unlabeled_outputs if image_part_only else self._labelled_outputs
        ids = None if cache is None else self.task.image_ids(inputs)
        if cache is not None and ids is None:
            logger.info('teacher: outputs not kept (the batch has no image ids)')
            self._stop_keeping_outputs()
            cache = None
        held = None if cache is None else cache.lookup(ids)
        if held is not None:
            if cache.hits == 1:
                logger.info('teacher: outputs read back for images seen in an earlier epoch')
            self.teacher_recorder.outputs = held
            return
        self._run_teacher(inputs, image_part_only)
        if cache is not None and not cache.store(ids, self.teacher_recorder.outputs):
            logger.info('teacher: outputs not kept (not one row per image)')
            self._stop_keeping_outputs()

    def _stop_keeping_outputs(self):
        self._labelled_outputs = self._unlabeled_outputs = None

    def _run_teacher(self, inputs, image_part_only):
        names = set(self.teacher_recorder.names)
        roi_layers = self._run_compiled_roi_layers if self.compiled_roi_layers is not None else None
        if self.compiled_teacher is not None:
            try:
                outputs, feats = self.compiled_teacher.record(self.task.images(inputs))
            except Exception as e:  # noqa: BLE001  e.g. an input the compiled form refuses: fall back, say so
                self.compiled_teacher = None
                self._fall_back_to_dygraph('teacher', e)
            else:
                self.teacher_recorder.outputs = outputs
                rest = self._teacher_forwards[1]
                if rest is not None and not image_part_only:  # it reads the student's outputs of this step
                    rest(self.teacher, feats, inputs, self.student_recorder.outputs, names, roi_layers)
                return
        forwards = (self._teacher_forwards[0], None) if image_part_only else self._teacher_forwards
        run_for_features(self.teacher, forwards, inputs, self.student_recorder.outputs, names, roi_layers)

    def forward(self, inputs, unlabeled=None):
        if not self.training:
            return self.student(inputs)
        with self.student_recorder.recording():
            return self._training_step(inputs, unlabeled)

    def _training_step(self, inputs, unlabeled):
        self.teacher_recorder.clear()
        outputs = self.task.student_loss(self.student, inputs)
        with paddle.no_grad():
            self.run_teacher(inputs)
        det_loss = self._detection_loss(outputs)
        total = self._add_terms(outputs, det_loss, inputs, scale=self.labeled_weight)
        if unlabeled is not None:
            self.student_recorder.clear()
            self.teacher_recorder.clear()
            # The image part alone: no ground truth, so no detection loss.
            self._student_image_part(self.student, unlabeled, self.student_recorder.names)
            with paddle.no_grad():
                self.run_teacher(unlabeled, image_part_only=True)
            total = self._add_terms(outputs, total, unlabeled, '_unlabeled', self.unlabeled_weight)
        for loss in self.distill_losses:
            outputs[f'weight_{type(loss).__name__}'] = loss.step_weight
        outputs[self.task.own_loss_key] = det_loss
        outputs['loss'] = total
        return outputs


class _TrainedPart(nn.Layer):
    """The student and the loss layers as sublayers; the distiller (and
    through it the teacher) held as a plain reference, outside the layer
    tree that data parallelism synchronises."""

    def __init__(self, distiller):
        super().__init__()
        self.student = distiller.student
        self.distill_losses = distiller.distill_losses
        hold_outside_tree(self, 'distiller', distiller)

    def train(self):
        self.distiller.train()
        return self

    def eval(self):
        self.distiller.eval()
        return self

    def forward(self, inputs, unlabeled=None):
        return self.distiller(inputs, unlabeled)
