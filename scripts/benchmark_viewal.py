"""Times ViewAL's per-scene scoring and selection: ripu_jax against a release-style numpy version.

  python scripts/benchmark_viewal.py                      # 20 frames at 240x320
  python scripts/benchmark_viewal.py --frames 10,20,30 --out benchmarks/viewal.json
  python scripts/benchmark_viewal.py --size 120x160 --frames 8 --runs 2   # a quick check

For each frame count F, one synthetic scene: tests/viewal_oracles.room_scene (a box room with
an occluding box and a panel, ray cast, some invalid depth; the camera sweeps sideways and
turns), C = --classes smooth random probabilities and a --grid of superpixels (5x8 = 40).

* ripu_jax: view_scores, superpixel_means of VE and VD, superpixel_sizes and
  select_superpixels (budget: --budget-share of the scene's pixels, --mode) on the scene, as a
  caller runs them; median of --runs after one warm-up, whose extra time over the median is
  reported as compile time. MC dropout is not included (the probabilities are given). The
  coverage table (once per scene) is timed on its own, as are the overlaps it gives.
* release-style numpy, written from the method description in the release's structure: all
  points lifted at once; per target frame, every point projected with numpy, visibility by
  back-projection, then (as the release's two selectors, each its own pass) np.add.at of the
  kept distributions for VE and np.add.at of the kept points' log2((P_j + eps) / (P_i + eps))
  for VD; region means by a loop over np.unique; the coverage table from np.unique over
  (target superpixel, frame, superpixel) triples per target, kept as dicts; the walk in Python,
  scanning the scene's VE-sorted list at each step with dict look-ups. It follows ripu_jax's
  rules (invalid depth not lifted, winners labelled at once), so the picks must be identical.
  Timed --baseline-runs times.

Memory: for ripu_jax, XLA's buffer assignment of the score pass and of the coverage pass
(arguments + temporaries + outputs), the growth of the process's peak RSS (ripu_jax runs
first, frame counts in increasing order; the first row's includes XLA's start-up) and the
device's peak bytes where the platform reports them (not on CPU); for numpy, the tracemalloc
peak of one extra run. Prints a table and the picks; writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import viewal_oracles  # noqa: E402  (the scene generator)
from ripu_jax.methods.viewal import scoring  # noqa: E402
from ripu_jax.methods.viewal import selection  # noqa: E402

EPS_Q, EPS_P = 1e-12, 1e-8


def make_scene(frames, height, width, classes, grid, seed):
  centres, yaws = viewal_oracles.camera_path(frames, span=1.5, yaw=0.35)
  scene = viewal_oracles.room_scene(height, width, centres, yaws, seed=seed)
  rng = np.random.default_rng(seed)
  scene["probs"] = viewal_oracles.smooth_probs(rng, frames, height, width, classes,
                                               cells=(6, 8))
  scene["ignore"] = scene["labels"] == 4  # the ceiling: no ground truth
  scene["superpixels"] = viewal_oracles.grid_superpixels(frames, height, width, *grid)
  return scene


# ---------------------------------------------------------------------------------------------
# ripu_jax


def ours(scene, num_spx, tables, budget, mode):
  geo = (scene["depth"], scene["intrinsics"], scene["pose"])
  ve, vd = scoring.view_scores(scene["probs"], *geo, scene["ignore"])
  sp = scene["superpixels"]
  region_ve = scoring.superpixel_means(ve, sp, num_spx)
  region_vd = scoring.superpixel_means(vd, sp, num_spx)
  sizes = scoring.superpixel_sizes(sp, num_spx)
  frames = sp.shape[0]
  return selection.select_superpixels(
      np.asarray(region_ve), np.asarray(region_vd), np.zeros(frames, np.int32), [tables],
      np.asarray(sizes), np.zeros((frames, num_spx), bool), budget, mode=mode)


def ours_coverage(scene, num_spx):
  cov = scoring.coverage_table(scene["depth"], scene["intrinsics"], scene["pose"],
                               scene["superpixels"], num_spx)
  return np.asarray(scoring.overlaps(cov))


def compiled_bytes(scene, num_spx):
  """Arguments + temporaries + outputs of the two geometric passes, from XLA's assignment."""
  args = [jnp.asarray(scene[k]) for k in ("probs", "depth", "intrinsics", "pose", "ignore")]
  out = {}
  stats = scoring._scene_pass.lower(*args, jnp.float32(1.0)).compile().memory_analysis()
  out["view_scores"] = (stats.argument_size_in_bytes + stats.temp_size_in_bytes
                        + stats.output_size_in_bytes)
  stats = scoring._coverage_table.lower(
      *args[1:4], jnp.asarray(scene["superpixels"]), jnp.float32(1.0),
      num_superpixels=num_spx).compile().memory_analysis()
  out["coverage_table"] = (stats.argument_size_in_bytes + stats.temp_size_in_bytes
                           + stats.output_size_in_bytes)
  return out


