"""Semantic segmentation on CamVid: a DeepLabV3+ ResNet-18 teacher, then a
DeepLabV3+ MobileNetV2 student with no teacher, pixel KD, FitNet and
knowledge adaptation (auto-encoder first), same schedule, several seeds.

    .venv/bin/python bench/camvid_ka.py [--seeds 0 1] [--workers 2] [--size 120 160]

Images are scaled to --size (height, width) for training and inference and
scored at their own 360×480 on the test split (233 images), mIoU over the
11 classes (void ignored). Writes bench/results/camvid_ka.{md,json,png}
and a picture of test frames (image / truth / teacher / baseline / KA).
The teacher, the auto-encoder and finished runs are reused by later runs.
With --workers 2 two runs train side by side on one thread each (the
timings are then of a shared machine; the scores are unaffected).
"""
import argparse
import concurrent.futures
import json
import os
import sys

from common import ROOT, cpu_model, mean, paired_gain, read_metrics, run, run_once, save_curves, std

sys.path.insert(0, ROOT)
from ppkd.utils import atomic_write_text  # noqa: E402

CAMVID = os.path.normpath(os.path.join(ROOT, '..', 'shared', 'datasets', 'CamVid'))
CFG = os.path.join(ROOT, 'configs', 'camvid')
TEACHER_CFG = os.path.join(CFG, 'teacher_deeplabv3p_resnet18.yml')
STUDENT_CFG = os.path.join(CFG, 'student_deeplabv3p_mobilenetv2.yml')
METHODS = {
    'no teacher': ('tools/train.py', 'student_deeplabv3p_mobilenetv2.yml', []),
    'pixel KD (T 2)': ('slim/distillation/distill.py', 'distill_pixel_kd.yml', []),
    'FitNet': ('slim/distillation/distill.py', 'distill_fitnet.yml', []),
    'knowledge adaptation': ('slim/distillation/distill.py', 'distill_ka.yml', []),
    # The paper's β makes the adaptation term ~25× the student's own loss at the start: a lighter one.
    'knowledge adaptation, beta 5': ('slim/distillation/distill.py', 'distill_ka.yml',
                                     ['KnowledgeAdaptation.adaptation_weight=5']),
}


def run_name(method):
    """`pixel KD (T 2)` → `pixel_KD`; `knowledge adaptation, beta 5` → `knowledge_adaptation_beta_5`."""
    return method.split(' (')[0].replace(', ', '_').replace(' ', '_')


def size_opts(height, width):
    """Training: a random scale of ×0.75–1.125 the target size (CamVid's
    360×480 scaled), padded or cropped to it; test: resized to it."""
    base = min(height / 360., width / 480.)
    low, high, step = 0.75 * base, 1.125 * base, 0.1875 * base
    return [f'train_dataset.transforms=[{{type: ResizeStepScaling, min_scale_factor: {low:.4g}, '
            f'max_scale_factor: {high:.4g}, scale_step_size: {step:.4g}}}, '
            f'{{type: RandomPaddingCrop, crop_size: [{width}, {height}]}}, {{type: RandomHorizontalFlip}}, '
            f'{{type: Normalize}}]',
            f'val_dataset.transforms=[{{type: Resize, target_size: [{width}, {height}]}}, {{type: Normalize}}]']


def summarise(method, seed, out, seconds, error, classes):
    evals, train = read_metrics(out)
    final = evals[-1] if evals and not error else {'mIoU': 0., 'per_class': {c: 0. for c in classes},
                                                   'pixel_accuracy': 0.}
    first, last = (train[0], train[-1]) if train else ({}, {})
    return {'method': method, 'seed': seed, 'mIoU': final['mIoU'], 'pixel_accuracy': final['pixel_accuracy'],
            'per_class': final['per_class'], 'error': error, 'train_seconds': seconds, 'images': final.get('images'),
            'curve': [(e['iteration'], e['mIoU']) for e in evals],
            'losses': {'first': _loss_terms(first), 'last': _loss_terms(last)}}


def _loss_terms(row):
    """The student's loss and the distillation terms (on raw images too) of a training log row."""
    return {k: v for k, v in row.items() if 'loss' in k or k.startswith(('pixel_kd', 'fitnet', 'ka_adaptation', 'ka_affinity'))}


TRAINING = ('trained at {}×{} (random scale ×0.75–1.125 of that, pad or crop, flip), tested resized to it and scored '
            'at 360×480 (logits resized back), from scratch (no pretrained weights), batch {}, poly LR 0.05, momentum 0.9.')
SCORING = ('mIoU (%) of the last snapshot; per-class IoU is the mean over seeds. Same seed = same student '
           'initialisation and data order in every arm. Gain (at least 3 seeds): mean Δ > 2 × s.e., or Δ > 0 on '
           'every seed.')


