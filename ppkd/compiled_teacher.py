"""The teacher's image part (`ppkd.teacher.TEACHER_FORWARDS`: everything
the losses read that depends on the image alone) compiled: traced with
`paddle.jit.to_static` ('to_static'), or exported and run by Paddle
Inference ('inference': oneDNN on CPU, the GPU with optional TensorRT).
Either returns, for one image batch, what the teacher's recorder would have
recorded and the features the teacher's second part (e.g. Faster R-CNN's
RoI head on the student's RoIs, in dygraph) reads; either is checked
against the plain dygraph teacher on a real batch before it is used, and
anything that fails — tracing, export, a predictor that crashes, outputs
that differ — leaves the dygraph teacher in place with a warning.

On CPUs with AVX-512 bf16, the predictor can run the teacher's
convolutions in bfloat16 (`precision='bfloat16'`): about half the float32
time on the demo teacher, outputs within a few percent (checked with a
tolerance of its own, `TOLERANCES`). On CPUs with AVX2 or newer, in int8
(`precision='int8'`): the exported program's convolutions quantised after
training (per-channel weights; activation ranges from training images
through the test transform, `calibration`), run by oneDNN's int8 kernels
and checked on a held-out batch of such images and on augmented training
batches, where those ranges clip.

    python -m ppkd.compiled_teacher PREFIX DEVICE THREADS TENSORRT_MAX_SIZE LEGACY_IR PRECISION

runs one exported teacher once in a separate process: the probe that a
predictor can be built and run here before the training process builds
its own (a crash inside Paddle Inference would otherwise end training).
"""
import logging
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import paddle
import paddle.nn as nn

from ppkd import compat
from ppkd.errors import describe
from ppkd.teacher import ROI_FEATURES
from ppkd.threads import restore_threads

logger = logging.getLogger('ppkd')

# Largest |compiled − dygraph| allowed, relative to the largest |dygraph| output,
# per precision. bfloat16 keeps 8 bits of mantissa (0.4 % per rounding), and
# a deep network's roundings add up: 1.5-2.3 % measured on the demo teacher.
# int8: 8-bit activations over the calibration images' ranges; 4-9 % measured
# on the BCCD ResNet-34 teacher's head maps, on held-out images.
TOLERANCES = {'float32': 1e-4, 'bfloat16': 5e-2, 'int8': 0.15}
PRECISIONS = tuple(TOLERANCES)
# The ops run in bfloat16. Paddle 3.3.1's bf16 passes over the whole graph
# leave an elementwise_add with one bfloat16 and one float32 input (it
# fails); the convolutions are where the time goes.
BFLOAT16_OPS = {'conv2d', 'fused_conv2d', 'depthwise_conv2d'}
INT8_OPS = ['conv2d', 'depthwise_conv2d']
# int8's calibration images, the last batch of them held out for the check
# (BCCD at batch 8: scales from 64 images, checked on 8).
CALIBRATION_IMAGES = 72
# Augmented training batches int8 is checked on besides: on the BCCD teacher
# half the batches were far off (0.94-0.99) and half within 0.06-0.26.
INT8_CHECK_BATCHES = 4


def bfloat16_supported():
    """Whether this CPU runs oneDNN bfloat16 kernels natively (AVX-512 bf16)."""
    core = paddle.base.core
    return bool(core.supports_bfloat16() and core.supports_bfloat16_fast_performance())


def int8_supported():
    """Whether oneDNN runs int8 kernels on this CPU (AVX2 or newer): 2x
    float32 on the BCCD ResNet-34 teacher with AVX2 alone (AVX-512 VNNI
    adds an instruction for the products' sums)."""
    return bool(paddle.base.core.supports_int8())


# precision → (the check that this CPU runs it fast, what it needs)
CPU_SUPPORT = {'bfloat16': (bfloat16_supported, 'AVX-512 bf16'), 'int8': (int8_supported, 'AVX2')}


@paddle.jit.not_to_static
def _begin(recorder):
    recorder.clear()


