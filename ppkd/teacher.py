"""The teacher: weights loaded with clear mismatch errors, frozen, and run
only as far as the losses need."""
import os

import paddle

from ppkd.errors import PPKDError
from ppkd.recorders import OutputRecorder


def _weights_path(path):
    if os.path.isfile(path):
        return path
    if os.path.isfile(path + '.pdparams'):
        return path + '.pdparams'
    raise PPKDError(f'weights not found: {path}')


def load_weights(model, path, role='model', strict=True, state=None):
    """Load a `.pdparams` state dict into `model` (`state`: that file's
    dict, already read). With `strict`, any missing key, unexpected key or
    shape mismatch is refused, naming the first few."""
    path = _weights_path(path)
    if state is None:
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


def _yolov3_head_maps(model, inputs, names):
    """The head's output convolutions on the neck's features: the raw maps,
    in train mode too (the head's own forward computes its loss there)."""
    head = model.yolo_head
    if head.data_format != 'NCHW':
        raise PPKDError(f'{type(head).__name__}: only NCHW head maps can be distilled')
    for conv, feat in zip(head.yolo_outputs, model.neck(model.backbone(inputs))):
        conv(feat)
    return []


def _ssd_head_maps(model, inputs, names):
    """The backbone and the head's box and score convolutions (no priors
    matched, no loss): the raw per-level maps."""
    feats = model.backbone(inputs)
    head = model.ssd_head
    if head.use_extra_head:
        feats = head.ssd_extra_head(feats[0])
    for feat, box_conv, score_conv in zip(feats, head.box_convs, head.score_convs):
        box_conv(feat)
        score_conv(feat)
    return []


def _faster_rcnn_features(model, inputs, names):
    """Backbone and neck, and the RPN's score and delta convolutions (not
    its proposals) if an `rpn_head.` output is recorded; returns the
    features the RoI head reads."""
    feats = model.backbone(inputs)
    if model.neck is not None:
        feats = model.neck(feats)
    rpn = model.rpn_head
    if any(n.startswith('rpn_head.') for n in names):
        for level in rpn.rpn_feat(feats):
            rpn.rpn_rois_score(level)
            rpn.rpn_rois_delta(level)
    return list(feats)


def _faster_rcnn_rois(inputs, student_outputs):
    """The student's sampled RoIs of this step; in a pass without the
    student (BatchNorm folding, the compile check), the true boxes."""
    if STUDENT_ROIS in student_outputs:
        rois, rois_num, _ = student_outputs[STUDENT_ROIS][-1]
        return rois, rois_num
    rois = list(inputs['gt_bbox'])
    return rois, paddle.to_tensor([len(r) for r in rois], dtype='int32')


def _plain_bbox_head(model):
    # The head whose layers after RoIAlign `_faster_rcnn_roi_layers` repeats;
    # subclasses (cascade heads...) run their own forward.
    return type(model.bbox_head).__name__ == 'BBoxHead'


def _faster_rcnn_roi_head(model, feats, inputs, student_outputs, names, roi_layers=None):
    """The RoI head on the STUDENT's sampled RoIs if a `bbox_head.` output
    is recorded, so that teacher and student R-CNN outputs describe the
    same boxes. `roi_layers`: what runs the head's layers after RoIAlign
    (the compiled ones; by default `_faster_rcnn_roi_layers` in dygraph)."""
    if not any(n.startswith('bbox_head.') for n in names):
        return
    rois, rois_num = _faster_rcnn_rois(inputs, student_outputs)
    if not _plain_bbox_head(model):
        model.bbox_head(feats, rois, rois_num, None)
        return
    roi_feats = model.bbox_head.roi_extractor(feats, rois, rois_num)
    (roi_layers or _faster_rcnn_roi_layers)(model, {ROI_FEATURES: roi_feats}, names)


def _faster_rcnn_roi_layers(model, inputs, names):
    """The plain RoI head's layers after RoIAlign (its MLP or convolutions,
    score and delta) on the RoI features [R, C, 7, 7]: BBoxHead's eval
    forward without the decoding no loss reads. Compilable: RoIs in, RoIs
    out, whatever their number."""
    head = model.bbox_head
    feat = head.head(inputs[ROI_FEATURES])
    if head.with_pool:
        feat = paddle.squeeze(paddle.nn.functional.adaptive_avg_pool2d(feat, output_size=1), axis=[2, 3])
    if head.use_cot:
        head.cot_bbox_score(feat)
    head.bbox_score(feat)
    head.bbox_delta(feat)
    return []


def _faster_rcnn_roi_sample(model, feats, inputs, names):
    """The RoI features `_faster_rcnn_roi_layers` reads, on `inputs`' true
    boxes (what its compiled form is checked on), or None where that part
    does not run or is not the plain head's."""
    if not any(n.startswith('bbox_head.') for n in names) or not _plain_bbox_head(model):
        return None
    return model.bbox_head.roi_extractor(feats, *_faster_rcnn_rois(inputs, {}))


# The student's record of its sampled RoIs (with their targets) that the
# Faster R-CNN teacher's RoI head runs on.
STUDENT_ROIS = 'bbox_head.bbox_assigner'

# Per architecture, the teacher's forward up to the last layer a loss reads
# (no loss computation, no decoding, no NMS), in two parts: the image part
# (also the student's forward on unlabeled images),
# (model, inputs, names) → the features the second part reads, a function of
# the image alone and so compilable; and the part that also reads the
# student's outputs of the step, (model, features, inputs, student_outputs,
# names), or None. Other architectures run their whole forward.
TEACHER_FORWARDS = {
    'YOLOv3': (_yolov3_head_maps, None),
    'SSD': (_ssd_head_maps, None),
    'FasterRCNN': (_faster_rcnn_features, _faster_rcnn_roi_head),
}

# The input a second part's compilable end reads.
ROI_FEATURES = 'roi_feats'

# Per architecture whose second part ends in layers that read one tensor
# computed from the student's outputs (Faster R-CNN: the RoI head's layers
# after RoIAlign), (sample, layers): `sample(model, features, inputs, names)`
# is that tensor on a batch without the student, or None where the end does
# not run; `layers(model, {ROI_FEATURES: tensor}, names)` runs them, and the
# second part takes their compiled form as its `roi_layers`.
TEACHER_TAILS = {
    'FasterRCNN': (_faster_rcnn_roi_sample, _faster_rcnn_roi_layers),
}


def run_for_features(model, forwards, inputs, student_outputs, names, roi_layers=None):
    """Run the frozen teacher so its recorders (on `names`) fire, as cheaply
    as known: `forwards` is its `TEACHER_FORWARDS` entry (None: the whole
    forward); `student_outputs` are the student's records of this step;
    `roi_layers` the second part's compiled end, if any. The distiller
    looks the entry up once, outside any traced code: Paddle 2.6's bytecode
    translator reuses one architecture's lookup for another."""
    if forwards is None:
        return model(inputs)
    image_part, rest = forwards
    feats = image_part(model, inputs, names)
    if rest is not None:
        rest(model, feats, inputs, student_outputs, names, roi_layers)


def feature_sizes(model, layers, image):
    """(H, W) of each named layer's output on `image` [1, 3, H, W], from
    the image part of the model's forward."""
    recorder = OutputRecorder(model, layers, 'student')
    with paddle.no_grad():
        TEACHER_FORWARDS[type(model).__name__][0](model, {'image': image}, set(layers))
    sizes = [tuple(recorder.outputs[n][-1].shape[2:]) for n in layers]
    recorder.remove()
    return sizes
