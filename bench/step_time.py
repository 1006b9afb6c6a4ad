"""Distillation step time: the student alone, ppkd's distill step, ppdet's
own DistillModel with the same loss, and the teacher's forward alone, each
in its own process (so each has its own peak RSS), on the same batches;
with `--same_process`, all in one process, stepped in turn.

    .venv/bin/python bench/step_time.py [--distill_config configs/bccd/distill_fine_grained.yml]
        [--teacher configs/bccd/teacher_yolov3_r34.yml] [--teacher_weights W] [--input_size 320]
        [--batch_size 2] [--steps 20] [--warmup 3] [--repeat 1] [--modes ...] [--same_process] [--breakdown]
        [--json] [--save NAME]

Steps are timed on batches loaded beforehand (median over `--steps` after
`--warmup`): forward, backward, optimizer update, as ppkd's trainer does
them. ppkd's step is timed with the teacher as configured (by default on
Paddle Inference) and in its other forms (dygraph, BatchNorm folded,
to_static; for Faster R-CNN also with the RoI head's layers in dygraph, as
before they were compiled). The data loader is timed apart, batches per second with
`--workers` processes, with and without shared memory, to show whether it
keeps up with the step. `--repeat N` runs every mode N times, interleaved,
and reports each run. Processes differ: the same mode's median has moved
by 17 % from one process to the next, and ppkd's backward, timed in its
own process, once looked 0.4 s longer than the student's timed in
another, where in one process the two took the same time.
`--same_process` builds every mode in one process and steps them in turn,
batch by batch, so that the machine's slow spells and the process's own
luck hit every mode alike (the peak RSS is then that of all of them).
`--breakdown` also times the parts of ppkd's step (student forward,
teacher image part and the part on the student's outputs, each loss,
backward and update), and the student's forward and its backward and
update; and how many floating-point operations the teacher's image part
does a step (its convolutions and fully connected layers, counted on the
dygraph teacher) against the rate a large float32 matrix product reaches
in the same process: how far a faster float32 teacher could go. Without
`--teacher_weights` the teacher has random weights whose BatchNorm
statistics are first calibrated on the data (timing does not depend on
the weights' values, but unnormalised activations would overflow).
"""
import argparse
import contextlib
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# ppdet prints notices on import: keep stdout for the results (--json).
with contextlib.redirect_stdout(sys.stderr):
    import ppkd  # noqa: E402,F401  (first: sets the CPU thread count)
    import paddle  # noqa: E402

    from ppkd import config as cfgmod  # noqa: E402
    from ppkd.builder import build_distiller, build_model  # noqa: E402
    from ppkd.data.loader import build_reader, epoch_batches  # noqa: E402
    from ppkd.engine.trainer import amp_available, amp_scaler, apply_gradients  # noqa: E402
    from ppkd.heap import keep_freed_heap  # noqa: E402
    from ppkd.teacher import freeze  # noqa: E402
    from ppkd.utils import atomic_write_text  # noqa: E402
    from common import cpu_model  # noqa: E402

MODES = {
    'student': 'student alone (a)',
    'ppkd': 'ppkd distill step (b)',
    'ppkd_dygraph': 'ppkd, dygraph teacher',
    'ppkd_roi_head_dygraph': "ppkd, teacher on Paddle Inference but for its RoI head's layers (dygraph)",
    'ppkd_folded': 'ppkd, dygraph teacher, BatchNorm folded',
    'ppkd_to_static': 'ppkd, teacher compiled by to_static',
    'ppkd_bf16': 'ppkd, teacher on Paddle Inference in bfloat16',
    'ppkd_int8': 'ppkd, teacher on Paddle Inference in int8',
    'ppdet': 'ppdet DistillModel (c)',
    'teacher': 'teacher forward alone (d)',
    'teacher_dygraph': 'dygraph teacher forward alone',
    'teacher_bf16': 'teacher forward alone, bfloat16',
    'teacher_int8': 'teacher forward alone, int8',
    'loader': 'data loader',
    'loader_shared_memory': 'data loader, shared memory',
}
# Config overrides per mode. ppkd's teacher: 'ppkd' runs it as configured
# (by default on Paddle Inference where the architecture allows).
MODE_OPTS = {
    'loader': ['TrainReader.use_shared_memory=false'],
    'loader_shared_memory': ['TrainReader.use_shared_memory=true'],
    'ppkd': [], 'teacher': [], 'ppkd_roi_head_dygraph': [],
    'ppkd_dygraph': ['distill.compile_teacher=dygraph'], 'teacher_dygraph': ['distill.compile_teacher=dygraph'],
    'ppkd_folded': ['distill.compile_teacher=dygraph', 'distill.fold_teacher_bn=true'],
    'ppkd_to_static': ['distill.compile_teacher=to_static'],
    'ppkd_bf16': ['distill.teacher_precision=bfloat16'], 'teacher_bf16': ['distill.teacher_precision=bfloat16'],
    'ppkd_int8': ['distill.teacher_precision=int8'], 'teacher_int8': ['distill.teacher_precision=int8'],
}
# ppdet's DistillModel losses for the same method, where ppdet has one.
PPDET_LOSSES = {'YOLOv3FineGrainedDistill': 'DistillYOLOv3Loss'}


