"""Pictures and tables of training runs, so a run can be judged without TensorBoard.

* `write_progress_plot(workdir)` draws `workdir/progress.png` from its metrics.jsonl: target
  mIoU against step and against the labelled fraction with the selection rounds marked, and
  the per-class IoU of the last evaluation. The trainer redraws it after every evaluation and
  round; it only reads the workdir, so process 0 can call it while others train.
* `python -m ripu_jax.report --workdir DIR [DIR ...]` puts runs side by side: a markdown table
  (printed, and written to report.md) and a plot (report.png: mIoU against step and against
  labelled fraction, the final mIoU as bars). `--group name` folds runs that share a folder
  name (one setting at several seeds) into rows of mean ± sample std. The strategy comparison
  (ripu_jax.experiments.compare) makes its table and plot with these functions.

A run folder is a trainer workdir: config.json and metrics.jsonl from the start, final.json
once the run has finished. The comparison adds run.json (its result and wall clock), and the
runs it shares keep config.json and run.json alone. A run's result is its latest evaluation
among these files; a run not finished is reported with its last evaluation, marked so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from absl import logging
import numpy as np

from ripu_jax import errors
from ripu_jax import metrics_log
from ripu_jax.workdir import CONFIG_FILE

PROGRESS_FILE = "progress.png"
FINAL_FILE = "final.json"  # the trainer's last evaluation, written when a run finishes
RUN_FILE = "run.json"  # the comparison's record of a finished run (result and "seconds")
TABLE_FILE = "report.md"
PLOT_FILE = "report.png"
# An optional wall-clock stamp (seconds since the epoch) in metrics records; when present, a
# run's time is the span between its first and last stamped record.
TIME_KEY = "time"

Column = tuple[str, Callable[[dict], str]]  # (header, the cell of a row)


class RunFolderError(errors.UserError, ValueError):
  """A folder that is not a run folder, or whose files cannot be read."""


# ------------------------------------------------------------------ reading runs


def _number(value: Any) -> float | None:
  """A finite number as float; None for anything else (missing, None, NaN, text, bool)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      value = json.load(f)
  except FileNotFoundError:
    return None
  except ValueError as error:
    raise RunFolderError(f"{path} is not valid JSON ({error}); restore it from the run, or "
                         "move it away to report the run from its other files") from error
  if not isinstance(value, dict):
    raise RunFolderError(f"{path} holds {type(value).__name__}, not a JSON object")
  return value


def _evaluations(records: Iterable[dict]) -> list[dict]:
  """Eval records with an mIoU in step order, the last one kept where a step repeats."""
  by_step = {}
  for record in records:
    if record.get("kind") == "eval" and _number(record.get("miou")) is not None:
      by_step[int(record.get("step", 0))] = record
  return [by_step[step] for step in sorted(by_step)]


def _rounds(records: Iterable[dict]) -> list[dict]:
  """Round records in step order (round 0: labels given before training, e.g. a split)."""
  rounds = [r for r in records if r.get("kind") == "round" and "round" in r]
  return sorted(rounds, key=lambda r: (int(r.get("step", 0)), int(r["round"])))


def _means(record: Mapping[str, Any]) -> dict[str, float]:
  """A record's class-set means: "miou" and any other ("miou_13", ...)."""
  return {key: float(value) for key, value in record.items()
          if key.startswith("miou") and _number(value) is not None}


def is_run_folder(path: str) -> bool:
  return os.path.isdir(path) and any(
      os.path.exists(os.path.join(path, name))
      for name in (CONFIG_FILE, metrics_log.METRICS_FILE))


def _not_a_run_folder(given: str) -> str:
  """Why `given` is no run folder, what one holds, and the run folders inside it if any."""
  path = os.path.expanduser(given)
  what = ("does not exist" if not os.path.exists(path) else
          "is not a folder" if not os.path.isdir(path) else
          f"holds no {CONFIG_FILE} or {metrics_log.METRICS_FILE}")
  message = (f"{given} is not a run folder: it {what}. A run folder is the --workdir of "
             f"`python -m ripu_jax.main` (it holds {CONFIG_FILE}, {metrics_log.METRICS_FILE}, "
             f"checkpoints/ and, once finished, {FINAL_FILE})")
  if os.path.isdir(path):
    inside = sorted(name for name in os.listdir(path)
                    if is_run_folder(os.path.join(path, name)))
    if inside:
      message += (f"; it contains {len(inside)} run folder(s) ({', '.join(inside[:3])}"
                  f"{', ...' if len(inside) > 3 else ''}): pass them, e.g. {given.rstrip(os.sep)}/*")
  return message


