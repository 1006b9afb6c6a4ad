"""glibc's heap kept between steps: a freed burst of large blocks comes
back without page faults; `cpu_heap: system` and a user's own malloc
settings leave it to glibc."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from ppkd import heap
from ppkd.errors import PPKDError

needs_glibc = pytest.mark.skipif(heap._glibc() is None, reason='the C library is not glibc')

# Three 24 MB blocks allocated and freed together, five times: the page
# faults of each round.
BURSTS = '''
import json, resource, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == 'keep':
    from ppkd.heap import keep_freed_heap
    assert keep_freed_heap({})
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [np.ones(3 << 20) for _ in range(3)]
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
'''


def _faults(mode):
    env = {k: v for k, v in os.environ.items() if k not in heap.USER_SETTINGS}
    out = subprocess.run([sys.executable, '-c', BURSTS, ROOT, mode], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.smoke
@needs_glibc
def test_a_freed_burst_comes_back_without_page_faults():
    # By default glibc hands the burst back to the system and faults it in again each round.
    assert min(_faults('default')[1:]) > 200
    assert max(_faults('keep')[1:]) < 20


def test_a_users_own_malloc_setting_is_left_alone(monkeypatch):
    monkeypatch.setenv('MALLOC_TRIM_THRESHOLD_', '131072')
    assert not heap.applies_here()
    assert heap.keep_freed_heap({}) is False


def test_cpu_heap_system_sets_nothing_and_a_bad_value_is_named():
    assert heap.keep_freed_heap({'cpu_heap': 'system'}) is False
    with pytest.raises(PPKDError, match=r"x.yml: cpu_heap must be keep or system; got 'always'"):
        heap.keep_freed_heap({'cpu_heap': 'always', 'config_path': 'x.yml'})
