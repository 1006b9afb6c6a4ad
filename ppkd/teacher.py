"""The teacher: weights loaded with clear mismatch errors, frozen, and run
only as far as the losses need."""
import os

import paddle

from ppkd.errors import PPKDError


def _weights_path(path):
    if os.path.isfile(path):
        return path
    if os.path.isfile(path + '.pdparams'):
        return path + '.pdparams'
    raise PPKDError(f'weights not found: {path}')


def load_weights(model, path, role='model', strict=True):
    """Load a `.pdparams` state dict into `model`. With `strict`, any missing
    key, unexpected key or shape mismatch is refused, naming the first few."""
    path = _weights_path(path)
    try:
        state = paddle.load(path)
    except Exception as e:  # paddle raises several types for a bad file
        raise PPKDError(f'{path}: cannot read weights ({type(e).__name__}: {e})') from None
    if not isinstance(state, dict):
        raise PPKDError(f'{path}: not a state dict')
    own = model.state_dict()
    mismatched = [f'{k} {list(v.shape)} in file vs {list(own[k].shape)} in {role}'
                  for k, v in state.items() if k in own and list(v.shape) != list(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (mismatched or missing or unexpected):
        parts = []
        if mismatched:
            parts.append('shape mismatch: ' + '; '.join(mismatched[:3]))
        if missing:
            parts.append(f'{len(missing)} keys missing, first {missing[:3]}')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected keys, first {unexpected[:3]}')
        raise PPKDError(f'{path} does not fit the {role} config: ' + ' | '.join(parts))
    model.set_state_dict({k: v for k, v in state.items() if k in own})
    return path


def freeze(model):
    """Eval mode and no gradient for every parameter. The distiller keeps
    the eval mode across its own `train()` calls."""
    model.eval()
    for p in model.parameters():
        p.stop_gradient = True
    return model


def _yolov3_head_maps(model, inputs):
    return model.yolo_head(model.neck(model.backbone(inputs)))


# Per architecture, the teacher's forward up to the last layer a loss reads:
# no loss computation, no decoding, no NMS. Others run their whole forward.
FEATURE_FORWARDS = {'YOLOv3': _yolov3_head_maps}


def run_for_features(model, inputs):
    """Run the frozen teacher so its recorders fire, as cheaply as known."""
    forward = FEATURE_FORWARDS.get(type(model).__name__)
    if forward is None:
        return model(inputs)
    return forward(model, inputs)
