"""scripts/compare_strategies.py: aggregation against numpy, a smoke comparison, resume, errors."""

import importlib.util
import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from ripu_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script():
  path = os.path.join(ROOT, "scripts", "compare_strategies.py")
  spec = importlib.util.spec_from_file_location("compare_strategies", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up
  spec.loader.exec_module(module)
  return module


compare = load_script()


def fake_run(setting, seed, miou, fraction, person=None):
  iou = {name: 10.0 * seed for name in compare.RARE_CLASSES}
  iou["person"] = person
  return {"setting": setting, "seed": seed, "seconds": 60.0 * (seed + 1), "miou": miou,
          "labelled_fraction": fraction, "iou": iou, "step": 10}


def test_summary_is_mean_and_sample_std_over_seeds():
  mious = {"source_only": [20.0, 24.0, 25.0], "full": [60.0, 61.0, 65.0],
           "ripu_ra_2.2": [40.0, 45.0, 47.0]}
  runs = [fake_run(name, seed, value, 0.0 if name == "source_only" else 0.023, person=None
                   if seed == 1 else 5.0 * seed)
          for name in ("full", "ripu_ra_2.2", "source_only")
          for seed, value in enumerate(mious[name])]
  rows = compare.summarize(runs)
  assert [r["setting"] for r in rows] == ["source_only", "ripu_ra_2.2", "full"]  # table order
  for row in rows:
    values = np.array(mious[row["setting"]])
    np.testing.assert_allclose(row["miou"], values.mean())
    np.testing.assert_allclose(row["miou_std"], np.std(values, ddof=1))
    assert row["seeds"] == [0, 1, 2]
    np.testing.assert_allclose(row["seconds"], 120.0)
    np.testing.assert_allclose(row["rare_iou"]["pole"], (10.0, 10.0))
    # A class absent from a run's val images (IoU None) is left out of its mean, not zeroed.
    np.testing.assert_allclose(row["rare_iou"]["person"], (5.0, np.std([0.0, 10.0], ddof=1)))
  np.testing.assert_allclose(compare.domain_gap(rows), np.mean(mious["full"]) -
                             np.mean(mious["source_only"]))
  table = compare.format_table(rows)
  assert "| ripu_ra_2.2 | RIPU (RA) | 2.2% (regions) | 2.300% | 44.0 ± 3.6 |" in table
  assert "Domain gap (full supervision - source only): 39.0 mIoU points." in table


def test_single_seed_has_zero_std_and_missing_bound_no_gap():
  rows = compare.summarize([fake_run("ripu_ra_2.2", 0, 30.0, 0.02)])
  assert rows[0]["miou_std"] == 0.0
  assert compare.domain_gap(rows) is None


def test_configs_follow_the_protocol(tmp_path):
  kwargs = dict(source_steps=600, adapt_steps=600)
  by_name = compare.SETTINGS_BY_NAME
  source = compare.make_config(by_name["source_only"], 1, str(tmp_path), **kwargs)
  assert (source.train.objective, source.active.kind, source.num_steps) == (
      "source_only", "none", 600)
  assert source.train.consistency_weight == 0.0 and source.seed == 1
  ripu = compare.make_config(by_name["ripu_ra_2.2"], 1, str(tmp_path), **kwargs)
  assert ripu.model.init_from == compare.run_dir(str(tmp_path), 1, "source_only")
  assert tuple(ripu.active.round_steps) == (0, 60, 120, 180, 240)
  assert (ripu.active.kind, ripu.active.strategy, ripu.active.ratio) == ("ra", "ripu", 0.022)
  assert ripu.optim.max_iter == ripu.num_steps == 600
  pa = compare.make_config(by_name["ripu_pa_40"], 1, str(tmp_path), **kwargs)
  assert (pa.active.kind, pa.active.radius, pa.active.pixels) == ("pa", 4, 40)
  full = compare.make_config(by_name["full"], 1, str(tmp_path), **kwargs)
  assert (full.active.kind, full.train.objective, full.train.negative_weight) == (
      "full", "source_free", 0.0)
  with_source = compare.make_config(by_name["full_source"], 1, str(tmp_path), **kwargs)
  assert (with_source.active.kind, with_source.train.objective) == ("full", "ripu")
  assert with_source.model.init_from == ripu.model.init_from
  strategies = {compare.make_config(s, 0, str(tmp_path), **kwargs).active.strategy
                for s in compare.SETTINGS if "_ra_" in s.name}
  assert strategies == {"ripu", "random", "entropy", "confidence", "impurity", "uncertainty"}


def test_smoke_comparison_writes_results_and_resumes(tmp_path, monkeypatch, capsys):
  workdir = str(tmp_path / "compare")
  args = ["--workdir", workdir, "--smoke", "--seeds", "0", "--settings", "ripu_ra_2.2,full"]
  rows = compare.main(args)
  assert [r["setting"] for r in rows] == ["source_only", "ripu_ra_2.2", "full"]
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert len(results["runs"]) == 3
  by_name = {r["setting"]: r for r in results["runs"]}
  assert by_name["source_only"]["labelled_fraction"] == 0.0
  assert by_name["full"]["labelled_fraction"] == 1.0
  assert 0.022 <= by_name["ripu_ra_2.2"]["labelled_fraction"] < 0.04
  for run in results["runs"]:  # the stored result is the trainer's final evaluation
    final = json.load(open(os.path.join(compare.run_dir(workdir, 0, run["setting"]),
                                        "final.json")))
    assert final["miou"] == run["miou"] and final["step"] == 6
  assert results["domain_gap"] == pytest.approx(
      by_name["full"]["miou"] - by_name["source_only"]["miou"])
  table = open(os.path.join(workdir, "results.md")).read()
  assert table.count("\n| ") == 3 and "| full | full supervision | 100% |" in table
  with Image.open(os.path.join(workdir, "miou_vs_budget.png")) as image:
    assert image.size[0] > 800 and image.size[1] > 400

  # Rerunning trains nothing: every run has finished.
  def no_training(*unused_args, **unused_kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(train, "train_and_evaluate", no_training)
  capsys.readouterr()
  again = compare.main(args)
  assert capsys.readouterr().out.count("(finished before)") == 3
  assert [r["miou"] for r in again] == [r["miou"] for r in rows]

  # --report tabulates finished runs and leaves out the others, training nothing.
  capsys.readouterr()
  reported = compare.main(args[:-1] + ["ripu_ra_2.2,full,random_ra_2.2", "--report"])
  out = capsys.readouterr().out
  assert "random_ra_2.2 (not finished: left out)" in out
  assert [r["miou"] for r in reported] == [r["miou"] for r in rows]
  assert not os.path.exists(compare.run_dir(workdir, 0, "random_ra_2.2"))

  # A changed protocol in the same workdir is refused instead of mixing results.
  with pytest.raises(ValueError, match="other settings"):
    compare.main(args + ["--adapt-steps", "8"])


def test_results_shared_without_checkpoints_retrain_the_source_model(tmp_path, capsys,
                                                                     monkeypatch):
  original = str(tmp_path / "original")
  first = {r["setting"]: r for r in compare.main(
      ["--workdir", original, "--smoke", "--seeds", "0", "--settings", "ripu_ra_2.2"])}
  # Share the finished runs elsewhere as their config.json and run.json alone.
  shared = str(tmp_path / "shared")
  for setting in ("source_only", "ripu_ra_2.2"):
    os.makedirs(compare.run_dir(shared, 0, setting))
    for name in (train.CONFIG_FILE, compare.RESULT_FILE):
      shutil.copy(os.path.join(compare.run_dir(original, 0, setting), name),
                  os.path.join(compare.run_dir(shared, 0, setting), name))
  capsys.readouterr()
  monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # progress bars on: same protocol
  rows = {r["setting"]: r for r in compare.main(
      ["--workdir", shared, "--smoke", "--seeds", "0", "--settings", "ripu_ra_2.2,full"])}
  out = capsys.readouterr().out
  assert "source-only model is missing" in out and "WARNING" not in out
  assert out.count("(finished before)") == 2  # source_only and ripu_ra_2.2 are not redone
  assert rows["source_only"]["miou"] == first["source_only"]["miou"]
  assert rows["ripu_ra_2.2"]["miou"] == first["ripu_ra_2.2"]["miou"]
  assert compare._has_checkpoint(compare.run_dir(shared, 0, "source_only"))  # pylint: disable=protected-access
  assert "full" in rows


def test_bad_arguments_say_what_is_allowed(capsys):
  with pytest.raises(SystemExit):
    compare.parse_args(["--workdir", "x", "--settings", "ripu_ra_2.2,nonsense"])
  assert "unknown settings ['nonsense']" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    compare.parse_args(["--workdir", "x", "--seeds", "a,b"])
  assert "--seeds must be comma-separated integers" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    compare.parse_args(["--workdir", "x", "--adapt-steps", "3"])