def _cfgs(args, mode=None):
    # The generated fallback set has its own class count: both configs follow it.
    data = [f'dataset_dir={args.lists}'] + ([f'num_classes={args.num_classes}'] if args.num_classes else [])
    opts = [*data, f'input_size={args.input_size}', f'TrainReader.batch_size={args.batch_size}',
            f'worker_num={args.workers}', *MODE_OPTS.get(mode, []), *args.opt]
    return cfgmod.load_config(args.distill_config, opts), cfgmod.load_config(args.teacher, data)


def _batches(cfg, n):
    reader, out = build_reader(cfg, 'Train'), []
    while len(out) < n:
        for batch in epoch_batches(reader, len(out)):
            out.append(batch)
            if len(out) == n:
                break
    return out


def _time_steps(steppers, batches, warmup):
    """Step each of `steppers` ({mode: (step, parts)}) on every batch, in
    turn, the order rotating from batch to batch: {mode: (seconds of each
    step after `warmup`, cores kept busy on average)}. A mode's `parts`
    timers (or None) are cleared after the warm-up."""
    modes = list(steppers)
    times, cpu = {m: [] for m in modes}, {m: [] for m in modes}
    for i, batch in enumerate(batches):
        if i == warmup:
            for _, parts in steppers.values():
                if parts is not None:
                    parts.clear()
        for mode in modes[i % len(modes):] + modes[:i % len(modes)]:
            tic, cpu_tic = time.perf_counter(), time.process_time()
            steppers[mode][0](batch)
            if i >= warmup:
                times[mode].append(time.perf_counter() - tic)
                cpu[mode].append(time.process_time() - cpu_tic)
    # Cores kept busy on average: how much room the step leaves.
    return {m: (times[m], sum(cpu[m]) / sum(times[m])) for m in modes}


def _train_step(model, optimizer, amp, update=apply_gradients):
    scaler = amp_scaler(amp)

    def step(batch):
        with paddle.amp.auto_cast(enable=amp):
            loss = model(batch)['loss']
        float(loss)  # the trainer reads the loss (its finiteness check) before the update
        update(loss, optimizer, scaler)
    return step


def _timed(parts, name, fn):
    """`fn`, adding the seconds of each call to parts[name]."""
    def run(*args, **kwargs):
        tic = time.perf_counter()
        out = fn(*args, **kwargs)
        parts.setdefault(name, []).append(time.perf_counter() - tic)
        return out
    return run


def _time_parts(distiller):
    """Wrap the parts of ppkd's distill step with timers: {part: [seconds
    of each call]}, and the timed update (backward, optimizer) to step with."""
    parts = {}
    task = distiller.task
    task.student_loss = _timed(parts, 'student forward and detection loss', task.student_loss)
    if distiller.compiled_teacher is not None:
        compiled = distiller.compiled_teacher
        compiled.record = _timed(parts, f'teacher image part ({compiled.engine})', compiled.record)
    image_part, rest = distiller._teacher_forwards or (None, None)
    if image_part is not None:
        distiller._teacher_forwards = (_timed(parts, 'teacher image part (dygraph)', image_part),
                                       rest and _timed(parts, 'teacher part on the student\'s outputs', rest))
    for loss in distiller.distill_losses:
        loss.forward = _timed(parts, f'loss {type(loss).__name__}', loss.forward)
    return parts, _timed(parts, 'backward and update', apply_gradients)