def write(results, out, note, title='CamVid: DeepLabV3+ MobileNetV2 student, per seed'):
    """The table (teacher, then each arm over its seeds, paired with no
    teacher), the loss terms, `note(settings)` under them, the curves."""
    classes = list(results['teacher']['per_class'])
    short = [c[:5] for c in classes]
    head = ['model', 'seeds', 'mIoU mean ± std', 'mIoU per seed', 'Δ vs no teacher per seed', 'Δ mean ± s.e.',
            'gain', 'pixel acc.', *short, 'train s']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    t = results['teacher']
    lines.append('| teacher (DeepLabV3+ ResNet-18-vd) | 1 | %.2f | %.2f |  |  |  | %.2f | %s | %.0f |' % (
        t['mIoU'], t['mIoU'], t['pixel_accuracy'], ' | '.join('%.1f' % t['per_class'][c] for c in classes),
        t['train_seconds']))
    results['paired'] = {}
    for method in dict.fromkeys(r['method'] for r in results['runs']):
        rs = [r for r in results['runs'] if r['method'] == method]
        values = [r['mIoU'] for r in rs]
        delta = ('', '', '')
        if method != 'no teacher':
            p = results['paired'][method] = paired_gain(results['runs'], method, 'no teacher', key='mIoU')
            delta = (', '.join('%+.2f' % d for d in p['per_seed'].values()), '%+.2f ± %.2f' % (p['mean'], p['se']),
                     'yes' if p['gain'] else 'no')
        lines.append('| student, %s | %d | %.2f ± %.2f | %s | %s | %s | %s | %.2f | %s | %.0f |' % (
            method, len(rs), mean(values), std(values),
            ', '.join('%.2f' % r['mIoU'] + (' (stopped)' if r['error'] else '') for r in rs), *delta,
            mean([r['pixel_accuracy'] for r in rs]),
            ' | '.join('%.1f' % mean([r['per_class'][c] for r in rs]) for c in classes),
            mean([r['train_seconds'] for r in rs])))
    lines += ['', 'Loss terms, first → last logged iteration (weighted as trained):', '',
              '| run | student loss | distillation terms |', '|---|---|---|']
    for r in results['runs']:
        f, l = r['losses']['first'], r['losses']['last']
        own = 'task_loss' if 'task_loss' in f else 'loss'
        terms = ', '.join(f'{k} {f[k]:.3g} → {l.get(k, float("nan")):.3g}' for k in f
                          if k not in ('loss', 'task_loss', 'seg_loss'))
        lines.append(f'| {r["method"]}, seed {r["seed"]} | {f.get(own, 0):.3g} → {l.get(own, 0):.3g} | {terms or "—"} |')
    lines += ['', note(results['settings'])]
    atomic_write_text(out + '.md', '\n'.join(lines) + '\n')
    atomic_write_text(out + '.json', json.dumps(results, indent=1) + '\n')
    save_curves(results['runs'], out + '.png', 'mIoU (%)', title, reference=t['mIoU'])
    print('\n'.join(lines), flush=True)


def settings_note(s):
    return (f'CamVid (367 train / 233 test images, 11 classes, void ignored), {TRAINING.format(*s["size"], s["batch_size"])} '
            f'Teacher {s["teacher_iters"]} iterations, students {s["student_iters"]}. {SCORING} '
            f'Auto-encoder: {s["autoencoder"]}. {s["workers"]} run(s) at a time. CPU: {s["cpu"]}.')


# CamVid's usual colours, in labels.txt order; ignored pixels black.
PALETTE = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
           (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]


