"""Recorders: what named parts of a model output on a forward pass, kept
apart from the losses that read them (as mmrazor's recorders and
torchdistill's forward hooks)."""
import contextlib
import difflib
import re

import paddle.nn as nn

from ppkd.errors import PPKDError


def split_index(name):
    """`neck[1]` → ('neck', 1); a name without an index → (name, None)."""
    match = re.fullmatch(r'(.+)\[(-?\d+)\]', name)
    return (match.group(1), int(match.group(2))) if match else (name, None)


class OutputRecorder:
    """Records, on every forward, the outputs of named parts of `model`.

    A name is a sublayer path (`yolo_head.yolo_output.0`, recorded by a
    forward hook), such a path with an index (`neck[0]`: element 0 of the
    list a neck returns, one feature level), or a callable attribute of a
    sublayer that is not a layer itself (`rpn_head.rpn_target_assign`,
    recorded by wrapping that attribute on this model instance only). `outputs[name]` lists the outputs of every
    call since `clear()` — a layer shared across FPN levels is called once
    per level.

    With `active=False` nothing is recorded outside a `recording()` block:
    the student's recorder records inside a training step only, so that
    evaluating the student never piles up its outputs.
    """

    def __init__(self, model, names, role='model', active=True):
        layers = dict(model.named_sublayers())
        layers[''] = model
        self.outputs = {}
        self.active = active
        self.names = list(dict.fromkeys(names))
        self._undo = []
        for name in self.names:
            path, index = split_index(name)
            if path in layers and path:
                handle = layers[path].register_forward_post_hook(self._hook(name, index))
                self._undo.append(handle.remove)
                continue
            owner_name, _, attr = name.rpartition('.')
            owner = layers.get(owner_name)
            target = getattr(owner, attr, None) if owner is not None else None
            if not callable(target) or isinstance(target, nn.Layer):
                near = difflib.get_close_matches(name, [n for n in layers if n], n=3)
                hint = f'; did you mean {", ".join(near)}?' if near else ''
                raise PPKDError(f'{role} has no layer named {name!r}{hint}')
            self._wrap(owner, attr, target, name)

    def _hook(self, name, index):
        def record(layer, inputs, output):
            if self.active:
                self.outputs.setdefault(name, []).append(output if index is None else output[index])
        return record

    def _wrap(self, owner, attr, target, name):
        def recorded(*args, **kwargs):
            output = target(*args, **kwargs)
            if self.active:
                self.outputs.setdefault(name, []).append(output)
            return output
        had_own = attr in vars(owner)
        setattr(owner, attr, recorded)
        self._undo.append(lambda: setattr(owner, attr, target) if had_own else delattr(owner, attr))

    @contextlib.contextmanager
    def recording(self):
        """Record inside this block (from an empty record)."""
        was, self.active = self.active, True
        self.clear()
        try:
            yield self.outputs
        finally:
            self.active = was

    def clear(self):
        self.outputs.clear()

    def remove(self):
        for undo in self._undo:
            undo()
        self._undo = []
