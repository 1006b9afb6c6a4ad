"""The contract every distillation loss follows."""
import paddle
import paddle.nn as nn

from ppkd.errors import PPKDError
from ppkd.recorders import split_index


def layer_channels(model, name, loss_name):
    """Channels that the recorded part `name` of `model` outputs: for an
    indexed name (`neck[1]`) the layer's `out_shape[1]` (ppdet's necks and
    backbones declare it), else the layer's last convolution."""
    path, index = split_index(name)
    layer = dict(model.named_sublayers()).get(path)
    if layer is None:
        raise PPKDError(f'{loss_name}: no layer named {path!r}')
    if index is not None:
        shapes = getattr(layer, 'out_shape', None)
        if shapes is not None and -len(shapes) <= index < len(shapes):
            return shapes[index].channels
    else:
        convs = [layer] + [sub for _, sub in layer.named_sublayers()]
        convs = [c for c in convs if isinstance(c, nn.Conv2D)]
        if convs:
            return convs[-1]._out_channels
    raise PPKDError(f'{loss_name}: cannot tell how many channels {name!r} outputs; '
                    f'set {loss_name}.student_channels / teacher_channels')


def per_location(maps, width):
    """Per-level head maps `[N, K·width, H, W]` → `[N, Σ H·W·K, width]`, in
    the order ppdet's anchor and prior targets use (level, row, column,
    anchor)."""
    return paddle.concat([m.transpose([0, 2, 3, 1]).reshape([m.shape[0], -1, width]) for m in maps], axis=1)


class DistillLoss(nn.Layer):
    """A distillation loss reads the recorded outputs of named student and
    teacher parts and returns its terms by name.

    The distiller records `student_layers` and `teacher_layers` (paths as
    `named_sublayers()` gives them, one element of a layer's list output, or
    a sublayer's callable attribute, see `OutputRecorder`) and adds
    `weight · term` for every term to the detection loss. `forward` also
    receives the batch the outputs were recorded on (ground-truth boxes,
    image size), so a loss that needs it takes it from there. A loss with
    trainable parts (an adapter) creates them in `bind`, so they train with
    the student and are saved beside it.

    `det_loss_scale` ({student loss term: factor}) lets a method re-weight the
    student's own detection terms, e.g. the hard share μ of a classification
    loss that is mixed with soft labels.

    `weight` is a number or `'auto'` (calibrated against the detection loss
    in the first iterations, see `ppkd.balancing`); a calibrated weight is
    kept in the loss's state, so a resumed run keeps it. `step_weight` is the
    weight of the current step (the schedule applied), a tensor so that a
    compiled step reads the new value every iteration.

    `needs_ground_truth`: the loss reads the student's ground-truth
    assignments (sampled RoIs, anchor targets), so it cannot run on
    unlabeled images.
    """
    needs_ground_truth = False

    def __init__(self, weight, student_layers, teacher_layers):
        super().__init__()
        self.auto_weight = weight == 'auto'
        try:
            self._fixed_weight = 0. if self.auto_weight else float(weight)
        except (TypeError, ValueError):
            raise PPKDError(f'{type(self).__name__}.weight must be a number or auto, got {weight!r}') from None
        if not 0. <= self._fixed_weight < float('inf'):
            raise PPKDError(f'{type(self).__name__}.weight must be finite and ≥ 0, got {weight!r}')
        if self.auto_weight:  # kept in the checkpoint; a number comes from the config, also on resume
            self.register_buffer('calibrated_weight', paddle.full([], 0., 'float32'), persistable=True)
        self.register_buffer('step_weight', paddle.full([], self._fixed_weight, 'float32'), persistable=False)
        self.student_layers = list(student_layers)
        self.teacher_layers = list(teacher_layers)
        self.det_loss_scale = {}

    @property
    def weight(self):
        return float(self.calibrated_weight) if self.auto_weight else self._fixed_weight

    @weight.setter
    def weight(self, value):
        if not self.auto_weight:
            raise PPKDError(f'{type(self).__name__}: only a weight: auto is calibrated')
        self.calibrated_weight.set_value(paddle.full([], float(value), 'float32'))

    @property
    def calibrated(self):
        """False while a `weight: auto` loss still waits for its weight."""
        return not self.auto_weight or self.weight > 0

    def bind(self, student, teacher):
        """Called once by the distiller with both models, before training:
        check they suit this loss, create adapters."""

    def set_progress(self, fraction):
        """Called before each training step, outside any compiled step, with
        the share of the run done (0 at the first iteration, 1 at the last):
        for a loss whose own balance moves over the run."""

    def gather(self, student, teacher):
        """The last recorded output of each layer this loss reads, in its
        layer order: (student list, teacher list)."""
        return [student[n][-1] for n in self.student_layers], [teacher[n][-1] for n in self.teacher_layers]

    def forward(self, student, teacher, inputs):
        """`student`/`teacher`: {name: [output of each call]}; `inputs`: the
        batch they were recorded on. Returns {term: loss}."""
        raise NotImplementedError
