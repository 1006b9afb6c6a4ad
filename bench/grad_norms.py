"""Global gradient norms of healthy training, the evidence for a config's
`clip_grad_by_norm` (a clip that binds at every step slows training as much
as a learning rate that many times smaller).

    .venv/bin/python bench/grad_norms.py [--configs C ...] [--steps 40] [--input_size 160]

Each config's model trains from scratch with its own learning-rate schedule
and optimizer, clipping removed, on BCCD's trainval list (seed 0); the
global L2 norm of the gradient is recorded at every step. Writes
bench/results/grad_norms.{md,json}: per config the first steps' norms, then
the median, 90th percentile and maximum during the rest of the learning-rate
warm-up and after it.
"""
import argparse
import contextlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
with contextlib.redirect_stdout(sys.stderr):
    import numpy as np
    import paddle

    from common import BCCD, cpu_model
    from ppkd import config as cfgmod
    from ppkd.builder import build_model
    from ppkd.data.loader import build_reader, epoch_batches
    from ppkd.data.split import split_voc
    from ppkd.tasks.detection import DetectionTask
    from ppkd.utils import atomic_write_text

CONFIGS = ['configs/bccd/teacher_yolov3_r34.yml', 'configs/bccd/student_yolov3_mobilenet_v1.yml',
           'configs/bccd/ssd/student_ssd_mobilenet_v1.yml']
FIRST = 5  # the first steps, reported apart: the largest norms come before the model has learnt anything


def global_norm(model):
    squares = [(p.grad.astype('float32') ** 2).sum() for p in model.parameters() if p.grad is not None]
    return float(paddle.sqrt(paddle.add_n(squares)))


def warmup_steps(cfg):
    return next((int(s.get('steps', 0)) for s in cfg['LearningRate']['schedulers'] if s.get('name') == 'LinearWarmup'),
                0)


def stats(norms):
    if not norms:
        return None
    return {'steps': len(norms), 'median': float(np.median(norms)), 'p90': float(np.percentile(norms, 90)),
            'max': float(max(norms))}


def norms_of(config, lists, args):
    paddle.seed(0)
    np.random.seed(0)
    cfg = cfgmod.load_config(os.path.join(ROOT, config), [
        f'dataset_dir={lists}', f'input_size={args.input_size}', f'TrainReader.batch_size={args.batch_size}',
        'worker_num=0', 'OptimizerBuilder.clip_grad_by_norm=null'])
    reader = build_reader(cfg, 'Train')
    model = build_model(cfg)
    model.train()
    lr, optimizer = DetectionTask(cfg).lr_and_optimizer(len(reader), model)
    norms, epoch = [], 0
    while len(norms) < args.steps:
        for batch in epoch_batches(reader, epoch):
            model(batch)['loss'].backward()
            norms.append(global_norm(model))
            optimizer.step()
            optimizer.clear_grad()
            lr.step()
            if len(norms) == args.steps:
                break
        epoch += 1
    return norms, warmup_steps(cfg)


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--configs', nargs='+', default=CONFIGS)
    p.add_argument('--dataset', default=BCCD)
    p.add_argument('--steps', type=int, default=150)
    p.add_argument('--input_size', type=int, default=160)
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'grad_norms'))
    args = p.parse_args()
    lists = os.path.join(ROOT, 'output', 'bench_grad_norms', 'lists')
    split_voc(args.dataset, imagesets=('trainval', 'test'), out_dir=lists, seed=0)
    rows = {}
    for config in args.configs:
        norms, warmup = norms_of(config, lists, args)
        rows[config] = {'norms': norms, 'warmup_steps': warmup, 'warmup': stats(norms[FIRST:warmup]),
                        'after': stats(norms[max(FIRST, warmup):])}
        print(f'{config}: {json.dumps({k: v for k, v in rows[config].items() if k != "norms"})}', flush=True)
    settings = dict(vars(args), cpu=cpu_model())
    atomic_write_text(args.out + '.json', json.dumps({'settings': settings, 'configs': rows}, indent=1))
    cell = lambda s: f'{s["median"]:.0f} / {s["p90"]:.0f} / {s["max"]:.0f} ({s["steps"]} steps)' if s else '—'  # noqa: E731
    lines = [f'| config | first {FIRST} steps | rest of the warm-up: median / p90 / max | after the warm-up: '
             'median / p90 / max |', '|---|---|---|---|']
    for config, r in rows.items():
        lines.append(f'| {config} | {", ".join(str(round(n)) for n in r["norms"][:FIRST])} | {cell(r["warmup"])} | '
                     f'{cell(r["after"])} |')
    lines.append(f'\nGlobal gradient L2 norms, unclipped, {args.steps} training steps from scratch with each '
                 f'config\'s own schedule (warm-up included), BCCD trainval, {args.input_size} px, batch '
                 f'{args.batch_size}, seed 0. CPU: {settings["cpu"]}.')
    atomic_write_text(args.out + '.md', '\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