def _image_part_gflop(distiller, batch):
    """Floating-point operations (multiply and add: two) of the teacher's
    image part on `batch`, in its convolutions and fully connected layers,
    counted on the dygraph teacher: GFLOP a step."""
    macs = []

    def count(layer, inputs, output):
        weight = layer.weight.shape  # Conv2D [out, in/groups, kh, kw]; Linear [in, out]
        per_output = weight[1] * weight[2] * weight[3] if len(weight) == 4 else weight[0]
        macs.append(output.numel().item() * per_output)
    hooks = [layer.register_forward_post_hook(count) for layer in distiller.teacher.sublayers()
             if isinstance(layer, (paddle.nn.Conv2D, paddle.nn.Linear))]
    with paddle.no_grad():
        distiller._teacher_forwards[0](distiller.teacher, batch, set(distiller.teacher_recorder.names))
    distiller.teacher_recorder.clear()
    for hook in hooks:
        hook.remove()
    return 2 * sum(macs) / 1e9


def _matmul_gflops(size=2048, repeat=5):
    """A tuned BLAS's float32 matrix product rate in this process (numpy's
    OpenBLAS, its threads from OMP_NUM_THREADS as the steps'), GFLOP/s, the
    best of `repeat`: the rate this CPU reaches on convolution-like work.
    (Paddle's own dygraph matmul is no ceiling: it ran at under a third of
    numpy's rate here.)"""
    import numpy as np  # loaded after ppkd has set the thread count
    a, b = (np.random.default_rng(i).random((size, size), dtype=np.float32) for i in range(2))
    best = float('inf')
    for _ in range(repeat):
        tic = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tic)
    return 2 * size ** 3 / best / 1e9


def _teacher_form(distiller):
    compiled = distiller.compiled_teacher
    return {'teacher_engine': 'dygraph' if compiled is None else compiled.engine + (
                '' if compiled.precision == 'float32' else f' ({compiled.precision})') + (
                '' if distiller.compiled_roi_layers is None else ', RoI head too'),
            'teacher_batch_norms': sum(isinstance(m, (paddle.nn.BatchNorm2D, paddle.nn.BatchNorm))
                                       for m in distiller.teacher.sublayers())}


def _optimizer(cfg, model):
    lr = cfgmod.build(cfg, 'LearningRate')(100)
    return cfgmod.build(cfg, 'OptimizerBuilder')(lr, model)


def _ppdet_distill_model(student_cfg, args):
    """ppdet's DistillModel as its tools/train.py builds it (through ppdet's
    global config), put in train mode by its trainer — teacher included."""
    from ppdet.slim.distill_model import DistillModel
    loss_name = student_cfg['distill']['losses'][0]
    weight = student_cfg[loss_name]['weight']
    slim = os.path.join(args.tmp, 'ppdet_slim.yml')
    with open(slim, 'w') as f:
        f.write(f'_BASE_: [{os.path.abspath(args.teacher)}]\npretrain_weights: {args.teacher_weights}\n'
                f'distill_loss: {PPDET_LOSSES[loss_name]}\n{PPDET_LOSSES[loss_name]}:\n  weight: {weight}\n'
                + (f'num_classes: {args.num_classes}\n' if args.num_classes else ''))
    with cfgmod.active(student_cfg):
        model = DistillModel(student_cfg, slim)
    model.train()
    return model


def _stepper(mode, args, batches, amp):
    """One mode's model, built: (step(batch), its parts' timers or None,
    what the result says of its teacher)."""
    student_cfg, teacher_cfg = _cfgs(args, mode)
    paddle.seed(0)
    if mode == 'student':
        model = build_model(student_cfg)
        model.train()
        parts, update = None, apply_gradients
        if args.breakdown:
            parts = {}
            model.forward = _timed(parts, 'forward and detection loss', model.forward)
            update = _timed(parts, 'backward and update', apply_gradients)
        return _train_step(model, _optimizer(student_cfg, model), amp, update), parts, {}
    if mode == 'ppdet':
        model = _ppdet_distill_model(student_cfg, args)
        return _train_step(model, _optimizer(student_cfg, model.student_model), amp), None, {}
    model = build_distiller(student_cfg, teacher_cfg, args.teacher_weights)
    model.train()
    if mode == 'ppkd_roi_head_dygraph':  # the teacher's second part as before it had a compiled end
        model._teacher_tail = None
    counted = args.breakdown and mode.startswith('ppkd') and model._teacher_forwards
    gflop = _image_part_gflop(model, batches[0]) if counted else None
    model.prepare_teacher(batches[0])
    if mode.startswith('ppkd'):
        parts, update = _time_parts(model) if args.breakdown else (None, apply_gradients)
        form = dict(_teacher_form(model), **({'teacher_image_gflop': gflop} if gflop else {}))
        return _train_step(model, _optimizer(student_cfg, model), amp, update), parts, form
    # ppkd's teacher as a distill step runs it: frozen, only as far as the losses read.
    name = model.teacher_recorder.names[0]

    def forward(batch):
        with paddle.no_grad(), paddle.amp.auto_cast(enable=amp):
            model.run_teacher(batch)
        float(model.teacher_recorder.outputs[name][-1].sum())
        model.teacher_recorder.clear()
    return forward, None, _teacher_form(model)