def load_run(workdir: str) -> dict:
  """What a run folder says about its run, as one record (the table's and plots' input).

  Keys: workdir, name (the folder's name), seed, finished, step and num_steps, miou, iou
  ({class: IoU or None}), means (class-set means), labelled_fraction, seconds (None when
  unknown), rounds (selection rounds done; None without metrics.jsonl), curve ([(step, mIoU,
  labelled fraction)] of every evaluation) and round_marks ([(step, round, labelled
  fraction)]). Without any evaluation, miou is NaN. Raises RunFolderError for a folder that
  is not a run folder.
  """
  path = os.path.abspath(os.path.expanduser(workdir))
  if not is_run_folder(path):
    raise RunFolderError(_not_a_run_folder(workdir))
  config = _read_json(os.path.join(path, CONFIG_FILE)) or {}
  num_steps = config.get("num_steps")
  num_steps = int(num_steps) if _number(num_steps) is not None else None
  has_metrics = os.path.exists(os.path.join(path, metrics_log.METRICS_FILE))
  records = metrics_log.read_metrics(path)
  evals, rounds = _evaluations(records), _rounds(records)
  stored = _read_json(os.path.join(path, RUN_FILE))
  final = _read_json(os.path.join(path, FINAL_FILE))
  # The latest evaluation wins; on the same step run.json (what the comparison has always
  # tabulated), then final.json, then metrics.jsonl.
  candidates = []
  for rank, (source, record) in enumerate(((RUN_FILE, stored), (FINAL_FILE, final),
                                           ("metrics", evals[-1] if evals else None))):
    if record is not None and _number(record.get("miou")) is not None:
      step = _number(record.get("step"))
      step = int(step) if step is not None else (num_steps or 0)
      candidates.append((step, -rank, source, record))
  if candidates:
    step, _, source, result = max(candidates, key=lambda c: c[:2])
  else:  # no evaluation yet: how far training has come
    step, source, result = max((int(r.get("step", 0)) for r in records), default=0), None, {}
  stamps = [t for t in (_number(r.get(TIME_KEY)) for r in records) if t is not None]
  seconds = _number(stored.get("seconds")) if source == RUN_FILE else None
  if seconds is None and len(stamps) > 1:
    seconds = max(stamps) - min(stamps)
  seed = (stored or {}).get("seed", config.get("seed"))
  curve = [(int(r.get("step", 0)), float(r["miou"]), _number(r.get("labelled_fraction")))
           for r in evals]
  if not curve and result:
    curve = [(step, float(result["miou"]), _number(result.get("labelled_fraction")))]
  iou = result.get("iou") or {}
  fraction = _number(result.get("labelled_fraction"))
  if fraction is None and not result and rounds:  # labels bought before any evaluation
    fraction = _number(rounds[-1].get("labelled_fraction"))
  return {
      "workdir": path, "name": os.path.basename(path), "seed": seed,
      "finished": source in (RUN_FILE, FINAL_FILE) and (num_steps is None or step >= num_steps),
      "step": step, "num_steps": num_steps,
      "miou": float(result["miou"]) if result else float("nan"),
      "iou": {name: _number(value) for name, value in iou.items()},
      "means": _means(result), "labelled_fraction": fraction,
      "seconds": seconds,
      "rounds": len({int(r["round"]) for r in rounds if int(r["round"]) >= 1})
                if has_metrics else None,
      "curve": curve,
      "round_marks": [(int(r.get("step", 0)), int(r["round"]),
                       _number(r.get("labelled_fraction"))) for r in rounds],
  }


def load_runs(workdirs: Sequence[str]) -> list[dict]:
  """load_run of each folder; every folder that is not a run folder named in one error."""
  problems = [w for w in workdirs
              if not is_run_folder(os.path.abspath(os.path.expanduser(w)))]
  if problems:
    raise RunFolderError("\n".join(_not_a_run_folder(w) for w in problems))
  return [load_run(w) for w in workdirs]


