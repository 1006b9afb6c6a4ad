"""Forward hooks that record named layers' outputs, kept apart from the
losses that read them (as mmrazor's recorders and torchdistill's hooks)."""
import difflib

from ppkd.errors import PPKDError


class OutputRecorder:
    """Records the output of each named sublayer of `model` on every forward.

    `outputs` maps layer name → its latest output; `clear()` before a step
    keeps a stale tensor from being read by mistake.
    """

    def __init__(self, model, names, role='model'):
        layers = dict(model.named_sublayers())
        self.outputs = {}
        self._handles = []
        for name in dict.fromkeys(names):
            if name not in layers:
                near = difflib.get_close_matches(name, layers.keys(), n=3)
                hint = f'; did you mean {", ".join(near)}?' if near else ''
                raise PPKDError(f'{role} has no layer named {name!r}{hint}')
            self._handles.append(layers[name].register_forward_post_hook(self._hook(name)))

    def _hook(self, name):
        def record(layer, inputs, output):
            self.outputs[name] = output
        return record

    def clear(self):
        self.outputs.clear()

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []
