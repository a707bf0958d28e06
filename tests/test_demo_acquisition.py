"""The acquisition demo (the quick start's first command) runs and RIPU beats random on it."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_runs_and_targets_errors(tmp_path):
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "demo_acquisition.py"), "--workdir",
       str(tmp_path), "--images", "4", "--rounds", "2"],
      capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  ripu, rand = summary["rounds"]["ripu"], summary["rounds"]["random"]
  assert len(ripu) == len(rand) == 2
  # Same budget (squares clipped at the image border make areas differ slightly).
  assert abs(ripu[-1]["labelled_fraction"] - rand[-1]["labelled_fraction"]) < 0.001
  assert ripu[-1]["labelled_fraction"] > 0.005
  # Region impurity x uncertainty concentrates labels where the model is wrong.
  assert ripu[-1]["labelled_on_model_errors"] > 2 * rand[-1]["labelled_on_model_errors"]
  assert sorted(p.name for p in tmp_path.glob("overlay_*.png")) == [
      "overlay_target_train_00000.png", "overlay_target_train_00001.png"]
