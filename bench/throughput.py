"""Training throughput as users feel it: images/s of the real training loop
— the command a user runs, its configured reader and workers, logging,
checkpoints — for the teacher trained alone, the student alone, ppkd's
distillation and ppdet's own DistillModel in ppdet's own trainer, each in
its own process, under several thread settings, for each teacher–student
pair.

    .venv/bin/python bench/throughput.py [--pairs demo bccd] [--settings default previous] [--modes ...]

Pairs: `demo` (the demo's configs and data; the teacher of
bench/demo_seeds.py), `bccd` (the BCCD benches' YOLOv3-R34 teacher and
MobileNetV1 student at their 160 px and batch 8; the teacher of
bench/bccd_yolov3.py and bench/bccd_fgfi.py) and `bccd_frcnn` (Faster
R-CNN R50-FPN teacher, R18-FPN student at 256 px, batch 2; the teacher of
bench/bccd_faster_rcnn.py; ppdet has no DistillModel loss for it). A
missing teacher is trained first, as its bench would. Each run trains `--epochs`
epochs with every iteration logged; images/s = batch size × iterations /
their summed wall-clock (data wait included), over the iterations after the
first `--warmup` (or after ppkd's CPU tuner has chosen, when that is
later). Writes bench/results/throughput.{md,json}.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

from common import BCCD, ROOT, cpu_model, mean, schedule, train_teacher

sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))
from demo import DEMO_STUDENT, DEMO_TEACHER, ensure_demo_data  # noqa: E402
from ppkd.data.split import split_voc  # noqa: E402
from ppkd.utils import atomic_write_text  # noqa: E402

CFG = os.path.join(ROOT, 'configs')
PAIRS = {  # name: teacher, student and distillation configs, the pair's overrides, its bench's teacher folder,
    # ppdet's DistillModel loss for the same method with the ppkd loss whose weight it takes (None: ppdet has none),
    # and what the pair is
    'demo': dict(teacher=DEMO_TEACHER, student=DEMO_STUDENT,
                 distill=os.path.join(CFG, 'demo', 'distill_fine_grained.yml'), opts=[],
                 teacher_dir=os.path.join(ROOT, 'output', 'bench_demo_seeds', 'teacher'),
                 ppdet=('DistillYOLOv3Loss', 'YOLOv3FineGrainedDistill'), label='the demo configs and data'),
    'bccd': dict(teacher=os.path.join(CFG, 'bccd', 'teacher_yolov3_r34.yml'),
                 student=os.path.join(CFG, 'bccd', 'student_yolov3_mobilenet_v1.yml'),
                 distill=os.path.join(CFG, 'bccd', 'distill_fine_grained.yml'),
                 opts=['input_size=160', 'TrainReader.batch_size=8', 'worker_num=2'],  # the BCCD bench's
                 teacher_dir=os.path.join(ROOT, 'output', 'bench_bccd', 'teacher_r34'),
                 ppdet=('DistillYOLOv3Loss', 'YOLOv3FineGrainedDistill'),
                 label='the BCCD bench pair (YOLOv3-R34 teacher, MobileNetV1 student, fine-grained loss)'),
    'bccd_frcnn': dict(teacher=os.path.join(CFG, 'bccd', 'teacher_faster_rcnn_r50_fpn.yml'),
                       student=os.path.join(CFG, 'bccd', 'student_faster_rcnn_r18_fpn.yml'),
                       distill=os.path.join(CFG, 'bccd', 'distill_faster_rcnn.yml'),
                       opts=['input_size=256', 'TrainReader.batch_size=2', 'worker_num=2'],  # bccd_faster_rcnn.py's
                       teacher_dir=os.path.join(ROOT, 'output', 'bench_bccd_frcnn', 'teacher_r50_fpn'), ppdet=None,
                       label='the BCCD Faster R-CNN pair (R50-FPN teacher, R18-FPN student, soft labels, bounded '
                             'regression and hint)'),
}
PATH_KEYS = ('teacher', 'student', 'distill', 'teacher_dir', 'weights')
# How each pair's bench trains its teacher (the same command, so either bench reuses the other's teacher).
TEACHER_OPTS = {'demo': [], 'bccd': ['snapshot_epoch=2', *schedule(12, 50)],
                'bccd_frcnn': ['snapshot_epoch=2', *schedule(8, 100)]}
SETTINGS = {  # environment of each run; ppkd's default: every core, its CPU tuner (wait policy, BLAS threads)
    'default': {},
    # Every core for OpenMP and MKL, Intel OpenMP's default block time: no tuner (ppkd before it).
    'previous': {'KMP_BLOCKTIME': '200', 'MKL_NUM_THREADS': str(os.cpu_count() or 1)},
    'one_thread': {'OMP_NUM_THREADS': '1'},
    'blocktime0': {'KMP_BLOCKTIME': '0'},
}
# previous's environment, with glibc's heap left to its own thresholds (ppkd before it kept the heap): the config
# overrides of a setting's runs.
SETTINGS['system_heap'] = dict(SETTINGS['previous'])
SETTING_OPTS = {'system_heap': ['cpu_heap=system']}
MODES = ('teacher', 'student', 'ppkd', 'ppkd_no_reuse', 'ppkd_bf16', 'ppkd_int8', 'ppdet')
NAMES = {'teacher': 'teacher alone (tools/train.py)', 'student': 'student alone (tools/train.py)',
         'ppkd': 'ppkd distillation (distill.py)',
         'ppkd_no_reuse': 'ppkd distillation, teacher outputs not reused (the teacher runs every step)',
         'ppkd_bf16': 'ppkd distillation, teacher in bfloat16',
         'ppkd_int8': 'ppkd distillation, teacher in int8', 'ppdet': "ppdet DistillModel (ppdet's Trainer)"}
# Extra overrides of a mode's runs: ppkd with its teacher's convolutions in bfloat16 or int8, or running it every
# step where its outputs could be read back (a reader whose images are the same every epoch: --fixed_reader).
MODE_OPTS = {'ppkd_no_reuse': ['distill.reuse_teacher_outputs=false'],
             'ppkd_bf16': ['distill.teacher_precision=bfloat16'],
             'ppkd_int8': ['distill.teacher_precision=int8']}
BATCH_COST = re.compile(r'Epoch: \[\d+\] \[\s*\d+/\d+\].* batch_cost: ([\d.]+)')


def _command(pair, mode, out, opts, teacher_opts):
    spec = PAIRS[pair]
    if mode in ('teacher', 'student'):
        return ['tools/train.py', '-c', spec[mode], '--output_dir', out, '-o', *opts]
    if mode.startswith('ppkd'):
        return ['slim/distillation/distill.py', '-c', spec['distill'], '-t', spec['teacher'], '--teacher_pretrained',
                spec['weights'], '--output_dir', out, '--teacher_opt', *teacher_opts, '-o', *opts]
    return ['bench/throughput.py', '--pairs', pair, '--ppdet_child', out, '--teacher_weights', spec['weights'],
            '-o', *opts]


def run_ppdet(pair, out, opts):
    """ppdet's own trainer on its DistillModel, as ppdet's tools/train.py
    builds them for a distillation config (same student, teacher, loss)."""
    import ppkd  # noqa: F401
    from ppdet.engine import Trainer
    from ppdet.slim.distill_model import DistillModel
    from ppkd import config as cfgmod
    spec = PAIRS[pair]
    cfg = cfgmod.load_config(spec['distill'], opts + [f'save_dir={out}'])
    slim = os.path.join(out, 'ppdet_slim.yml')
    os.makedirs(out, exist_ok=True)
    ppdet_loss, ppkd_loss = spec['ppdet']
    with open(slim, 'w') as f:
        f.write(f'_BASE_: [{spec["teacher"]}]\npretrain_weights: {spec["weights"]}\ndistill_loss: {ppdet_loss}\n'
                f'{ppdet_loss}:\n  weight: {cfg[ppkd_loss]["weight"]}\n')
    # Loading the teacher's config merges its readers and data sets into the student's (the same dicts, in
    # ppdet's global config), from which ppdet's trainer creates its reader: the student's, loaded anew, are put
    # back after, so that both trainers read the same batches (size, input size, data).
    student = cfgmod.load_config(spec['distill'], opts)
    with cfgmod.active(cfg) as active:
        model = DistillModel(cfg, slim)
        active.update({key: student[key] for key in ('TrainReader', 'EvalReader', 'TestReader', 'TrainDataset',
                                                     'EvalDataset', 'TestDataset') if key in student})
        cfg.update(model=model, slim=slim, slim_type='Distill')
        Trainer(cfg, mode='train').train()


def fixed_reader_opts(pair, data, opts):
    """Overrides giving the pair's TrainReader without its random
    transforms (BatchRandomResize at its last size, fixed interpolation):
    a reader whose images are the same every epoch."""
    from ppkd import config as cfgmod
    from ppkd.teacher_cache import random_transform
    spec = PAIRS[pair]
    reader = cfgmod.load_config(spec['distill'], [f'dataset_dir={data}', *spec['opts'], *opts])['TrainReader']
    overrides = []
    for key in ('sample_transforms', 'batch_transforms'):
        kept = []
        for transform in reader.get(key) or []:
            (name, params), = transform.items()
            params = dict(params or {})
            if name == 'BatchRandomResize':
                params.update(target_size=params['target_size'][-1:], random_interp=False)
            if random_transform(name, params) is None:
                kept.append({name: params})
        overrides.append(f'TrainReader.{key}={json.dumps(kept)}')
    return overrides


def pair_data(pair, dataset):
    """The folder the pair's runs read, shared with the pair's bench: the
    demo's generated data, or BCCD's official split."""
    if pair == 'demo':
        return ensure_demo_data(os.path.join(ROOT, 'output', 'bench_demo_seeds', 'shapes'))
    lists = os.path.join(ROOT, 'output', 'bench_bccd', 'lists')
    split_voc(dataset, imagesets=('trainval', 'test'), out_dir=lists)
    return lists


def measure(pair, mode, setting, args, data, batch, reader_opts=()):
    out = tempfile.mkdtemp(prefix=f'{pair}_{mode}_{setting}_', dir=args.work_dir)
    opts = [f'dataset_dir={data}', *PAIRS[pair]['opts'], f'epoch={args.epochs}', f'snapshot_epoch={args.epochs}',
            'log_iter=1', *reader_opts, *MODE_OPTS.get(mode, []), *SETTING_OPTS.get(setting, []), *args.opt]
    env = {**os.environ, **SETTINGS[setting]}
    if setting != 'one_thread':
        env.pop('OMP_NUM_THREADS', None)  # ppkd's default: every core
    log = out + '.log'
    with open(log, 'w') as f:
        code = subprocess.call([sys.executable, *_command(pair, mode, out, opts, args.teacher_opt)], stdout=f,
                               stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    with open(log) as f:
        text = f.read()
    if code:
        sys.exit(f'error: {pair} {mode} ({setting}) failed (exit {code}), see {log}')
    chosen = list(re.finditer(r'CPU settings: ([^\n]*)', text))
    # The tuner races on while candidates' times overlap: the iterations up to its choice are left out too.
    tuned = len(BATCH_COST.findall(text, 0, chosen[-1].start())) + 1 if chosen else 0
    costs = [float(c) for c in BATCH_COST.findall(text)][max(args.warmup, tuned):]
    if not costs:
        sys.exit(f'error: {pair} {mode} ({setting}): no iteration logged after warm-up, see {log}')
    return {'pair': pair, 'mode': mode, 'setting': setting, 'iterations': len(costs), 'batch_size': batch,
            'images_per_s': batch * len(costs) / sum(costs),
            'mean_iteration_s': mean(costs), 'cpu_settings': chosen[-1].group(1) if chosen else None}


def batch_size(pair, data, opts):
    """The TrainReader batch size of the pair's runs (its modes share one reader)."""
    from ppkd import config as cfgmod
    spec = PAIRS[pair]
    return int(cfgmod.load_config(spec['distill'], [f'dataset_dir={data}', *spec['opts'], *opts])
               ['TrainReader']['batch_size'])