@paddle.jit.not_to_static
def _collected(recorder):
    return [out for name in recorder.names for out in recorder.outputs.get(name, [])]


@paddle.jit.not_to_static
def _unique(tensors):
    """Each tensor once (a saved program returns a variable once, however
    often it is listed — e.g. a recorded FPN level that is also a feature),
    and where each listed one is among them."""
    unique, index = [], []
    for t in tensors:
        at = next((i for i, u in enumerate(unique) if u is t), None)
        if at is None:
            at = len(unique)
            unique.append(t)
        index.append(at)
    return unique, index


class _FeatureProgram(nn.Layer):
    """What is compiled: image (or the input named `input_name`: a second
    part's compilable end, `ppkd.teacher.TEACHER_TAILS`) → the recorded
    outputs, flat, name by name and call by call, then the features the
    teacher's second part reads.
    (A layer rather than a closure: Paddle 2.6's translator loses closure
    variables; the teacher is its sublayer so that `jit.save` finds the
    parameters.)"""

    output_index = ()  # listed output i is returned output output_index[i]; set while tracing

    def __init__(self, model, recorder, image_part, input_name='image'):
        super().__init__()
        self.model = model
        self._parts = (recorder, image_part, set(recorder.names), input_name)

    def forward(self, image):
        recorder, image_part, wanted, input_name = self._parts
        _begin(recorder)
        feats = image_part(self.model, {input_name: image}, wanted)
        unique, self.output_index = _unique(_collected(recorder) + list(feats))
        return unique


# What the log calls the part compiled, by the name of its input.
_PART_NAMES = {'image': 'teacher', ROI_FEATURES: "teacher's RoI head"}


def _layout(recorder):
    return [(name, len(recorder.outputs.get(name, []))) for name in recorder.names]


class _Compiled:
    layout = ()  # [(recorded name, number of calls)], set once checked
    output_index = ()  # as _FeatureProgram's
    precision = 'float32'
    difference = None  # largest |compiled - dygraph| / largest |dygraph| output at the check

    def record(self, image):
        """What the teacher's recorder would hold after its image part on
        `image`, and the features its second part reads."""
        unique = self(image)
        flat = [unique[i] for i in self.output_index]
        outputs, i = {}, 0
        for name, count in self.layout:
            outputs[name] = list(flat[i:i + count])
            i += count
        return outputs, list(flat[i:])


def _input_spec(image, input_name):
    """Images of any batch and size; a second part's input (RoI features) of
    any number, each of `image`'s size."""
    shape = [None, image.shape[1]] + ([None, None] if input_name == 'image' else list(image.shape[2:]))
    return [paddle.static.InputSpec(shape, image.dtype, input_name)]


class StaticTeacher(_Compiled):
    """The feature program traced by `paddle.jit.to_static` (full graph);
    the recorder's hooks fire while tracing, so what they collect becomes
    the program's outputs."""

    engine = 'to_static'

    def __init__(self, program, image, input_name='image'):
        self._program = paddle.jit.to_static(program, input_spec=_input_spec(image, input_name), full_graph=True)

    def __call__(self, image):
        return self._program(image)