# ------------------------------------------------------------------ table


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
  """Mean and sample std (ddof 1; 0.0 for one value) of the values that are not None or NaN;
  (NaN, NaN) if none is. A class absent from a run's val images (IoU None) is left out, not
  counted as zero."""
  values = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
  if values.size == 0:
    return float("nan"), float("nan")
  return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def _display_names(runs: Sequence[dict]) -> list[str]:
  """Each run's folder name, with as many parent folders as tell equal names apart."""
  parts = [os.path.normpath(r["workdir"]).split(os.sep) for r in runs]
  depth = [1] * len(runs)
  while True:
    names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
    clashes = {n for n in names if names.count(n) > 1}
    grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
    if not grow:
      return names
    for i in grow:
      depth[i] += 1


def _group_key(group: str | Callable[[dict], str] | None) -> Callable[[dict], str] | None:
  if group is None or group == "none":
    return None
  if group == "name":
    return lambda run: run["name"]
  if callable(group):
    return group
  raise ValueError(f"group must be 'none', 'name' or a function of a run, got {group!r}")


def summarize(runs: Sequence[dict], *, group: str | Callable[[dict], str] | None = None,
              order: Sequence[str] = ()) -> list[dict]:
  """The table's rows: one per run, or one per group of runs (`group`: "name", the folder's
  name, or a function of a run record) with mean and sample std over its runs.

  Rows come in `order` (names of rows; the others follow) and otherwise as their first run
  comes in `runs`. A row: name, grouped, runs (its run records), seeds, miou and miou_std,
  labelled_fraction (mean; None if unknown), iou ({class: (mean, std)}), seconds (mean; None
  if unknown), unfinished (how many of its runs have not finished).
  """
  key = _group_key(group)
  groups: dict[str, list[dict]] = {}
  if key is None:
    for name, run in zip(_display_names(runs), runs):
      groups.setdefault(name, []).append(run)
  else:
    for run in runs:
      groups.setdefault(key(run), []).append(run)
  rank = {name: number for number, name in enumerate(order)}
  names = sorted(groups, key=lambda n: rank.get(n, len(rank)))  # stable: appearance order
  return [_row(name, groups[name], grouped=key is not None) for name in names]


def _row(name: str, runs: list[dict], *, grouped: bool) -> dict:
  miou, miou_std = mean_std(run["miou"] for run in runs)
  fractions = [run["labelled_fraction"] for run in runs if run["labelled_fraction"] is not None]
  seconds = [run["seconds"] for run in runs if run.get("seconds") is not None]
  classes = dict.fromkeys(c for run in runs for c in run["iou"])
  return {
      "name": name, "grouped": grouped, "runs": list(runs),
      "seeds": sorted(run["seed"] for run in runs if run.get("seed") is not None),
      "miou": miou, "miou_std": miou_std,
      "labelled_fraction": float(np.mean(fractions)) if fractions else None,
      "iou": {c: mean_std(run["iou"].get(c) for run in runs) for c in classes},
      "seconds": float(np.mean(seconds)) if seconds else None,
      "unfinished": sum(not run.get("finished", True) for run in runs),
  }


def _pm(mean: float, std: float) -> str:
  return "n/a" if math.isnan(mean) else f"{mean:.1f} ± {std:.1f}"


def _value(row: dict, mean: float, std: float) -> str:
  if row["grouped"]:
    return _pm(mean, std)
  return "n/a" if math.isnan(mean) else f"{mean:.1f}"


def name_cell(row: dict) -> str:
  """The row's name; unfinished runs marked (they show their last evaluation)."""
  if not row["unfinished"]:
    return row["name"]
  if not row["grouped"]:
    return f"{row['name']} (unfinished)"
  return f"{row['name']} ({row['unfinished']} of {len(row['runs'])} unfinished)"


def step_cell(row: dict) -> str:
  """The step of the row's result ("step/num_steps" for an unfinished run; a range over a
  group whose runs differ)."""
  if not row["grouped"]:
    run = row["runs"][0]
    unfinished = not run.get("finished", True) and run.get("num_steps")
    return f"{run['step']}/{run['num_steps']}" if unfinished else str(run["step"])
  steps = sorted({run["step"] for run in row["runs"]})
  return str(steps[0]) if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"


