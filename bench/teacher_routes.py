"""The teacher's routes, each with its speed, its mAP and how far it moves
the distillation losses: the frozen YOLOv3 teacher as a distill step runs
it (dygraph; Paddle Inference in float32; Paddle Inference with its
convolutions in bfloat16, or quantised to int8), timed on training
batches, its loss terms compared with dygraph's there, and scored on the
test set through the same route. A route this CPU cannot run fast falls
back to float32, as training would (the `runs as` column says so); with
`--unchecked`, every route runs as asked — on a CPU without its
instructions, and with outputs further from float32 than ppkd's check
allows — to measure what the route itself would give. Route
`int8_augmented` takes int8's scales from augmented training batches, as
ppkd did before, to compare.

    .venv/bin/python bench/teacher_routes.py [--teacher_weights W] [--routes dygraph inference bfloat16 int8 int8_augmented]

The mAP of a route is the teacher's own post-processing (YOLOv3's box
decoding and NMS, in dygraph) on the head maps that route gives, so a route
that changes what the student is taught shows up as a change of mAP.
Default: the demo teacher of bench/demo_seeds.py (trained here first if
it is not there yet, as that bench would) on the demo's data, at the
demo's input size and batch. Each route in its own process.
Writes bench/results/teacher_routes.{md,json}.
"""
import argparse
import json
import logging
import os
import statistics
import subprocess
import sys

from common import ROOT, cpu_model, train_teacher

sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))
from demo import DEMO_TEACHER, ensure_demo_data  # noqa: E402
from ppkd.compiled_teacher import INT8_CHECK_BATCHES, TOLERANCES  # noqa: E402
from ppkd.utils import atomic_write_text  # noqa: E402

DISTILL = os.path.join(ROOT, 'configs', 'demo', 'distill_fine_grained.yml')
ROUTES = {  # name: (distill overrides, label)
    'dygraph': (['distill.compile_teacher=dygraph'], 'dygraph, float32'),
    'inference': (['distill.compile_teacher=inference'], 'Paddle Inference (oneDNN), float32'),
    'bfloat16': (['distill.compile_teacher=inference', 'distill.teacher_precision=bfloat16'],
                 'Paddle Inference (oneDNN), convolutions in bfloat16'),
    'int8': (['distill.compile_teacher=inference', 'distill.teacher_precision=int8'],
             'Paddle Inference (oneDNN), convolutions in int8 (post-training quantisation)'),
    'int8_augmented': (['distill.compile_teacher=inference', 'distill.teacher_precision=int8'],
                       'int8 with scales from augmented training batches (not what ppkd does)'),
}
# Route int8_augmented takes its scales from the training reader's batches of
# this epoch (not the timed batches' epoch 0), as many as ppkd's calibration images.
AUGMENTED_EPOCH = 1


class _Warnings(logging.Handler):
    """The warnings ppkd logs while it builds the route's teacher (why it runs otherwise than asked)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _unchecked():
    """ppkd's compiled teacher, in this process: every precision taken as this CPU's, any difference from dygraph
    accepted (the check still measures and logs it)."""
    from ppkd import compiled_teacher
    compiled_teacher.CPU_SUPPORT = {p: (lambda: True, needs) for p, (_, needs) in compiled_teacher.CPU_SUPPORT.items()}
    compiled_teacher.TOLERANCES = dict.fromkeys(compiled_teacher.TOLERANCES, float('inf'))


def _teacher_record(model, batch):
    """The teacher's recorded outputs on `batch`, through the route the distiller runs it by."""
    import paddle
    with paddle.no_grad():
        model.teacher_recorder.clear()
        model.run_teacher(batch, image_part_only=True)
    return {name: [o.clone() for o in outs] for name, outs in model.teacher_recorder.outputs.items()}


def _largest_loss_difference(model, batches, reference):
    """The largest relative difference of any distillation loss term, on any
    of `batches`, between the route's teacher outputs and dygraph's
    (`reference`), the student the same (at its initialisation)."""
    import paddle
    largest = 0.0
    for batch, dygraph in zip(batches, reference):
        model.student_recorder.clear()
        with paddle.no_grad(), model.student_recorder.recording():
            model.task.student_loss(model.student, batch)
        route = _teacher_record(model, batch)
        for loss in model.distill_losses:
            expected, got = loss(model.student_recorder.outputs, dygraph, batch), loss(
                model.student_recorder.outputs, route, batch)
            for term in expected:
                e, g = float(expected[term]), float(got[term])
                largest = max(largest, abs(g - e) / abs(e) if e else float(g != e))
    return largest


