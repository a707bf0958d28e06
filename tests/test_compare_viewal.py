"""The ViewAL comparison's reading of runs: each round's best val mIoU, the 95% share."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location(
    "compare_viewal", os.path.join(ROOT, "scripts", "compare_viewal.py"))
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def _write_run(directory, evals):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "metrics.jsonl"), "w") as handle:
    for step, miou, share in evals:
      handle.write(json.dumps({"step": step, "kind": "eval", "miou": miou,
                               "labelled_fraction": share}) + "\n")
      handle.write(json.dumps({"step": step, "kind": "train", "total": 1.0}) + "\n")
  with open(os.path.join(directory, "final.json"), "w") as handle:
    json.dump({"miou": evals[-1][1]}, handle)


def test_each_round_keeps_its_best_evaluation(tmp_path):
  _write_run(str(tmp_path), [(100, 5.0, 0.01), (200, 9.0, 0.01), (300, 7.0, 0.01),
                             (400, 8.0, 0.03), (500, 12.0, 0.03), (600, 11.0, 0.05)])
  assert compare.round_curve(str(tmp_path)) == [(0.01, 9.0), (0.03, 12.0), (0.05, 11.0)]


@pytest.mark.parametrize("target, expected", [
    (8.0, 0.01),  # the first round already reaches it
    (10.5, 0.02),  # halfway between 9 at 1% and 12 at 3%
    (12.0, 0.03),
    (13.0, None),  # never reached
])
def test_share_reaching_a_target_is_linear_between_rounds(target, expected):
  curve = [(0.01, 9.0), (0.03, 12.0), (0.05, 11.0)]
  got = compare.share_reaching(curve, target)
  assert got == pytest.approx(expected) if expected is not None else got is None


def test_report_tables_the_settings_against_full_supervision(tmp_path):
  workdir = str(tmp_path / "runs")
  _write_run(compare.run_dir(workdir, "full", 0), [(100, 18.0, 1.0), (150, 20.0, 1.0)])
  _write_run(compare.run_dir(workdir, "viewal", 0), [(100, 10.0, 0.01), (200, 19.0, 0.03)])
  _write_run(compare.run_dir(workdir, "random", 0), [(100, 9.0, 0.01), (200, 15.0, 0.03)])
  summary = compare.report(workdir, [0], str(tmp_path / "out"))
  assert summary["full_miou"] == 20.0
  # 95% of full = 19.0: viewal reaches it at 3%, random does not.
  assert summary["settings"]["viewal"]["share_reaching_95"] == [pytest.approx(0.03)]
  assert summary["settings"]["random"]["share_reaching_95"] == [None]
  table = open(tmp_path / "out" / "results.md").read()
  assert "| viewal | 1 | 1.0%: 10.0, 3.0%: 19.0 | 3.0% (1 of 1 seeds) |" in table
  assert "| random | 1 | 1.0%: 9.0, 3.0%: 15.0 | not reached |" in table
  assert os.path.getsize(tmp_path / "out" / "results.png") > 0


def test_report_gives_spreads_and_viewals_lead_paired_by_seed(tmp_path):
  workdir = str(tmp_path / "runs")
  for seed, (v, e) in enumerate([(14.0, 11.0), (16.0, 17.0)]):
    _write_run(compare.run_dir(workdir, "viewal", seed), [(100, 10.0, 0.01), (200, v, 0.03)])
    _write_run(compare.run_dir(workdir, "entropy", seed), [(100, 10.0, 0.01), (200, e, 0.03)])
  summary = compare.report(workdir, [0, 1], str(tmp_path / "out"))
  assert summary["settings"]["viewal"]["std_curve"] == [0.0, pytest.approx(2 ** 0.5)]
  assert summary["differences"]["entropy"] == [[3.0, -1.0]]  # round 0 (same frames) left out
  table = open(tmp_path / "out" / "results.md").read()
  assert "| viewal | 2 | 1.0%: 10.0 ± 0.0, 3.0%: 15.0 ± 1.4 |" in table
  assert "| entropy | 2 | 1.0 ± 2.8 (1/2) |" in table