def rounds_cell(row: dict) -> str:
  rounds = sorted({run["rounds"] for run in row["runs"] if run.get("rounds") is not None})
  if not rounds:
    return "n/a"
  return str(rounds[0]) if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"


def labelled_cell(row: dict) -> str:
  fraction = row["labelled_fraction"]
  return "n/a" if fraction is None else f"{fraction:.3%}"


def miou_cell(row: dict) -> str:
  return _value(row, row["miou"], row["miou_std"])


def class_column(name: str) -> Column:
  """A column of one class's IoU (n/a where no run has it)."""
  return name, lambda row: _value(row, *row["iou"].get(name, (math.nan, math.nan)))


def count_cell(row: dict) -> str:
  return str(len(row["runs"]))


def minutes_cell(row: dict) -> str:
  return "n/a" if row["seconds"] is None else f"{row['seconds'] / 60:.1f}"


def default_columns(rows: Sequence[dict], classes: Sequence[str] = ()) -> list[Column]:
  """run, step, rounds, labelled, mIoU, the classes' IoU, runs (grouped), min per run."""
  grouped = any(row["grouped"] for row in rows)
  columns = [("run", name_cell), ("step", step_cell), ("rounds", rounds_cell),
             ("labelled", labelled_cell), ("mIoU", miou_cell)]
  columns += [class_column(name) for name in classes]
  columns += [("runs", count_cell)] if grouped else []
  return columns + [("min per run", minutes_cell)]


def all_classes(rows: Sequence[dict]) -> list[str]:
  """Every class that some row has an IoU of, in the order the runs list them."""
  return list(dict.fromkeys(c for row in rows for c in row["iou"]))


def format_table(rows: Sequence[dict], columns: Sequence[Column] | None = None, *,
                 classes: Sequence[str] = (), footer: str = "") -> str:
  """Markdown table of `rows` (summarize's), one line per row; `footer` after a blank line.

  `columns` as (header, cell function) pairs; default `default_columns(rows, classes)`.
  """
  columns = list(columns) if columns is not None else default_columns(rows, classes)
  lines = ["| " + " | ".join(header for header, _ in columns) + " |",
           "|" + "---|" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join(cell(row) for _, cell in columns) + " |")
  if footer:
    lines += ["", footer]
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ plots