def predictor_config(prefix, device, threads, input_shape, tensorrt_max_size=0, legacy_ir=True, precision='float32'):
    """A Paddle Inference config for the exported teacher at `prefix`:
    oneDNN on CPU with `threads` threads (its convolutions in bfloat16 with
    `precision='bfloat16'`), or the GPU (`device` 'gpu:N'), with TensorRT
    (float32, input sides up to `tensorrt_max_size`) if that is set.
    `input_shape` is a typical batch's image shape."""
    from paddle import inference
    # `jit.save` writes a legacy `.pdmodel`, or a PIR `.json` on Paddle 3.
    program = prefix + '.pdmodel' if os.path.exists(prefix + '.pdmodel') else prefix + '.json'
    config = inference.Config(program, prefix + '.pdiparams')
    if legacy_ir:
        config.enable_new_ir(False)
    config.disable_glog_info()
    if device.startswith('gpu'):
        config.enable_use_gpu(256, int(device.split(':')[1]) if ':' in device else 0)
        if tensorrt_max_size:
            config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=input_shape[0],
                                          min_subgraph_size=3, precision_mode=inference.PrecisionType.Float32,
                                          use_static=False, use_calib_mode=False)
            # Multi-scale training changes the input size from batch to batch.
            batch, channels = input_shape[:2]
            config.set_trt_dynamic_shape_info({'image': [1, channels, 32, 32]},
                                              {'image': [batch, channels, tensorrt_max_size, tensorrt_max_size]},
                                              {'image': list(input_shape)})
    else:
        config.disable_gpu()
        config.enable_mkldnn()
        config.set_cpu_math_library_num_threads(threads)
        if precision == 'bfloat16':
            config.enable_mkldnn_bfloat16()
            config.set_bfloat16_op(BFLOAT16_OPS)
        elif precision == 'int8':  # the program's quantise/dequantise pairs become oneDNN int8 kernels
            config.enable_mkldnn_int8()
    return config


def quantize_int8(prefix, images):
    """Post-training quantisation of the legacy program exported at
    `prefix`: its convolutions' weights per output channel, their inputs
    with scales from the largest values `images` (numpy batches) give them.
    Writes the quantised program beside it; returns its prefix."""
    from paddle.static.quantization import PostTrainingQuantization
    folder, name = os.path.split(prefix)
    quantized = os.path.join(folder, 'int8')
    files = dict(model_filename=name + '.pdmodel', params_filename=name + '.pdiparams')
    # A scope of its own, dropped after: the quantiser's executor runs in the global one.
    with compat.legacy_static_mode(), paddle.static.scope_guard(paddle.static.Scope()):
        ptq = PostTrainingQuantization(executor=paddle.static.Executor(paddle.CPUPlace()), model_dir=folder,
                                       data_loader=compat.calibration_loader([{'image': x} for x in images]),
                                       batch_nums=len(images), algo='abs_max', quantizable_op_type=INT8_OPS,
                                       onnx_format=False, **files)
        ptq.quantize()
        ptq.save_quantized_model(quantized, **files)
    return os.path.join(quantized, name)


def _run_predictor(predictor, image):
    """image (a paddle Tensor, on the predictor's device) → output Tensors.
    Through the input/output handles: `predictor.run([tensor])` returns
    wrong values with the legacy passes on Paddle 3.3.1 and crashes on
    2.6.2."""
    predictor.get_input_handle(predictor.get_input_names()[0]).share_external_data(image)
    predictor.run()
    return [paddle.to_tensor(predictor.get_output_handle(n).copy_to_cpu(), place=image.place)
            for n in predictor.get_output_names()]


class InferenceTeacher(_Compiled):
    """The feature program exported (`paddle.jit.save`) and run by a Paddle
    Inference predictor (in int8: quantised with scales from the image
    batches `calibration`). The exported files live only until the
    predictor has read them."""

    engine = 'inference'

    def __init__(self, program, image, tensorrt_max_size=0, legacy_ir=None, precision='float32', input_name='image',
                 calibration=()):
        if legacy_ir is None:
            legacy_ir = compat.inference_needs_legacy_ir()
        device = paddle.get_device()
        self.precision = precision
        self._threads = int(os.environ.get('OMP_NUM_THREADS') or os.cpu_count() or 1)
        settings = dict(device=device, threads=self._threads, tensorrt_max_size=tensorrt_max_size, legacy_ir=legacy_ir,
                        precision=precision)
        workdir = tempfile.mkdtemp(prefix='ppkd-teacher-')
        try:
            prefix = os.path.join(workdir, 'teacher')
            with compat.legacy_ir_export(legacy_ir):
                paddle.jit.save(paddle.jit.to_static(program, full_graph=True), prefix,
                                input_spec=_input_spec(image, input_name))
            if precision == 'int8':
                prefix = quantize_int8(prefix, [x.numpy() for x in calibration])
            _probe(prefix, image, **settings)
            from paddle import inference
            self._predictor = inference.create_predictor(predictor_config(prefix, input_shape=image.shape, **settings))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if device.startswith('gpu'):
            kind = 'TensorRT' if tensorrt_max_size else 'GPU kernels'
        else:
            kind = f'oneDNN, {self._threads} threads'
            if precision != 'float32':
                kind += f', convolutions in {precision}'
        logger.info('%s: Paddle Inference on %s (%s)', _PART_NAMES[input_name], device, kind)

    def __call__(self, image):
        outputs = _run_predictor(self._predictor, image)
        if not image.place.is_gpu_place():
            # A predictor's run ends by setting the CPU math library to one
            # thread (so as not to compete in a serving process): give the
            # student's dygraph ops their threads back.
            restore_threads(self._threads)
        return outputs


