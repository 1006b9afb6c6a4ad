"""Checkpoints: `NAME.pdparams` holds the student alone, loadable by plain
ppdet/ppkd tools; `NAME.pdstate` holds what resuming needs (epoch,
optimizer and LR state, the losses' own parameters). Both are written to a
temporary name and renamed; the state records a digest of the weights it
belongs with, so an interruption between the two renames cannot pair one
epoch's weights with another's state unnoticed."""
import hashlib
import os

import numpy as np
import paddle

from ppkd.errors import PPKDError


def _atomic_save(obj, path):
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        paddle.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _rename_optimizer_state(state, renames):
    """Optimizer state keys are `<parameter name>_<accumulator>`; parameter
    names are generated per process (`conv2d_376.w_0`), so the saved state
    uses the model's structured names instead and is mapped back on load."""
    out = {}
    # Longest names first, so `conv2d_37.w_0` never claims `conv2d_376.w_0`'s keys.
    ordered = sorted(renames.items(), key=lambda kv: -len(kv[0]))
    for key, value in state.items():
        for old, new in ordered:
            if key.startswith(old + '_'):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def optimizer_state_for_saving(optimizer, model):
    return _rename_optimizer_state(optimizer.state_dict(),
                                   {p.name: n for n, p in model.named_parameters()})


def optimizer_state_for_loading(state, model):
    return _rename_optimizer_state(state, {n: p.name for n, p in model.named_parameters()})


def weights_digest(state_dict):
    """SHA-1 over a state dict's names and values."""
    digest = hashlib.sha1()
    for name in sorted(state_dict):
        digest.update(name.encode())
        value = state_dict[name]
        digest.update(np.ascontiguousarray(value.numpy() if hasattr(value, 'numpy') else value).tobytes())
    return digest.hexdigest()


def save_checkpoint(prefix, student, optimizer=None, epoch=None, extra_state=None, best=None, model=None, step=None):
    """Write `prefix.pdparams` (student) and, for resuming, `prefix.pdstate`
    (`model`, the layer the optimizer trains, names the optimizer state;
    `step`: the batches of `epoch` done when it stopped inside the epoch)."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    weights = student.state_dict()
    state = {'epoch': epoch, 'step': step, 'best': best, 'extra': extra_state or {},
             'weights_sha1': weights_digest(weights)}
    if optimizer is not None:
        state['optimizer'] = optimizer_state_for_saving(optimizer, model or student)
    # State first: a .pdparams whose .pdstate is missing is still a valid
    # model, the reverse would not be.
    _atomic_save(state, prefix + '.pdstate')
    _atomic_save(weights, prefix + '.pdparams')


def load_resume_state(prefix):
    """The `.pdstate` dict saved beside `prefix.pdparams`, checked to belong
    with those weights, and the weights (read once)."""
    prefix = prefix[:-len('.pdparams')] if prefix.endswith('.pdparams') else prefix
    for ext in ('.pdparams', '.pdstate'):
        if not os.path.isfile(prefix + ext):
            raise PPKDError(f'cannot resume: {prefix + ext} not found')
    state, weights = paddle.load(prefix + '.pdstate'), paddle.load(prefix + '.pdparams')
    expected = state.get('weights_sha1')
    if expected is not None and weights_digest(weights) != expected:
        raise PPKDError(f'cannot resume: {prefix}.pdstate (epoch {state.get("epoch")}) was not saved with '
                        f'{prefix}.pdparams (interrupted between the two writes?); resume from an earlier checkpoint')
    return prefix, state, weights