# ---------------------------------------------------------------------------------------------
# Release-style numpy


def lift_all(depth, intrinsics, pose):
  """Homogeneous world points [4, F*H*W] of every pixel, frame of each, valid mask."""
  frames, height, width = depth.shape
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  world = np.zeros((4, frames * height * width), np.float32)
  for f in range(frames):
    d = depth[f].reshape(-1)
    pix = np.stack([xs.reshape(-1) * d, ys.reshape(-1) * d, d, np.ones_like(d)])
    k4 = np.eye(4, dtype=np.float32)
    k4[:3, :3] = intrinsics[f]
    world[:, f * height * width:(f + 1) * height * width] = pose[f] @ np.linalg.inv(k4) @ pix
  origin = np.repeat(np.arange(frames), height * width)
  return world, origin, depth.reshape(-1) > 0


def project_kept(world, valid, depth, k, pose, threshold):
  """Kept point indices and their flat target pixels in one frame (the release's mask chain)."""
  height, width = depth.shape
  k4 = np.eye(4, dtype=np.float32)
  k4[:3, :3] = k
  proj = (k4 @ np.linalg.inv(pose))[:3] @ world
  with np.errstate(divide="ignore", invalid="ignore"):
    u = np.round(proj[0] / proj[2])
    v = np.round(proj[1] / proj[2])
  sel = valid & (u >= 0) & (u < width) & (v >= 0) & (v < height)
  index = np.flatnonzero(sel)
  u, v = u[sel].astype(np.int64), v[sel].astype(np.int64)
  d = depth[v, u]
  pix = np.stack([u * d, v * d, d, np.ones_like(d)]).astype(np.float32)
  back = (pose @ np.linalg.inv(k4) @ pix)[:3]
  keep = (np.linalg.norm(world[:3, index] - back, axis=0) < threshold) & (d > 0)
  return index[keep], (v * width + u)[keep]


def numpy_entropy(probs, depth, intrinsics, pose, ignore, threshold=1.0):
  frames, height, width, classes = probs.shape
  world, _, valid = lift_all(depth, intrinsics, pose)
  flat_probs = probs.reshape(-1, classes)
  out = np.zeros((frames, height, width), np.float32)
  for i in range(frames):
    index, target = project_kept(world, valid, depth[i], intrinsics[i], pose[i], threshold)
    total = np.zeros((height * width, classes), np.float32)
    np.add.at(total, target, flat_probs[index])
    count = np.bincount(target, minlength=height * width).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
      q = total / count[:, None]
    q[~np.isfinite(q)] = 0
    ent = -np.sum(q * np.log2(q + EPS_Q), axis=1).reshape(height, width)
    ent[ignore[i]] = 0
    out[i] = ent
  return out


def numpy_kldiv(probs, depth, intrinsics, pose, ignore, threshold=1.0):
  frames, height, width, classes = probs.shape
  world, _, valid = lift_all(depth, intrinsics, pose)
  flat_probs = probs.reshape(-1, classes)
  out = np.zeros((frames, height, width), np.float32)
  for i in range(frames):
    index, target = project_kept(world, valid, depth[i], intrinsics[i], pose[i], threshold)
    own = probs[i].reshape(-1, classes)
    log_ratio = np.log2((flat_probs[index] + EPS_P) / (own[target] + EPS_P))
    total = np.zeros((height * width, classes), np.float32)
    np.add.at(total, target, log_ratio)
    count = np.bincount(target, minlength=height * width).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
      mean = total / count[:, None]
    mean[~np.isfinite(mean)] = 0
    kl = -np.sum(own * mean, axis=1).reshape(height, width)
    kl[ignore[i]] = 0
    out[i] = kl
  return out


