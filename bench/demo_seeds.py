"""The demo on several seeds: one demo teacher, then the baseline student
and the distilled student of `make demo` for each seed (same data, same
teacher), with mean ± std and the paired difference per seed.

    .venv/bin/python bench/demo_seeds.py [--seeds 0 1 2] [-o key=value ...]

Writes bench/results/demo_seeds.{md,json,png}; the final mAP of every run
is scored over the whole test list by tools/eval.py. The teacher and
finished runs are reused by later runs.
"""
import argparse
import json
import os
import sys

from common import ROOT, cpu_model, run_student, train_teacher, write

sys.path.insert(0, ROOT)
from ppkd import config as cfgmod  # noqa: E402
from ppkd.cli import main_guard  # noqa: E402
from ppkd.utils import atomic_write_text  # noqa: E402

DEMO = os.path.join(ROOT, 'configs', 'demo')
sys.path.insert(0, os.path.join(ROOT, 'tools'))
from demo import DEMO_DATA, DEMO_STUDENT, DEMO_TEACHER, ensure_demo_data, evaluate_run  # noqa: E402

METHODS = {
    'no teacher': ('tools/train.py', 'student_yolov3_mobilenet_v1_x0.5.yml', []),
    'fine-grained': ('slim/distillation/distill.py', 'distill_fine_grained.yml', []),
    'fine-grained + unlabeled': ('slim/distillation/distill.py', 'distill_unlabeled.yml', []),
    # The teacher on the unlabeled images only: on labelled ones the ground truth is the better target.
    'fine-grained, unlabeled images only': ('slim/distillation/distill.py', 'distill_unlabeled.yml',
                                            ['distill.labeled_weight=0']),
    'feature imitation (FGFI)': ('slim/distillation/distill.py', 'distill_fgfi.yml', []),
}


def final_scores(cfg, run_dir, data):
    """The run's final weights scored by tools/eval.py with today's evaluator
    (every test image), cached beside the run: runs made before the
    evaluator scored the last incomplete batch compare like with like."""
    cache = os.path.join(run_dir, 'final_eval.json')
    if not os.path.isfile(cache):
        result = evaluate_run(cfg, os.path.join(run_dir, 'model_final.pdparams'), [f'dataset_dir={data}'],
                              run_dir + '.final_eval.log')
        atomic_write_text(cache, json.dumps(result))
    with open(cache) as f:
        return json.load(f)


@main_guard
def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--work_dir', default=os.path.join(ROOT, 'output', 'bench_demo_seeds'))
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'demo_seeds'))
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    p.add_argument('-o', '--opt', nargs='*', default=[], help='extra overrides for the student runs')
    p.add_argument('--reuse_only', action='store_true',
                   help='tabulate the finished runs only; start none (arms may then have fewer seeds)')
    args = p.parse_args()
    data = ensure_demo_data(os.path.join(args.work_dir, 'shapes'))
    common = [f'dataset_dir={data}']
    teacher_cfg = DEMO_TEACHER
    teacher_dir = os.path.join(args.work_dir, 'teacher')
    teacher_eval, teacher_seconds = train_teacher(teacher_cfg, teacher_dir, common)
    teacher_eval = final_scores(teacher_cfg, teacher_dir, data)
    n_test = round(DEMO_DATA['num_images'] * DEMO_DATA['test_ratio'])
    epochs = {role: cfgmod.load_config(cfg, common)['epoch'] for role, cfg in (('teacher', teacher_cfg),
                                                                              ('student', DEMO_STUDENT))}
    settings = {**vars(args), 'cpu': cpu_model(), 'input_size': 128, 'batch_size': 8,
                'teacher_epochs': epochs['teacher'], 'student_epochs': epochs['student'],
                'teacher': os.path.relpath(teacher_cfg, ROOT),
                'student': os.path.relpath(DEMO_STUDENT, ROOT),
                'data': f'the demo\'s generated shapes ({DEMO_DATA["num_images"]} labelled images: '
                        f'{DEMO_DATA["num_images"] - n_test} train / {n_test} test, '
                        f'{DEMO_DATA["num_unlabeled"]} unlabeled, objects ≥ {DEMO_DATA["min_size"]} px of 160)'}
    results = {'settings': settings, 'teacher': {'mAP': teacher_eval['mAP'], 'per_class': teacher_eval['per_class'],
                                                 'train_seconds': teacher_seconds}, 'runs': []}
    for seed in args.seeds:
        for method in args.methods:
            script, cfg, extra = METHODS[method]
            run_dir = os.path.join(args.work_dir, f'{method.replace(" ", "_").replace(",", "").replace("+", "and")}'
                                                  f'_seed{seed}')
            cmd = [script, '-c', os.path.join(DEMO, cfg), '--eval', '--seed', str(seed), '--output_dir', run_dir]
            if script.startswith('slim'):
                cmd += ['-t', teacher_cfg, '--teacher_pretrained', os.path.join(teacher_dir, 'model_final.pdparams')]
            cmd += ['-o', *common, *extra, *args.opt]
            if args.reuse_only and not os.path.isfile(os.path.join(run_dir, 'bench_run.json')):
                continue
            result = run_student(method, seed, cmd, run_dir, teacher_eval['per_class'])
            if not result['error']:
                final = final_scores(os.path.join(DEMO, cfg), run_dir, data)
                result.update(mAP=final['mAP'], per_class=final['per_class'], images=final['images'])
                if result['curve']:
                    result['curve'][-1] = (result['curve'][-1][0], final['mAP'])
            results['runs'].append(result)
            write(results, args.out, 'YOLOv3-MobileNetV1', 'Demo: YOLOv3-MobileNetV1×0.5 student')


if __name__ == '__main__':
    main()