class CompileError(RuntimeError):
    pass


def _probe(prefix, image, device, threads, tensorrt_max_size, legacy_ir, precision):
    """Build and run a predictor on the exported teacher in a child process;
    `CompileError` with the child's last words if it fails or crashes."""
    np.save(prefix + '.input.npy', image.numpy())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get('PYTHONPATH', '')]))
    cmd = [sys.executable, '-m', 'ppkd.compiled_teacher', prefix, device, str(threads), str(tensorrt_max_size),
           str(int(legacy_ir)), precision]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        why = 'killed by signal %d' % -proc.returncode if proc.returncode < 0 else 'exit %d' % proc.returncode
        raise CompileError('the predictor failed in a probe process (%s)%s' % (why, ': ' + lines[-1] if lines else ''))


def _max_relative_difference(compiled, reference):
    scale = max(float(np.abs(r).max()) for r in reference) or 1.0
    return max(float(np.abs(c - r).max()) for c, r in zip(compiled, reference)) / scale


def _reference(model, recorder, image_part, image, input_name):
    """The dygraph image part on `image`: (its recorder's layout, its outputs as numpy)."""
    recorder.clear()
    feats = image_part(model, {input_name: image}, set(recorder.names))
    layout = _layout(recorder)
    reference = [o.numpy() for o in _collected(recorder)] + [f.numpy() for f in feats]
    recorder.clear()
    return layout, reference


def _compiled_and_checked(model, recorder, image_part, engine, tensorrt_max_size, input_name, checks, precision,
                          calibration=()):
    """The image part compiled in `precision` and its outputs compared with
    dygraph's on each of `checks`, [(what the batch is, image,
    dygraph's outputs on it)]: (the compiled teacher, None), or (None, why
    not)."""
    program = _FeatureProgram(model, recorder, image_part, input_name)
    program.eval()  # the traced program is the inference one
    _, image, _ = checks[0]
    try:
        compiled = (StaticTeacher(program, image, input_name) if engine == 'to_static' else
                    InferenceTeacher(program, image, tensorrt_max_size, precision=precision, input_name=input_name,
                                     calibration=calibration))
        differences = []
        for what, checked, reference in checks:
            unique = compiled(checked)  # the first call traces the program if it has not been yet
            outputs = [unique[i].numpy() for i in program.output_index]
            if len(outputs) != len(reference) or any(o.shape != r.shape for o, r in zip(outputs, reference)):
                return None, f'{engine} returned outputs of other shapes than dygraph'
            differences.append((_max_relative_difference(outputs, reference), what))
    except Exception as e:  # noqa: BLE001  any failure to compile: fall back, say so
        return None, f'{engine} failed ({describe(e)})'
    finally:
        recorder.clear()
    compiled.output_index = program.output_index
    difference, what = max(differences, key=lambda d: d[0])
    if difference > TOLERANCES[precision]:
        return None, (f'{engine} ({precision}) outputs differ from dygraph by {difference:.2g} on {what} (relative, '
                      f'at most {TOLERANCES[precision]:g})')
    logger.info('%s: compiled by %s (%s), outputs within %.2g of dygraph (relative)', _PART_NAMES[input_name], engine,
                precision, difference)
    compiled.difference = difference
    return compiled, None


