"""BCCD: one YOLOv3-ResNet34 teacher, then the YOLOv3-MobileNetV1 student
trained three ways (no teacher, L2, fine-grained) with the same schedule,
data and seeds, evaluated on BCCD's official test split.

    .venv/bin/python bench/bccd_yolov3.py [--input_size 160] [--seeds 0 1]

Writes bench/results/bccd_yolov3.{md,json,png}. The teacher is trained once
into the work folder and reused by later runs.
"""
import os

from common import ROOT, comparison_args, run_comparison

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
    args = comparison_args(__doc__.strip().splitlines()[0], 'bench_bccd', 'bccd_yolov3', input_size=160, batch_size=8,
                           teacher_epochs=12, student_epochs=8, seeds=[0, 1], methods=METHODS).parse_args()
    run_comparison(args, CFG, 'teacher_yolov3_r34.yml', 'teacher_r34', METHODS, 'YOLOv3-R34',
                   'BCCD: YOLOv3-MobileNetV1 student')


if __name__ == '__main__':
    main()
