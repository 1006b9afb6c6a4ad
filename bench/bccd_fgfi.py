"""BCCD: fine-grained feature imitation (FGFI) against no teacher and
against imitating the whole feature map (the naive hint), same schedule,
data and seeds, for YOLOv3 (ResNet34 teacher, MobileNetV1 student) or
Faster R-CNN (ResNet50-FPN teacher, MobileNetV1-FPN student).

    .venv/bin/python bench/bccd_fgfi.py --family yolov3 [--seeds 0 1 2]
    .venv/bin/python bench/bccd_fgfi.py --family faster_rcnn [--seeds 0 1 2]

Two student runs at a time (--workers), one CPU thread each. Writes
bench/results/bccd_fgfi_<family>.{md,json,png}. The YOLOv3 runs share
bccd_yolov3.py's work folder (its teacher and no-teacher runs, same
settings); the Faster R-CNN ones bccd_faster_rcnn.py's teacher. Its student
is MobileNetV1-FPN, not that bench's R18-FPN, which matched the teacher on
BCCD (87.4 vs 86.4 mAP) and so left it nothing to imitate.
"""
import argparse
import os

from common import ROOT, comparison_args, run_comparison

CFG = os.path.join(ROOT, 'configs', 'bccd')
FAMILIES = {
    # family: (student config, FGFI config, teacher config, teacher folder (under output/), teacher label, title,
    #          work folder, the family's bench defaults, LR warm-up steps)
    'yolov3': ('student_yolov3_mobilenet_v1.yml', 'distill_fgfi_yolov3.yml', 'teacher_yolov3_r34.yml',
               'bench_bccd/teacher_r34',
               'YOLOv3-R34', 'BCCD: YOLOv3-MobileNetV1 student, FGFI', 'bench_bccd',
               dict(input_size=160, batch_size=8, teacher_epochs=12, student_epochs=8), 50),
    'faster_rcnn': ('student_faster_rcnn_mobilenet_v1_fpn.yml', 'distill_fgfi_faster_rcnn.yml',
                    'teacher_faster_rcnn_r50_fpn.yml', 'bench_bccd_frcnn/teacher_r50_fpn', 'Faster R-CNN R50-FPN',
                    'BCCD: Faster R-CNN MobileNetV1-FPN student, FGFI', 'bench_bccd_frcnn_fgfi',
                    dict(input_size=256, batch_size=2, teacher_epochs=8, student_epochs=5), 100),
}


def methods_of(student_cfg, fgfi_cfg):
    return {
        'no teacher': ('tools/train.py', student_cfg, []),
        'whole map': ('slim/distillation/distill.py', fgfi_cfg, ['FineGrainedImitation.mask=full']),
        'FGFI': ('slim/distillation/distill.py', fgfi_cfg, []),
    }


def main():
    # The family picks the other flags' defaults, so it is read first.
    family_flag = argparse.ArgumentParser(add_help=False)
    family_flag.add_argument('--family', choices=list(FAMILIES), default='yolov3')
    family = family_flag.parse_known_args()[0].family
    student, fgfi, teacher, teacher_dir, label, title, work, defaults, warmup = FAMILIES[family]
    methods = methods_of(student, fgfi)
    p = comparison_args(__doc__.strip().splitlines()[0], work, f'bccd_fgfi_{family}', seeds=[0, 1, 2],
                        methods=methods, workers=2, **defaults)
    p.add_argument('--family', choices=list(FAMILIES), default='yolov3', help='the detector family compared')
    run_comparison(p.parse_args(), CFG, teacher, os.path.join(ROOT, 'output', teacher_dir), methods, label, title,
                   warmup_steps=warmup)


if __name__ == '__main__':
    main()
