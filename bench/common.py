"""What the BCCD comparisons share: running a training command (once),
reading its metrics, and writing the results table."""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from ppkd.data.split import split_voc  # noqa: E402
from ppkd.utils import atomic_write_text  # noqa: E402

BCCD = os.path.normpath(os.path.join(ROOT, '..', 'shared', 'datasets', 'BCCD'))


def run(cmd, log, threads=None):
    """Seconds taken, and the `error:` line of a run that stopped (e.g. a
    diverged loss), which is a result to report, not a reason to stop.
    `threads`: the run's OpenMP threads (default: the environment's)."""
    start = time.time()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    with open(log, 'w') as f:
        code = subprocess.call([sys.executable] + cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    seconds = time.time() - start
    if code:
        with open(log) as f:
            errors = [line.strip() for line in f if line.startswith('error: ')]
        if not errors:
            sys.exit(f'error: {" ".join(cmd[:3])} failed (exit {code}), see {log}')
        return seconds, errors[-1][len('error: '):]
    return seconds, None


def _recorded_cmd(path):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def finished(cmd, out):
    """Whether `out` holds a finished run of `cmd`."""
    done = _recorded_cmd(os.path.join(out, 'bench_run.json'))
    return bool(done and done['cmd'] == cmd)


def run_once(cmd, out, threads=None):
    """`run`, unless `out` holds a finished run of the same command (its
    seconds and outcome are kept in out/bench_run.json). A run of the same
    command cut short (a session's end) goes on from its last snapshot,
    its earlier time counted from its log."""
    record, started = os.path.join(out, 'bench_run.json'), os.path.join(out, 'bench_cmd.json')
    done = _recorded_cmd(record)
    if done and done['cmd'] == cmd:
        return done['seconds'], done['error']
    snapshot, earlier = _cut_short(out) if _recorded_cmd(started) == cmd and not done else (None, 0.)
    if snapshot:
        print(f'{os.path.basename(out)}: going on from {snapshot}', flush=True)
        seconds, error = run([cmd[0], '-r', snapshot, *cmd[1:]], out + '.log', threads)
    else:
        for old in [out] + [os.path.join(os.path.dirname(out), f) for f in os.listdir(os.path.dirname(out))
                            if f.startswith(os.path.basename(out) + '.log.part')]:
            if os.path.exists(old):
                subprocess.call(['rm', '-rf', old])
        os.makedirs(out)
        atomic_write_text(started, json.dumps(cmd))
        seconds, error = run(cmd, out + '.log', threads)
    atomic_write_text(record, json.dumps({'cmd': cmd, 'seconds': seconds + earlier, 'error': error}))
    return seconds + earlier, error


def read_metrics(out_dir):
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if r['type'] == 'eval'], [r for r in rows if r['type'] == 'train']


def mean(xs):
    return sum(xs) / len(xs) if xs else float('nan')


