"""The step-time benchmark runs end to end (tiny sizes; its numbers are
measured in bench/, not asserted here)."""
import json
import os
import subprocess
import sys
import types

import pytest

from conftest import BCCD, ROOT


def _step_time(tmp_path, *args):
    """bench/step_time.py at 64 px, 2 steps, with --breakdown: its JSON payload."""
    cmd = [sys.executable, os.path.join(ROOT, 'bench', 'step_time.py'), '--input_size', '64', '--steps', '2',
           *args, '--breakdown', '--json', '--dataset', BCCD if os.path.isdir(BCCD) else str(tmp_path / 'none')]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_step_time_runs_and_reports_json(tmp_path):
    payload = _step_time(tmp_path, '--warmup', '0', '--modes', 'student', 'ppkd', 'ppdet', 'teacher')
    modes = [r['mode'] for r in payload['results']]
    assert modes == ['student', 'ppkd', 'ppdet', 'teacher']
    for r in payload['results']:
        assert r['steps'] == 2 and r['median_s'] > 0 and r['peak_rss_mb'] > 100
    assert payload['settings']['input_size'] == 64 and ' cores, ' in payload['settings']['cpu']  # the CPU recorded
    parts = payload['results'][1]['parts_mean_s']  # ppkd's step, part by part
    assert {'student forward and detection loss', 'loss YOLOv3FineGrainedDistill', 'backward and update'} <= set(parts)
    assert any(p.startswith('teacher image part') for p in parts)
    assert 0 < sum(parts.values()) <= payload['results'][1]['mean_s']
    assert payload['results'][1]['teacher_image_gflop'] > 0 and payload['results'][1]['matmul_gflops'] > 0


def test_same_process_steps_every_mode_in_one_process(tmp_path):
    student, ppkd = _step_time(tmp_path, '--warmup', '1', '--modes', 'student', 'ppkd', '--same_process')['results']
    assert student['steps'] == ppkd['steps'] == 2
    assert student['peak_rss_mb'] == ppkd['peak_rss_mb']  # one process
    assert set(student['parts_mean_s']) == {'forward and detection loss', 'backward and update'}
    assert 0 < sum(student['parts_mean_s'].values()) <= student['mean_s']
    assert 'backward and update' in ppkd['parts_mean_s']


def test_image_part_operations_counted_in_convolutions_and_fully_connected_layers():
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    import paddle
    import step_time

    class Recorder:
        names = []

        def clear(self):
            pass
    teacher = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3, padding=1, groups=1), paddle.nn.Flatten(),
                                   paddle.nn.Linear(4 * 8 * 8, 5))
    distiller = types.SimpleNamespace(teacher=teacher, teacher_recorder=Recorder(),
                                      _teacher_forwards=(lambda model, batch, names: model(batch['image']), None))
    gflop = step_time._image_part_gflop(distiller, {'image': paddle.rand([2, 3, 8, 8])})
    conv = 2 * 4 * 8 * 8 * (3 * 3 * 3)  # outputs × multiply-adds each
    linear = 2 * 5 * (4 * 8 * 8)
    assert gflop == pytest.approx(2 * (conv + linear) / 1e9)


def test_modes_stepped_in_turn_take_turns_first():
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    import step_time
    calls = []
    steppers = {m: (lambda batch, m=m: calls.append((batch, m)), None) for m in 'abc'}
    timed = step_time._time_steps(steppers, [0, 1, 2, 3], warmup=1)
    assert calls == [(0, 'a'), (0, 'b'), (0, 'c'), (1, 'b'), (1, 'c'), (1, 'a'),
                     (2, 'c'), (2, 'a'), (2, 'b'), (3, 'a'), (3, 'b'), (3, 'c')]
    assert all(len(times) == 3 for times, _ in timed.values())


