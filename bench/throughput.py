"""Training throughput as users feel it: images/s of the real training loop
— the command a user runs, its configured reader and workers, logging,
checkpoints — for the student alone, ppkd's distillation and ppdet's own
DistillModel in ppdet's own trainer, each in its own process, under several
thread settings.

    .venv/bin/python bench/throughput.py [--settings default one_thread blocktime0] [--modes ...]

Each run trains `--epochs` epochs on the demo's data with every iteration
logged; images/s = batch size × iterations / their summed wall-clock
(data wait included), over the iterations after the first `--warmup`.
Writes bench/results/throughput.{md,json}.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

from common import ROOT, cpu_model, mean

sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))
from demo import DEMO_STUDENT, DEMO_TEACHER, ensure_demo_data  # noqa: E402
from ppkd.utils import atomic_write_text  # noqa: E402

DISTILL = os.path.join(ROOT, 'configs', 'demo', 'distill_fine_grained.yml')
# ppdet's DistillModel loss for the same method (ppdet's YOLOv3 fine-grained distillation).
PPDET_LOSS = 'DistillYOLOv3Loss'
SETTINGS = {  # environment of each run; ppkd's default: every core, its wait-policy tuner
    'default': {},
    'previous': {'KMP_BLOCKTIME': '200'},  # every core, Intel OpenMP's default block time: no tuner
    'one_thread': {'OMP_NUM_THREADS': '1'},
    'blocktime0': {'KMP_BLOCKTIME': '0'},
}
MODES = ('student', 'ppkd', 'ppkd_bf16', 'ppdet')
# Extra overrides of a mode's runs: ppkd with its teacher's convolutions in bfloat16.
MODE_OPTS = {'ppkd_bf16': ['distill.teacher_precision=bfloat16']}
BATCH_COST = re.compile(r'Epoch: \[\d+\] \[\s*\d+/\d+\].* batch_cost: ([\d.]+)')


def _command(mode, out, teacher_weights, opts):
    if mode == 'student':
        return ['tools/train.py', '-c', DEMO_STUDENT, '--output_dir', out, '-o', *opts]
    if mode.startswith('ppkd'):
        return ['slim/distillation/distill.py', '-c', DISTILL, '-t', DEMO_TEACHER, '--teacher_pretrained',
                teacher_weights, '--output_dir', out, '-o', *opts]
    return ['bench/throughput.py', '--ppdet_child', out, '--teacher_weights', teacher_weights, '-o', *opts]


def run_ppdet(out, teacher_weights, opts):
    """ppdet's own trainer on its DistillModel, as ppdet's tools/train.py
    builds them for a distillation config (same student, teacher, loss)."""
    import ppkd  # noqa: F401
    from ppdet.engine import Trainer
    from ppdet.slim.distill_model import DistillModel
    from ppkd import config as cfgmod
    cfg = cfgmod.load_config(DISTILL, opts + [f'save_dir={out}'])
    slim = os.path.join(out, 'ppdet_slim.yml')
    os.makedirs(out, exist_ok=True)
    weight = cfg['YOLOv3FineGrainedDistill']['weight']
    with open(slim, 'w') as f:
        f.write(f'_BASE_: [{DEMO_TEACHER}]\npretrain_weights: {teacher_weights}\ndistill_loss: {PPDET_LOSS}\n'
                f'{PPDET_LOSS}:\n  weight: {weight}\n')
    data = cfg['dataset_dir']
    with cfgmod.active(cfg) as active:
        model = DistillModel(cfg, slim)
        # Loading the teacher's config merged its data sets over the student's in ppdet's global config (from
        # which ppdet's trainer creates its reader): point them back at the data.
        for key in ('TrainDataset', 'EvalDataset', 'TestDataset'):
            if hasattr(active.get(key), 'dataset_dir'):
                active[key].dataset_dir = data
        cfg.update(model=model, slim=slim, slim_type='Distill')
        Trainer(cfg, mode='train').train()


def measure(mode, setting, args, teacher_weights, data):
    out = tempfile.mkdtemp(prefix=f'{mode}_{setting}_', dir=args.work_dir)
    opts = [f'dataset_dir={data}', f'epoch={args.epochs}', f'snapshot_epoch={args.epochs}', 'log_iter=1',
            *MODE_OPTS.get(mode, []), *args.opt]
    env = {**os.environ, **SETTINGS[setting]}
    if setting != 'one_thread':
        env.pop('OMP_NUM_THREADS', None)  # ppkd's default: every core
    log = out + '.log'
    with open(log, 'w') as f:
        code = subprocess.call([sys.executable, *_command(mode, out, teacher_weights, opts)], stdout=f,
                               stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    with open(log) as f:
        text = f.read()
    if code:
        sys.exit(f'error: {mode} ({setting}) failed (exit {code}), see {log}')
    costs = [float(c) for c in BATCH_COST.findall(text)][args.warmup:]
    policy = re.findall(r'CPU wait policy: ([^\n]*)', text)
    if not costs:
        sys.exit(f'error: {mode} ({setting}): no iteration logged after warm-up, see {log}')
    return {'mode': mode, 'setting': setting, 'iterations': len(costs), 'images_per_s': args.batch_size * len(costs)
            / sum(costs), 'mean_iteration_s': mean(costs), 'wait_policy': policy[-1] if policy else None}


def batch_size(opts):
    """The TrainReader batch size the runs use (all modes share the demo reader)."""
    from ppkd import config as cfgmod
    return int(cfgmod.load_config(DISTILL, opts)['TrainReader']['batch_size'])


def table(results, settings):
    head = ['mode', *settings]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    names = {'student': 'student alone (tools/train.py)', 'ppkd': 'ppkd distillation (distill.py)',
             'ppkd_bf16': 'ppkd distillation, teacher in bfloat16', 'ppdet': "ppdet DistillModel (ppdet's Trainer)"}
    for mode in MODES:
        cells = []
        for setting in settings:
            r = next((r for r in results if r['mode'] == mode and r['setting'] == setting), None)
            cells.append('' if r is None else f'{r["images_per_s"]:.2f} ({r["mean_iteration_s"]:.2f} s)')
        if any(cells):
            lines.append(f'| {names[mode]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES)
    p.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument('--epochs', type=int, default=2, help='epochs per run (30 iterations each on the demo data)')
    p.add_argument('--warmup', type=int, default=10, help='iterations left out at the start')
    p.add_argument('--teacher_weights', default=None, help='default: the demo teacher of bench/demo_seeds.py')
    p.add_argument('--work_dir', default=os.path.join(ROOT, 'output', 'bench_throughput'))
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'throughput'))
    p.add_argument('--ppdet_child', default=None, help=argparse.SUPPRESS)
    p.add_argument('-o', '--opt', nargs='*', default=[], help='extra overrides for every run')
    args = p.parse_args()
    if args.ppdet_child:
        return run_ppdet(args.ppdet_child, args.teacher_weights, args.opt)
    os.makedirs(args.work_dir, exist_ok=True)
    data = ensure_demo_data(os.path.join(args.work_dir, 'shapes'))
    weights = args.teacher_weights or os.path.join(ROOT, 'output', 'bench_demo_seeds', 'teacher',
                                                   'model_final.pdparams')
    if not os.path.isfile(weights):
        sys.exit(f'error: teacher weights not found: {weights} (run bench/demo_seeds.py, or --teacher_weights)')
    args.batch_size = batch_size([f'dataset_dir={data}', *args.opt])
    results = []
    for setting in args.settings:  # settings outside, so that each mode's runs are spread over the session
        for mode in args.modes:
            results.append(measure(mode, setting, args, weights, data))
            r = results[-1]
            print(f'{mode} ({setting}): {r["images_per_s"]:.2f} images/s over {r["iterations"]} iterations',
                  flush=True)
    settings = {'cpu': cpu_model(), 'epochs': args.epochs, 'warmup': args.warmup, 'batch_size': args.batch_size,
                'student': os.path.relpath(DEMO_STUDENT, ROOT), 'distill': os.path.relpath(DISTILL, ROOT),
                'teacher': os.path.relpath(DEMO_TEACHER, ROOT), 'environments': {s: SETTINGS[s] for s in args.settings},
                'opt': args.opt}
    atomic_write_text(args.out + '.json', json.dumps({'settings': settings, 'results': results}, indent=1) + '\n')
    note = ('Images/s of the training loop users run (mean seconds an iteration), data wait and logging '
            f'included, {args.epochs} epochs of the demo data at batch {args.batch_size}, the first {args.warmup} '
            f'iterations left out; each run its own process, one after another. CPU: {settings["cpu"]}. '
            "default: every core with ppkd's wait-policy tuner (ppdet's loop has none); previous: every core, "
            "KMP_BLOCKTIME=200 (Intel OpenMP's default, which turns the tuner off); one_thread: "
            'OMP_NUM_THREADS=1; blocktime0: KMP_BLOCKTIME=0. Wait policies ppkd chose: '
            + ', '.join(f'{r["mode"]}/{r["setting"]}: {r["wait_policy"]}' for r in results if r['wait_policy']))
    atomic_write_text(args.out + '.md', table(results, args.settings) + '\n\n' + note + '\n')
    print(table(results, args.settings))


if __name__ == '__main__':
    main()