def std(xs):
    """Sample standard deviation (n − 1); 0 for a single value."""
    if len(xs) < 2:
        return 0.
    m = mean(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


def paired_gain(runs, method, baseline, key='mAP'):
    """Per seed run by both, score(method) − score(baseline); with the mean,
    its standard error and whether it is a gain: mean > 2 × standard error,
    or positive on every seed, over at least 3 seeds (README's criterion)."""
    base = {r['seed']: r[key] for r in runs if r['method'] == baseline}
    diffs = {r['seed']: r[key] - base[r['seed']] for r in runs if r['method'] == method and r['seed'] in base}
    values = list(diffs.values())
    se = std(values) / len(values) ** 0.5 if values else float('nan')
    gain = bool(values) and len(values) >= 3 and (mean(values) > 2 * se or all(d > 0 for d in values))
    return {'per_seed': diffs, 'mean': mean(values), 'se': se, 'gain': gain}


def schedule(epochs, warmup_steps=50):
    """Warm-up, then a 10× drop for the last sixth of the epochs."""
    return [f'epoch={epochs}', 'LearningRate.schedulers=[{name: PiecewiseDecay, gamma: 0.1, milestones: [%d]},'
            ' {name: LinearWarmup, start_factor: 0.1, steps: %d}]' % (max(1, epochs - max(1, epochs // 6)), warmup_steps)]


def train_teacher(cfg, out, opts):
    """Train the teacher into `out` once; later runs reuse it. Returns its
    final evaluation record and training seconds."""
    weights = os.path.join(out, 'model_final.pdparams')
    if os.path.isfile(weights):
        _check_teacher_epochs(out, opts)
    else:
        os.makedirs(os.path.dirname(out), exist_ok=True)  # another bench's folder (a shared teacher) may not exist yet
        cmd = ['tools/train.py', '-c', cfg, '--eval', '--output_dir', out, '-o', *opts]
        snapshot, earlier = _cut_short(out)
        if snapshot:  # a run cut short (e.g. by a session's end) goes on from its last snapshot
            print(f'training the teacher on from {snapshot}', flush=True)
            cmd[1:1] = ['-r', snapshot]
        else:
            print('training the teacher', flush=True)
        seconds, error = run(cmd, out + '.log')
        if error:
            sys.exit(f'error: the teacher did not train: {error}')
        atomic_write_text(os.path.join(out, 'train_seconds'), f'{seconds + earlier:.0f}\n')
    evals, _ = read_metrics(out)
    with open(os.path.join(out, 'train_seconds')) as f:
        return evals[-1], float(f.read())


def _check_teacher_epochs(out, opts):
    """A finished teacher is reused only for the schedule it was trained
    on: a comparison asking for more epochs must not be handed a shorter
    teacher, nor its students' runs (whose commands name the same weights)."""
    asked = [int(o[len('epoch='):]) for o in opts if o.startswith('epoch=')]
    trained = max((r['epoch'] for rows in read_metrics(out) for r in rows), default=-1) + 1
    if asked and asked[-1] != trained:
        sys.exit(f'error: {out} holds a teacher trained {trained} epochs, not the {asked[-1]} asked for: '
                 'give this comparison its own --work_dir')


def _cut_short(out):
    """The last snapshot (`<epoch>.pdparams` + `.pdstate`) a run left
    without finishing, and the seconds its logs span (each kept as
    `<log>.part<k>`); (None, 0) when there is none."""
    epochs = sorted(int(f[:-len('.pdstate')]) for f in (os.listdir(out) if os.path.isdir(out) else [])
                    if f.endswith('.pdstate') and f[:-len('.pdstate')].isdigit())
    if not epochs or not os.path.isfile(out + '.log'):
        return None, 0.
    parts = 1 + sum(1 for f in os.listdir(os.path.dirname(out)) if f.startswith(os.path.basename(out) + '.log.part'))
    os.replace(out + '.log', f'{out}.log.part{parts}')
    seconds = 0.
    for k in range(1, parts + 1):
        with open(f'{out}.log.part{k}') as f:
            stamps = [time.mktime(time.strptime(line[1:20], '%Y-%m-%d %H:%M:%S')) for line in f
                      if line.startswith('[20') and line[20:21] == ',']
        seconds += stamps[-1] - stamps[0] if len(stamps) > 1 else 0.
    return os.path.join(out, str(epochs[-1])), seconds


def run_student(method, seed, cmd, out, classes, threads=None):
    """One student run (reused if done) as a result record."""
    seconds, error = run_once(cmd, out, threads)
    evals, train = read_metrics(out)
    final = evals[-1] if evals and not error else {'mAP': 0., 'per_class': {c: 0. for c in classes}}
    result = {'method': method, 'seed': seed, 'mAP': final['mAP'], 'error': error, 'images': final.get('images'),
              'best_mAP': max([e['mAP'] for e in evals] or [0.]), 'per_class': final['per_class'],
              'train_seconds': seconds, 'curve': [(e['iteration'], e['mAP']) for e in evals],
              'losses': {when: {k: v for k, v in train[i].items() if k.startswith(('det_loss', 'distill', 'loss'))}
                         for when, i in (('first', 0), ('last', -1))}}
    print(f'{method} seed {seed}: mAP {result["mAP"]:.2f} in {seconds:.0f} s'
          + (f' (stopped: {error})' if error else ''), flush=True)
    return result


def comparison_args(description, work_name, out_name, input_size, batch_size, teacher_epochs, student_epochs, seeds,
                    methods, labeled_fraction=None, workers=1):
    """The flags every BCCD comparison takes, with its own defaults."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--dataset', default=BCCD)
    p.add_argument('--work_dir', default=os.path.join(ROOT, 'output', work_name))
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', out_name))
    p.add_argument('--input_size', type=int, default=input_size)
    p.add_argument('--batch_size', type=int, default=batch_size)
    p.add_argument('--teacher_epochs', type=int, default=teacher_epochs)
    p.add_argument('--student_epochs', type=int, default=student_epochs)
    p.add_argument('--snapshot_epoch', type=int, default=2)
    p.add_argument('--seeds', type=int, nargs='+', default=seeds)
    p.add_argument('--methods', nargs='+', default=list(methods), choices=list(methods))
    p.add_argument('--baseline', default='no teacher', choices=list(methods),
                   help='the arm each other arm is paired with, seed by seed')
    p.add_argument('--labeled_fraction', type=float, default=labeled_fraction,
                   help='keep this share of trainval labelled, the rest unlabeled (tools/split_voc.py)')
    p.add_argument('--split_seed', type=int, default=0, help='seed of the labelled/unlabeled draw')
    p.add_argument('--workers', type=int, default=workers,
                   help='student runs at a time (each on its share of the CPU threads), in seed then method order')
    p.add_argument('-o', '--opt', nargs='*', default=[], help='extra overrides for the student runs')
    p.add_argument('--teacher_opt', nargs='*', default=[], help='extra overrides for the teacher run')
    p.add_argument('--finished_only', action='store_true',
                   help='train nothing: write the results of the runs of --methods × --seeds that have finished')
    return p


def cpu_model():
    """The CPU's model name and its vector extensions, for the results."""
    name, flags = '?', set()
    with open('/proc/cpuinfo') as f:
        for line in f:
            key, _, value = line.partition(':')
            if key.strip() == 'model name':
                name = value.strip()
            elif key.strip() == 'flags':
                flags = set(value.split())
    extensions = [f for f in ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_bf16') if f in flags]
    return f'{name}, {os.cpu_count()} cores, {" ".join(extensions) or "no AVX2"}'


def run_comparison(args, cfg_dir, teacher_cfg, teacher_dir, methods, teacher_label, title, warmup_steps=50):
    """Train (or reuse) the teacher, then every method × seed (`args.workers`
    at a time), seed by seed so a cut-short run still compares every
    method; `methods` maps a name to (script, config, extra overrides).
    Results go to `args.out`.{md,json,png}, rewritten as each run ends."""
    # Students side by side each take their share of the cores; the teacher, trained alone, all of them.
    threads = max(1, (os.cpu_count() or 1) // args.workers) if args.workers > 1 else None
    os.makedirs(args.work_dir, exist_ok=True)
    lists = os.path.join(args.work_dir, 'lists')
    split_voc(args.dataset, imagesets=('trainval', 'test'), out_dir=lists, seed=args.split_seed,
              labeled_fraction=args.labeled_fraction)
    args.cpu = cpu_model()
    common = [f'dataset_dir={lists}', f'input_size={args.input_size}', f'TrainReader.batch_size={args.batch_size}',
              f'snapshot_epoch={args.snapshot_epoch}', 'worker_num=2']
    teacher_dir = os.path.join(args.work_dir, teacher_dir)
    teacher_cfg = os.path.join(cfg_dir, teacher_cfg)
    if args.finished_only and not os.path.isfile(os.path.join(teacher_dir, 'model_final.pdparams')):
        sys.exit(f'error: --finished_only: no trained teacher in {teacher_dir}')
    teacher_eval, teacher_seconds = train_teacher(teacher_cfg, teacher_dir,
                                                  [*common, *schedule(args.teacher_epochs, warmup_steps),
                                                   *args.teacher_opt])
    results = {'settings': vars(args), 'teacher': {'mAP': teacher_eval['mAP'], 'per_class': teacher_eval['per_class'],
                                                   'train_seconds': teacher_seconds}, 'runs': []}
    print(f'teacher: mAP {teacher_eval["mAP"]:.2f}', flush=True)
    jobs = []
    for seed in args.seeds:
        for method in args.methods:
            script, cfg, extra = methods[method]
            run_name = method.replace(' ', '_').replace('=', '').replace('+', 'and')
            run_dir = os.path.join(args.work_dir, f'{run_name}_seed{seed}')
            cmd = [script, '-c', os.path.join(cfg_dir, cfg), '--eval', '--seed', str(seed), '--output_dir', run_dir]
            if script.startswith('slim'):
                cmd += ['-t', teacher_cfg, '--teacher_pretrained', os.path.join(teacher_dir, 'model_final.pdparams')]
            cmd += ['-o', *common, *schedule(args.student_epochs, warmup_steps), *extra, *args.opt]
            if not args.finished_only or finished(cmd, run_dir):
                jobs.append((method, seed, cmd, run_dir))
    if args.finished_only and not jobs:
        sys.exit(f'error: --finished_only: none of these runs has finished in {args.work_dir}')
    order = [(seed, method) for seed in args.seeds for method in args.methods]
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_student, *job, teacher_eval['per_class'], threads) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            results['runs'].append(future.result())
            results['runs'].sort(key=lambda r: order.index((r['seed'], r['method'])))
            write(results, args.out, f'{teacher_label}, {args.teacher_epochs} epochs', title, args.baseline)


def write(results, out, teacher_label, title, baseline='no teacher'):
    """The results as a Markdown table (out.md), JSON (out.json) and mAP
    curves (out.png): per arm mean ± std over seeds, and the paired
    difference to `baseline` on each seed."""
    classes = list(results['teacher']['per_class'])
    head = ['model', 'seeds', 'mAP mean ± std', 'mAP per seed', f'Δ vs {baseline} per seed', 'Δ mean ± s.e.',
            'gain', *classes, 'train s (mean)']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    t = results['teacher']
    lines.append('| teacher %s | 1 | %.2f | %.2f |  |  |  | %s | %.0f |' % (
        teacher_label, t['mAP'], t['mAP'], ' | '.join('%.2f' % t['per_class'][c] for c in classes), t['train_seconds']))
    results['paired'] = {}
    for method in dict.fromkeys(r['method'] for r in results['runs']):
        rs = [r for r in results['runs'] if r['method'] == method]
        maps = [r['mAP'] for r in rs]
        if method == baseline:
            delta = ('', '', '')
        else:
            paired = results['paired'][method] = paired_gain(results['runs'], method, baseline)
            delta = (', '.join('%+.2f' % d for d in paired['per_seed'].values()),
                     '%+.2f ± %.2f' % (paired['mean'], paired['se']), 'yes' if paired['gain'] else 'no')
        lines.append('| student, %s | %d | %.2f ± %.2f | %s | %s | %s | %s | %s | %.0f |' % (
            method, len(rs), mean(maps), std(maps),
            ', '.join('%.2f' % r['mAP'] + (' (stopped)' if r.get('error') else '') for r in rs), *delta,
            ' | '.join('%.2f' % mean([r['per_class'][c] for r in rs]) for c in classes),
            mean([r['train_seconds'] for r in rs])))
    lines += ['', 'Loss scale, first → last logged iteration (distillation = total − detection, weighted):', '',
              '| run | detection loss | distillation |', '|---|---|---|']
    for r in results['runs']:
        f, l = r['losses']['first'], r['losses']['last']
        det = '%.1f → %.1f' % (f.get('det_loss', f['loss']), l.get('det_loss', l['loss']))
        dis = ('%.1f → %.1f' % (f['loss'] - f['det_loss'], l['loss'] - l['det_loss'])) if 'det_loss' in f else '—'
        lines.append(f'| {r["method"]}, seed {r["seed"]} | {det} | {dis} |')
    stopped = [r for r in results['runs'] if r.get('error')]
    if stopped:
        lines += ['', 'Runs that stopped (counted as 0 mAP):', '']
        lines += [f'- {r["method"]}, seed {r["seed"]}: {r["error"]}' for r in stopped]
    s = results['settings']
    split = s.get('data') or ('BCCD official split (trainval 292 / test 72)' if not s.get('labeled_fraction') else
                              f'BCCD official split, {s["labeled_fraction"]:.0%} of trainval labelled (teacher and '
                              'every student), the rest unlabeled (used by the unlabeled arms only), test 72')
    note = (f'\n{split}, input {s["input_size"]} px, batch {s["batch_size"]}, '
            f'teacher {s["teacher_epochs"]} epochs, students {s["student_epochs"]} epochs, from scratch, '
            'VOC mAP@0.5 11-point (%), last snapshot; per-class AP is the mean over seeds. Same seed = same '
            'student initialisation and labelled data order in every arm. Gain: mean paired Δ > 2 × its '
            'standard error, or Δ > 0 on every seed (≥ 3 seeds). Test images scored per run: '
            + ', '.join(str(n) for n in sorted({r.get('images') for r in results['runs']}, key=str))
            + f'. {s.get("workers", 1)} run(s) at a time. CPU: ' + s.get('cpu', '?') + '.\n')
    atomic_write_text(out + '.md', '\n'.join(lines) + '\n' + note)
    atomic_write_text(out + '.json', json.dumps(results, indent=1) + '\n')
    save_curves(results['runs'], out + '.png', 'mAP@0.5 (%)', title)
    print('\n'.join(lines))


def save_curves(runs, path, ylabel, title, reference=None):
    """Each run's evaluations against iteration, one colour per method (a
    dotted line at `reference`, e.g. the teacher's final score)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {m: f'C{i}' for i, m in enumerate(dict.fromkeys(r['method'] for r in runs))}
    for r in runs:
        if not r['curve']:
            continue
        xs, ys = zip(*r['curve'])
        first = r is next(x for x in runs if x['method'] == r['method'])
        ax.plot(xs, ys, marker='o', color=colours[r['method']], alpha=0.8, label=r['method'] if first else None)
    if reference is not None:
        ax.axhline(reference, color='k', linestyle=':', label='teacher (final)')
    ax.set_xlabel('iteration')
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + '.tmp', format='png')
    os.replace(path + '.tmp', path)