def test_demo_runs_end_to_end_and_reports_the_gap(tmp_path):
    """tools/demo.py on a tiny generated set with unlabeled images: three
    runs, one table, the share of the gap closed."""
    sys.path.insert(0, ROOT)
    from ppkd.data.synthetic import make_shapes_voc
    from conftest import tiny_opts
    data = make_shapes_voc(str(tmp_path / 'data'), num_images=12, image_size=64, seed=1, test_ratio=0.34,
                           min_size=12, max_size=30, max_objects=2, num_unlabeled=4)
    opts = [o for o in tiny_opts(data) if not o.startswith('dataset_dir')] + ['YOLOv3FineGrainedDistill.weight=0.01']
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'demo.py'), '--dataset_dir', data,
           '--output_dir', str(tmp_path / 'out'), '-o', *opts]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = json.load(open(tmp_path / 'out' / 'results.json'))
    assert [r['model'] for r in rows] == ['teacher', 'baseline student', 'distilled student']
    # The summary says what the numbers say: a gap closed, or none to close.
    ahead = rows[0]['mAP'] > rows[1]['mAP']
    assert ('of the teacher–baseline gap' in out.stdout) == ahead and ('no gap to close' in out.stdout) != ahead
    # One progress line per epoch and stage off a terminal.
    assert sum(line.startswith('  teacher [') and '%  epoch' in line for line in out.stdout.splitlines()) == 1
    assert all(r['images'] == 4 for r in rows)
    assert 'distill_reg_unlabeled' in open(tmp_path / 'out' / 'distilled.log').read()
    report = open(tmp_path / 'out' / 'report' / 'report.md').read()
    assert '| distilled |' in report and os.path.isfile(tmp_path / 'out' / 'report' / 'detections.png')


def test_a_run_cut_short_goes_on_from_its_last_snapshot(tmp_path):
    """bench/common.run_once: a run of the same command that stopped (the
    session ended) goes on with `-r <last snapshot>`, its earlier time
    counted from its log; a run of another command starts afresh."""
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    from common import run_once
    script = tmp_path / 'fake_train.py'
    script.write_text('import json, sys\njson.dump(sys.argv[1:], open(sys.argv[-1] + ".argv", "w"))\n')
    out = tmp_path / 'run_seed0'
    cmd = [str(script), '--seed', '0', str(out)]
    out.mkdir()
    (out / 'bench_cmd.json').write_text(json.dumps(cmd))
    for epoch in (1, 3):
        (out / f'{epoch}.pdstate').write_text('')
    (tmp_path / 'run_seed0.log').write_text('[2026-11-25 10:00:00,000] start\n[2026-11-25 10:01:40,000] epoch 3\n')
    seconds, error = run_once(cmd, str(out))
    assert json.load(open(str(out) + '.argv')) == [cmd[0], '-r', str(out / '3'), *cmd[1:]][1:]
    assert error is None and 100 <= seconds < 160
    assert (tmp_path / 'run_seed0.log.part1').exists()
    assert run_once(cmd, str(out)) == (seconds, None)  # finished: reused
    other = [str(script), '--seed', '1', str(out)]
    run_once(other, str(out))
    assert json.load(open(str(out) + '.argv')) == other[1:]
    assert not (tmp_path / 'run_seed0.log.part1').exists() and not (out / '3.pdstate').exists()


