"""ViewAL against random and entropy superpixels and full supervision, on the synthetic rooms.

  python scripts/compare_viewal.py --workdir runs/viewal_compare --seeds 0,1,2
  python scripts/compare_viewal.py --workdir runs/viewal_compare --report   # tables only

Runs `configs/viewal/synthetic.py` with each setting (viewal, entropy, random, full) and seed
(`--config.seed`, which draws the seed frames, the network's initialisation and the data
order; the rooms are the same), one workdir each under --workdir; a finished run is skipped
and an interrupted one resumes. Then, per run, the best val mIoU of each round's training
(the release reports the round's best-val checkpoint) against the labelled share of the
training pixels, and per setting the mean over seeds. The headline figure of the paper: the
smallest labelled share at which a setting reaches 95% of full supervision's mIoU (linear
between rounds; "not reached" otherwise), and ViewAL's lead over each baseline per round,
paired by seed. Full supervision trains as long as one round.
Writes results.md, results.json and results.png to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SETTINGS = ("viewal", "entropy", "random", "full")
CONFIG = os.path.join(ROOT, "configs", "viewal", "synthetic.py")


def run_dir(workdir: str, setting: str, seed: int) -> str:
  return os.path.join(workdir, f"{setting}_s{seed}")


def run(workdir: str, setting: str, seed: int) -> None:
  from ripu_jax import config_lib  # pylint: disable=g-import-not-at-top
  from ripu_jax import train  # pylint: disable=g-import-not-at-top
  directory = run_dir(workdir, setting, seed)
  if os.path.exists(os.path.join(directory, "final.json")):
    print(f"{setting} seed {seed}: finished before, skipped", flush=True)
    return
  config = config_lib.load_config(CONFIG, "" if setting == "viewal" else setting)
  config.seed = seed
  print(f"{setting} seed {seed}: training in {directory}", flush=True)
  train.train_and_evaluate(config, directory)


def round_curve(directory: str) -> list[tuple[float, float]]:
  """(labelled share, best val mIoU) of each round's training, in order."""
  from ripu_jax.metrics_log import read_metrics  # pylint: disable=g-import-not-at-top
  best: dict[float, float] = {}
  for record in read_metrics(directory):
    if record.get("kind") == "eval":
      share = round(float(record["labelled_fraction"]), 6)
      best[share] = max(best.get(share, -1.0), float(record["miou"]))
  return sorted(best.items())


def share_reaching(curve: list[tuple[float, float]], target: float) -> float | None:
  """Smallest labelled share where the curve reaches `target`, linear between points."""
  for (share0, miou0), (share1, miou1) in zip([(0.0, 0.0)] + curve[:-1], curve):
    if miou1 >= target:
      if miou1 == miou0 or share0 == 0.0:
        return share1
      return share0 + (target - miou0) / (miou1 - miou0) * (share1 - share0)
  return None


def _mean_std(values: list[float], digits: int = 1) -> str:
  """"m" for one value, "m ± s" (sample std) for more."""
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def paired_differences(curves: dict, setting: str, baseline: str) -> list[list[float]]:
  """Per round, `setting` minus `baseline` on each seed both finished (paired by seed)."""
  seeds = sorted(set(curves[setting]) & set(curves[baseline]))
  if not seeds:
    return []
  length = min(min(len(curves[setting][s]), len(curves[baseline][s])) for s in seeds)
  return [[curves[setting][s][i][1] - curves[baseline][s][i][1] for s in seeds]
          for i in range(length)]


