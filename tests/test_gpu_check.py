"""scripts/gpu_check.sh and gpu_check.py: the no-GPU message, and a whole dry run on the CPU."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_without_a_gpu_the_check_says_so_in_one_line(tmp_path):
  env = dict(os.environ, PATH=f"{tmp_path}:/usr/bin:/bin")  # no nvidia-smi on this PATH
  done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh")], env=env,
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and "no NVIDIA GPU" in lines[0] and "--cpu" in lines[0]


def test_the_dry_run_goes_through_every_step(tmp_path):
  out = tmp_path / "check.json"
  done = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "gpu_check.py"), "--cpu",
       "--tests=tests/test_upsample.py", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stdout + done.stderr
  report = json.loads(out.read_text())
  assert report["mode"] == "cpu dry run" and report["devices"]["backend"] == "cpu"
  assert report["failed"] == []
  steps = report["steps"]
  assert set(steps) == {"acquisition_tests", "acquisition_benchmark", "train_step_float32",
                        "train_step_bfloat16"}
  assert "passed" in steps["acquisition_tests"]["output_tail"]
  rows = steps["acquisition_benchmark"]["rows"]
  assert {row["impl"] for row in rows} == {"cpu", "reduce_window"}
  assert {row["path"] for row in rows} == {"network", "label"}
  for dtype in ("float32", "bfloat16"):
    result = steps[f"train_step_{dtype}"]["result"]
    assert result["dtype"] == dtype and result["seconds_per_step_median"] > 0
    assert (result["source_height"], result["height"]) == (72, 64)