def test_a_finished_teacher_is_reused_only_for_its_own_epochs(tmp_path):
    """bench/common.train_teacher: a comparison asking for a longer teacher
    than the folder holds stops with an error instead of reusing it."""
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    from common import train_teacher
    out = tmp_path / 'teacher'
    out.mkdir()
    (out / 'model_final.pdparams').write_text('')
    (out / 'train_seconds').write_text('60\n')
    rows = [{'type': 'train', 'epoch': e, 'iteration': e} for e in range(3)]
    rows.append({'type': 'eval', 'epoch': 2, 'iteration': 3, 'mAP': 50.})
    (out / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    assert train_teacher('unused.yml', str(out), ['input_size=64', 'epoch=3']) == (rows[-1], 60.)
    assert train_teacher('unused.yml', str(out), ['input_size=64']) == (rows[-1], 60.)
    with pytest.raises(SystemExit, match='trained 3 epochs, not the 6 asked for'):
        train_teacher('unused.yml', str(out), ['epoch=6'])


def test_finished_only_writes_the_finished_runs_and_trains_nothing(tmp_path, monkeypatch):
    """bench/common.run_comparison --finished_only: of the methods × seeds
    asked for, only the runs recorded finished reach the table (an arm run
    on fewer seeds keeps its row); nothing is trained, a missing teacher is
    an error."""
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    import common
    methods = {'no teacher': ('tools/train.py', 'student.yml', []), 'soft': ('slim/x.py', 'distill.yml', [])}
    parser = common.comparison_args('t', 'w', 'o', input_size=64, batch_size=2, teacher_epochs=1, student_epochs=1,
                                    seeds=[0, 1], methods=methods)
    monkeypatch.setattr(common, 'split_voc', lambda *a, **k: None)
    args = parser.parse_args(['--work_dir', str(tmp_path / 'work'), '--out',
                              str(tmp_path / 'results'), '--finished_only'])
    with pytest.raises(SystemExit, match='error: --finished_only: no trained teacher in'):
        common.run_comparison(args, str(tmp_path), 'teacher.yml', 'teacher', methods, 'T', 'title')
    teacher = tmp_path / 'work' / 'teacher'
    teacher.mkdir(parents=True)
    (teacher / 'model_final.pdparams').write_text('')
    monkeypatch.setattr(common, 'train_teacher', lambda *a: ({'mAP': 50., 'per_class': {}}, 1.))
    calls = []
    monkeypatch.setattr(common, 'run_student', lambda method, seed, cmd, out, *a: calls.append((method, seed, cmd, out))
                        or {'method': method, 'seed': seed})
    monkeypatch.setattr(common, 'write', lambda *a: None)
    args.finished_only = False
    common.run_comparison(args, str(tmp_path), 'teacher.yml', 'teacher', methods, 'T', 'title')
    assert len(calls) == 4
    method, seed, cmd, out = calls[1]  # soft, seed 0
    os.makedirs(out)
    common.atomic_write_text(os.path.join(out, 'bench_run.json'), json.dumps({'cmd': cmd, 'seconds': 1, 'error': None}))
    calls.clear()
    args.finished_only = True
    common.run_comparison(args, str(tmp_path), 'teacher.yml', 'teacher', methods, 'T', 'title')
    assert [(m, s) for m, s, _, _ in calls] == [('soft', 0)]


def test_comparison_pairs_each_arm_with_the_baseline_asked_for(tmp_path, monkeypatch):
    """--baseline: each other arm's per-seed difference is taken against
    that arm (int8 teacher against float32), not against no teacher. A run
    that stopped is marked so in its row and listed with its reason."""
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    import common
    methods = {'no teacher': ('tools/train.py', 's.yml', []), 'fp32': ('slim/x.py', 'd.yml', []),
               'int8': ('slim/x.py', 'd.yml', ['distill.teacher_precision=int8'])}
    args = common.comparison_args('t', 'w', 'o', input_size=64, batch_size=2, teacher_epochs=1, student_epochs=1,
                                  seeds=[0], methods=methods).parse_args(['--baseline', 'fp32', '--work_dir',
                                                                          str(tmp_path / 'w'), '--out', str(tmp_path / 'r')])
    monkeypatch.setattr(common, 'split_voc', lambda *a, **k: None)
    monkeypatch.setattr(common, 'train_teacher', lambda *a: ({'mAP': 50., 'per_class': {'c': 50.}}, 1.))
    maps = {('no teacher', 0): 30., ('fp32', 0): 40., ('int8', 0): 37.}
    monkeypatch.setattr(common, 'run_student', lambda method, seed, cmd, out, *a: {
        'method': method, 'seed': seed, 'mAP': maps[method, seed], 'images': 72, 'per_class': {'c': 0.},
        'error': 'loss is not finite at iteration 7' if method == 'int8' else None,
        'train_seconds': 1., 'curve': [(1, maps[method, seed])], 'losses': {'first': {'loss': 1.}, 'last': {'loss': 1.}}})
    common.run_comparison(args, str(tmp_path), 'teacher.yml', 'teacher', methods, 'T', 'title')
    results = json.loads((tmp_path / 'r.json').read_text())
    assert {m: p['per_seed'] for m, p in results['paired'].items()} == {'no teacher': {'0': -10.}, 'int8': {'0': -3.}}
    table = (tmp_path / 'r.md').read_text()
    assert '| Δ vs fp32 per seed |' in table
    assert '| 37.00 (stopped) |' in table and '- int8, seed 0: loss is not finite at iteration 7' in table


@pytest.mark.skipif(not os.path.isdir(BCCD), reason='BCCD not found')
def test_mask_coverage_shrinks_as_psi_rises(tmp_path):
    """bench/mask_coverage.py: a higher ψ keeps a subset of the cells, so
    no level's share may rise with it."""
    out = tmp_path / 'coverage'
    cmd = [sys.executable, os.path.join(ROOT, 'bench', 'mask_coverage.py'), '--configs',
           'distill_fgfi_yolov3.yml=64', '--psi', '0.3', '0.7', '--out', str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    row, = json.load(open(str(out) + '.json'))['rows']
    low, high = row['share_kept']['0.3'], row['share_kept']['0.7']
    assert len(low) == len(row['levels']) == 3
    assert all(0 < h <= l_ <= 1 for l_, h in zip(low, high)) and high != low
    assert '| distill_fgfi_yolov3.yml | 64 px | 0.7 |' in open(str(out) + '.md').read()


def test_teacher_routes_score_each_route(tmp_path, tiny_voc, tiny_teacher):
    """Each teacher route is timed and scored; the dygraph route's mAP is
    the teacher's own evaluation (tools/eval.py) of the same weights."""
    out = tmp_path / 'routes'
    opts = ['input_size=64', 'TrainReader.batch_size=2', 'EvalReader.batch_size=2', 'worker_num=0']
    cmd = [sys.executable, os.path.join(ROOT, 'bench', 'teacher_routes.py'), '--teacher', tiny_teacher[0],
           '--teacher_weights', tiny_teacher[1], '--data', tiny_voc, '--steps', '2', '--warmup', '0', '--repeat', '1',
           '--out', str(out), '-o', *opts]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    payload = json.loads((tmp_path / 'routes.json').read_text())
    routes = {r['route']: r for r in payload['runs']}
    assert set(routes) >= {'dygraph', 'inference'}
    assert routes['dygraph']['engine'] == 'dygraph' and routes['inference']['engine'] == 'inference, float32'
    assert all(r['steps'] == 2 and r['median_s'] > 0 and r['images'] == 4 for r in routes.values())
    evaluated = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'eval.py'), '-c', tiny_teacher[0], '--json',
                                '-o', f'weights={tiny_teacher[1]}', f'dataset_dir={tiny_voc}', *opts],
                               capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert routes['dygraph']['mAP'] == pytest.approx(json.loads(evaluated.stdout.strip().splitlines()[-1])['mAP'], abs=1e-6)
    assert routes['inference']['mAP'] == pytest.approx(routes['dygraph']['mAP'], abs=0.5)
    # The loss terms through each route against dygraph's: none for dygraph itself, float32's rounding for inference.
    assert routes['dygraph']['loss_difference'] == 0 and 0 <= routes['inference']['loss_difference'] < 1e-3
    from ppkd import compiled_teacher
    for precision in ('bfloat16', 'int8'):  # each route runs as it says, or as float32 where the CPU lacks it...
        runs_as = precision if compiled_teacher.CPU_SUPPORT[precision][0]() else 'float32'
        engine, warnings = routes[precision]['engine'], routes[precision]['warnings']
        # ... or where its outputs failed the check against dygraph (the tiny teacher's int8 outputs are at times
        # over the tolerance), saying so in the table.
        failed = [w for w in warnings if f'({precision}) outputs differ from dygraph' in w]
        assert engine == f'inference, {runs_as}' or (engine == 'inference, float32' and failed)
        assert all(w in (tmp_path / 'routes.md').read_text() for w in warnings)


