"""ripu_jax.report: a workdir's progress.png and the runs-side-by-side table, plot and command
line, on hand-made workdirs (no training)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ripu_jax import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STREET = {"road": 80.0, "person": None, "pole": 10.0}  # None: a class absent from val


def write_run(path, *, evals=(), rounds=(), num_steps=1000, seed=0, final=False, run_json=None,
              stamps=False, config=True):
  """A workdir as the trainer leaves it: evals as (step, mIoU, labelled fraction, iou),
  rounds as (step, round, labelled fraction); final.json holds the last eval."""
  os.makedirs(path, exist_ok=True)
  if config:
    with open(os.path.join(path, "config.json"), "w") as f:
      json.dump({"num_steps": num_steps, "seed": seed}, f)
  records = []
  for step in range(0, num_steps + 1, 100):
    records.append({"step": step, "kind": "train", "total": 1.0})
  for step, miou, fraction, iou in evals:
    records.append({"step": step, "kind": "eval", "miou": miou, "miou_13": miou + 1.0,
                    "iou": iou, "labelled_fraction": fraction})
  for step, number, fraction in rounds:
    records.append({"step": step, "kind": "round", "round": number, "picks": 17,
                    "labelled_fraction": fraction})
  records.sort(key=lambda r: r["step"])  # stable: eval before round at a step, as trained
  if stamps:
    for number, record in enumerate(records):
      record["time"] = 1000.0 + 30.0 * number
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  if final:
    step, miou, fraction, iou = evals[-1]
    with open(os.path.join(path, "final.json"), "w") as f:
      json.dump({"step": step, "miou": miou, "iou": iou, "labelled_fraction": fraction}, f)
  if run_json is not None:
    with open(os.path.join(path, "run.json"), "w") as f:
      json.dump(run_json, f)
  return str(path)


def ripu_like(path, *, seed=0, final=True, **kwargs):
  """Evaluations before five rounds and at the end, as the demo's schedule."""
  evals = [(400 + 100 * r, 24.0 + 5 * r, 0.005 * r, dict(STREET, road=70.0 + r))
           for r in range(5)]
  evals.append((1000, 50.0, 0.025, STREET))
  rounds = [(400 + 100 * r, r + 1, 0.005 * (r + 1)) for r in range(5)]
  return write_run(path, evals=evals, rounds=rounds, seed=seed, final=final, **kwargs)


def marks(axis):
  """The round labels drawn on an axis (text artists r0, r1, ...)."""
  return [t.get_text() for t in axis.texts if t.get_text().startswith("r")]


# ------------------------------------------------------------------ progress.png


def test_progress_plot_with_rounds(tmp_path):
  workdir = ripu_like(tmp_path / "run")
  fig = report.progress_figure(workdir)
  steps_axis, fraction_axis, class_axis = fig.axes
  miou = steps_axis.lines[0]
  np.testing.assert_allclose(miou.get_xdata(), [400, 500, 600, 700, 800, 1000])
  np.testing.assert_allclose(miou.get_ydata(), [24, 29, 34, 39, 44, 50])
  assert steps_axis.lines[1].get_label() == "miou_13"  # another class-set mean, dashed
  assert marks(steps_axis) == ["r1", "r2", "r3", "r4", "r5"]
  round_lines = [line.get_xdata()[0] for line in steps_axis.lines[2:]]
  assert round_lines == [400, 500, 600, 700, 800]
  # Against the labelled fraction (%): each eval at its fraction, rounds at what they reached.
  np.testing.assert_allclose(fraction_axis.lines[0].get_xdata(), [0, 0.5, 1, 1.5, 2, 2.5])
  np.testing.assert_allclose([line.get_xdata()[0] for line in fraction_axis.lines[1:]],
                             [0.5, 1, 1.5, 2, 2.5])
  assert marks(fraction_axis) == ["r1", "r2", "r3", "r4", "r5"]
  # The last evaluation's classes as bars, first class on top; an absent class has no bar.
  assert [t.get_text() for t in class_axis.get_yticklabels()] == ["pole", "person", "road"]
  assert [p.get_width() for p in class_axis.patches] == [10.0, 0.0, 80.0]
  assert "n/a" in [t.get_text() for t in class_axis.texts]
  assert "step 1000" in class_axis.get_title()

  path = report.write_progress_plot(workdir)
  assert path == os.path.join(workdir, "progress.png")
  with Image.open(path) as image:
    assert image.size[0] >= 1200
  assert sorted(os.listdir(workdir)) == ["config.json", "final.json", "metrics.jsonl",
                                         "progress.png"]  # no temporary file left