def _int8_compiled(attempt, calibration, training_images, image, reference):
    """int8 with scales from the `calibration()` batches but the last,
    checked on that last one, on the first training batch (`image`) and on
    the `training_images()` batches, as the student sees them. Calibration
    images are training images through the test transform: the
    augmentation's extremes (a colour distortion, an expanded canvas) set
    ranges that leave ordinary images a few levels each — measured on the
    BCCD ResNet-34 teacher, scales from augmented batches gave mAP 4-26
    against 49.77 in float32, from test-transformed images 52.06. But
    those scales clip augmented images: 0.94-0.99 off on 6 of 12 augmented
    batches, and the student it taught ended 8.7 mAP points lower on
    average (3 seeds).
    Hence the checks on training batches."""
    images = calibration() if calibration is not None else []
    if len(images) < 2:
        return None, 'int8 needs two batches of calibration images (training images through the test transform)'
    *scaled, held_out = images
    model, recorder, image_part, _, _, input_name = attempt

    def dygraph(x):
        return _reference(model, recorder, image_part, x, input_name)[1]
    checks = [('a held-out calibration batch', held_out, dygraph(held_out)),
              ('the first training batch', image, reference)]
    checks += [('a training batch', x, dygraph(x)) for x in (training_images() if training_images is not None else [])]
    return _compiled_and_checked(*attempt, checks, 'int8', scaled)


def compile_teacher(model, recorder, image_part, inputs, engine, tensorrt_max_size=0, precision='float32',
                    input_name='image', calibration=None, training_images=None):
    """The teacher's image part (`ppkd.teacher.TEACHER_FORWARDS`) compiled
    by `engine` ('to_static' or 'inference'; `precision` 'bfloat16' or
    'int8' for the latter on a CPU that has it), checked on `inputs` against
    the dygraph teacher — int8 scaled on the batches `calibration()`
    returns and checked on `training_images()` too (`_int8_compiled`);
    returns the compiled teacher or None after a warning saying why not. A lower precision that fails is tried again in
    float32, which keeps the compiled teacher's speed-up over dygraph.
    With `input_name`, the part compiled is a second part's end
    (`ppkd.teacher.TEACHER_TAILS`) and reads `inputs[input_name]`."""
    image = inputs[input_name]
    part = _PART_NAMES[input_name]
    on_gpu = paddle.get_device().startswith('gpu')
    if precision != 'float32' and (on_gpu or not CPU_SUPPORT[precision][0]()):
        logger.warning('%s: %s not used (%s); float32 instead', part, precision,
                       'ppkd runs it on CPUs only' if on_gpu else f'this CPU has no {CPU_SUPPORT[precision][1]}')
        precision = 'float32'
    with paddle.no_grad():
        layout, reference = _reference(model, recorder, image_part, image, input_name)
        attempt = (model, recorder, image_part, engine, tensorrt_max_size, input_name)
        checks = [('the batch', image, reference)]
        if precision == 'int8':
            compiled, why = _int8_compiled(attempt, calibration, training_images, image, reference)
        else:
            compiled, why = _compiled_and_checked(*attempt, checks, precision)
        if why is not None and precision != 'float32':
            logger.warning('%s: %s; float32 instead', part, why)
            compiled, why = _compiled_and_checked(*attempt, checks, 'float32')
    if why is not None:
        logger.warning('%s: %s; running it in dygraph', part, why)
        return None
    compiled.layout = layout
    return compiled


def _main(prefix, device, threads, tensorrt_max_size, legacy_ir, precision):
    from paddle import inference
    paddle.set_device(device)
    image = paddle.to_tensor(np.load(prefix + '.input.npy'))
    predictor = inference.create_predictor(predictor_config(
        prefix, device, int(threads), image.shape, int(tensorrt_max_size), legacy_ir=bool(int(legacy_ir)),
        precision=precision))
    for out in _run_predictor(predictor, image):
        if not np.isfinite(out.numpy()).all():
            sys.exit('non-finite teacher output')


if __name__ == '__main__':
    _main(*sys.argv[1:])
