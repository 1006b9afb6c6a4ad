"""Segmentation distillation on unlabeled images, CamVid: a quarter of the
training images keep their masks, the rest are raw images. A DeepLabV3+
ResNet-18 teacher trains on the labelled quarter; a DeepLabV3+ MobileNetV2
student trains on it alone, or with pixel KD or knowledge adaptation
(auto-encoder trained first, on the labelled images) from the teacher on
the labelled and the unlabeled images (`distill.unlabeled`), same
schedule, several seeds.

    .venv/bin/python bench/camvid_unlabeled.py [--seeds 0 1 2] [--workers 2] [--labeled_fraction 0.25]

Writes bench/results/camvid_unlabeled.{md,json,png} and a picture of test
frames (image / truth / teacher / student alone / distilled). The lists,
the teacher and finished runs are reused by later runs.
"""
import argparse
import os
import sys

import numpy as np

from camvid_ka import (CAMVID, CFG, SCORING, STUDENT_CFG, TEACHER_CFG, TRAINING, picture, run_students, size_opts,
                       write)
from common import ROOT, cpu_model, read_metrics, run, run_once

sys.path.insert(0, ROOT)
from ppkd.utils import atomic_write_text  # noqa: E402

KA_CFG = os.path.join(CFG, 'distill_ka_unlabeled.yml')
METHODS = {
    'no teacher': ('tools/train.py', STUDENT_CFG),
    'pixel KD, labelled + unlabeled': ('slim/distillation/distill.py', os.path.join(CFG, 'distill_pixel_kd_unlabeled.yml')),
    'knowledge adaptation, labelled + unlabeled': ('slim/distillation/distill.py', KA_CFG),
}
# The labelled quarter is 23 batches: 4 passes give the auto-encoder as many steps as one pass of the full set.
AUTOENCODER_EPOCHS = 4


def write_lists(dataset, fraction, out_dir):
    """`labeled.txt` (a seeded `fraction` of train.txt, `image mask` lines
    under the data set's root) and `unlabeled.txt` (the other images, one
    absolute path a line); the same split for every arm and seed."""
    with open(os.path.join(dataset, 'train.txt')) as f:
        lines = [line.strip() for line in f if line.strip()]
    chosen = set(np.random.RandomState(0).permutation(len(lines))[:round(fraction * len(lines))].tolist())
    os.makedirs(out_dir, exist_ok=True)
    labeled, unlabeled = os.path.join(out_dir, 'labeled.txt'), os.path.join(out_dir, 'unlabeled.txt')
    atomic_write_text(labeled, ''.join(lines[i] + '\n' for i in sorted(chosen)))
    atomic_write_text(unlabeled, ''.join(os.path.join(dataset, lines[i].split()[0]) + '\n'
                                         for i in range(len(lines)) if i not in chosen))
    return labeled, unlabeled, len(chosen), len(lines) - len(chosen)


def data_opts(dataset, labeled, size):
    """The labelled list for training, CamVid's test split for evaluation."""
    return [f'train_dataset.dataset_root={dataset}', f'train_dataset.train_path={labeled}',
            f'val_dataset.dataset_root={dataset}', f'val_dataset.val_path={os.path.join(dataset, "test.txt")}',
            *size_opts(*size)]


def settings_note(s):
    return (f'CamVid, {s["labeled_images"]} of its 367 training images with their masks (a seeded '
            f'{100 * s["labeled_fraction"]:.0f} %, the same for teacher and students), the other '
            f'{s["unlabeled_images"]} as raw images (read by the distilled arm only, batch {s["batch_size"]} beside '
            f'each labelled batch); test: the 233 test images. {TRAINING.format(*s["size"], s["batch_size"])} '
            f'Teacher {s["teacher_iters"]} iterations, students {s["student_iters"]}. Pixel KD: temperature 1, '
            f'weight 1 on labelled and on raw images. Knowledge adaptation: β 1, γ 1, weight 1 on labelled and on '
            f'raw images; its auto-encoder trained for {AUTOENCODER_EPOCHS} passes over the labelled images '
            f'(lr 0.1, α 1e-7, strides 1-2-1). {SCORING} (The raw images are augmented from the same '
            f'random stream, so the two arms\' augmentations differ after the first step.) '
            f'{s["workers"]} run(s) at a time. CPU: {s["cpu"]}.')


