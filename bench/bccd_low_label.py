"""BCCD with a quarter of the labels: a YOLOv3-ResNet18 teacher and every
student see the same labelled 25 % of trainval; the distilled students also
see the other 75 % as unlabeled images. Same schedule, data and seeds.

    .venv/bin/python bench/bccd_low_label.py [--seeds 0 1 2] [--methods ...]

Writes bench/results/bccd_low_label.{md,json,png}: per arm mean ± std over
seeds and the paired difference to the no-teacher student. The teacher is
trained once into the work folder and reused, as are finished runs.
"""
import os

from common import ROOT, comparison_args, run_comparison

CFG = os.path.join(ROOT, 'configs', 'bccd', 'low_label')
METHODS = {
    'no teacher': ('tools/train.py', 'student_yolov3_mobilenet_v1.yml', []),
    'fine-grained': ('slim/distillation/distill.py', 'distill_fine_grained.yml', []),
    'fine-grained + unlabeled': ('slim/distillation/distill.py', 'distill_unlabeled.yml', []),
    'fine-grained + unlabeled, FM-NMS': ('slim/distillation/distill.py', 'distill_unlabeled.yml',
                                         ['YOLOv3FineGrainedDistill.fm_nms=true']),
}


def main():
    args = comparison_args(__doc__.strip().splitlines()[0], 'bench_bccd_low_label', 'bccd_low_label', input_size=160,
                           batch_size=8, teacher_epochs=50, student_epochs=24, seeds=[0, 1, 2], methods=METHODS,
                           labeled_fraction=0.25).parse_args()
    run_comparison(args, CFG, 'teacher_yolov3_r18.yml', 'teacher_r18', METHODS, 'YOLOv3-R18',
                   'BCCD, 25 % labelled: YOLOv3-MobileNetV1×0.5 student (light neck)')


if __name__ == '__main__':
    main()