def measure(args):
    """In this process: one route's median forward time, its loss difference and its mAP."""
    import paddle
    import ppkd  # noqa: F401
    from ppkd import config as cfgmod
    from ppkd.builder import build_distiller
    from ppkd.engine.evaluator import evaluate
    from ppkd.losses.yolov3 import YOLOV3_HEAD_OUTPUTS
    from step_time import _batches, _time_steps

    if args.unchecked:
        _unchecked()
    # The route's teacher runs on every batch: outputs kept per image would also answer the evaluation's images.
    opts = [f'dataset_dir={args.data}', *ROUTES[args.child][0], 'distill.reuse_teacher_outputs=false', *args.opt]
    student_cfg = cfgmod.load_config(args.distill_config, opts)
    teacher_cfg = cfgmod.load_config(args.teacher, [f'dataset_dir={args.data}', *args.opt])
    model = build_distiller(student_cfg, teacher_cfg, args.teacher_weights)
    model.train()
    batches = _batches(student_cfg, args.warmup + args.steps)
    if args.child == 'int8_augmented':  # training batches covering as many images as ppkd's calibration images
        training_images, batch_size = model.task.training_images, int(student_cfg['TrainReader']['batch_size'])
        model.task.calibration_images = lambda limit: training_images(-(-limit // batch_size), AUGMENTED_EPOCH)
    reference = [_teacher_record(model, batch) for batch in batches[args.warmup:]]  # before any compiling: dygraph
    warnings = _Warnings()
    logging.getLogger('ppkd').addHandler(warnings)
    model.prepare_teacher(batches[0])
    logging.getLogger('ppkd').removeHandler(warnings)
    compiled = model.compiled_teacher
    engine = 'dygraph' if compiled is None else f'{compiled.engine}, {compiled.precision}'

    def forward(batch):
        with paddle.no_grad():
            model.run_teacher(batch, image_part_only=True)
        [float(o[-1].sum()) for o in model.teacher_recorder.outputs.values()]  # wait for the values
    times, _ = _time_steps({'route': (forward, None)}, batches, args.warmup)['route']
    loss_difference = _largest_loss_difference(model, batches[args.warmup:], reference)

    teacher = model.teacher

    class TeacherThroughRoute(paddle.nn.Layer):
        """Eval forward of the teacher whose head maps come from the route."""

        def forward(self, inputs):
            model.teacher_recorder.clear()
            model.run_teacher(inputs, image_part_only=True)
            maps = [model.teacher_recorder.outputs[name][-1] for name in YOLOV3_HEAD_OUTPUTS]
            bbox, bbox_num, _ = teacher.post_process(maps, teacher.yolo_head.mask_anchors, inputs['im_shape'],
                                                     inputs['scale_factor'])
            return {'bbox': bbox, 'bbox_num': bbox_num}

    scores = evaluate(teacher_cfg, TeacherThroughRoute())
    return {'route': args.child, 'engine': engine, 'warnings': warnings.messages,
            'difference': None if compiled is None else compiled.difference, 'loss_difference': loss_difference,
            'median_s': statistics.median(times), 'steps': len(times),
            'mAP': scores['mAP'], 'per_class': scores['per_class'], 'images': scores['images']}


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--routes', nargs='+', default=list(ROUTES), choices=list(ROUTES))
    p.add_argument('--teacher', default=DEMO_TEACHER)
    p.add_argument('--distill_config', default=DISTILL, help='its losses name the recorded head maps')
    p.add_argument('--teacher_weights', default=None, help="default: bench/demo_seeds.py's demo teacher")
    p.add_argument('--data', default=None, help='a VOC folder with its lists (default: the demo data)')
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--repeat', type=int, default=2, help='rounds of every route, interleaved')
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'teacher_routes'))
    p.add_argument('-o', '--opt', nargs='*', default=[], help='overrides for both configs')
    p.add_argument('--unchecked', action='store_true',
                   help="every route as asked: where this CPU lacks its instructions, and whatever its outputs' "
                        "difference from dygraph (not what training would run)")
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.data is None:
        args.data = ensure_demo_data(os.path.join(ROOT, 'output', 'bench_demo_seeds', 'shapes'))
    if args.child:
        print(json.dumps(measure(args)))
        return
    if args.teacher_weights is None:
        demo_teacher = os.path.join(ROOT, 'output', 'bench_demo_seeds', 'teacher')
        train_teacher(DEMO_TEACHER, demo_teacher, [f'dataset_dir={args.data}'])
        args.teacher_weights = os.path.join(demo_teacher, 'model_final.pdparams')
    elif not os.path.isfile(args.teacher_weights):
        sys.exit(f'error: teacher weights not found: {args.teacher_weights}')
    runs = []
    for _ in range(args.repeat):
        for route in args.routes:
            cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], '--child', route, '--teacher_weights',
                   args.teacher_weights, '--data', args.data]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f'error: route {route} failed (exit {proc.returncode}): '
                         + (proc.stderr.strip().splitlines() or [''])[-1])
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f'{route}: {runs[-1]["median_s"]:.3f} s, mAP {runs[-1]["mAP"]:.2f}', flush=True)
    write(runs, args)