def test_teacher_routes_unchecked_run_each_route_as_asked(tmp_path, tiny_voc, tiny_teacher):
    """--unchecked: int8 runs as int8 on any CPU, whatever its check finds,
    and the table gives each route's difference from dygraph at the check."""
    out = tmp_path / 'routes'
    cmd = [sys.executable, os.path.join(ROOT, 'bench', 'teacher_routes.py'), '--teacher', tiny_teacher[0],
           '--teacher_weights', tiny_teacher[1], '--data', tiny_voc, '--steps', '1', '--warmup', '0', '--repeat', '1',
           '--routes', 'inference', 'int8', '--unchecked', '--out', str(out), '-o', 'input_size=64',
           'TrainReader.batch_size=2', 'EvalReader.batch_size=2', 'worker_num=0']
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    payload = json.loads((tmp_path / 'routes.json').read_text())
    routes = {r['route']: r for r in payload['runs']}
    assert routes['int8']['engine'] == 'inference, int8' and routes['int8']['warnings'] == []
    assert routes['inference']['difference'] < 1e-3 < routes['int8']['difference']
    assert routes['inference']['loss_difference'] < 1e-5 < routes['int8']['loss_difference']
    table = (tmp_path / 'routes.md').read_text()
    assert '%.2g' % routes['int8']['difference'] in table and 'Unchecked' in table


