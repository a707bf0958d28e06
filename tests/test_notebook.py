"""notebooks/quickstart.ipynb: paired with its readable source, free of outputs, and it runs.

The notebook is executed as a user would, in a python3 kernel started from notebooks/, on
the smoke config (RIPU_NOTEBOOK_SMOKE=1) with a temporary workdir; a cell that fails fails
the test with the cell and its traceback.
"""

import json
import os
import re

import jupytext
import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
IPYNB = os.path.join(NOTEBOOKS, "quickstart.ipynb")
SOURCE = os.path.join(NOTEBOOKS, "quickstart.py")
SYNC = ("edit notebooks/quickstart.py (or the notebook), then run "
        "`jupytext --sync notebooks/quickstart.ipynb` and commit both files")
ANSI_ESCAPE = r"\x1b\[[0-9;]*m"  # the colours of IPython's tracebacks


def _cells(path):
  return [(cell.cell_type, cell.source.strip()) for cell in jupytext.read(path).cells]


def test_notebook_and_its_paired_source_hold_the_same_cells():
  notebook, source = _cells(IPYNB), _cells(SOURCE)
  for number, (a, b) in enumerate(zip(notebook, source)):
    assert a == b, (f"cell {number} differs between quickstart.ipynb and quickstart.py: {SYNC}"
                    f"\n--- ipynb ({a[0]}):\n{a[1]}\n--- py ({b[0]}):\n{b[1]}")
  assert len(notebook) == len(source), (
      f"quickstart.ipynb has {len(notebook)} cells, quickstart.py {len(source)}: {SYNC}")
  formats = nbformat.read(IPYNB, as_version=4).metadata.get("jupytext", {}).get("formats")
  assert formats == "ipynb,py:percent", f"the pairing metadata is {formats!r}: {SYNC}"


def test_committed_notebook_has_no_outputs():
  notebook = nbformat.read(IPYNB, as_version=4)
  dirty = [number for number, cell in enumerate(notebook.cells) if cell.cell_type == "code" and (
      cell.outputs or cell.execution_count is not None)]
  assert not dirty, (f"cells {dirty} of quickstart.ipynb keep outputs or execution counts: "
                     "rewrite it from its source without them "
                     "(`jupytext --to ipynb notebooks/quickstart.py`) before committing")


def test_notebook_runs_on_the_smoke_config(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  monkeypatch.setenv("RIPU_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("RIPU_NOTEBOOK_WORKDIR", workdir)
  notebook = nbformat.read(IPYNB, as_version=4)
  client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=900,
                                   startup_timeout=300,
                                   resources={"metadata": {"path": NOTEBOOKS}})
  failure = None
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as error:
    failure = re.sub(ANSI_ESCAPE, "", str(error))  # the cell and its traceback
  if failure:
    executed = str(tmp_path / "quickstart.executed.ipynb")  # all outputs, for a closer look
    nbformat.write(notebook, executed)
    pytest.fail(f"a cell of notebooks/quickstart.ipynb failed (executed notebook: {executed})"
                f"\n{failure}", pytrace=False)
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
  assert len(images) >= 2, "expected the round's overlay and progress.png shown inline"
  text = "".join(o.text for o in outputs if o.output_type == "stream")
  assert "demo.py:smoke" in text
  with open(os.path.join(workdir, "final.json")) as f:
    final = json.load(f)
  assert re.search(rf"^mIoU {final['miou']:.1f} on target val at step {final['step']}", text,
                   re.MULTILINE), text
