"""The README's "Write your own method" example, run as a user would."""

import json
import os
import subprocess
import sys

from ripu_jax.metrics_log import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plugin_outside_the_package_is_chosen_by_name(tmp_path):
  workdir = str(tmp_path / "run")
  env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "examples"))
  command = [sys.executable, "-m", "ripu_jax.main", "--config",
             os.path.join(ROOT, "configs", "demo.py") + ":smoke", "--workdir", workdir,
             "--config.progress_bars=False", "--config.plugins=('my_method',)",
             "--config.active.strategy=margin", "--config.train.objective=ripu_entropy",
             "--config.hooks=('round_log',)"]
  process = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True)
  assert process.returncode == 0, process.stdout + process.stderr
  assert "with 'margin'" in process.stdout + process.stderr
  trains = [r for r in read_metrics(workdir) if r["kind"] == "train"]
  assert trains and all(r["target_entropy"] > 0 for r in trains)
  log = [json.loads(line) for line in open(os.path.join(workdir, "round_log.jsonl"))]
  assert [sorted(r) for r in log] == [["miou", "step"], ["bought", "labelled", "step", "unit"],
                                      ["miou", "step"]]
  assert log[1]["bought"] > 0 and log[1]["unit"] == "regions"
  picks = json.load(open(os.path.join(workdir, "rounds", "1", "picks.json")))
  assert picks["strategy"] == "margin"
  # Without the plugin the names are unknown, and the error says where they come from.
  bare = subprocess.run(command[:-5] + ["--config.active.strategy=margin"], cwd=str(tmp_path),
                        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=""))
  assert bare.returncode != 0 and "active.strategy must be one of" in bare.stderr