def numpy_region_scores(score, superpixels):
  per_frame = []
  for f in range(score.shape[0]):
    means = {}
    for spx in np.unique(superpixels[f]).tolist():
      means[spx] = float(score[f][superpixels[f] == spx].mean())
    per_frame.append(means)
  return per_frame


def numpy_coverage(depth, intrinsics, pose, superpixels, threshold=1.0):
  """Per target frame a dict (s, j, t) -> coverage, as the release stores it."""
  world, origin, valid = lift_all(depth, intrinsics, pose)
  source_spx = superpixels.reshape(-1)
  tables = []
  for i in range(depth.shape[0]):
    index, target = project_kept(world, valid, depth[i], intrinsics[i], pose[i], threshold)
    triples = np.stack([superpixels[i].reshape(-1)[target], origin[index], source_spx[index]], 1)
    ids, sizes = np.unique(superpixels[i], return_counts=True)
    size_of = dict(zip(ids.tolist(), sizes.tolist()))
    uniq, counts = np.unique(triples, axis=0, return_counts=True)
    tables.append({tuple(t): c / size_of[t[0]] for t, c in zip(uniq.tolist(), counts.tolist())})
  return tables


def numpy_walk(region_ve, region_vd, region_size, coverage, budget, mode, threshold=0.25):
  """The walk in Python over one scene's VE-sorted list, scanned at each step."""
  rows = [(f, s, region_vd[f][s]) for f in range(len(region_ve)) for s in sorted(region_ve[f])]
  rows.sort(key=lambda r: -region_ve[r[0]][r[1]])  # stable: (frame, superpixel) on ties
  key = (lambda vd: vd) if mode == "paper" else (lambda vd: int(np.int32(vd)))

  def overlap(a, b):
    return (coverage[a[0]].get((a[1], b[0], b[1]), 0) > threshold
            or coverage[b[0]].get((b[1], a[0], a[1]), 0) > threshold)

  marked, done, picks, pixels = set(), set(), [], 0
  ctr = 0
  while pixels < budget and ctr < len(rows):
    r = rows[ctr][:2]
    if r not in done and r not in marked:
      candidates = [(q[:2], key(q[2])) for q in rows
                    if q[:2] not in marked and q[:2] not in done and overlap(r, q[:2])]
      if candidates:
        winner = sorted(candidates, key=lambda c: c[1], reverse=True)[0][0]
        marked.update(c[0] for c in candidates)
      else:
        winner = r
      done.add(winner)
      picks.append(winner)
      pixels += int(region_size[winner[0]][winner[1]])
    ctr += 1
  return picks


def numpy_pass(scene, coverage, budget, mode):
  geo = (scene["depth"], scene["intrinsics"], scene["pose"])
  ve = numpy_entropy(scene["probs"], *geo, scene["ignore"])
  vd = numpy_kldiv(scene["probs"], *geo, scene["ignore"])
  sp = scene["superpixels"]
  region_ve = numpy_region_scores(ve, sp)
  region_vd = numpy_region_scores(vd, sp)
  sizes = [dict(zip(*np.unique(s, return_counts=True))) for s in sp]
  return numpy_walk(region_ve, region_vd, sizes, coverage, budget, mode)


# ---------------------------------------------------------------------------------------------


def timed(fn, runs):
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  return result, times


def peak_rss_bytes():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_peak_bytes():
  stats = jax.devices()[0].memory_stats()  # None on CPU
  return None if not stats else stats.get("peak_bytes_in_use")


def setup(frames, args):
  height, width = args.size
  scene = make_scene(frames, height, width, args.classes, args.grid, args.seed)
  return scene, int(args.budget_share * frames * height * width)


def bench_ours(frames, args):
  num_spx = args.grid[0] * args.grid[1]
  scene, budget = setup(frames, args)
  rss0 = peak_rss_bytes()
  tables, cov_times = timed(lambda: ours_coverage(scene, num_spx), args.runs + 1)
  result, times = timed(lambda: ours(scene, num_spx, tables, budget, args.mode), args.runs + 1)
  median = statistics.median(times[1:])
  cov_median = statistics.median(cov_times[1:])
  return {
      "frames": frames, "budget_pixels": budget,
      "ours": {"seconds": median, "runs": times[1:], "compile_seconds": times[0] - median,
               "coverage_seconds": cov_median,
               "coverage_compile_seconds": cov_times[0] - cov_median,
               "compiled_bytes": compiled_bytes(scene, num_spx),
               "peak_rss_growth_bytes": peak_rss_bytes() - rss0,
               "device_peak_bytes": device_peak_bytes()},
      "picks": result.picks.tolist(), "pixels": result.pixels,
  }


