"""BCCD: one YOLOv3-ResNet34 teacher, then the YOLOv3-MobileNetV1 student
trained three ways (no teacher, L2, fine-grained) with the same schedule,
data and seeds, evaluated on BCCD's official test split.

    .venv/bin/python bench/bccd_yolov3.py [--input_size 160] [--seeds 0 1]

Writes bench/results/bccd_yolov3.{md,json,png}. The teacher is trained once
into the work folder and reused by later runs.
"""
import argparse
import os

from common import BCCD, ROOT, run_student, schedule, train_teacher, write

from ppkd.data.split import split_voc

CFG = os.path.join(ROOT, 'configs', 'bccd')
METHODS = {
    'no teacher': ('tools/train.py', 'student_yolov3_mobilenet_v1.yml', []),
    'L2': ('slim/distillation/distill.py', 'distill_l2.yml', []),
    'fine-grained': ('slim/distillation/distill.py', 'distill_fine_grained.yml', []),
    # The same loss at a tenth of the weight: is the scale what hurts?
    'fine-grained w=100': ('slim/distillation/distill.py', 'distill_fine_grained.yml',
                           ['YOLOv3FineGrainedDistill.weight=100']),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--dataset', default=BCCD)
    p.add_argument('--work_dir', default=os.path.join(ROOT, 'output', 'bench_bccd'))
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'bccd_yolov3'))
    p.add_argument('--input_size', type=int, default=160)
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--teacher_epochs', type=int, default=12)
    p.add_argument('--student_epochs', type=int, default=8)
    p.add_argument('--snapshot_epoch', type=int, default=2)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    p.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    p.add_argument('-o', '--opt', nargs='*', default=[], help='extra overrides for the student runs')
    args = p.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    lists = os.path.join(args.work_dir, 'lists')
    split_voc(args.dataset, imagesets=('trainval', 'test'), out_dir=lists)
    common = [f'dataset_dir={lists}', f'input_size={args.input_size}', f'TrainReader.batch_size={args.batch_size}',
              f'snapshot_epoch={args.snapshot_epoch}', 'worker_num=2']

    teacher_dir = os.path.join(args.work_dir, 'teacher_r34')
    teacher_cfg = os.path.join(CFG, 'teacher_yolov3_r34.yml')
    teacher_eval, teacher_seconds = train_teacher(teacher_cfg, teacher_dir, [*common, *schedule(args.teacher_epochs)])
    results = {'settings': vars(args), 'teacher': {'mAP': teacher_eval['mAP'], 'per_class': teacher_eval['per_class'],
                                                   'train_seconds': teacher_seconds}, 'runs': []}
    print(f'teacher: mAP {teacher_eval["mAP"]:.2f}', flush=True)
    # Seed by seed, so a cut-short run still compares every method.
    for seed in args.seeds:
        for method in args.methods:
            script, cfg, extra = METHODS[method]
            out = os.path.join(args.work_dir, f'{method.replace(" ", "_").replace("=", "")}_seed{seed}')
            cmd = [script, '-c', os.path.join(CFG, cfg), '--eval', '--seed', str(seed), '--output_dir', out]
            if script.startswith('slim'):
                cmd += ['-t', teacher_cfg, '--teacher_pretrained', os.path.join(teacher_dir, 'model_final.pdparams')]
            cmd += ['-o', *common, *schedule(args.student_epochs), *extra, *args.opt]
            results['runs'].append(run_student(method, seed, cmd, out, teacher_eval['per_class']))
            write(results, args.out, 'YOLOv3-R34', 'BCCD: YOLOv3-MobileNetV1 student')


if __name__ == '__main__':
    main()
