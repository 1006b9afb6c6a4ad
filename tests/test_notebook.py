"""notebooks/quickstart.ipynb runs top to bottom (at a tiny schedule): any
cell error fails the test."""
import os

import nbformat
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'quickstart.ipynb')


def test_quickstart_notebook_runs_every_cell(tmp_path, monkeypatch):
    monkeypatch.setenv('PPKD_NOTEBOOK_TINY', '1')
    monkeypatch.setenv('PPKD_NOTEBOOK_OUT', str(tmp_path))  # not over a user's output/notebook
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name='python3', resources={'metadata': {'path': ROOT}})
    client.execute()
    outputs = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
    assert 'distillation closes' in outputs or 'mAP: teacher' in outputs
    assert any(o.get('output_type') == 'display_data' and 'image/png' in o.get('data', {})
               for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
