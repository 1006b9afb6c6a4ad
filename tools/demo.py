"""The whole pipeline on one data set: train a teacher, a baseline student
and a distilled student, evaluate all three, print one table and how much
of the teacher–baseline gap distillation closed.

    python tools/demo.py                       # the generated shapes data set
    python tools/demo.py --dataset_dir DIR -t TEACHER.yml -s STUDENT.yml -d DISTILL.yml

Each step runs the user-facing command (tools/train.py, distill.py,
tools/eval.py, tools/compare.py) in its own process, exactly as a user
would; the comparison report (per-class AP, training curves, detections
side by side) goes to OUTPUT_DIR/report/.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import ppkd  # noqa: F401  (first: sets the CPU thread count before paddle loads)
from ppkd.cli import main_guard
from ppkd.data.synthetic import make_shapes_voc
from ppkd.errors import PPKDError
from ppkd.progress import follow
from ppkd.utils import atomic_write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, 'configs', 'demo')
# The generated set: 480 labelled images (half train, half test: a test set
# large enough that seeds differ by what they learnt, not by which test
# images they hit), 720 unlabeled ones of the same kind; objects of at
# least 24 px (of 160), which a small student can learn in minutes.
DEMO_DATA = {'num_images': 480, 'test_ratio': 0.5, 'min_size': 24, 'num_unlabeled': 720}
DEMO_TEACHER = os.path.join(DEMO, 'teacher_yolov3_mobilenet_v1.yml')
DEMO_STUDENT = os.path.join(DEMO, 'student_yolov3_mobilenet_v1_x0.5.yml')
DEMO_DISTILL = os.path.join(DEMO, 'distill_unlabeled.yml')


def ensure_demo_data(root):
    """The generated set in `root`, made anew when missing or made with other
    settings than DEMO_DATA (recorded in its generator.json)."""
    record = os.path.join(root, 'generator.json')
    if os.path.isfile(record):
        with open(record) as f:
            if json.load(f) == DEMO_DATA:
                return root
        shutil.rmtree(root)
    make_shapes_voc(root, **DEMO_DATA)
    atomic_write_text(record, json.dumps(DEMO_DATA))
    print(f'generated the shapes data set in {root}')
    return root


def _run(args, log_path, progress_name=None):
    """Run a command with its output in `log_path`; with `progress_name`,
    a live progress line of its training on the console."""
    start = time.time()
    with open(log_path, 'w') as log:
        process = subprocess.Popen([sys.executable] + args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        code = follow(process, log_path, progress_name) if progress_name else process.wait()
    if code != 0:
        with open(log_path) as f:
            tail = f.read().strip().splitlines()[-1:]
        raise PPKDError(f'{" ".join(args[:3])} failed (exit {code}), see {log_path}: {" ".join(tail)}')
    return time.time() - start


def evaluate_run(cfg, weights, opts, log_path):
    """`tools/eval.py --json` on `weights`, its output kept in `log_path`."""
    out = subprocess.run([sys.executable, 'tools/eval.py', '-c', cfg, '--json', '-o', *opts, f'weights={weights}'],
                         capture_output=True, text=True, cwd=ROOT)
    with open(log_path, 'w') as f:
        f.write(out.stdout + out.stderr)
    if out.returncode != 0:
        raise PPKDError(f'evaluating {weights} failed, see {log_path}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def gap_closed(rows):
    """Share (%) of the teacher–baseline mAP gap the distilled student closed."""
    teacher, baseline, distilled = (r['mAP'] for r in rows)
    gap = teacher - baseline
    return 100. * (distilled - baseline) / gap if gap > 0 else float('nan')


def format_table(rows, classes):
    head = ['model', 'mAP', *classes, 'params (M)', 'images/s', 'train (s)']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        cells = [r['model'], f'{r["mAP"]:.2f}', *(f'{r["per_class"].get(c, 0.):.2f}' for c in classes),
                 f'{r["params"] / 1e6:.2f}', f'{r["images_per_s"]:.1f}', f'{r["train_seconds"]:.0f}']
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--dataset_dir', default=None,
                   help='a VOC folder with trainval.txt, test.txt, label_list.txt (default: generate the shapes set)')
    p.add_argument('-t', '--teacher', default=DEMO_TEACHER)
    p.add_argument('-s', '--student', default=DEMO_STUDENT)
    p.add_argument('-d', '--distill', default=DEMO_DISTILL)
    p.add_argument('--seed', type=int, default=0, help='seed of all three runs')
    p.add_argument('--output_dir', default=os.path.join(ROOT, 'output', 'demo'))
    p.add_argument('-o', '--opt', nargs='*', default=[], help='overrides for all three runs')
    args = p.parse_args(argv)
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    data = args.dataset_dir
    if data is None:
        data = ensure_demo_data(os.path.join(ROOT, 'dataset', 'demo_shapes'))
    opts = [f'dataset_dir={os.path.abspath(data)}', *args.opt]
    if args.distill == DEMO_DISTILL and not os.path.isfile(os.path.join(data, 'unlabeled.txt')):
        args.distill = os.path.join(DEMO, 'distill_fine_grained.yml')
        print(f'{data} has no unlabeled.txt: distilling on the labelled images only ({os.path.relpath(args.distill, ROOT)})')
    plan = [('teacher', args.teacher, ['tools/train.py', '-c', args.teacher]),
            ('baseline student', args.student, ['tools/train.py', '-c', args.student]),
            ('distilled student', args.distill,
             ['slim/distillation/distill.py', '-c', args.distill, '-t', args.teacher,
              '--teacher_pretrained', os.path.join(out, 'teacher', 'model_final.pdparams')])]
    rows = []
    for name, cfg, cmd in plan:
        run_dir = os.path.join(out, name.split()[0])
        print(f'training the {name} ({os.path.relpath(cfg, ROOT)}), log: {run_dir}.log', flush=True)
        seconds = _run(cmd + ['--output_dir', run_dir, '--seed', str(args.seed), '-o', *opts], run_dir + '.log',
                       progress_name=f'  {name.split()[0]}')
        result = evaluate_run(cfg, os.path.join(run_dir, 'model_final.pdparams'), opts, run_dir + '.eval.log')
        result.update(model=name, train_seconds=seconds)
        rows.append(result)
        print(f'  {name}: mAP {result["mAP"]:.2f}% in {seconds:.0f} s', flush=True)
    classes = list(rows[0]['per_class'])
    table = format_table(rows, classes)
    atomic_write_text(os.path.join(out, 'results.json'), json.dumps(rows, indent=1) + '\n')
    closed = gap_closed(rows)
    if closed == closed:
        summary = (f'distillation closes {closed:.0f} % of the teacher–baseline gap '
                   f'({rows[1]["mAP"]:.2f} → {rows[2]["mAP"]:.2f} mAP, teacher {rows[0]["mAP"]:.2f})')
    else:
        summary = (f'the teacher ({rows[0]["mAP"]:.2f} mAP) is not ahead of the baseline ({rows[1]["mAP"]:.2f}): '
                   f'no gap to close; the distilled student has {rows[2]["mAP"]:.2f} (train the teacher longer)')
    atomic_write_text(os.path.join(out, 'results.md'), table + '\n\n' + summary + '\n')
    print('\nVOC mAP@0.5 (11-point) and per-class AP, %, on the test split:\n' + table)
    print('\n' + summary)
    report = os.path.join(out, 'report')
    _run(['tools/compare.py', *(arg for (name, cfg, _), flag in zip(plan, ('-t', '-b', '-d'))
                                for arg in (flag, f'{cfg}:{os.path.join(out, name.split()[0], "model_final.pdparams")}')),
          '--output_dir', report, '-o', *opts], os.path.join(out, 'report.log'))
    print(f'\nwritten to {out}/results.md and results.json; pictures (per-class AP, curves, detections) '
          f'in {report}/report.md')


if __name__ == '__main__':
    main()
