"""The step-time benchmark runs end to end (tiny sizes; its numbers are
measured in bench/, not asserted here)."""
import json
import os
import subprocess
import sys

from conftest import BCCD, ROOT


def test_step_time_runs_and_reports_json(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, 'bench', 'step_time.py'), '--input_size', '64', '--steps', '2',
           '--warmup', '0', '--modes', 'student', 'ppkd', 'ppdet', 'teacher', '--json', '--dataset',
           BCCD if os.path.isdir(BCCD) else str(tmp_path / 'none')]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    payload = json.loads(out.stdout)
    modes = [r['mode'] for r in payload['results']]
    assert modes == ['student', 'ppkd', 'ppdet', 'teacher']
    for r in payload['results']:
        assert r['steps'] == 2 and r['median_s'] > 0 and r['peak_rss_mb'] > 100
    assert payload['settings']['input_size'] == 64