def picture(models, common, out, frames=(0, 60, 120, 180)):
    """A PNG of test frames: image / ground truth / each model's prediction
    side by side (rows: frames), models as [(name, config, weights)]."""
    import cv2
    import numpy as np
    import paddle
    from paddleseg.core import infer
    from ppkd import config as cfgmod
    from ppkd.tasks import task_of
    from ppkd.teacher import load_weights
    from ppkd.utils import atomic_write_png
    palette = np.zeros((256, 3), np.uint8)
    palette[:len(PALETTE)] = np.array(PALETTE, np.uint8)[:, ::-1]  # BGR for cv2
    columns = {}
    for name, config, weights in models:
        cfg = cfgmod.load_config(config, common)
        task = task_of(cfg)
        model = task.build_model()
        load_weights(model, weights, role=name)
        model.eval()
        reader = task.eval_reader()
        for k in frames:
            data = reader.dataset[k]
            with paddle.no_grad():
                pred, _ = infer.inference(model, paddle.to_tensor(data['img'][None]), trans_info=data['trans_info'])
            columns.setdefault(k, {})[name] = palette[pred.numpy()[0, 0].astype(np.int64)]
            if 'image' not in columns[k]:
                image, label = reader.dataset.read(k)
                columns[k]['image'], columns[k]['ground truth'] = image.astype(np.uint8), palette[label]
    names = ['image', 'ground truth'] + [name for name, _, _ in models]
    h, w = 180, 240
    header = np.full((22, w * len(names), 3), 255, np.uint8)
    for i, name in enumerate(names):
        cv2.putText(header, name, (i * w + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    rows = [np.concatenate([cv2.resize(columns[k][n], (w, h), interpolation=cv2.INTER_NEAREST) for n in names], 1)
            for k in frames]
    atomic_write_png(out, np.concatenate([header, *rows], 0))


def run_students(jobs, results, methods, workers, save):
    """Run `jobs` ((method, seed, command, run folder), finished ones
    reused) `workers` at a time; as each ends, its summary joins
    results['runs'] (in `methods` order, then seed) and `save()` rewrites
    the results."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_once, cmd, run_dir): (method, seed, run_dir) for method, seed, cmd, run_dir in jobs}
        for future in concurrent.futures.as_completed(futures):
            method, seed, run_dir = futures[future]
            seconds, error = future.result()
            results['runs'].append(summarise(method, seed, run_dir, seconds, error, list(results['teacher']['per_class'])))
            print(f'{method} seed {seed}: mIoU {results["runs"][-1]["mIoU"]:.2f} in {seconds:.0f} s', flush=True)
            results['runs'].sort(key=lambda r: (methods.index(r['method']), r['seed']))
            save()


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--dataset', default=CAMVID)
    p.add_argument('--work_dir', default=os.path.join(ROOT, 'output', 'bench_camvid'))
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'camvid_ka'))
    p.add_argument('--size', type=int, nargs=2, default=[120, 160], metavar=('HEIGHT', 'WIDTH'))
    p.add_argument('--batch_size', type=int, default=4)
    p.add_argument('--teacher_iters', type=int, default=1600)
    p.add_argument('--student_iters', type=int, default=600)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])  # the committed results: --seeds 0 1
    p.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    p.add_argument('--workers', type=int, default=2, help='runs at a time (each on CPU threads / workers)')
    p.add_argument('-o', '--opt', nargs='*', default=[], help='extra overrides for the student runs')
    args = p.parse_args()
    if args.workers > 1:
        os.environ['OMP_NUM_THREADS'] = str(max(1, (os.cpu_count() or 1) // args.workers))
    os.makedirs(args.work_dir, exist_ok=True)
    common = [f'dataset_dir={args.dataset}', f'batch_size={args.batch_size}', *size_opts(*args.size)]
    teacher_dir = os.path.join(args.work_dir, 'teacher')
    teacher_cmd = ['tools/train.py', '-c', TEACHER_CFG, '--output_dir', teacher_dir, '--eval', '--seed', '0',
                   '-o', *common, f'iters={args.teacher_iters}', 'snapshot_epoch=5']
    print('teacher', flush=True)
    teacher_seconds, error = run_once(teacher_cmd, teacher_dir)
    if error:
        sys.exit(f'error: the teacher did not train: {error}')
    evals, _ = read_metrics(teacher_dir)
    teacher = dict(evals[-1], train_seconds=teacher_seconds)
    teacher_weights = os.path.join(teacher_dir, 'model_final.pdparams')
    autoencoder = os.path.join(args.work_dir, 'autoencoder.pdparams')
    ka_opts = [f'KnowledgeAdaptation.autoencoder={autoencoder}']
    teacher_args = ['-t', TEACHER_CFG, '--teacher_pretrained', teacher_weights, '--teacher_opt', *common]
    if 'knowledge adaptation' in args.methods and not os.path.isfile(autoencoder):
        print('auto-encoder', flush=True)
        _, error = run(['tools/train_autoencoder.py', '-c', os.path.join(CFG, 'distill_ka.yml'), *teacher_args,
                        '-o', *common, *ka_opts], os.path.join(args.work_dir, 'autoencoder.log'))
        if error:
            sys.exit(f'error: the auto-encoder did not train: {error}')
    args.cpu = cpu_model()
    args.autoencoder = 'one pass over the training set (lr 0.1, weight decay 1e-4, α 1e-7, strides 1-2-1, inputs scaled by the teacher feature\'s RMS)'
    results = {'settings': vars(args), 'teacher': teacher, 'runs': []}
    jobs = []
    for seed in args.seeds:
        for method in args.methods:
            script, cfg, extra = METHODS[method]
            run_dir = os.path.join(args.work_dir, f'{run_name(method)}_seed{seed}')
            cmd = [script, '-c', os.path.join(CFG, cfg), '--eval', '--seed', str(seed), '--output_dir', run_dir]
            if script.startswith('slim'):
                cmd += teacher_args
            cmd += ['-o', *common, f'iters={args.student_iters}', 'snapshot_epoch=4', *extra, *ka_opts, *args.opt]
            jobs.append((method, seed, cmd, run_dir))
    run_students(jobs, results, list(METHODS), args.workers, lambda: write(results, args.out, settings_note))
    seed = args.seeds[0]
    shown = [('teacher', TEACHER_CFG, teacher_weights)] + [
        (method, os.path.join(CFG, METHODS[method][1]), os.path.join(run_dir, 'model_final.pdparams'))
        for method, run_seed, _, run_dir in jobs if run_seed == seed and method in ('no teacher', 'knowledge adaptation')]
    picture(shown, common, args.out + '_frames.png')


if __name__ == '__main__':
    main()
