"""BCCD: one YOLOv3-ResNet34 teacher, then the YOLOv3-MobileNetV1 student
trained with no teacher, L2 and fine-grained distillation (the latter also
from the teacher run in int8) with the same schedule, data and seeds,
evaluated on BCCD's official test split.

    .venv/bin/python bench/bccd_yolov3.py [--input_size 160] [--seeds 0 1]

The int8 teacher against the float32 one, seed by seed:

    .venv/bin/python bench/bccd_yolov3.py --seeds 0 1 2 --baseline 'fine-grained w=100' \
        --methods 'fine-grained w=100' 'fine-grained w=100, int8 teacher' --out bench/results/bccd_yolov3_int8_teacher

(`make bench-int8-teacher` runs that with the no-teacher arm too, then
pairs the same runs with it: bench/results/bccd_yolov3_3seeds.)

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
    # The teacher run by int8 kernels: does its cheaper step cost the student anything?
    'fine-grained w=100, int8 teacher': ('slim/distillation/distill.py', 'distill_fine_grained.yml',
                                         ['YOLOv3FineGrainedDistill.weight=100', 'distill.teacher_precision=int8']),
}


def main():
    args = comparison_args(__doc__.strip().splitlines()[0], 'bench_bccd', 'bccd_yolov3', input_size=160, batch_size=8,
                           teacher_epochs=12, student_epochs=8, seeds=[0, 1], methods=METHODS).parse_args()
    run_comparison(args, CFG, 'teacher_yolov3_r34.yml', 'teacher_r34', METHODS, 'YOLOv3-R34',
                   'BCCD: YOLOv3-MobileNetV1 student')


if __name__ == '__main__':
    main()