def _loader_times(mode, args, n):
    """Seconds from one of the reader's batches to the next, `n` of them, the warm-up left out."""
    reader, tic, times = build_reader(_cfgs(args, mode)[0], 'Train'), time.perf_counter(), []
    for epoch in itertools.count():
        for _ in epoch_batches(reader, epoch):
            times.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            if len(times) == n:
                return times[args.warmup:]


def measure(modes, args):
    """`modes` in this process, stepped in turn on the same batches: one
    result each, {'mode', 'median_s', 'mean_s', 'steps', 'peak_rss_mb', ...};
    the peak RSS is this process's."""
    student_cfg = _cfgs(args)[0]
    amp = amp_available(student_cfg) if args.amp else False  # as the trainer decides it
    keep_freed_heap(student_cfg)  # as the trainer does
    n = args.warmup + args.steps
    timed = {m: (_loader_times(m, args, n), None) for m in modes if m.startswith('loader')}
    stepped = [m for m in modes if m not in timed]
    built = {}
    if stepped:
        batches = _batches(student_cfg, n)
        built = {m: _stepper(m, args, batches, amp) for m in stepped}
        timed.update(_time_steps({m: (step, parts) for m, (step, parts, _) in built.items()}, batches, args.warmup))
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ceiling = _matmul_gflops() if any('teacher_image_gflop' in form for _, _, form in built.values()) else None
    results = []
    for mode in modes:
        times, cores = timed[mode]
        result = dict(mode=mode, median_s=statistics.median(times), mean_s=statistics.fmean(times), steps=len(times),
                      cores_busy=cores, peak_rss_mb=peak_rss_mb)
        if mode in built:
            _, parts, teacher_form = built[mode]
            result.update(teacher_form)
            if 'teacher_image_gflop' in teacher_form:
                result['matmul_gflops'] = ceiling
            if parts is not None:
                result['parts_mean_s'] = {k: sum(v) / len(times) for k, v in parts.items()}
        results.append(result)
    return results


def _calibrated_teacher(args):
    """Random teacher weights with BatchNorm statistics taken from the data."""
    student_cfg, teacher_cfg = _cfgs(args)
    paddle.seed(0)
    teacher = build_model(teacher_cfg)
    teacher.train()
    with paddle.no_grad():
        for batch in _batches(student_cfg, 12):
            teacher(batch)
    path = os.path.join(args.tmp, 'teacher.pdparams')
    paddle.save(freeze(teacher).state_dict(), path)
    return path


def _lists(args):
    from ppkd.data.split import split_voc
    from ppkd.data.synthetic import make_shapes_voc
    lists = os.path.join(args.tmp, 'lists')
    if os.path.isdir(args.dataset):
        split_voc(args.dataset, imagesets=('trainval', 'test'), out_dir=lists)
        return lists, None
    print(f'{args.dataset} not found: timing on generated images', file=sys.stderr)
    make_shapes_voc(lists, num_images=64, image_size=320)
    return lists, 4


def _summary(runs):
    """One mode's repeated runs: the median of their medians, each run's
    median kept; the mean of their means (and of each part's)."""
    summary = dict(runs[-1])
    summary.update(median_s=statistics.median(r['median_s'] for r in runs),
                   mean_s=statistics.fmean(r['mean_s'] for r in runs),
                   peak_rss_mb=max(r['peak_rss_mb'] for r in runs),
                   run_medians_s=[r['median_s'] for r in runs])
    if 'matmul_gflops' in summary:
        summary['matmul_gflops'] = max(r['matmul_gflops'] for r in runs)
    if 'parts_mean_s' in summary:
        summary['parts_mean_s'] = {k: statistics.fmean(r['parts_mean_s'][k] for r in runs)
                                   for k in summary['parts_mean_s']}
    return summary


