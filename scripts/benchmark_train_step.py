"""Times a method's jitted training step (RIPU's by default: source + target batch).

Prints the cold start (model construction + optimiser + tracing and compiling the step),
the median seconds per step and the peak resident memory, and writes them as JSON.
`--compare ripu,labor,labor_shared` times each objective in its own process (so each peak
memory is its own), one after the other with the same sizes, and prints them side by side:
what LabOR's extra networks (selector, discriminator) cost, and what sharing A's backbone
(labor.share_backbone) saves. `--objective eln` times ELN's self-training step (its stage 3:
student on the labelled, weak and strong images, two auxiliary decoders, the ELN on three
predictions and on the teacher's, the EMA teacher, the contrastive loss) on the
"eln_deeplabv3plus" student with batch-statistics BN, `--batch` labelled + `--batch`
unlabelled images.

  python scripts/benchmark_train_step.py --height 256 --width 512 --dtype float32
  python scripts/benchmark_train_step.py --height 256 --width 512 --dtype bfloat16
  python scripts/benchmark_train_step.py --height 256 --width 512 --compare ripu,labor,labor_shared
  python scripts/benchmark_train_step.py --height 256 --width 512 --compare ripu,eln
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

import jax
import ml_collections
import numpy as np
from flax import nnx

from ripu_jax import config_lib
from ripu_jax.methods.eln.config import semi_supervised_config
from ripu_jax.methods.labor.config import labor_config
from ripu_jax.models import build_model
from ripu_jax.objectives import OBJECTIVES, TrainState
from ripu_jax.optim import create_optimizer

LABOR_VARIANTS = {"labor": False, "labor_shared": True}  # name -> labor.share_backbone


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="deeplabv2")
  parser.add_argument("--depth", type=int, default=101)
  parser.add_argument("--width-multiplier", type=float, default=1.0)
  parser.add_argument("--num-classes", type=int, default=19)
  parser.add_argument("--height", type=int, default=256, help="target images (and source)")
  parser.add_argument("--width", type=int, default=512)
  parser.add_argument("--source-height", type=int, default=None,
                      help="source images, when they differ (the release: 720x1280)")
  parser.add_argument("--source-width", type=int, default=None)
  parser.add_argument("--batch", type=int, default=1, help="images per domain")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")
  parser.add_argument("--source-free", action="store_true",
                      help="the same as --objective source_free")
  parser.add_argument("--objective", choices=("ripu", "source_free", *LABOR_VARIANTS, "eln"),
                      default="ripu", help="labor_shared: LabOR with labor.share_backbone; "
                      "eln: ELN's self-training step")
  parser.add_argument("--compare", default=None,
                      help="comma-separated objectives, each timed in its own process")
  parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/...)")
  return parser.parse_args(argv)


def peak_memory_mib() -> float:
  """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def peak_device_bytes() -> int | None:
  """Peak memory in use on the first device (accelerators report it; the CPU does not)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return int(peak) if peak is not None else None


class CompileTimer:
  """Sums JAX's tracing, lowering and XLA compilation durations while active."""

  EVENTS = (
      "/jax/core/compile/jaxpr_trace_duration",
      "/jax/core/compile/jaxpr_to_mlir_module_duration",
      "/jax/core/compile/backend_compile_duration",
  )

  def __init__(self):
    self.seconds = {event.rsplit("/", 1)[-1]: 0.0 for event in self.EVENTS}
    self.active = False
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event: str, duration: float, **_: object) -> None:
    if self.active and event in self.EVENTS:
      self.seconds[event.rsplit("/", 1)[-1]] += duration


def make_batch(args: argparse.Namespace, seed: int = 0) -> dict[str, np.ndarray]:
  """Random images and labels; target labels mostly unlabelled, as after acquisition."""
  rng = np.random.default_rng(seed)
  shape = (args.batch, args.height, args.width)
  source_shape = (args.batch, args.source_height or args.height, args.source_width or args.width)
  target_labels = np.full(shape, 255, np.int32)
  labelled = rng.random(shape) < 0.05
  target_labels[labelled] = rng.integers(0, args.num_classes, labelled.sum())
  return {
      "source_images": rng.standard_normal(source_shape + (3,), np.float32),
      "source_labels": rng.integers(0, args.num_classes, source_shape).astype(np.int32),
      "target_images": rng.standard_normal(shape + (3,), np.float32),
      "target_labels": target_labels,
  }


