"""BCCD ablation of Faster R-CNN distillation (Chen et al. 2017): one
ResNet50-FPN teacher, then the ResNet18-FPN student trained with no teacher,
with soft labels only, with soft labels + bounded regression, and with all
three terms (+ hint), same schedule, data and seeds, evaluated on BCCD's
official test split.

    .venv/bin/python bench/bccd_faster_rcnn.py [--input_size 256] [--seeds 0]

Writes bench/results/bccd_faster_rcnn.{md,json,png}. The teacher is trained
once into the work folder and reused by later runs, as are finished runs.
"""
import argparse
import os

from common import BCCD, ROOT, run_student, schedule, train_teacher, write

from ppkd.data.split import split_voc

CFG = os.path.join(ROOT, 'configs', 'bccd')
METHODS = {
    'no teacher': ('tools/train.py', 'student_faster_rcnn_r18_fpn.yml', []),
    'soft labels': ('slim/distillation/distill.py', 'distill_faster_rcnn.yml',
                    ['distill.losses=[FasterRCNNSoftLabel]']),
    'soft + bounded': ('slim/distillation/distill.py', 'distill_faster_rcnn.yml',
                       ['distill.losses=[FasterRCNNSoftLabel, FasterRCNNBoundedRegression]']),
    'soft + bounded + hint': ('slim/distillation/distill.py', 'distill_faster_rcnn.yml', []),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--dataset', default=BCCD)
    p.add_argument('--work_dir', default=os.path.join(ROOT, 'output', 'bench_bccd_frcnn'))
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'bccd_faster_rcnn'))
    p.add_argument('--input_size', type=int, default=256)
    p.add_argument('--batch_size', type=int, default=2)
    p.add_argument('--teacher_epochs', type=int, default=8)
    p.add_argument('--student_epochs', type=int, default=5)
    p.add_argument('--snapshot_epoch', type=int, default=2)
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    p.add_argument('-o', '--opt', nargs='*', default=[], help='extra overrides for the student runs')
    args = p.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    lists = os.path.join(args.work_dir, 'lists')
    split_voc(args.dataset, imagesets=('trainval', 'test'), out_dir=lists)
    common = [f'dataset_dir={lists}', f'input_size={args.input_size}', f'TrainReader.batch_size={args.batch_size}',
              f'snapshot_epoch={args.snapshot_epoch}', 'worker_num=2']

    teacher_dir = os.path.join(args.work_dir, 'teacher_r50_fpn')
    teacher_cfg = os.path.join(CFG, 'teacher_faster_rcnn_r50_fpn.yml')
    teacher_eval, teacher_seconds = train_teacher(teacher_cfg, teacher_dir,
                                                  [*common, *schedule(args.teacher_epochs, warmup_steps=100)])
    results = {'settings': vars(args), 'teacher': {'mAP': teacher_eval['mAP'], 'per_class': teacher_eval['per_class'],
                                                   'train_seconds': teacher_seconds}, 'runs': []}
    print(f'teacher: mAP {teacher_eval["mAP"]:.2f}', flush=True)
    for seed in args.seeds:
        for method in args.methods:
            script, cfg, extra = METHODS[method]
            out = os.path.join(args.work_dir, f'{method.replace(" ", "_").replace("+", "and")}_seed{seed}')
            cmd = [script, '-c', os.path.join(CFG, cfg), '--eval', '--seed', str(seed), '--output_dir', out]
            if script.startswith('slim'):
                cmd += ['-t', teacher_cfg, '--teacher_pretrained', os.path.join(teacher_dir, 'model_final.pdparams')]
            cmd += ['-o', *common, *schedule(args.student_epochs, warmup_steps=100), *extra, *args.opt]
            results['runs'].append(run_student(method, seed, cmd, out, teacher_eval['per_class']))
            write(results, args.out, 'Faster R-CNN R50-FPN', 'BCCD: Faster R-CNN R18-FPN student')


if __name__ == '__main__':
    main()
