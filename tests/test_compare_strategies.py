"""The strategy comparison (ripu_jax.experiments.compare and its command line,
scripts/compare_strategies.py): aggregation against numpy, the protocol's configs and its
match with the stored benchmark runs, a smoke comparison, resume, errors."""

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ripu_jax import config_lib
from ripu_jax import train
from ripu_jax.experiments import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "compare_strategies.py")
STORED_RUNS = os.path.join(ROOT, "benchmarks", "compare_strategies", "runs")


def load_script():
  spec = importlib.util.spec_from_file_location("compare_strategies", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


cli = load_script()  # the command line: parse_args and main


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
      "all", "source_free", 0.0)
  with_source = compare.make_config(by_name["full_source"], 1, str(tmp_path), **kwargs)
  assert (with_source.active.kind, with_source.train.objective) == ("all", "ripu")
  assert with_source.model.init_from == ripu.model.init_from
  capped = compare.make_config(by_name["labor_spl_2.2"], 1, str(tmp_path), **kwargs)
  assert (capped.train.objective, capped.active.kind, capped.labor.spl_cap) == (
      "labor", "labor_spl", 0.022)
  # Same rounds, one interval later: LabOR's selector trains before its first round.
  assert tuple(capped.active.round_steps) == (60, 120, 180, 240, 300)
  assert capped.model.init_from == ripu.model.init_from
  assert compare.make_config(by_name["labor_spl"], 1, str(tmp_path), **kwargs).labor.spl_cap is None
  points = compare.make_config(by_name["labor_ppl_40"], 1, str(tmp_path), **kwargs)
  assert (points.active.kind, points.active.pixels) == ("labor_ppl", 40)
  # ELN after RIPU: RIPU-RA 2.2% on a schedule half as long again, the stage after step 600;
  # its baseline is the same run without the stage.
  stage = compare.make_config(by_name["ripu_eln_2.2"], 1, str(tmp_path), **kwargs)
  longer = compare.make_config(by_name["ripu_ra_2.2_long"], 1, str(tmp_path), **kwargs)
  assert stage.num_steps == stage.optim.max_iter == longer.num_steps == longer.optim.max_iter == 900
  assert (stage.train.objective, longer.train.objective) == ("ripu_eln", "ripu")
  assert (stage.eln.aux_from, stage.eln.self_training_from) == (600, 675)
  assert tuple(stage.active.round_steps) == tuple(longer.active.round_steps) == (
      0, 60, 120, 180, 240)
  assert stage.model.init_from == longer.model.init_from == ripu.model.init_from
  # Semi-supervised: ELN's demo on source + adapt steps, with or without its stages.
  semi = compare.make_config(by_name["eln_semi_1-8"], 1, str(tmp_path), **kwargs)
  alone = compare.make_config(by_name["supervised_1-8"], 1, str(tmp_path), **kwargs)
  assert semi.num_steps == alone.num_steps == 1200 and semi.seed == alone.seed == 1
  assert (semi.eln.aux_from, semi.eln.self_training_from) == (480, 720)
  assert alone.eln.aux_from == alone.eln.self_training_from == 1200
  assert semi.active.kind == alone.active.kind == "split" and not semi.model.init_from
  assert semi.active.labelled_fraction == 0.125
  strategies = {compare.make_config(s, 0, str(tmp_path), **kwargs).active.strategy
                for s in compare.SETTINGS if "_ra_" in s.name}
  assert strategies == {"ripu", "random", "entropy", "confidence", "impurity", "uncertainty"}
  # RIPU's region-shape ablation: the ViewAL plug-in's superpixel rounds, RIPU-RA's budget.
  shapes = compare.make_config(by_name["ripu_superpixels_2.2"], 1, str(tmp_path), **kwargs)
  assert (shapes.active.kind, shapes.active.strategy, shapes.active.ratio) == (
      "ra_superpixels", "ripu", 0.022)
  assert "ripu_jax.methods.viewal" in shapes.plugins
  assert tuple(shapes.active.round_steps) == tuple(ripu.active.round_steps)


def stored_config(seed, setting):
  with open(os.path.join(STORED_RUNS, f"seed{seed}", setting, train.CONFIG_FILE)) as f:
    return f.read()