# (numerator, denominator, what the ratio says)
RATIOS = [('ppkd', 'student', '(b)/(a) ppkd distill / student'),
          ('ppkd', 'ppdet', '(b)/(c) ppkd / ppdet DistillModel'),
          ('ppdet', 'student', '(c)/(a) ppdet DistillModel / student'),
          ('teacher', 'student', '(d)/(a) teacher forward / student step'),
          ('loader', 'ppkd', 'loader batch / ppkd step (below 1: the loader keeps up)')]


def table(results, args):
    by = {r['mode']: r for r in results}
    repeated = args.repeat > 1
    rss = "the process's peak RSS, every mode in it (MB)" if args.same_process else 'peak RSS (MB)'
    lines = ['| run | median step (s) |%s mean (s) | steps | cores busy | %s | teacher runs as | '
             'teacher BatchNorms left |' % (' each run |' if repeated else '', rss),
             '|---|---|%s---|---|---|---|---|---|' % ('---|' if repeated else '')]
    for r in results:
        each = ' %s |' % ', '.join('%.3f' % m for m in r['run_medians_s']) if repeated else ''
        lines.append('| %s | %.3f |%s %.3f | %d | %s | %.0f | %s | %s |' % (
            MODES[r['mode']], r['median_s'], each, r['mean_s'], r['steps'],
            '%.2f' % r['cores_busy'] if r.get('cores_busy') else '', r['peak_rss_mb'],
            r.get('teacher_engine', ''), r.get('teacher_batch_norms', '')))
    ratios = []
    for top, bottom, what in RATIOS:
        if top in by and bottom in by:
            ratio = '%s: %.2f' % (what, by[top]['median_s'] / by[bottom]['median_s'])
            if repeated:  # the same ratio within each round of runs
                ratio += ' (each run: %s)' % ', '.join('%.2f' % (t / b) for t, b in zip(
                    by[top]['run_medians_s'], by[bottom]['run_medians_s']))
            ratios.append(ratio)
    setting = (f'{os.path.relpath(args.distill_config, ROOT)} with teacher {os.path.relpath(args.teacher, ROOT)}, '
               f'{args.input_size} px, batch {args.batch_size}, {os.environ.get("OMP_NUM_THREADS")} CPU threads, '
               f'paddle {paddle.__version__}, loader workers {args.workers}' + (', AMP' if args.amp else '')
               + f', CPU: {cpu_model()}'
               + f', {args.steps} steps after {args.warmup} warm-up'
               + (', every mode in one process, stepped in turn batch by batch (the order rotating)'
                  if args.same_process else '')
               + (f', {args.repeat} runs' + ('' if args.same_process else ' of each mode, interleaved')
                  if repeated else '')
               + (f', teacher weights {args.weights_given}' if args.weights_given else
                  ', random teacher weights with data-calibrated BatchNorm statistics'))
    breakdown = ['%s, mean seconds a step: %s; the rest (recording, the step\'s own sums) %.3f' % (
        MODES[r['mode']], '; '.join('%s %.3f' % kv for kv in r['parts_mean_s'].items()),
        r['mean_s'] - sum(r['parts_mean_s'].values())) for r in results if r.get('parts_mean_s')]
    breakdown += [_teacher_rate(r) for r in results if r.get('teacher_image_gflop') and r.get('parts_mean_s')]
    return '\n'.join(lines + [''] + [f'- {r}' for r in ratios + breakdown] + ['', setting]) + '\n'