@pytest.mark.parametrize("evals", [0, 1])
def test_progress_plot_without_rounds_and_with_few_evaluations(tmp_path, evals):
  labels = {"background": 90.0, "cat": 40.0, "dog": 30.5}  # not a street label space
  workdir = write_run(tmp_path / "run", num_steps=300,
                      evals=[(300, 53.5, 0.1, labels)][:evals])
  fig = report.progress_figure(workdir)
  steps_axis, fraction_axis, class_axis = fig.axes
  assert not marks(steps_axis) and not marks(fraction_axis)
  assert steps_axis.get_xlim()[1] >= 300  # the whole run's steps, however far it has come
  texts = [t.get_text() for axis in fig.axes for t in axis.texts]
  if evals:
    assert [t.get_text() for t in class_axis.get_yticklabels()] == ["dog", "cat", "background"]
    assert [p.get_width() for p in class_axis.patches] == [30.5, 40.0, 90.0]
    assert "no evaluation yet" not in texts
    assert "mIoU 53.5" in fig.get_suptitle()
  else:
    assert texts.count("no evaluation yet") == 2 and not class_axis.patches
  assert os.path.exists(report.write_progress_plot(workdir))


def test_progress_plot_of_a_fresh_workdir_and_a_missing_one(tmp_path):
  (tmp_path / "fresh").mkdir()  # nothing written yet: a picture saying so
  assert os.path.exists(report.write_progress_plot(str(tmp_path / "fresh")))
  with pytest.raises(OSError):
    report.write_progress_plot(str(tmp_path / "missing"))
  assert report.update_progress_plot(str(tmp_path / "missing")) is None  # warns, no raise


def test_progress_plot_marks_round_zero_and_rounds_at_one_step(tmp_path):
  workdir = write_run(tmp_path / "semi", num_steps=200, rounds=[(0, 0, 0.125), (0, 1, 0.13)],
                      evals=[(200, 40.0, 0.13, {"a": 40.0})])
  steps_axis, _, _ = report.progress_figure(workdir).axes
  assert marks(steps_axis) == ["r0,r1"]


# ------------------------------------------------------------------ runs side by side


def test_load_run_result_status_and_time(tmp_path):
  running = report.load_run(ripu_like(tmp_path / "running", final=False, stamps=True))
  assert not running["finished"] and running["step"] == 1000 and running["miou"] == 50.0
  assert running["rounds"] == 5 and running["labelled_fraction"] == 0.025
  assert running["means"] == {"miou": 50.0, "miou_13": 51.0}
  assert running["seconds"] == 30.0 * (11 + 6 + 5 - 1)  # first to last stamped record
  assert [s for s, _, _ in running["curve"]] == [400, 500, 600, 700, 800, 1000]

  done = report.load_run(ripu_like(tmp_path / "done", seed=3))
  assert done["finished"] and done["seed"] == 3 and done["seconds"] is None

  # Extended after it finished: final.json is older than the metrics' last evaluation.
  extended = ripu_like(tmp_path / "extended")
  with open(os.path.join(extended, "config.json"), "w") as f:
    json.dump({"num_steps": 2000}, f)
  assert not report.load_run(extended)["finished"]  # final.json at 1000 of 2000 steps
  with open(os.path.join(extended, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": 1500, "kind": "eval", "miou": 55.0, "iou": {},
                        "labelled_fraction": 0.025}) + "\n")
  run = report.load_run(extended)
  assert (run["step"], run["miou"], run["finished"]) == (1500, 55.0, False)

  # Shared comparison runs: config.json and run.json alone.
  shared = tmp_path / "shared"
  shared.mkdir()
  (shared / "config.json").write_text(json.dumps({"num_steps": 600, "seed": 1}))
  (shared / "run.json").write_text(json.dumps({
      "setting": "shared", "seed": 2, "seconds": 90.0, "miou": 40.0,
      "labelled_fraction": 0.02, "iou": {"road": 70.0}, "step": 600}))
  run = report.load_run(str(shared))
  assert run["finished"] and run["seed"] == 2 and run["seconds"] == 90.0
  assert run["rounds"] is None and run["curve"] == [(600, 40.0, 0.02)]

  started = report.load_run(write_run(tmp_path / "started", num_steps=1000,
                                      rounds=[(0, 0, 0.125)]))
  assert np.isnan(started["miou"]) and not started["finished"]
  assert started["step"] == 1000 and started["labelled_fraction"] == 0.125
  assert started["rounds"] == 0  # round 0 labels before training; it is no selection round


def three_seeds(tmp_path, name="ripu", mious=(40.0, 45.0, 47.0)):
  """The same setting at seeds 0-2 (seed<s>/<name>), with run.json's wall clock."""
  paths = []
  for seed, miou in enumerate(mious):
    iou = {"road": 70.0 + seed, "person": None if seed == 1 else 5.0 * seed}
    path = write_run(tmp_path / f"seed{seed}" / name, num_steps=600, seed=seed,
                     evals=[(600, miou, 0.02 + 0.001 * seed, iou)], final=True)
    with open(os.path.join(path, "run.json"), "w") as f:
      json.dump({"setting": name, "seed": seed, "seconds": 60.0 * (seed + 1), "miou": miou,
                 "labelled_fraction": 0.02 + 0.001 * seed, "iou": iou, "step": 600}, f)
    paths.append(path)
  return paths


