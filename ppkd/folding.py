"""BatchNorm folding for the frozen teacher: an eval-mode BatchNorm that
directly follows a convolution is an affine map per channel, so it can be
merged into that convolution's weight and bias and replaced by an identity:
the same outputs with fewer ops. Whether that is faster depends on the
kernels: on Paddle 3.3.1's CPU kernels a biased convolution costs more than
an unbiased one plus its BatchNorm (bench/step_time.py), so the distiller
folds only when asked (`distill.fold_teacher_bn`).

Which BatchNorm follows which convolution is read from one real forward
pass (the BatchNorm's input is that convolution's output tensor), not
guessed from layer names; the folded model is then checked against the
outputs of that pass and the fold undone if they differ.
"""
import logging

import numpy as np
import paddle
import paddle.nn as nn
from paddle.nn.layer.norm import _BatchNormBase

logger = logging.getLogger('ppkd')

_BATCH_NORMS = (_BatchNormBase, nn.BatchNorm)


def _conv_bn_pairs(model, forward, keep):
    """(conv name, bn name) pairs where, on one `forward()`, the BatchNorm's
    only input was the convolution's output; layers named in `keep` (their
    outputs are recorded) are left alone."""
    layers = dict(model.named_sublayers())
    outputs, inputs, calls = {}, {}, {}
    handles = []

    def after_conv(name):
        def hook(layer, args, output):
            calls[name] = calls.get(name, 0) + 1
            outputs[name] = output
        return hook

    def before_bn(name):
        def hook(layer, args):
            calls[name] = calls.get(name, 0) + 1
            inputs[name] = args[0]
        return hook

    for name, layer in layers.items():
        if name in keep:
            continue
        if isinstance(layer, nn.Conv2D) and layer._data_format == 'NCHW':
            handles.append(layer.register_forward_post_hook(after_conv(name)))
        elif isinstance(layer, _BATCH_NORMS) and getattr(layer, '_act', None) is None \
                and getattr(layer, '_data_format', 'NCHW') in ('NCHW', 'NCDHW'):
            handles.append(layer.register_forward_pre_hook(before_bn(name)))
    try:
        reference = forward()
    finally:
        for h in handles:
            h.remove()
    by_tensor = {id(t): name for name, t in outputs.items() if calls[name] == 1}
    pairs = [(by_tensor[id(t)], bn) for bn, t in inputs.items() if calls[bn] == 1 and id(t) in by_tensor]
    return pairs, reference


def _parent(model, layers, name):
    parent_name, _, attr = name.rpartition('.')
    return (layers[parent_name] if parent_name else model), attr


def _fold(conv, bn):
    scale = bn.weight / paddle.sqrt(bn._variance + bn._epsilon)
    bias = conv.bias if conv.bias is not None else paddle.zeros([conv.weight.shape[0]], conv.weight.dtype)
    new_bias = (bias - bn._mean) * scale + bn.bias
    conv.weight.set_value(conv.weight * scale.reshape([-1, 1, 1, 1]))
    if conv.bias is None:
        conv.bias = conv.create_parameter([conv.weight.shape[0]], is_bias=True)
        conv.bias.stop_gradient = True
    conv.bias.set_value(new_bias)


def _flatten(outputs):
    if isinstance(outputs, paddle.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for k in sorted(outputs) for t in _flatten(outputs[k])]
    if isinstance(outputs, (list, tuple)):
        return [t for o in outputs for t in _flatten(o)]
    return []


def fold_batch_norms(model, forward, keep=(), rtol=1e-3, atol=1e-4):
    """Fold the BatchNorms of the eval-mode, frozen `model` into the
    convolutions that feed them. `forward()` runs the model once on real
    data and returns the outputs to compare (a tensor, or lists/dicts of
    them); `keep` names layers whose outputs must stay as they are. Returns
    the number of BatchNorms folded (0 if the check failed and the fold was
    undone, with a warning)."""
    with paddle.no_grad():
        pairs, reference = _conv_bn_pairs(model, forward, set(keep))
        if not pairs:
            return 0
        layers = dict(model.named_sublayers())
        saved = []
        for conv_name, bn_name in pairs:
            conv, bn = layers[conv_name], layers[bn_name]
            parent, attr = _parent(model, layers, bn_name)
            bias = None if conv.bias is None else conv.bias.numpy().copy()
            saved.append((conv, conv.weight.numpy().copy(), bias, parent, attr, bn))
            _fold(conv, bn)
            setattr(parent, attr, nn.Identity())
        expected = [t.numpy() for t in _flatten(reference)]
        got = [t.numpy() for t in _flatten(forward())]
        if len(got) == len(expected) and all(
                a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=atol * max(1., float(np.abs(b).max())))
                for a, b in zip(got, expected)):
            return len(pairs)
        for conv, weight, bias, parent, attr, bn in saved:
            conv.weight.set_value(weight)
            if bias is None:
                conv.bias = None
            else:
                conv.bias.set_value(bias)
            setattr(parent, attr, bn)
        logger.warning('teacher BatchNorm folding changed its outputs; running it unfolded')
        return 0