def _runs(results, pair, mode, setting):
    """The runs of one cell, in round order."""
    return [r for r in results if (r['pair'], r['mode'], r['setting']) == (pair, mode, setting)]


def _figures(values):
    return f'{mean(values):.2f}' + (' (' + ', '.join(f'{v:.2f}' for v in values) + ')' if len(values) > 1 else '')


def table(results, pairs, settings):
    head = ['pair', 'mode', *settings]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for pair in pairs:
        for mode in MODES:
            cells = [_figures([r['images_per_s'] for r in _runs(results, pair, mode, setting)])
                     if _runs(results, pair, mode, setting) else '' for setting in settings]
            if any(cells):
                lines.append(f'| {pair} | {NAMES[mode]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def ratios(results, pairs, settings):
    """ppkd's step time over the student's and over ppdet's, and each of
    ppkd's variants' over the student's (their images/s the other way
    round), per pair and setting, each round's runs together."""
    lines = []
    for pair in pairs:
        for setting in settings:
            ppkd, student, ppdet = (_runs(results, pair, m, setting) for m in ('ppkd', 'student', 'ppdet'))
            parts = [f'ppkd step / {name} step ' + _figures([o['images_per_s'] / k['images_per_s']
                                                             for k, o in zip(ppkd, other)])
                     for name, other in (('student', student), ('ppdet', ppdet)) if ppkd and other]
            for mode in (m for m in MODES if m.startswith('ppkd_')):  # teacher in bfloat16, int8, ...
                variant = _runs(results, pair, mode, setting)
                if variant and student:
                    parts.append(f'{mode} step / student step ' + _figures(
                        [s['images_per_s'] / v['images_per_s'] for v, s in zip(variant, student)]))
            if parts:
                lines.append(f'{pair}, {setting}: ' + '; '.join(parts))
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--pairs', nargs='+', default=list(PAIRS), choices=list(PAIRS))
    p.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES)
    p.add_argument('--settings', nargs='+', default=['default', 'previous'], choices=list(SETTINGS))
    p.add_argument('--epochs', type=int, default=2,
                   help='epochs per run (iterations an epoch: demo 30, bccd 36, bccd_frcnn 146)')
    p.add_argument('--warmup', type=int, default=15, help='iterations left out at the start, or up to the choice '
                   "of ppkd's CPU tuner when it chooses later")
    p.add_argument('--repeat', type=int, default=1, help='rounds of every run, one round after the other')
    p.add_argument('--fixed_reader', action='store_true', help="every run reads the pair's TrainReader without its "
                   'random transforms, so that ppkd reuses the teacher\'s outputs from epoch to epoch')
    p.add_argument('--teacher_weights', default=None, help="the teacher's weights (one pair only); default: the "
                   "pair's bench teacher, trained first if missing")
    p.add_argument('--dataset', default=BCCD, help="BCCD's folder (the bccd pair)")
    p.add_argument('--data', default=None, help="a VOC folder with its lists for the pair's runs (one pair, with "
                   "--teacher_weights); default: the pair's bench data")
    p.add_argument('--work_dir', default=os.path.join(ROOT, 'output', 'bench_throughput'))
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'throughput'))
    p.add_argument('--ppdet_child', default=None, help=argparse.SUPPRESS)
    p.add_argument('-o', '--opt', nargs='*', default=[], help='extra overrides for every run')
    p.add_argument('--teacher_opt', nargs='*', default=[], help="extra overrides of the teacher's config in ppkd's "
                   'runs (e.g. its num_classes for other data)')
    args = p.parse_args()
    if (args.teacher_weights or args.data) and len(args.pairs) > 1:
        sys.exit('error: --teacher_weights and --data need one --pairs value (whose teacher and data they are)')
    if args.data and not args.teacher_weights:
        sys.exit("error: --data needs --teacher_weights (the pair's bench teacher was trained on its own data)")
    if args.ppdet_child:
        PAIRS[args.pairs[0]]['weights'] = args.teacher_weights
        return run_ppdet(args.pairs[0], args.ppdet_child, args.opt)
    os.makedirs(args.work_dir, exist_ok=True)
    data = {pair: args.data or pair_data(pair, args.dataset) for pair in args.pairs}
    for pair in args.pairs:
        spec = PAIRS[pair]
        if args.teacher_weights:
            if not os.path.isfile(args.teacher_weights):
                sys.exit(f'error: teacher weights not found: {args.teacher_weights}')
            spec['weights'] = args.teacher_weights
        else:  # the pair's bench teacher, trained here first if it is not there yet, as that bench would
            train_teacher(spec['teacher'], spec['teacher_dir'],
                          [f'dataset_dir={data[pair]}', *spec['opts'], *TEACHER_OPTS[pair]])
            spec['weights'] = os.path.join(spec['teacher_dir'], 'model_final.pdparams')
    batches = {pair: batch_size(pair, data[pair], args.opt) for pair in args.pairs}
    readers = {pair: fixed_reader_opts(pair, data[pair], args.opt) if args.fixed_reader else [] for pair in args.pairs}
    modes = {pair: [m for m in args.modes if m != 'ppdet' or PAIRS[pair]['ppdet']] for pair in args.pairs}
    for pair in args.pairs:
        if modes[pair] != args.modes:
            print(f'{pair}: ppdet has no DistillModel loss for this method: mode ppdet skipped', file=sys.stderr)
    results = []
    # Settings inside modes, so that each mode's settings are measured close together.
    for round_ in range(args.repeat):
        for pair in args.pairs:
            for mode in modes[pair]:
                for setting in args.settings:
                    results.append(dict(measure(pair, mode, setting, args, data[pair], batches[pair], readers[pair]),
                                        round=round_))
                    r = results[-1]
                    print(f'round {round_ + 1}: {pair} {mode} ({setting}): {r["images_per_s"]:.2f} images/s over '
                          f'{r["iterations"]} iterations', flush=True)
    settings = {'cpu': cpu_model(), 'epochs': args.epochs, 'warmup': args.warmup, 'repeat': args.repeat,
                'pairs': {pair: {k: os.path.relpath(v, ROOT) if k in PATH_KEYS else v for k, v in PAIRS[pair].items()}
                          for pair in args.pairs},
                'environments': {s: SETTINGS[s] for s in args.settings}, 'opt': args.opt, 'reader_opts': readers,
                'teacher_opt': args.teacher_opt}
    atomic_write_text(args.out + '.json', json.dumps({'settings': settings, 'results': results}, indent=1) + '\n')
    note = ('Images/s of the training loop users run, data wait and logging included (the mean over '
            f'{args.repeat} round(s), each round in brackets), {args.epochs} epoch(s) per run, the first '
            f'{args.warmup} iterations left out (or those up to the CPU tuner\'s choice, if later); each run its '
            'own process, one after another; the ratios are step '
            "times (images/s the other way round), each round's runs together. CPU: " + settings['cpu'] + '. '
            + '; '.join(f'{pair}: {PAIRS[pair]["label"]}, batch {batches[pair]}'
                        for pair in args.pairs) + '. '
            + ("Every run's TrainReader without its random transforms (BatchRandomResize at one size, fixed "
               "interpolation), the same images every epoch: ppkd reuses the teacher's outputs from the second "
               'epoch on; ppkd_no_reuse runs the teacher every step. ' if args.fixed_reader else '')
            + "default: every core with ppkd's CPU tuner (wait policy × BLAS threads; ppdet's loop has none); "
            "previous: every core for OpenMP and MKL, KMP_BLOCKTIME=200 (Intel OpenMP's default), no tuner "
            '(ppkd before it); one_thread: OMP_NUM_THREADS=1; blocktime0: KMP_BLOCKTIME=0; system_heap: as previous, '
            "and glibc's heap left to its own thresholds (cpu_heap: system; ppkd before it kept the heap). "
            'Settings ppkd chose: '
            + '; '.join(f'{r["pair"]} {r["mode"]}/{r["setting"]} (round {r["round"] + 1}): {r["cpu_settings"]}'
                        for r in results if r['cpu_settings']))
    text = table(results, args.pairs, args.settings)
    atomic_write_text(args.out + '.md', text + '\n\n' + '\n'.join(f'- {line}' for line in
                                                              ratios(results, args.pairs, args.settings))
                      + '\n\n' + note + '\n')
    print(text)
    print('\n'.join(ratios(results, args.pairs, args.settings)))


if __name__ == '__main__':
    main()