def bench_numpy(row, args):
  scene, budget = setup(row["frames"], args)
  geo = (scene["depth"], scene["intrinsics"], scene["pose"], scene["superpixels"])
  coverage, cov_times = timed(lambda: numpy_coverage(*geo), args.baseline_runs)
  picks, times = timed(lambda: numpy_pass(scene, coverage, budget, args.mode),
                       args.baseline_runs)
  tracemalloc.start()
  numpy_pass(scene, coverage, budget, args.mode)
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.reset_peak()
  numpy_coverage(*geo)
  _, cov_peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  row["numpy"] = {"seconds": statistics.median(times), "runs": times,
                  "coverage_seconds": statistics.median(cov_times),
                  "tracemalloc_peak_bytes": peak, "coverage_tracemalloc_peak_bytes": cov_peak}
  row["speedup"] = row["numpy"]["seconds"] / row["ours"]["seconds"]
  row["coverage_speedup"] = row["numpy"]["coverage_seconds"] / row["ours"]["coverage_seconds"]
  row["numpy_picks"] = [[int(f), int(s)] for f, s in picks]
  row["identical"] = row["picks"] == row["numpy_picks"]
  return row


def parse_pair(text):
  a, b = text.lower().split("x")
  return int(a), int(b)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--frames", default="20", help="comma-separated frame counts per scene")
  parser.add_argument("--size", type=parse_pair, default=(240, 320), help="HxW working size")
  parser.add_argument("--classes", type=int, default=13)
  parser.add_argument("--grid", type=parse_pair, default=(5, 8),
                      help="superpixel grid, rows x cols (S = rows * cols)")
  parser.add_argument("--runs", type=int, default=5, help="timed runs of ripu_jax")
  parser.add_argument("--baseline-runs", type=int, default=1, help="timed runs of numpy")
  parser.add_argument("--budget-share", type=float, default=0.05,
                      help="pixels to label, as a share of the scene's pixels")
  parser.add_argument("--mode", choices=selection.MODES, default="release")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None, help="JSON file to write")
  args = parser.parse_args()

  # ripu_jax first for every frame count (increasing, so that the growth of the process's
  # peak RSS is its own), then the numpy version.
  rows = [bench_ours(f, args) for f in sorted(int(f) for f in args.frames.split(","))]
  for row in rows:
    bench_numpy(row, args)
    print(f"F={row['frames']} {args.size[0]}x{args.size[1]} C={args.classes} "
          f"S={args.grid[0] * args.grid[1]}: picks identical: {row['identical']}")
    print(f"  picks ({len(row['picks'])}, {row['pixels']} px): {row['picks']}")
  mib = 1 << 20
  print("\n| F | ours s/scene | compile s | numpy s/scene | speedup | ours coverage s | "
        "numpy coverage s | ours XLA MiB (scores / coverage) | ours RSS growth MiB | "
        "numpy tracemalloc MiB (scores / coverage) | identical |")
  print("|---" * 11 + "|")
  for row in rows:
    o, n = row["ours"], row["numpy"]
    print(f"| {row['frames']} | {o['seconds']:.3f} | {o['compile_seconds']:.2f} | "
          f"{n['seconds']:.2f} | {row['speedup']:.1f}x | {o['coverage_seconds']:.3f} | "
          f"{n['coverage_seconds']:.2f} | {o['compiled_bytes']['view_scores'] / mib:.0f} / "
          f"{o['compiled_bytes']['coverage_table'] / mib:.0f} | "
          f"{o['peak_rss_growth_bytes'] / mib:.0f} | {n['tracemalloc_peak_bytes'] / mib:.0f} / "
          f"{n['coverage_tracemalloc_peak_bytes'] / mib:.0f} | {row['identical']} |")
  if args.out:
    meta = {"command": "python scripts/benchmark_viewal.py " + " ".join(sys.argv[1:]),
            "jax": jax.__version__, "numpy": np.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "backend": jax.default_backend()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({"meta": meta, "rows": rows}, f, indent=1)
  if not all(row["identical"] for row in rows):
    sys.exit("picks differ between ripu_jax and the numpy version")


if __name__ == "__main__":
  main()
