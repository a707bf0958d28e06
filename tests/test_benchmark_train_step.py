"""scripts/benchmark_train_step.py end to end on a tiny network: every objective it offers."""

import importlib.util
import json
import math
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
  spec = importlib.util.spec_from_file_location(
      "benchmark_train_step", os.path.join(ROOT, "scripts", "benchmark_train_step.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_compare_times_each_objective_in_its_own_process(tmp_path, capsys):
  output = str(tmp_path / "compare.json")
  results = _script().main(["--depth=18", "--width-multiplier=0.125", "--height=64",
                            "--width=64", "--steps=1", "--compare=ripu,labor_shared,eln",
                            f"--output={output}"])
  assert [r["objective"] for r in results] == ["ripu", "labor_shared", "eln"]
  assert results[2]["model"] == "eln_deeplabv3plus"
  for result in results:
    assert math.isfinite(result["final_loss"]) and result["seconds_per_step_median"] > 0
    assert result["peak_rss_mib"] > 0 and len(result["step_seconds"]) == 1
  with open(output) as handle:
    stored = json.load(handle)
  assert stored["results"] == results and "--compare=ripu,labor_shared,eln" in stored["command"]
  table = capsys.readouterr().out
  assert "| ripu |" in table and "| labor_shared |" in table and "| eln |" in table
