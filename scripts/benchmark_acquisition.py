"""Times RIPU's acquisition step: ripu_jax against a release-style version and the floor.

  python scripts/benchmark_acquisition.py                    # full table (half an hour)
  python scripts/benchmark_acquisition.py --sizes 256x512 --runs 3 --baseline-pa-runs 1
  python scripts/benchmark_acquisition.py --baselines-from benchmarks/acquisition.json
      # ripu_jax again after a change (a minute); the release-style columns are copied
  python scripts/benchmark_acquisition.py --impls auto      # only the platform's own impl

ripu_jax's cases are all timed first, back to back (a minute or two), then the release-style
version's (half an hour at the default sizes): on a shared machine whose speed drifts over
minutes, ripu_jax's figures and the floor then come from the same stretch of time.

For each label size and case (RA k=1 at 2.2% and 5% of pixels over 5 rounds; PA k=25 and
k=32 with 40 pixels over 5 rounds), on one image's logits (C = 19), along two paths:

* network (the trainer's round, first): logits at the network's output resolution (the input
  size / --output-stride; the input is --input-size, the release's 640x1280, or the label
  size when that is smaller), upsampled to the input size and then to the label size, as
  the release's rounds do;
* label: logits already at the label size (the upsample left out);
* upsampled (not in the default table): the network path's own logits, already upsampled to
  the label size. Its round scores and selects the same map as the network path's, so the
  two differ only by the upsample: the ratio the upsample costs. (The label path's logits
  are another map, whose selection can take another number of band fetches.)

* ripu_jax: score pass (on the network path with the upsample before it, each its own
  program, as the round runs them: on CPU the upsample writes into the label-size logits of
  the round's previous call, donated), greedy selection, and the whole round as `select_round`
  compiles it (all in: finiteness check, upsample, scores, selection, masks), for each score
  implementation in
  --impls ("cpu" and "reduce_window" by default: one row each, field `impl`); medians of
  --runs timed runs after one warm-up (compilation excluded), every impl's three calls and
  the floor taking turns so that they see the same machine load (the JSON also keeps the
  all-in call's fastest and slowest run).
* release-style: the same two upsamples (two-tap bilinear, as F.interpolate computes it) on
  the network path, box sums as depthwise convolutions (`lax.conv_general_dilated`, as the
  release's conv2d) and one full-map arg-max per pick (numpy loop), written from the method
  description, timed once per case. Its picks are checked against ripu_jax's greedy on the
  same score map, and its score map against each impl's.
* floor: the softmax-entropy pass alone (it reads the logits once), timed in turns with each
  case's ripu_jax calls: a fixed amount of work, so it gauges the machine's speed during
  that case.

Memory: XLA's buffer assignment of the round's two jitted stages (temporaries + outputs of
the score stage, or its score map plus the select stage's, whichever is larger), compared
with the logits' size. Prints a markdown table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from ripu_jax import acquisition
from ripu_jax import image_ops
from ripu_jax.acquisition import greedy as greedy_lib
from ripu_jax.acquisition import scores as scores_lib
from ripu_jax.acquisition import selection_round

NUM_CLASSES = 19
PATHS = ("network", "label", "upsampled")
# Release-style fields that compare with one impl's score map rather than time the
# release-style code.
PER_IMPL_FIELDS = ("max_abs_score_diff_vs_release_style",)


class Path(NamedTuple):
  """Where a case's logits start: at the network's resolution (`input_size` set) or at the
  label size."""
  name: str
  logits: jax.Array  # [1, h, w, C]
  label_size: tuple[int, int]
  input_size: tuple[int, int] | None
CASES = [  # name, kind, radius, ratio or pixels
    ("RA k=1 2.2%", "ra", 1, 0.022),
    ("RA k=1 5%", "ra", 1, 0.05),
    ("PA k=25 40px", "pa", 25, 40),
    ("PA k=32 40px", "pa", 32, 40),
]


def realistic_logits(height: int, width: int, seed: int = 0) -> jax.Array:
  """Coherent class regions (low-res logits upsampled, as a segmentation net's) plus noise."""
  key_coarse, key_noise = jax.random.split(jax.random.key(seed))
  coarse = jax.random.normal(
      key_coarse, (1, max(1, height // 16), max(1, width // 16), NUM_CLASSES)) * 4.0
  logits = acquisition.upsample_logits(coarse, (height, width))
  logits = logits + 0.3 * jax.random.normal(key_noise, logits.shape)
  return jax.block_until_ready(logits)


def timed_interleaved(fns: dict, runs: int) -> tuple[dict, dict]:
  """Wall times in ms of several calls, measured in turns: each round calls each once.

  On a shared machine the speed drifts over seconds to minutes; taking turns lets the parts
  and the whole see the same conditions, so their medians stay comparable. Returns
  ({name: {"median", "min", "max"}}, {name: last result}) after one warm-up call each.
  """
  results = {name: jax.block_until_ready(fn()) for name, fn in fns.items()}
  times = {name: [] for name in fns}
  for _ in range(runs):
    for name, fn in fns.items():
      start = time.perf_counter()
      results[name] = jax.block_until_ready(fn())
      times[name].append((time.perf_counter() - start) * 1e3)
  stats = {name: {"median": statistics.median(t), "min": min(t), "max": max(t)}
           for name, t in times.items()}
  return stats, results


def timed(fn, runs: int) -> tuple[float, object]:
  """Median wall time in ms over `runs` calls after one warm-up call, and the last result."""
  stats, results = timed_interleaved({"call": fn}, runs)
  return stats["call"]["median"], results["call"]


# ----------------------------------------------------------------------------------------
# Release-style implementation: convolutions for window sums, a full arg-max per pick.

def _box_conv(x: jax.Array, radius: int) -> jax.Array:
  """Zero-padded (2r+1)^2 box sum of [1, H, W, K] as a depthwise convolution."""
  channels = x.shape[-1]
  side = 2 * radius + 1
  kernel = jnp.ones((side, side, 1, channels), x.dtype)
  return lax.conv_general_dilated(x, kernel, (1, 1), [(radius, radius)] * 2,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=channels)


@jax.jit(static_argnames=("radius", "mode", "label_size", "input_size"))
def release_style_score(logits, radius, mode, label_size=None, input_size=None):
  if label_size is not None:  # the network path: F.interpolate to the input, then the label
    logits = image_ops.resize_bilinear_taps(
        image_ops.resize_bilinear_taps(logits, input_size), label_size)
  p = jax.nn.softmax(logits, axis=-1)
  entropy = -jnp.sum(p * jnp.log(p + 1e-6), axis=-1, keepdims=True)
  onehot = jax.nn.one_hot(jnp.argmax(logits, axis=-1), NUM_CLASSES, dtype=jnp.float32)
  counts = _box_conv(onehot, radius)
  area = _box_conv(jnp.ones_like(entropy), radius)
  q = counts / area
  impurity = -jnp.sum(q * jnp.log(q + 1e-6), axis=-1) / math.log(NUM_CLASSES)
  if mode == "region":
    uncertainty = _box_conv(entropy, radius)[..., 0] / area[..., 0]
  else:
    uncertainty = entropy[..., 0]
  return impurity * uncertainty / math.log(NUM_CLASSES)


def release_style_select(score: np.ndarray, num_picks: int, suppress_radius: int) -> list:
  """One full-map arg-max per pick: first max per column, then the first column."""
  work = np.array(score, np.float32)
  height, width = work.shape
  picks = []
  for _ in range(num_picks):
    best_rows = work.argmax(axis=0)
    col = int(work[best_rows, np.arange(width)].argmax())
    row = int(best_rows[col])
    if work[row, col] == -np.inf:
      break
    picks.append((row, col))
    work[max(row - suppress_radius, 0):row + suppress_radius + 1,
         max(col - suppress_radius, 0):col + suppress_radius + 1] = -np.inf
  return picks


# ----------------------------------------------------------------------------------------

def memory_bytes(jitted, *args) -> tuple[int, int]:
  """(temporaries, outputs) in bytes, from XLA's buffer assignment of a jitted call."""
  analysis = jitted.lower(*args).compile().memory_analysis()
  return int(analysis.temp_size_in_bytes), int(analysis.output_size_in_bytes)


def round_memory_bytes(round_fn, inputs, excluded, ids, seed) -> int:
  """Peak extra memory of a round: the largest of its stages, each with the outputs of the
  stage before it still held (shapes from `jax.eval_shape`: nothing is computed)."""
  stages = []
  if inputs[0].shape[1:3] != round_fn.label_size:  # network logits: the upsample stage runs
    up_temp, up_out = memory_bytes(round_fn.upsample, inputs)
    stages.append(up_temp + up_out)
    inputs, _ = jax.eval_shape(round_fn.upsample, inputs)
  held = sum(x.size * x.dtype.itemsize for x in inputs) if stages else 0
  score_temp, score_out = memory_bytes(round_fn.score, inputs, ids, seed)
  score_shape, _ = jax.eval_shape(round_fn.score, inputs, ids, seed)
  select_temp, select_out = memory_bytes(round_fn.select, score_shape, excluded)
  return max(stages + [held + score_temp + score_out, score_out + select_temp + select_out])


def make_plan(kind, height, width, radius, budget):
  return acquisition.plan_round(kind, height, width, radius=radius, rounds=5,
                                ratio=budget if kind == "ra" else None,
                                pixels=budget if kind == "pa" else None)


def bench_ripu_jax(path, name, plan, runs, floor, impls) -> list[tuple[dict, np.ndarray]]:
  """ripu_jax's timings, memory and the floor for one case: (row, score map) per impl.

  path: Path; floor: (function, its label-size logits), the machine-speed gauge. Every impl's
  calls and the floor are timed in turns.
  """
  logits = path.logits
  height, width = path.label_size
  excluded = jnp.zeros((1, height, width), bool)
  ids, seed = jnp.zeros((1,), jnp.int32), jnp.int32(0)

  def select_fn(score):
    return greedy_lib.select_batch(score, excluded, num_picks=plan.num_picks,
                                   label_radius=plan.label_radius,
                                   suppress_radius=plan.suppress_radius)

  select_jit = jax.jit(select_fn)
  calls, rounds, scores = {}, {}, {}
  for impl in impls:
    # The whole round exactly as `acquisition.select_round` compiles it (device-resident
    # inputs); "score" is its upsample (network path) and score stages, as the round runs them.
    round_fn = selection_round._compiled_round(  # pylint: disable=protected-access
        acquisition.default_mesh(), "ripu", (height, width), plan, path.input_size, impl)

    def score_call(round_fn=round_fn):
      return round_fn.scores((logits,), ids, seed)[0]

    scores[impl] = jax.block_until_ready(score_call())
    rounds[impl] = round_fn
    calls[(impl, "score")] = score_call
    calls[(impl, "select")] = functools.partial(select_jit, scores[impl])
    calls[(impl, "total")] = functools.partial(round_fn, (logits,), excluded, ids, seed)
  calls["floor"] = lambda: floor[0](floor[1])
  times, results = timed_interleaved(calls, runs)

  out = []
  for impl in impls:
    selection, _ = results[(impl, "total")]
    row = {
        "case": name, "size": f"{height}x{width}", "path": path.name, "impl": impl,
        "logits_size": "x".join(str(v) for v in logits.shape[1:3]),
        "input_size": "x".join(str(v) for v in path.input_size) if path.input_size else None,
        "picks_per_image": plan.num_picks,
        "ripu_jax_score_ms": times[(impl, "score")]["median"],
        "ripu_jax_select_ms": times[(impl, "select")]["median"],
        "ripu_jax_total_ms": times[(impl, "total")]["median"],
        "ripu_jax_total_ms_min_max": [times[(impl, "total")]["min"],
                                      times[(impl, "total")]["max"]],
        "ripu_jax_extra_memory_bytes": round_memory_bytes(rounds[impl], (logits,), excluded,
                                                          ids, seed),
        # Label-size logits on both paths, so the ratio reads the same.
        "logits_bytes": int(floor[1].size * floor[1].dtype.itemsize),
        "picks_made": int((np.asarray(selection.picks)[0, :, 0] >= 0).sum()),
        "floor_entropy_ms": times["floor"]["median"],
    }
    out.append((row, np.asarray(scores[impl])[0]))
  return out


def bench_release_style(path, plan, runs: int) -> tuple[dict, np.ndarray]:
  """The release-style version's timings and whether ripu_jax's greedy matches its picks;
  also returns its score map."""
  sizes = ({"label_size": path.label_size, "input_size": path.input_size}
           if path.input_size else {})
  base_score_ms, base_score = timed(
      lambda: release_style_score(path.logits, plan.radius, plan.mode, **sizes), runs)
  base_score = np.asarray(base_score)[0]
  base_select_ms, base_picks = timed(
      lambda: release_style_select(base_score, plan.num_picks, plan.suppress_radius), runs)
  excluded = jnp.zeros((1,) + base_score.shape, bool)
  ours_on_base = greedy_lib.select_batch(jnp.asarray(base_score)[None], excluded,
                                         num_picks=plan.num_picks,
                                         label_radius=plan.label_radius,
                                         suppress_radius=plan.suppress_radius)
  ours_picks = [tuple(p) for p in np.asarray(ours_on_base.picks)[0].tolist() if p[0] >= 0]
  return {
      "release_style_score_ms": base_score_ms, "release_style_select_ms": base_select_ms,
      "release_style_total_ms": base_score_ms + base_select_ms,
      "release_style_runs": runs,
      "same_picks_on_release_scores": ours_picks == base_picks,
  }, base_score


def earlier_release_style(path: str | None) -> tuple[dict, str | None]:
  """({(size, path, case, impl): release-style fields}, its command) from an earlier run's
  JSON (rows without a path are the label path's, rows without an impl the "cpu" impl's:
  earlier versions timed only those)."""
  if not path:
    return {}, None
  try:
    with open(path) as f:
      earlier = json.load(f)
    rows = earlier["rows"]
  except (OSError, ValueError, KeyError) as e:
    raise SystemExit(f"--baselines-from {path}: cannot read an earlier benchmark JSON ({e}); "
                     "give the --out file of an earlier run, or leave the option out to time "
                     "the release-style version again")
  return {(r["size"], r.get("path", "label"), r["case"], r.get("impl", "cpu")): {
      k: v for k, v in r.items() if k.startswith("release_style")
      or k in ("same_picks_on_release_scores",) + PER_IMPL_FIELDS}
          for r in rows if "release_style_total_ms" in r}, earlier.get("meta", {}).get("command")


def reused_release_style(reused: dict, key: tuple) -> dict | None:
  """The earlier release-style fields for a row's (size, path, case, impl) key: that impl's,
  else (an impl the earlier run did not time) another impl's timings of the same case, which
  do not depend on the impl, without the fields that compare with an impl's scores."""
  if key in reused:
    return reused[key]
  for other, fields in reused.items():
    if other[:3] == key[:3]:
      return {k: v for k, v in fields.items() if k not in PER_IMPL_FIELDS}
  return None


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="640x1280,1024x2048", help="label sizes")
  parser.add_argument("--paths", default="network,label",
                      help="network (the trainer's: logits at the network's resolution), label "
                           "(logits already at the label size) and/or upsampled (the network "
                           "path's logits upsampled beforehand)")
  parser.add_argument("--input-size", default="640x1280",
                      help="the network's input on the network path (the release's target)")
  parser.add_argument("--output-stride", type=int, default=8)
  parser.add_argument("--impls", default="cpu,reduce_window",
                      help=f"score implementations to time, some of {scores_lib.IMPLS} "
                           "('auto': the one the default backend's rounds use)")
  parser.add_argument("--runs", type=int, default=5, help="timed runs of ripu_jax (>= 3)")
  parser.add_argument("--baseline-runs", type=int, default=3,
                      help="timed runs of the release-style RA version (0 skips it)")
  parser.add_argument("--baseline-pa-runs", type=int, default=1,
                      help="timed runs of the release-style PA version (minutes each; 0 skips)")
  parser.add_argument("--baselines-from", default=None,
                      help="take the release-style columns from this earlier JSON instead of "
                           "rerunning them (they do not depend on ripu_jax's code)")
  parser.add_argument("--out", default="benchmarks/acquisition.json")
  args = parser.parse_args()
  if args.runs < 3:
    parser.error("--runs must be at least 3 (the table reports medians)")
  paths = [p.strip() for p in args.paths.split(",") if p.strip()]
  if not paths or any(p not in PATHS for p in paths):
    parser.error(f"--paths must list some of {PATHS}, got {args.paths!r}")
  impls = [p.strip() for p in args.impls.split(",") if p.strip()]
  if not impls or any(i not in scores_lib.IMPLS for i in impls):
    parser.error(f"--impls must list some of {scores_lib.IMPLS}, got {args.impls!r}")
  impls = list(dict.fromkeys(scores_lib.resolve_impl(i) for i in impls))
  input_h, input_w = (int(v) for v in args.input_size.lower().split("x"))
  reused, reused_command = earlier_release_style(args.baselines_from)

  # ripu_jax and the floor first, all cases back to back: their figures come from the same
  # minute or two of machine time, not spread over the baselines' half hour.
  rows, cases = [], []
  for size in args.sizes.split(","):
    height, width = (int(v) for v in size.lower().split("x"))
    label_logits = realistic_logits(height, width)
    floor = (jax.jit(lambda x: scores_lib.pixel_stats(x).entropy), label_logits)
    input_size = (min(input_h, height), min(input_w, width))
    network_logits = realistic_logits(*(-(-v // args.output_stride) for v in input_size))
    for path_name in paths:
      if path_name == "network":
        path = Path("network", network_logits, (height, width), input_size)
      elif path_name == "upsampled":
        path = Path("upsampled", jax.block_until_ready(image_ops.upsample_to_labels(
            network_logits, (height, width), input_size)), (height, width), None)
      else:
        path = Path("label", label_logits, (height, width), None)
      for name, kind, radius, budget in CASES:
        plan = make_plan(kind, height, width, radius, budget)
        case_rows = bench_ripu_jax(path, name, plan, args.runs, floor, impls)
        for row, _ in case_rows:
          rows.append(row)
          print(json.dumps(row), flush=True)
        cases.append((path, plan, case_rows))

  # The release-style version once per case, compared with every impl's score map.
  for path, plan, case_rows in cases:
    pending = []
    for row, score in case_rows:
      earlier = reused_release_style(
          reused, (row["size"], row["path"], row["case"], row["impl"]))
      if earlier is None:
        pending.append((row, score))
      else:
        row.update(earlier, release_style_from=args.baselines_from)
    runs = args.baseline_pa_runs if plan.mode == "pixel" else args.baseline_runs
    if pending and runs > 0:
      fields, base_score = bench_release_style(path, plan, runs)
      for row, score in pending:
        row.update(fields, max_abs_score_diff_vs_release_style=float(
            np.max(np.abs(score - base_score))))
        print(json.dumps(row), flush=True)

  header = ("| size | path (logits) | case | impl | picks | ripu_jax score | select | all in "
            "| extra mem / logits | release-style score | select | total | floor (entropy) |")
  lines = [header, "|" + "---|" * 13]
  for r in rows:
    base = (f"{r['release_style_score_ms']:.0f} ms | {r['release_style_select_ms']:.0f} ms | "
            f"{r['release_style_total_ms'] / 1e3:.2f} s"
            + ("" if r["same_picks_on_release_scores"] else " (picks differ!)")
            if "release_style_total_ms" in r else "skipped | skipped | skipped")
    lines.append(
        f"| {r['size']} | {r['path']} ({r['logits_size']}) | {r['case']} | {r['impl']} | "
        f"{r['picks_per_image']} | "
        f"{r['ripu_jax_score_ms']:.0f} ms | {r['ripu_jax_select_ms']:.0f} ms | "
        f"**{r['ripu_jax_total_ms']:.0f} ms** | "
        f"{r['ripu_jax_extra_memory_bytes'] / r['logits_bytes']:.2f}x | {base} | "
        f"{r['floor_entropy_ms']:.0f} ms |")
  if any("release_style_from" in r for r in rows):
    lines.append(f"\nRelease-style columns from {args.baselines_from} (made with "
                 f"`{reused_command}`).")
  table = "\n".join(lines)
  print()
  print(table)
  meta = {
      "command": "python scripts/benchmark_acquisition.py " + " ".join(
          f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
      "jax": jax.__version__, "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
      "machine": platform.processor() or platform.machine(),
      "release_style_command": reused_command,
      "timing": ("median of --runs calls after a warm-up call, one image, wall clock; "
                 "ripu_jax's score, select and all-in calls of every impl and the floor are "
                 "timed in turns"),
  }
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"meta": meta, "rows": rows, "table": table}, f, indent=1)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