def _teacher_rate(result):
    """How near the teacher's image part runs to this CPU's float32 ceiling."""
    part, seconds = next((k, v) for k, v in result['parts_mean_s'].items() if k.startswith('teacher image part'))
    gflop = result['teacher_image_gflop']
    return (f'{MODES[result["mode"]]}, {part}: {gflop:.1f} GFLOP a step (its convolutions and fully connected '
            f'layers), {gflop / seconds:.0f} GFLOP/s; a 2048² float32 matrix product (numpy\'s BLAS) in the same '
            f'process: {result["matmul_gflops"]:.0f} GFLOP/s')


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--distill_config', default=os.path.join(ROOT, 'configs', 'bccd', 'distill_fine_grained.yml'))
    p.add_argument('--teacher', default=os.path.join(ROOT, 'configs', 'bccd', 'teacher_yolov3_r34.yml'))
    p.add_argument('--teacher_weights', default=None)
    p.add_argument('--dataset', default=os.path.normpath(os.path.join(ROOT, '..', 'shared', 'datasets', 'BCCD')))
    p.add_argument('--input_size', type=int, default=320)
    p.add_argument('--batch_size', type=int, default=2)
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--repeat', type=int, default=1, help='run the modes this many times, interleaved')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--amp', action='store_true', help='mixed precision (GPU only)')
    p.add_argument('--modes', nargs='+', default=list(MODES), choices=list(MODES))
    p.add_argument('-o', '--opt', nargs='*', default=[], help='extra overrides of the student/distill config')
    p.add_argument('--breakdown', action='store_true',
                   help="ppkd's modes: also the mean time a step spends in each of its parts")
    p.add_argument('--json', action='store_true', help='print the results as JSON')
    p.add_argument('--save', default=None, help='write bench/results/NAME.{md,json}')
    p.add_argument('--same_process', action='store_true',
                   help='every mode in one process, stepped in turn batch by batch (each --repeat a process of its '
                        'own): the machine\'s slow spells and a process\'s own luck hit every mode alike')
    p.add_argument('--here', nargs='+', default=None, help=argparse.SUPPRESS)  # internal: measure these modes
    p.add_argument('--tmp', default=None, help=argparse.SUPPRESS)
    p.add_argument('--lists', default=None, help=argparse.SUPPRESS)
    p.add_argument('--num_classes', type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.here:
        print(json.dumps(measure(args.here, args)))
        return
    student_cfg = cfgmod.load_config(args.distill_config)
    loss_names = (student_cfg.get('distill') or {}).get('losses') or []
    modes = [m for m in args.modes if m != 'ppdet' or all(n in PPDET_LOSSES for n in loss_names)]
    if len(modes) < len(args.modes):
        print(f'ppdet has no DistillModel loss for {loss_names}: mode ppdet skipped', file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        args.lists, args.num_classes = _lists(args)
        args.weights_given = args.teacher_weights and os.path.relpath(args.teacher_weights, ROOT)
        if not args.teacher_weights:
            args.teacher_weights = _calibrated_teacher(args)
        passthrough = ['--distill_config', args.distill_config, '--teacher', args.teacher, '--teacher_weights',
                       args.teacher_weights, '--input_size', str(args.input_size), '--batch_size', str(args.batch_size),
                       '--steps', str(args.steps), '--warmup', str(args.warmup), '--workers', str(args.workers),
                       '--tmp', tmp, '--lists', args.lists, '--num_classes', str(args.num_classes or 0)] + \
                      (['--amp'] if args.amp else []) + (['--breakdown'] if args.breakdown else []) + \
                      (['-o', *args.opt] if args.opt else [])
        runs = {mode: [] for mode in modes}
        groups = [modes] if args.same_process else [[mode] for mode in modes]
        for _ in range(args.repeat):  # interleaved, so a slow spell of the machine hits every mode
            for group in groups:
                out = subprocess.run([sys.executable, os.path.abspath(__file__), '--here', *group, *passthrough],
                                     capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f'error: mode(s) {" ".join(group)} failed:\n{out.stderr[-3000:]}')
                for result in json.loads(out.stdout.strip().splitlines()[-1]):
                    runs[result['mode']].append(result)
                    print(f'{MODES[result["mode"]]}: median {result["median_s"]:.3f} s', file=sys.stderr, flush=True)
    results = [_summary(mode_runs) for mode_runs in runs.values()]
    text = table(results, args)
    settings = {k: v for k, v in vars(args).items() if k not in ('here', 'tmp', 'lists', 'teacher_weights', 'num_classes', 'weights_given')}
    settings.update(threads=os.environ.get('OMP_NUM_THREADS'), paddle=paddle.__version__, cpu=cpu_model(),
                    teacher_weights=args.weights_given or 'random, BatchNorm calibrated')
    payload = {'settings': settings, 'results': results}
    print(json.dumps(payload, indent=1) if args.json else text)
    if args.save:
        out = os.path.join(ROOT, 'bench', 'results', args.save)
        atomic_write_text(out + '.md', text)
        atomic_write_text(out + '.json', json.dumps(payload, indent=1) + '\n')


if __name__ == '__main__':
    main()