def write(runs, args):
    dygraph = [r for r in runs if r['route'] == 'dygraph']
    reference = dygraph[-1] if dygraph else None
    base = statistics.median(r['median_s'] for r in dygraph) if dygraph else None
    lines = ['| route | runs as | teacher forward, median (s) | each round | vs dygraph | mAP | Δ mAP vs dygraph '
             '| largest difference from dygraph at the check | largest loss difference from dygraph |',
             '|---|---|---|---|---|---|---|---|---|']
    summary = {}
    for route in args.routes:
        rs = [r for r in runs if r['route'] == route]
        median = statistics.median(r['median_s'] for r in rs)
        # Each round's mAP where they differ (a route's own rounding, threads' order of sums).
        scores = [r['mAP'] for r in rs]
        mean_map = statistics.mean(scores)
        summary[route] = {'median_s': median, 'mAP': mean_map, 'engine': rs[-1]['engine']}
        # A route that ran otherwise than asked, in some round: what it ran as and why.
        engines = '; '.join(sorted({r['engine'] + ''.join(f' ({w})' for w in r.get('warnings', [])) for r in rs}))
        differences = [r['difference'] for r in rs if r.get('difference') is not None]
        lines.append('| %s | %s | %.3f | %s | %s | %s | %s | %s | %s |' % (
            ROUTES[route][1], engines, median, ', '.join('%.3f' % r['median_s'] for r in rs),
            '%.2f×' % (median / base) if base else '',
            '%.2f' % mean_map + (' (%s)' % ', '.join('%.2f' % m for m in scores) if len(set(scores)) > 1 else ''),
            '%+.2f' % (mean_map - reference['mAP']) if reference else '',
            ', '.join('%.2g' % d for d in differences), ', '.join('%.2g' % r['loss_difference'] for r in rs)))
    settings = {'cpu': cpu_model(), 'teacher': os.path.relpath(args.teacher, ROOT), 'weights': args.teacher_weights,
                'distill_config': os.path.relpath(args.distill_config, ROOT), 'steps': args.steps,
                'warmup': args.warmup, 'repeat': args.repeat, 'threads': os.environ.get('OMP_NUM_THREADS', 'all cores'),
                'opt': args.opt, 'unchecked': args.unchecked}
    note = (f'The teacher\'s image part as a distill step runs it, median over {args.steps} training batches after '
            f'{args.warmup} (the distill config\'s reader, its input size and batch), each route in its own '
            f'process, {args.repeat} interleaved rounds; mAP (VOC, %) over the {runs[-1]["images"]} test images '
            'through the same route (the teacher\'s own decoding and NMS on the route\'s head maps), the mean over '
            'the rounds (each in brackets where they differ); the check\'s difference is the largest |compiled - '
            'dygraph| over the largest |dygraph| output on the first training batch (int8: the largest over the '
            'held-out batch of its calibration images, training images through the test transform, and '
            f'{INT8_CHECK_BATCHES + 1} augmented training batches), each round (ppkd allows '
            + ', '.join(f'{p} {t:g}' for p, t in TOLERANCES.items()) + '); the loss difference is the largest '
            '|route - dygraph| / |dygraph| of any distillation loss term on any timed batch, each round, with the '
            'student at its initialisation reading the same batch. '
            + ('Unchecked: every route ran as asked, whatever this CPU has and whatever its check found. '
               if args.unchecked else '')
            + f'Threads: {settings["threads"]}. CPU: {settings["cpu"]}.')
    atomic_write_text(args.out + '.json', json.dumps({'settings': settings, 'runs': runs, 'summary': summary},
                                                     indent=1) + '\n')
    atomic_write_text(args.out + '.md', '\n'.join(lines) + '\n\n' + note + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