def report(workdir: str, seeds: list[int], out: str) -> dict:
  curves = {s: {} for s in SETTINGS}
  for setting in SETTINGS:
    for seed in seeds:
      directory = run_dir(workdir, setting, seed)
      if os.path.exists(os.path.join(directory, "final.json")):
        curves[setting][seed] = round_curve(directory)
  full = [c[-1][1] for c in curves["full"].values() if c]
  full_miou = statistics.mean(full) if full else None
  lines = ["| setting | seeds | labelled share and best val mIoU per round (mean ± std over seeds) "
           "| share reaching 95% of full |", "|---|---|---|---|"]
  summary = {"full_miou": full_miou, "settings": {}}
  for setting in SETTINGS:
    runs = [c for c in curves[setting].values() if c]
    if not runs:
      continue
    length = min(len(c) for c in runs)
    mean_curve = [(statistics.mean(c[i][0] for c in runs), statistics.mean(c[i][1] for c in runs))
                  for i in range(length)]
    std_curve = [statistics.stdev([c[i][1] for c in runs]) if len(runs) > 1 else 0.0
                 for i in range(length)]
    reach = [share_reaching(c, 0.95 * full_miou) if full_miou else None for c in runs]
    reached = [r for r in reach if r is not None]
    reach_text = (f"{statistics.mean(reached):.1%} ({len(reached)} of {len(runs)} seeds)"
                  if reached else "not reached")
    points = ", ".join(f"{share:.1%}: {_mean_std([c[i][1] for c in runs])}"
                       for i, (share, _) in enumerate(mean_curve))
    lines.append(f"| {setting} | {len(runs)} | {points} | "
                 f"{reach_text if setting != 'full' else '-'} |")
    summary["settings"][setting] = {"seeds": sorted(curves[setting]), "mean_curve": mean_curve,
                                    "std_curve": std_curve,
                                    "curves": {str(k): v for k, v in curves[setting].items()},
                                    "share_reaching_95": reach}
  lines += ["", "| ViewAL minus | seeds | per round after the seed set: mean ± std of the "
            "per-seed difference (seeds where ViewAL is ahead) |", "|---|---|---|"]
  summary["differences"] = {}
  for baseline in ("entropy", "random"):
    differences = paired_differences(curves, "viewal", baseline)[1:]  # round 0: same frames
    if not differences:
      continue
    summary["differences"][baseline] = differences
    text = ", ".join(f"{_mean_std(d)} ({sum(v > 0 for v in d)}/{len(d)})" for d in differences)
    lines.append(f"| {baseline} | {len(differences[0])} | {text} |")
  table = "\n".join(lines)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.md"), "w") as handle:
    handle.write(table + "\n")
  with open(os.path.join(out, "results.json"), "w") as handle:
    json.dump(summary, handle, indent=1)
  _plot(summary, os.path.join(out, "results.png"))
  print(table)
  return summary


def _plot(summary: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axis = plt.subplots(figsize=(6, 4))
  for setting, values in summary["settings"].items():
    if setting == "full":
      continue
    shares, mious = zip(*values["mean_curve"])
    axis.errorbar([100 * s for s in shares], mious, yerr=values["std_curve"], marker="o",
                  capsize=3, label=f"{setting} ({len(values['seeds'])} seeds)")
  if summary["full_miou"] is not None:
    axis.axhline(summary["full_miou"], color="black", linestyle="--", label="full supervision")
    axis.axhline(0.95 * summary["full_miou"], color="grey", linestyle=":", label="95% of full")
  axis.set_xlabel("labelled pixels of the training frames (%)")
  axis.set_ylabel("best val mIoU of the round")
  axis.set_title("ViewAL on the synthetic rooms")
  axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/viewal_compare")
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--settings", default=",".join(SETTINGS))
  parser.add_argument("--out", default="benchmarks/viewal_synthetic")
  parser.add_argument("--report", action="store_true", help="only the tables, from the runs")
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  settings = [s.strip() for s in args.settings.split(",") if s.strip()]
  unknown = [s for s in settings if s not in SETTINGS]
  if unknown:
    parser.error(f"--settings: unknown {unknown}; choose from {SETTINGS}")
  if not args.report:
    for seed in seeds:
      for setting in settings:
        run(args.workdir, setting, seed)
  report(args.workdir, seeds, args.out)


if __name__ == "__main__":
  main()