def set_field(config, field, value):
  *groups, name = field.split(".")
  for group in groups:
    config = config.setdefault(group, {})
  config[name] = value


def test_protocol_survives_config_changes_that_keep_results():
  text = stored_config(0, "full")  # written before "full" became "all", with num_classes
  stored = json.loads(text)
  assert stored["active"]["kind"] == "full" and stored["model"]["num_classes"] == 19
  assert "plugins" not in stored and "hooks" not in stored
  now = copy.deepcopy(stored)
  now["active"]["kind"] = "all"
  del now["model"]["num_classes"]
  now["plugins"] = now["hooks"] = []
  now["model"]["init_from"] = "/elsewhere/seed0/source_only"
  now["progress_bars"] = True
  assert compare.protocol_differences(text, json.dumps(now)) == []
  assert compare._protocol(text) == compare._protocol(json.dumps(now))  # pylint: disable=protected-access
  assert compare.protocol_differences(json.dumps(now), text) == []
  # What changes a result still tells the runs apart, and the message names the field.
  for field, value in (("plugins", ["my_method"]), ("hooks", ["log_grads"]),
                       ("active.kind", "ra"), ("num_steps", 8),
                       ("model.kwargs.bn_epsilon", 1e-3), ("train.unknown_new_field", 1)):
    changed = copy.deepcopy(now)
    set_field(changed, field, value)
    differences = compare.protocol_differences(text, json.dumps(changed))
    assert len(differences) == 1 and differences[0].startswith(field + ": "), differences
  # The legacy rename is a value of active.kind only.
  other = copy.deepcopy(now)
  other["active"]["strategy"] = "full"
  assert compare.protocol_differences(text, json.dumps(other)) == [
      "active.strategy: 'ripu' (default) stored vs 'full' now"]


def test_a_new_config_field_at_its_default_keeps_stored_runs(monkeypatch):
  base_config = config_lib.base_config

  def with_new_field():
    config = base_config()
    config.train.new_weight = 0.0  # a field added later, its default the earlier behaviour
    return config

  monkeypatch.setattr(config_lib, "base_config", with_new_field)
  text = stored_config(1, "ripu_ra_2.2")
  now = json.loads(text)
  now["train"]["new_weight"] = 0.0
  assert compare.protocol_differences(text, json.dumps(now)) == []
  now["train"]["new_weight"] = 0.5
  assert compare.protocol_differences(text, json.dumps(now)) == [
      "train.new_weight: 0.0 (default) stored vs 0.5 now"]


@pytest.mark.parametrize("setting", [s.name for s in compare.SETTINGS
                                     if os.path.isdir(os.path.join(STORED_RUNS, "seed0", s.name))])
def test_stored_benchmark_runs_match_the_protocol(setting, tmp_path):
  # A rerun on a workdir holding benchmarks/compare_strategies/runs reuses them, not refuses.
  seeds = [seed for seed in (0, 1, 2)
           if os.path.isdir(os.path.join(STORED_RUNS, f"seed{seed}", setting))]
  for seed in seeds:
    config = compare.make_config(compare.SETTINGS_BY_NAME[setting], seed, str(tmp_path),
                                 source_steps=600, adapt_steps=600)
    assert compare.protocol_differences(stored_config(seed, setting),
                                        config.to_json_best_effort()) == []


def test_command_line_help_lists_the_flags():
  out = subprocess.run([sys.executable, SCRIPT, "--help"], check=True, capture_output=True,
                       text=True).stdout
  for flag in ("--workdir", "--seeds", "--settings", "--source-steps", "--adapt-steps",
               "--smoke", "--report"):
    assert flag in out
  assert "ripu_ra_2.2" in out and "(default 600; smoke 6)" in out