def make_semi_supervised_batch(args: argparse.Namespace, seed: int = 0) -> dict[str, np.ndarray]:
  """ELN's streams: labelled images with dense labels, unlabelled ones with a strong view."""
  rng = np.random.default_rng(seed)
  shape = (args.batch, args.height, args.width)
  return {
      "labelled_images": rng.standard_normal(shape + (3,), np.float32),
      "labelled_labels": rng.integers(0, args.num_classes, shape).astype(np.int32),
      "unlabelled_images": rng.standard_normal(shape + (3,), np.float32),
      "unlabelled_strong_image": rng.standard_normal(shape + (3,), np.float32),
      "unlabelled_labels": np.full(shape, 255, np.int32),
  }


def compare(args: argparse.Namespace, argv: list[str]) -> list[dict]:
  """Times each objective of --compare in its own process; prints them side by side."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  names = [n.strip() for n in args.compare.split(",") if n.strip()]
  passed = [f"--model={args.model}", f"--depth={args.depth}",
            f"--width-multiplier={args.width_multiplier}", f"--num-classes={args.num_classes}",
            f"--height={args.height}", f"--width={args.width}", f"--batch={args.batch}",
            *(f"--source-{side}={value}" for side, value in
              (("height", args.source_height), ("width", args.source_width)) if value),
            f"--dtype={args.dtype}", f"--steps={args.steps}"]
  results = []
  with tempfile.TemporaryDirectory() as directory:
    for name in names:
      output = os.path.join(directory, f"{name}.json")
      subprocess.run([sys.executable, __file__, *passed, "--objective", name, "--output",
                      output], check=True)
      with open(output) as handle:
        results.append(json.load(handle))
  print(f"\n| objective | s/step (median of {args.steps}) | CPU s/step | cold start s | "
        "peak RSS MiB | load |")
  print("|---|---|---|---|---|---|")
  for result in results:
    print(f"| {result['objective']} | {result['seconds_per_step_median']:.2f} | "
          f"{result['cpu_seconds_per_step_median']:.2f} | {result['cold_start_seconds']:.1f} | "
          f"{result['peak_rss_mib']:.0f} | {result['load_average_1min']:.1f} |")
  output = args.output or os.path.join(
      "benchmarks", f"train_step_compare_{'_'.join(names)}_{args.height}x{args.width}.json")
  os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
  with open(output, "w") as handle:
    json.dump({"command": "python scripts/benchmark_train_step.py " + " ".join(argv),
               "results": results}, handle, indent=2)
  print(f"wrote {output}")
  return results


def main(argv: list[str] | None = None) -> dict | list[dict]:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.compare:
    return compare(args, argv)
  batch = make_batch(args)
  objective_name = "source_free" if args.source_free else args.objective
  config = config_lib.base_config()
  model_name = args.model
  if objective_name == "eln":  # stage 3 from the first step
    config = semi_supervised_config(config, fraction=0.125, aux_from=0, self_training_from=0)
    model_name = config.model.name
    config.model.dtype = args.dtype
    config.model.kwargs.update(depth=args.depth, width_multiplier=args.width_multiplier)
    config.eln.network.width_multiplier = args.width_multiplier
    batch = make_semi_supervised_batch(args)
  if objective_name in (*LABOR_VARIANTS, "eln") and args.num_classes != config_lib.num_classes(
      config):
    raise SystemExit(f"--objective {objective_name} builds its extra networks for the "
                     f"config's {config_lib.num_classes(config)} classes; drop --num-classes")
  if objective_name in LABOR_VARIANTS:
    config = labor_config(config, "spl")
    config.labor.share_backbone = LABOR_VARIANTS[objective_name]
    config.model.name, config.model.dtype = args.model, args.dtype
    config.model.kwargs = ml_collections.ConfigDict(dict(
        depth=args.depth, width_multiplier=args.width_multiplier))
  objective = OBJECTIVES.get("labor" if objective_name in LABOR_VARIANTS else objective_name)(
      config)
  compile_timer = CompileTimer()
  start = time.perf_counter()
  model_kwargs = dict(depth=args.depth, width_multiplier=args.width_multiplier)
  if objective_name == "eln":
    model_kwargs.update(config.model.kwargs.to_dict())
  model = build_model(
      model_name,
      args.num_classes,
      rngs=nnx.Rngs(0),
      dtype=args.dtype,
      **model_kwargs,
      **objective.model_kwargs(),  # LabOR's shared heads, ELN's auxiliary decoders
  )
  if objective_name in (*LABOR_VARIANTS, "eln"):
    state = objective.build_state(model)
    objective.initialize(state)
  else:
    state = TrainState(model, create_optimizer(model))
  step = objective.make_step()
  built = time.perf_counter()
  compile_timer.active = True
  metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_timer.active = False
  first_result = time.perf_counter() - start
  compile_seconds = sum(compile_timer.seconds.values())
  cold_start = built - start + compile_seconds
  times, cpu_times = [], []
  for _ in range(args.steps):
    tick, cpu_tick = time.perf_counter(), time.process_time()
    metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - tick)
    cpu_times.append(time.process_time() - cpu_tick)
  result = {
      "model": model_name,
      "depth": args.depth,
      "width_multiplier": args.width_multiplier,
      "dtype": args.dtype,
      "height": args.height,
      "width": args.width,
      "source_height": args.source_height or args.height,
      "source_width": args.source_width or args.width,
      "batch_per_domain": args.batch,
      "source_free": objective_name == "source_free",
      "objective": objective_name,
      "build_seconds": built - start,
      "compile_seconds": compile_seconds,
      "compile_breakdown_seconds": compile_timer.seconds,
      "cold_start_seconds": cold_start,
      "first_step_done_seconds": first_result,
      "seconds_per_step_median": statistics.median(times) if times else None,
      "step_seconds": times,
      # CPU seconds of all this process's threads: less sensitive to other processes
      # sharing the cores than wall time (ideal wall time ~ CPU time / cores).
      "cpu_seconds_per_step_median": statistics.median(cpu_times) if cpu_times else None,
      "load_average_1min": os.getloadavg()[0],
      "peak_rss_mib": peak_memory_mib(),
      "peak_device_bytes": peak_device_bytes(),
      "final_loss": float(metrics["total"]),
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
      "cpu_count": os.cpu_count(),
      "machine": platform.machine(),
  }
  streams = ("labelled", "unlabelled") if objective_name == "eln" else ("source", "target")
  print(f"{objective_name}: model {model_name} depth {args.depth} {args.dtype} "
        f"{args.height}x{args.width}, batch {args.batch} {streams[0]} + {args.batch} "
        f"{streams[1]}")
  print(f"cold start (build + compile): {cold_start:.2f} s (build {built - start:.2f} s, "
        f"trace + lower + compile {compile_seconds:.2f} s); first step done after "
        f"{first_result:.2f} s")
  if times:
    print(f"seconds per step (median of {len(times)}): {result['seconds_per_step_median']:.3f} "
          f"(CPU seconds {result['cpu_seconds_per_step_median']:.2f} on {os.cpu_count()} cores, "
          f"load average {result['load_average_1min']:.2f})")
  print(f"peak RSS: {result['peak_rss_mib']:.0f} MiB"
        + (f"; peak device memory {result['peak_device_bytes'] / 2**30:.2f} GiB"
           if result["peak_device_bytes"] is not None else ""))
  suffix = "" if objective_name == "ripu" else f"_{objective_name}"
  output = args.output or os.path.join(
      "benchmarks",
      f"train_step_{model_name}_{args.dtype}_{args.height}x{args.width}{suffix}.json")
  os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
  with open(output, "w") as handle:
    json.dump(result, handle, indent=2)
  print(f"wrote {output}")
  return result


if __name__ == "__main__":
  main()
