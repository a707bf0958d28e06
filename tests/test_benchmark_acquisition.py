"""scripts/benchmark_acquisition.py on a tiny image: it runs, and its parity checks hold."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_benchmark_writes_a_consistent_table(tmp_path):
  out = tmp_path / "acquisition.json"
  subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "benchmark_acquisition.py"),
       "--sizes", "48x96", "--runs", "3", "--baseline-runs", "1", "--baseline-pa-runs", "1",
       "--out", str(out)],
      check=True, cwd=ROOT, capture_output=True, text=True, timeout=600)
  result = json.loads(out.read_text())
  cases = ["RA k=1 2.2%", "RA k=1 5%", "PA k=25 40px", "PA k=32 40px"]
  impls = ["cpu", "reduce_window"]  # both by default, on whatever machine it runs
  assert [(row["path"], row["case"], row["impl"]) for row in result["rows"]] == (
      [(path, case, impl) for path in ("network", "label") for case in cases
       for impl in impls])
  for row in result["rows"]:
    # The trainer's path starts at the network's output (the input, 48x96, over stride 8).
    assert row["logits_size"] == ("6x12" if row["path"] == "network" else "48x96"), row
    # ripu_jax's greedy on the release-style score map makes the release-style loop's picks,
    # and the two score maps agree.
    assert row["same_picks_on_release_scores"], row
    assert row["max_abs_score_diff_vs_release_style"] < 1e-5, row
    assert row["picks_made"] == row["picks_per_image"] > 0, row
    fastest, slowest = row["ripu_jax_total_ms_min_max"]
    assert 0 < fastest <= row["ripu_jax_total_ms"] <= slowest, row
    assert 0 < row["ripu_jax_extra_memory_bytes"]
    assert 0 < row["floor_entropy_ms"], row  # timed with each case, in turns
  for impl in impls:
    assert f"| 48x96 | network (6x12) | PA k=32 40px | {impl} |" in result["table"]
    assert f"| 48x96 | label (48x96) | PA k=32 40px | {impl} |" in result["table"]


def test_release_style_columns_can_be_reused(tmp_path):
  earlier = {"meta": {"command": "python scripts/benchmark_acquisition.py --sizes 48x96"},
             "rows": [{"size": "48x96", "case": "RA k=1 2.2%", "release_style_score_ms": 7.0,
                       "release_style_select_ms": 3.0, "release_style_total_ms": 10.0,
                       "release_style_runs": 3, "same_picks_on_release_scores": True,
                       "max_abs_score_diff_vs_release_style": 1e-7,
                       "ripu_jax_total_ms": 999.0}]}
  (tmp_path / "earlier.json").write_text(json.dumps(earlier))
  out = tmp_path / "again.json"
  subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "benchmark_acquisition.py"),
       "--sizes", "48x96", "--runs", "3", "--baseline-runs", "0", "--baseline-pa-runs", "0",
       "--baselines-from", str(tmp_path / "earlier.json"), "--out", str(out)],
      check=True, cwd=ROOT, capture_output=True, text=True, timeout=600)
  result = json.loads(out.read_text())
  rows = {(row["path"], row["case"], row["impl"]): row for row in result["rows"]}
  # An earlier row without a path is the label path's, without an impl the "cpu" impl's
  # (earlier versions timed only those).
  reused = rows[("label", "RA k=1 2.2%", "cpu")]
  assert reused["release_style_total_ms"] == 10.0
  assert reused["max_abs_score_diff_vs_release_style"] == 1e-7
  assert reused["ripu_jax_total_ms"] != 999.0  # measured, not copied
  # The release-style timings hold for any impl; the score comparison was made with cpu's.
  other = rows[("label", "RA k=1 2.2%", "reduce_window")]
  assert other["release_style_total_ms"] == 10.0 and other["same_picks_on_release_scores"]
  assert "max_abs_score_diff_vs_release_style" not in other
  for impl in ("cpu", "reduce_window"):
    assert "release_style_total_ms" not in rows[("network", "RA k=1 2.2%", impl)]
    assert "release_style_total_ms" not in rows[("label", "PA k=32 40px", impl)]  # not in it
  assert result["meta"]["release_style_command"] == earlier["meta"]["command"]
  assert "made with `python scripts/benchmark_acquisition.py --sizes 48x96`" in result["table"]