def _figure(**kwargs):
  """A matplotlib figure on the Agg canvas, without pyplot: no global state, nothing to close,
  and the caller's backend (a notebook's) is left alone."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(**kwargs)


def _save(fig, path: str) -> str:
  """Writes the figure to `path` through a temporary file, so readers never see half a PNG."""
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _mark_rounds(axis, marks: Sequence[tuple[float, str]]) -> None:
  """Dotted vertical lines at x, labelled at the top (labels at one x joined: "r0,r1")."""
  labels: dict[float, list[str]] = {}
  for x, label in marks:
    labels.setdefault(x, []).append(label)
  for x, names in labels.items():
    axis.axvline(x, color="tab:orange", linestyle=":", linewidth=1.0, alpha=0.8)
    axis.text(x, 0.98, ",".join(names), transform=axis.get_xaxis_transform(), ha="center",
              va="top", fontsize=7, color="tab:orange",
              bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.7})


def _no_data(axis, text: str) -> None:
  axis.text(0.5, 0.5, text, transform=axis.transAxes, ha="center", va="center", color="gray")


def progress_figure(workdir: str):
  """The figure of progress.png (a matplotlib Figure; see write_progress_plot)."""
  records = metrics_log.read_metrics(workdir)
  evals, rounds = _evaluations(records), _rounds(records)
  try:  # the x axis spans the whole run, so the picture shows how far it has come
    num_steps = _number((_read_json(os.path.join(workdir, CONFIG_FILE)) or {}).get("num_steps"))
  except RunFolderError:
    num_steps = None
  iou = {name: _number(value) for name, value in (evals[-1].get("iou") or {}).items()} if (
      evals) else {}
  height = min(16.0, max(4.2, 0.22 * len(iou) + 1.2))
  fig = _figure(figsize=(16, height), dpi=100)
  steps_axis, fraction_axis, class_axis = fig.subplots(
      1, 3, gridspec_kw={"width_ratios": [3, 3, 2]})
  steps = [int(r.get("step", 0)) for r in evals]
  if evals:
    for number, name in enumerate(dict.fromkeys(k for r in evals for k in _means(r))):
      points = [(int(r.get("step", 0)), r[name]) for r in evals
                if _number(r.get(name)) is not None]
      steps_axis.plot(*zip(*points), marker="o", markersize=4, label=name,
                      linestyle="-" if name == "miou" else "--",
                      linewidth=2.0 if name == "miou" else 1.0, color=f"C{number}")
    if len(_means(evals[-1])) > 1:
      steps_axis.legend(fontsize=8, loc="lower right")
  else:
    _no_data(steps_axis, "no evaluation yet")
  _mark_rounds(steps_axis, [(int(r.get("step", 0)), f"r{r['round']}") for r in rounds])
  last_step = max([num_steps or 0] + [int(r.get("step", 0)) for r in records])
  steps_axis.set_xlim(0, max(1.0, 1.02 * last_step))
  steps_axis.set_xlabel("step")
  steps_axis.set_ylabel("target mIoU (%)")
  steps_axis.set_title("target mIoU against step (dotted: selection rounds)")
  steps_axis.grid(True, alpha=0.3)

  points = [(100 * f, r["miou"]) for r in evals
            if (f := _number(r.get("labelled_fraction"))) is not None]
  if points:
    fraction_axis.plot(*zip(*points), marker="o", markersize=4, linewidth=2.0)
  else:
    _no_data(fraction_axis, "no evaluation with a labelled fraction yet")
  marks = [(100 * f, f"r{r['round']}") for r in rounds
           if (f := _number(r.get("labelled_fraction"))) is not None]
  _mark_rounds(fraction_axis, marks)
  widest = max([x for x, _ in points + marks] + [0.0]) or 1.0
  fraction_axis.set_xlim(-0.03 * widest, 1.08 * widest)
  fraction_axis.set_xlabel("labelled target pixels (%)")
  fraction_axis.set_ylabel("target mIoU (%)")
  fraction_axis.set_title("target mIoU against labelled fraction")
  fraction_axis.grid(True, alpha=0.3)

  if iou:
    names = list(iou)[::-1]  # first class on top
    values = [iou[n] or 0.0 for n in names]
    class_axis.barh(range(len(names)), values, color="tab:blue")
    class_axis.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 25 else 8)
    for y, name in enumerate(names):
      text = "n/a" if iou[name] is None else f"{iou[name]:.1f}"
      class_axis.text(values[y] + 1, y, text, va="center", fontsize=6)
    class_axis.set_xlim(0, 110)
    class_axis.set_title(f"IoU per class at step {steps[-1]}")
  else:
    _no_data(class_axis, "no evaluation yet")
    class_axis.set_title("IoU per class")
  class_axis.set_xlabel("IoU (%)")
  class_axis.grid(True, axis="x", alpha=0.3)

  name = os.path.basename(os.path.abspath(workdir))
  if evals:
    last = evals[-1]
    fraction = _number(last.get("labelled_fraction"))
    status = (f"step {steps[-1]}: mIoU {last['miou']:.1f}" +
              (f", {fraction:.2%} of target pixels labelled" if fraction is not None else ""))
  else:
    status = "no evaluation yet"
  done = len({r["round"] for r in rounds if int(r["round"]) >= 1})
  fig.suptitle(f"{name}: {status}; {done} selection round{'s' * (done != 1)}", fontsize=11)
  fig.tight_layout()
  return fig


def write_progress_plot(workdir: str) -> str:
  """Draws `workdir/progress.png` from its metrics.jsonl and returns its path.

  Panels: target mIoU against step (the rounds as dotted lines r1, r2, ...; other class-set
  means dashed), mIoU against the labelled fraction (rounds at the fraction they reached),
  and the per-class IoU of the last evaluation as bars. A run without evaluations or rounds
  gets the panels it can fill and says what is missing in the others. Reads only the
  workdir's metrics.jsonl and config.json; the picture is replaced atomically (a viewer never
  sees half of it). Raises only if it cannot be written; update_progress_plot never raises.
  """
  return _save(progress_figure(workdir), os.path.join(workdir, PROGRESS_FILE))


def update_progress_plot(workdir: str) -> str | None:
  """write_progress_plot that warns instead of raising: a picture must never stop training."""
  try:
    return write_progress_plot(workdir)
  except Exception as error:  # pylint: disable=broad-except
    logging.warning("could not draw %s in %s: %s", PROGRESS_FILE, workdir, error)
    return None


def _fraction_scale(axis, fractions: Sequence[float]) -> str:
  """Log scale for labelled fractions (in %), symmetric-log where a 0% run must show too."""
  if not fractions:
    return "no points"
  if all(f > 0 for f in fractions):
    axis.set_xscale("log")
    return "log scale"
  smallest = min([f for f in fractions if f > 0] + [1.0])
  axis.set_xscale("symlog", linthresh=10 ** math.floor(math.log10(smallest)))
  return "symlog scale: linear near 0"


def plot_rows(rows: Sequence[dict], path: str, *, curves: bool = True,
              line_of: Callable[[dict], str] | None = None,
              bounds: Mapping[str, tuple[str, str]] | None = None,
              emphasize: Callable[[str], bool] | None = None,
              bars: Sequence[dict] | None = None,
              bar_label: Callable[[dict], str] | None = None,
              bars_title: str | None = None, fraction_title: str | None = None) -> str:
  """Plots summarize's rows into `path` (PNG); returns the path.

  Panels: [every run's mIoU against step, if `curves`], mIoU against labelled fraction (mean
  ± std per row; rows with the same `line_of` label joined into one line, default one per
  row), and `bars` rows' mIoU as bars (default: every row not a bound). `bounds` maps row
  names to (colour, line style): such rows (reference runs: source only, full supervision)
  are horizontal lines with a ± std band instead of points. `emphasize(label)` draws a
  line wider.
  """
  bounds = dict(bounds or {})
  line_of = line_of or (lambda row: row["name"])
  points = [r for r in rows if r["name"] not in bounds]
  labels = list(dict.fromkeys(line_of(r) for r in points))
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  palette = colormaps["tab10" if len(labels) <= 10 else "tab20"]
  colours = {label: palette(number % palette.N) for number, label in enumerate(labels)}
  ratios = ([3] if curves else []) + [3, 2]
  fig = _figure(figsize=(17 if curves else 12, 4.8), dpi=110)
  axes = fig.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios})
  steps_axis, left, right = axes if curves else (None, *axes)

  if steps_axis is not None:
    for row in rows:
      colour = bounds[row["name"]][0] if row["name"] in bounds else colours[line_of(row)]
      for number, run in enumerate(row["runs"]):
        curve = run.get("curve") or []
        if curve:
          steps_axis.plot([s for s, _, _ in curve], [m for _, m, _ in curve], marker=".",
                          color=colour, linewidth=1.2, alpha=0.8,
                          label=row["name"] if number == 0 else None)
    steps_axis.set_xlabel("step")
    steps_axis.set_ylabel("mIoU on target val (%)")
    steps_axis.set_title("mIoU against step (every run)")
    steps_axis.set_xlim(left=0)
    steps_axis.grid(True, alpha=0.3)
    if steps_axis.lines:
      steps_axis.legend(fontsize=7, loc="best")

  for number, label in enumerate(labels):
    line = sorted((r for r in points if line_of(r) == label and r["labelled_fraction"] is not None
                   and not math.isnan(r["miou"])), key=lambda r: r["labelled_fraction"])
    left.errorbar([100 * r["labelled_fraction"] for r in line], [r["miou"] for r in line],
                  yerr=[r["miou_std"] for r in line], marker="osD^v<>pP*"[number % 10],
                  capsize=3, label=label, color=colours[label],
                  linewidth=2.0 if emphasize and emphasize(label) else 1.0)
  for axis in (left, right):
    for row in rows:
      if row["name"] in bounds and not math.isnan(row["miou"]):
        colour, style = bounds[row["name"]]
        label = row.get("label", row["name"])
        axis.axhline(row["miou"], color=colour, linestyle=style, label=label)
        axis.axhspan(row["miou"] - row["miou_std"], row["miou"] + row["miou_std"],
                     color=colour, alpha=0.12)
  fractions = [100 * r["labelled_fraction"] for r in points
               if r["labelled_fraction"] is not None and not math.isnan(r["miou"])]
  scale = _fraction_scale(left, fractions)
  left.set_xlabel(f"labelled target pixels (%, {scale})")
  left.set_ylabel("mIoU on target val (%)")
  runs = max((len(r["runs"]) for r in rows), default=0)
  grouped = any(r["grouped"] for r in rows)
  left.set_title(fraction_title or "mIoU against labelled fraction" +
                 (f" (mean ± std over up to {runs} runs)" if grouped else ""))
  left.grid(True, which="both", alpha=0.3)
  left.legend(fontsize=8, loc="best")

  bars = list(points if bars is None else bars)
  bar_label = bar_label or (lambda row: row["name"])
  right.bar(range(len(bars)), [r["miou"] for r in bars], yerr=[r["miou_std"] for r in bars],
            capsize=3, color=[colours.get(line_of(r), "tab:gray") for r in bars])
  many = len(bars) > 10
  right.set_xticks(range(len(bars)), [bar_label(r) for r in bars], rotation=90 if many else 30,
                   ha="center" if many else "right", fontsize=7 if many else 8)
  values = [r["miou"] - r["miou_std"] for r in rows if not math.isnan(r["miou"])]
  if values:
    right.set_ylim(max(0.0, min(values) - 5), None)
  right.set_title(bars_title or "final mIoU")
  right.grid(True, axis="y", alpha=0.3)
  fig.tight_layout()
  return _save(fig, path)


# ------------------------------------------------------------------ command line


def _default_out(workdirs: Sequence[str]) -> str:
  """The folder the runs share (the parent of one run), or the current folder if that is /."""
  parents = [os.path.dirname(os.path.abspath(os.path.expanduser(w))) for w in workdirs]
  common = os.path.commonpath(parents)
  return common if os.path.dirname(common) != common else os.getcwd()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """argparse rather than main.py's absl flags: --workdir takes several folders at once, as a
  shell glob (runs/compare/seed*/*) hands them over; errors still print one line."""
  parser = argparse.ArgumentParser(
      prog="python -m ripu_jax.report",
      description="Runs side by side: prints a markdown table and writes it (report.md) and a "
      "plot (report.png) to --out.")
  parser.add_argument("--workdir", nargs="+", required=True, metavar="DIR",
                      help="run folders (the --workdir of ripu_jax.main), e.g. "
                      "runs/compare/seed*/ripu_ra_2.2")
  parser.add_argument("--out", default=None,
                      help="folder for report.md and report.png (default: the folder the runs "
                      "share, or the current folder)")
  parser.add_argument("--group", choices=("none", "name"), default="none",
                      help="'name': one row per folder name (a setting at several seeds), mean "
                      "± sample std over its runs (default: one row per run)")
  parser.add_argument("--classes", default="",
                      help="comma-separated class names whose IoU gets a column, or 'all'")
  parser.add_argument("--progress", action="store_true",
                      help=f"also redraw each run's {PROGRESS_FILE}")
  return parser.parse_args(argv)


def _fail(message: str, code: int = 1) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  """The command line; returns the table's rows."""
  args = parse_args(argv)
  try:
    runs = load_runs(args.workdir)
  except RunFolderError as error:
    _fail(str(error))
  rows = summarize(runs, group=args.group)
  known = all_classes(rows)
  if args.classes.strip() == "all":
    classes = known
  else:
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    unknown = [c for c in classes if c not in known]
    if unknown:
      _fail(f"--classes: no run reports {unknown}; the runs' classes are {known}")
  table = format_table(rows, classes=classes)
  print(table, end="")
  out = os.path.abspath(args.out or _default_out(args.workdir))
  try:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, TABLE_FILE), "w") as f:
      f.write(table)
    plot_rows(rows, os.path.join(out, PLOT_FILE))
  except OSError as error:
    _fail(f"cannot write the report to {out} ({error}); choose a folder with --out")
  print(f"wrote {os.path.join(out, TABLE_FILE)} and {os.path.join(out, PLOT_FILE)}")
  if args.progress:
    for run in runs:
      print(f"wrote {write_progress_plot(run['workdir'])}")
  return rows


if __name__ == "__main__":
  main()