def teacher_command(work_dir, common, iters):
    out = os.path.join(work_dir, 'teacher')
    return ['tools/train.py', '-c', TEACHER_CFG, '--output_dir', out, '--eval', '--seed', '0',
            '-o', *common, f'iters={iters}', 'snapshot_epoch=10'], out


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--dataset', default=CAMVID)
    p.add_argument('--work_dir', default=os.path.join(ROOT, 'output', 'bench_camvid_unlabeled'))
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'camvid_unlabeled'))
    p.add_argument('--labeled_fraction', type=float, default=0.25)
    p.add_argument('--size', type=int, nargs=2, default=[120, 160], metavar=('HEIGHT', 'WIDTH'))
    p.add_argument('--batch_size', type=int, default=4)
    p.add_argument('--teacher_iters', type=int, default=1600)
    p.add_argument('--student_iters', type=int, default=600)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--workers', type=int, default=2, help='runs at a time (each on CPU threads / workers)')
    p.add_argument('--teacher_only', action='store_true', help='train (or reuse) the teacher and stop')
    args = p.parse_args()
    if args.workers > 1:
        os.environ['OMP_NUM_THREADS'] = str(max(1, (os.cpu_count() or 1) // args.workers))
    labeled, unlabeled, args.labeled_images, args.unlabeled_images = write_lists(
        args.dataset, args.labeled_fraction, os.path.join(args.work_dir, 'lists'))
    common = [f'batch_size={args.batch_size}', *data_opts(args.dataset, labeled, args.size)]
    teacher_cmd, teacher_dir = teacher_command(args.work_dir, common, args.teacher_iters)
    print('teacher', flush=True)
    teacher_seconds, error = run_once(teacher_cmd, teacher_dir)
    if error:
        sys.exit(f'error: the teacher did not train: {error}')
    if args.teacher_only:
        return
    evals, _ = read_metrics(teacher_dir)
    teacher = dict(evals[-1], train_seconds=teacher_seconds)
    teacher_weights = os.path.join(teacher_dir, 'model_final.pdparams')
    teacher_args = ['-t', TEACHER_CFG, '--teacher_pretrained', teacher_weights, '--teacher_opt', *common]
    autoencoder = os.path.join(args.work_dir, 'autoencoder.pdparams')
    ka_opts = [f'KnowledgeAdaptation.autoencoder={autoencoder}']
    if not os.path.isfile(autoencoder):
        print('auto-encoder', flush=True)
        _, error = run(['tools/train_autoencoder.py', '-c', KA_CFG, *teacher_args, '-o', *common, *ka_opts,
                        f'KnowledgeAdaptation.autoencoder_training.epochs={AUTOENCODER_EPOCHS}'],
                       os.path.join(args.work_dir, 'autoencoder.log'))
        if error:
            sys.exit(f'error: the auto-encoder did not train: {error}')
    args.cpu = cpu_model()
    results = {'settings': vars(args), 'teacher': teacher, 'runs': []}
    jobs = []
    for seed in args.seeds:
        for method, (script, cfg) in METHODS.items():
            run_dir = os.path.join(args.work_dir, f'{method.split(",")[0].replace(" ", "_")}_seed{seed}')
            cmd = [script, '-c', cfg, '--eval', '--seed', str(seed), '--output_dir', run_dir]
            if script.startswith('slim'):
                cmd += teacher_args
            cmd += ['-o', *common, f'iters={args.student_iters}', 'snapshot_epoch=5']
            if script.startswith('slim'):
                cmd.append(f'distill.unlabeled.image_list={unlabeled}')
            if cfg == KA_CFG:
                cmd += ka_opts
            jobs.append((method, seed, cmd, run_dir))
    run_students(jobs, results, list(METHODS), args.workers, lambda: write(
        results, args.out, settings_note, 'CamVid, a quarter labelled: DeepLabV3+ MobileNetV2 student, per seed'))
    seed = args.seeds[0]
    shown = [('teacher', TEACHER_CFG, teacher_weights)] + [
        (method, cmd[2], os.path.join(run_dir, 'model_final.pdparams'))
        for method, run_seed, cmd, run_dir in jobs if run_seed == seed]
    picture(shown, common, args.out + '_frames.png')


if __name__ == '__main__':
    main()