def test_smoke_comparison_writes_results_and_resumes(tmp_path, monkeypatch, capsys):
  workdir = str(tmp_path / "compare")
  args = ["--workdir", workdir, "--smoke", "--seeds", "0", "--settings", "ripu_ra_2.2,full"]
  rows = cli.main(args)
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
  again = cli.main(args)
  assert capsys.readouterr().out.count("(finished before)") == 3
  assert [r["miou"] for r in again] == [r["miou"] for r in rows]

  # --report tabulates finished runs and leaves out the others, training nothing.
  capsys.readouterr()
  reported = cli.main(args[:-1] + ["ripu_ra_2.2,full,random_ra_2.2", "--report"])
  out = capsys.readouterr().out
  assert "random_ra_2.2 (not finished: left out)" in out
  assert [r["miou"] for r in reported] == [r["miou"] for r in rows]
  assert not os.path.exists(compare.run_dir(workdir, 0, "random_ra_2.2"))

  # A changed protocol in the same workdir is refused instead of mixing results.
  with pytest.raises(ValueError, match="other settings"):
    cli.main(args + ["--adapt-steps", "8"])


def test_results_shared_without_checkpoints_retrain_the_source_model(tmp_path, capsys,
                                                                     monkeypatch):
  original = str(tmp_path / "original")
  first = {r["setting"]: r for r in cli.main(
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
  rows = {r["setting"]: r for r in cli.main(
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
    cli.parse_args(["--workdir", "x", "--settings", "ripu_ra_2.2,nonsense"])
  assert "unknown settings ['nonsense']" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.parse_args(["--workdir", "x", "--seeds", "a,b"])
  assert "--seeds must be comma-separated integers" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.parse_args(["--workdir", "x", "--adapt-steps", "3"])


def markdown_rows(text, name_header):
  """{row name: {header: cell}} of the first markdown table in text."""
  lines = [line for line in text.splitlines() if line.startswith("| ")]
  header = [cell.strip() for cell in lines[0].strip("| ").split(" | ")]
  rows = [dict(zip(header, (cell.strip() for cell in line.strip("| ").split(" | "))))
          for line in lines[1:]]
  return {row[name_header]: row for row in rows}


def test_the_table_is_the_report_commands_grouped_table(tmp_path, capsys):
  # Run folders as the comparison leaves them: config.json and run.json; one setting also with
  # the trainer's metrics.jsonl and final.json.
  from ripu_jax import report  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "compare")
  mious = {"source_only": [20.0, 24.0, 25.0], "ripu_ra_2.2": [40.0, 45.0, 47.0],
           "full": [60.0, 61.0, 65.0]}
  results = []
  for seed in range(3):
    for name, values in mious.items():
      run = fake_run(name, seed, values[seed], 0.0 if name == "source_only" else 0.023,
                     person=None if seed == 1 else 5.0 * seed)
      folder = compare.run_dir(workdir, seed, name)
      os.makedirs(folder)
      with open(os.path.join(folder, train.CONFIG_FILE), "w") as f:
        json.dump({"seed": seed, "num_steps": 10}, f)
      with open(os.path.join(folder, compare.RESULT_FILE), "w") as f:
        json.dump(run, f)
      if name == "ripu_ra_2.2":
        evaluation = {"step": 10, "miou": run["miou"], "iou": run["iou"],
                      "labelled_fraction": run["labelled_fraction"]}
        with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
          f.write(json.dumps({"kind": "eval", **evaluation}) + "\n")
        with open(os.path.join(folder, "final.json"), "w") as f:
          json.dump(evaluation, f)
      results.append(run)
  compare.write_outputs(results, workdir)
  table = open(os.path.join(workdir, "results.md")).read()
  folders = [compare.run_dir(workdir, seed, name) for seed in range(3) for name in mious]
  report.main(["--workdir", *folders, "--group", "name", "--classes",
               ",".join(compare.RARE_CLASSES), "--out", str(tmp_path / "report")])
  printed = capsys.readouterr().out
  ours, theirs = markdown_rows(table, "setting"), markdown_rows(printed, "run")
  assert list(ours) == ["source_only", "ripu_ra_2.2", "full"] and set(theirs) == set(ours)
  for name, row in ours.items():
    for header in ("labelled", "mIoU", "min per run") + compare.RARE_CLASSES:
      assert theirs[name][header] == row[header], (name, header)
    assert theirs[name]["runs"] == row["seeds"] == "3"
  assert ours["ripu_ra_2.2"]["mIoU"] == "44.0 ± 3.6"
  assert "Domain gap (full supervision - source only): 39.0 mIoU points." in table