def test_throughput_times_every_mode_of_a_pair(tmp_path, tiny_voc):
    """bench/throughput.py: each mode's real training loop (the teacher and
    the student alone, ppkd, ppdet's DistillModel) timed per setting from
    its logged iterations, with the ratios; a tiny demo teacher."""
    from conftest import run_script, tiny_opts
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    from demo import DEMO_TEACHER
    teacher = tmp_path / 'teacher'
    assert run_script('tools/train.py', ['-c', DEMO_TEACHER, '--output_dir', str(teacher), '-o',
                                         *tiny_opts(tiny_voc)]) == 0
    opts = [o for o in tiny_opts(tiny_voc) if not o.startswith(('dataset_dir', 'epoch', 'log_iter'))]
    cmd = [sys.executable, os.path.join(ROOT, 'bench', 'throughput.py'), '--pairs', 'demo', '--data', tiny_voc,
           '--teacher_weights', str(teacher / 'model_final.pdparams'), '--modes', 'teacher', 'student', 'ppkd',
           'ppdet', '--settings', 'default', 'previous', '--epochs', '12', '--warmup', '1', '--repeat', '2', '--work_dir',
           str(tmp_path / 'work'), '--out', str(tmp_path / 'tp'), '-o', *opts]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    results = json.loads((tmp_path / 'tp.json').read_text())['results']
    assert [(r['round'], r['mode'], r['setting']) for r in results] == [
        (k, m, s) for k in (0, 1) for m in ('teacher', 'student', 'ppkd', 'ppdet') for s in ('default', 'previous')]
    for r in results:  # 8 training images at batch 2: 4 iterations an epoch, 12 epochs, the first left out...
        assert r['pair'] == 'demo' and r['images_per_s'] == pytest.approx(2 / r['mean_iteration_s'])
        # ... or those up to the tuner's choice: after its 3 warm-up iterations, 3 to 10 for each of 4 settings.
        assert r['iterations'] == 47 if r['cpu_settings'] is None else 48 - 43 <= r['iterations'] <= 48 - 15
    # ppkd's tuner (its choice made by the 43rd iteration) is on by default, off under the previous settings.
    assert all((r['cpu_settings'] is not None) == (r['setting'] == 'default') for r in results if r['mode'] != 'ppdet')
    text = (tmp_path / 'tp.md').read_text()
    student = [r['images_per_s'] for r in results if (r['mode'], r['setting']) == ('student', 'previous')]
    assert '| demo | student alone (tools/train.py) | ' in text and f'({student[0]:.2f}, {student[1]:.2f})' in text
    assert '- demo, default: ppkd step / student step' in text and 'ppkd step / ppdet step' in text
    bad = subprocess.run(cmd[:2] + ['--pairs', 'demo', 'bccd', '--data', tiny_voc], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith('error: --teacher_weights and --data')


def test_throughput_skips_ppdet_where_it_has_no_loss_for_the_method(tmp_path, tiny_voc, frcnn_teacher):
    """The Faster R-CNN pair: the student and ppkd timed, ppdet's mode
    skipped with a message (ppdet has no DistillModel loss for it)."""
    from conftest import FRCNN_TINY, tiny_opts
    opts = [o for o in tiny_opts(tiny_voc, *FRCNN_TINY) if not o.startswith(('dataset_dir', 'epoch', 'log_iter'))]
    cmd = [sys.executable, os.path.join(ROOT, 'bench', 'throughput.py'), '--pairs', 'bccd_frcnn', '--data', tiny_voc,
           '--teacher_weights', frcnn_teacher, '--modes', 'student', 'ppkd', 'ppdet', '--settings', 'previous',
           '--epochs', '2', '--warmup', '1', '--work_dir', str(tmp_path / 'work'), '--out', str(tmp_path / 'tp'),
           '--teacher_opt', 'num_classes=4', '-o', *opts]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert 'bccd_frcnn: ppdet has no DistillModel loss for this method: mode ppdet skipped' in out.stderr
    results = json.loads((tmp_path / 'tp.json').read_text())['results']
    assert [(r['pair'], r['mode'], r['iterations']) for r in results] == [('bccd_frcnn', m, 7)
                                                                         for m in ('student', 'ppkd')]
    text = (tmp_path / 'tp.md').read_text()
    assert '- bccd_frcnn, previous: ppkd step / student step' in text and 'ppdet step' not in text


def test_throughput_fixed_reader_keeps_the_pairs_reader_without_its_random_transforms(tiny_voc):
    """--fixed_reader: the pair's own TrainReader, its random transforms
    left out, so that ppkd reuses the teacher's outputs (its ppkd_no_reuse
    mode does not)."""
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    import throughput
    from ppkd import config as cfgmod
    from ppkd.teacher_cache import random_transforms
    spec = throughput.PAIRS['demo']
    given = cfgmod.load_config(spec['distill'], [f'dataset_dir={tiny_voc}'])['TrainReader']
    fixed = cfgmod.load_config(spec['distill'], [f'dataset_dir={tiny_voc}',
                                                 *throughput.fixed_reader_opts('demo', tiny_voc, [])])
    assert random_transforms(fixed) == []
    names = lambda key, reader: [next(iter(t)) for t in reader[key]]  # noqa: E731
    assert names('sample_transforms', fixed['TrainReader']) == ['Decode']
    assert names('batch_transforms', fixed['TrainReader']) == names('batch_transforms', given)
    assert fixed['TrainReader']['batch_transforms'][-1] == given['batch_transforms'][-1]  # the YOLO targets as given
    assert throughput.MODE_OPTS['ppkd_no_reuse'] == ['distill.reuse_teacher_outputs=false']


def test_throughput_ratios_give_each_ppkd_variant_against_the_student():
    """Step-time ratios pair each round's runs: ppkd's and its variants' over the student's."""
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    import throughput
    runs = [{'pair': 'p', 'setting': 'default', 'mode': mode, 'images_per_s': ips}
            for mode, rounds in (('student', (2.0, 3.0)), ('ppkd', (1.6, 2.4)), ('ppkd_int8', (1.9, 2.4)))
            for ips in rounds]
    assert throughput.ratios(runs, ['p'], ['default']) == [
        'p, default: ppkd step / student step 1.25 (1.25, 1.25); ppkd_int8 step / student step 1.15 (1.05, 1.25)']
