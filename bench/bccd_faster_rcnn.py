"""BCCD ablation of Faster R-CNN distillation (Chen et al. 2017): one
ResNet50-FPN teacher, then the ResNet18-FPN student trained with no teacher,
with soft labels only, with soft labels + bounded regression, and with all
three terms (+ hint), same schedule, data and seeds, evaluated on BCCD's
official test split.

    .venv/bin/python bench/bccd_faster_rcnn.py [--input_size 256] [--seeds 0]

Writes bench/results/bccd_faster_rcnn.{md,json,png}. The teacher is trained
once into the work folder and reused by later runs, as are finished runs.
"""
import os

from common import ROOT, comparison_args, run_comparison

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
    args = comparison_args(__doc__.strip().splitlines()[0], 'bench_bccd_frcnn', 'bccd_faster_rcnn', input_size=256,
                           batch_size=2, teacher_epochs=8, student_epochs=5, seeds=[0], methods=METHODS).parse_args()
    run_comparison(args, CFG, 'teacher_faster_rcnn_r50_fpn.yml', 'teacher_r50_fpn', METHODS, 'Faster R-CNN R50-FPN',
                   'BCCD: Faster R-CNN R18-FPN student', warmup_steps=100)


if __name__ == '__main__':
    main()