def test_grouped_table_is_mean_and_sample_std_by_hand(tmp_path):
  paths = three_seeds(tmp_path)
  rows = report.summarize(report.load_runs(paths), group="name")
  assert len(rows) == 1
  row = rows[0]
  # mean 44, sample std sqrt((16 + 1 + 9) / 2) = sqrt(13)
  assert row["miou"] == pytest.approx(44.0) and row["miou_std"] == pytest.approx(13 ** 0.5)
  assert row["iou"]["road"] == pytest.approx((71.0, 1.0))
  assert row["iou"]["person"] == pytest.approx((5.0, 50 ** 0.5))  # None left out: 0 and 10
  assert row["labelled_fraction"] == pytest.approx(0.021)
  assert row["seconds"] == pytest.approx(120.0) and row["seeds"] == [0, 1, 2]
  table = report.format_table(rows, classes=["person", "road"])
  assert table.splitlines() == [
      "| run | step | rounds | labelled | mIoU | person | road | runs | min per run |",
      "|---|---|---|---|---|---|---|---|---|",
      "| ripu | 600 | 0 | 2.100% | 44.0 ± 3.6 | 5.0 ± 7.1 | 71.0 ± 1.0 | 3 | 2.0 |"]


def test_runs_one_per_row_named_apart_and_grouping_keeps_order(tmp_path):
  paths = three_seeds(tmp_path, "ripu") + three_seeds(tmp_path, "random", (30.0, 31.0, 35.0))
  running = ripu_like(tmp_path / "seed0" / "late", final=False)
  runs = report.load_runs(paths + [running])
  rows = report.summarize(runs)
  assert [r["name"] for r in rows] == ["seed0/ripu", "seed1/ripu", "seed2/ripu",
                                      "seed0/random", "seed1/random", "seed2/random", "late"]
  table = report.format_table(rows, classes=["person"])
  assert "| seed1/ripu | 600 | 0 | 2.100% | 45.0 | n/a | 2.0 |" in table
  assert "| late (unfinished) | 1000/1000 | 5 | 2.500% | 50.0 | n/a | n/a |" in table
  grouped = report.summarize(runs, group="name", order=["late", "random"])
  assert [(r["name"], len(r["runs"])) for r in grouped] == [("late", 1), ("random", 3),
                                                            ("ripu", 3)]
  assert report.name_cell(grouped[0]) == "late (1 of 1 unfinished)"
  assert report.miou_cell(grouped[1]) == f"32.0 ± {np.std([30, 31, 35], ddof=1):.1f}"


def test_plot_of_runs(tmp_path):
  paths = three_seeds(tmp_path) + [ripu_like(tmp_path / "single")]
  rows = report.summarize(report.load_runs(paths), group="name")
  path = report.plot_rows(rows, str(tmp_path / "runs.png"))
  with Image.open(path) as image:
    assert image.size[0] > 1500 and image.size[1] > 400


# ------------------------------------------------------------------ command line


def test_command_line_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
  paths = three_seeds(tmp_path)
  for bad, says in ((tmp_path / "missing", "does not exist"),
                    (tmp_path / "seed0", "holds no config.json or metrics.jsonl")):
    with pytest.raises(SystemExit) as exit_info:
      report.main(["--workdir", paths[0], str(bad)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad} is not a run folder: it {says}")
    assert "config.json, metrics.jsonl" in err  # what a run folder holds
  assert f"pass them, e.g. {tmp_path / 'seed0'}/*" in err  # it holds run folders
  with pytest.raises(SystemExit):
    report.main(["--workdir", paths[0], "--classes", "road,unicorn"])
  assert "no run reports ['unicorn']" in capsys.readouterr().err


def test_command_line_prints_the_table_and_writes_the_plot(tmp_path):
  first = ripu_like(tmp_path / "runs" / "ripu")
  second = write_run(tmp_path / "runs" / "other", num_steps=1000,
                     evals=[(500, 30.0, 0.0, STREET)])
  out = subprocess.run(
      [sys.executable, "-m", "ripu_jax.report", "--workdir", first, second,
       "--classes", "road", "--progress"],
      check=True, capture_output=True, text=True, cwd=ROOT).stdout
  lines = out.splitlines()
  assert lines[0] == "| run | step | rounds | labelled | mIoU | road | min per run |"
  assert lines[2] == "| ripu | 1000 | 5 | 2.500% | 50.0 | 80.0 | n/a |"
  assert lines[3] == "| other (unfinished) | 500/1000 | 0 | 0.000% | 30.0 | 80.0 | n/a |"
  folder = str(tmp_path / "runs")  # default --out: the folder the runs share
  assert f"wrote {folder}/report.md and {folder}/report.png" in out
  assert open(os.path.join(folder, "report.md")).read().splitlines() == lines[:4]
  with Image.open(os.path.join(folder, "report.png")) as image:
    assert image.size[0] > 1500
  for run in (first, second):
    assert os.path.exists(os.path.join(run, "progress.png"))
