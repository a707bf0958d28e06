"""The accelerator check's steps, one JSON of figures (`scripts/gpu_check.sh` installs, then runs this).

  python scripts/gpu_check.py --out gpu_check.json          # on a machine whose jax sees a GPU
  python scripts/gpu_check.py --cpu --out /tmp/check.json   # the same steps, tiny, on the CPU

Steps, each in its own process with its own time limit, so one that fails or hangs loses none
of the others' figures (its error goes into the JSON and the exit status is 1):

1. the acquisition tests, run on the device (`JAX_PLATFORMS`);
2. the acquisition benchmark at 1024x2048, both score implementations (`--impls`), on the
   trainer's path and at label size, without the slow release-style columns;
3. the training step at the release's size (DeepLab-v2 ResNet-101, 1280x720 source +
   1280x640 target, 2 + 2 images), float32 and bfloat16: seconds per step, compile time,
   peak device memory.

`--cpu` runs every step with tiny sizes on the CPU: a dry run that checks the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACQUISITION_TESTS = ("tests/test_acquisition_scores.py", "tests/test_acquisition_greedy.py",
                     "tests/test_acquisition_impl.py", "tests/test_upsample.py",
                     "tests/test_demo_acquisition.py")
# (label sizes, train-step arguments) of a real check and of a --cpu dry run.
REAL = ("1024x2048", ["--height=640", "--width=1280", "--source-height=720",
                      "--source-width=1280", "--batch=2", "--steps=5"])
DRY = ("48x96", ["--depth=18", "--width-multiplier=0.125", "--height=64", "--width=128",
                 "--source-height=72", "--source-width=128", "--batch=2", "--steps=1"])


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cpu", action="store_true", help="dry run: tiny sizes on the CPU")
  parser.add_argument("--out", default="gpu_check.json")
  parser.add_argument("--tests", default=",".join(ACQUISITION_TESTS),
                      help="comma-separated test files run on the device")
  parser.add_argument("--step-timeout", type=int, default=240,
                      help="seconds each step may take before it is stopped")
  return parser.parse_args(argv)


def run_step(name: str, command: list[str], env: dict, timeout: int) -> dict:
  """Runs one step; returns {"ok", "seconds", "output_tail"} and never raises."""
  print(f"[gpu_check] {name}: {' '.join(command)}", flush=True)
  start = time.perf_counter()
  try:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    ok, output = done.returncode == 0, done.stdout + done.stderr
  except subprocess.TimeoutExpired as error:
    ok = False
    output = f"stopped after {timeout} s\n" + (error.stdout or b"").decode(errors="replace")[-2000:]
  seconds = time.perf_counter() - start
  print(f"[gpu_check] {name}: {'ok' if ok else 'FAILED'} in {seconds:.0f} s", flush=True)
  return {"ok": ok, "seconds": round(seconds, 1), "output_tail": output[-3000:]}


def device_report(env: dict) -> dict:
  """What jax sees in a fresh process with the check's environment."""
  code = ("import jax, json; d = jax.devices()[0]; print(json.dumps({'backend': "
          "jax.default_backend(), 'devices': [str(x) for x in jax.devices()], 'kind': "
          "getattr(d, 'device_kind', ''), 'jax': jax.__version__}))")
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  if done.returncode:
    raise SystemExit(f"gpu_check: jax does not start: {done.stderr.strip().splitlines()[-1:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
  args = parse_args(argv)
  env = dict(os.environ, JAX_PLATFORMS="cpu" if args.cpu else "cuda")
  env.setdefault("PYTHONPATH", ROOT)
  start = time.perf_counter()
  devices = device_report(env)
  if not args.cpu and devices["backend"] != "gpu":
    raise SystemExit(f"gpu_check: jax runs on {devices['backend']!r}, not a GPU: install the "
                     "CUDA build of jax (scripts/gpu_check.sh does), or pass --cpu")
  sizes, step_args = DRY if args.cpu else REAL
  report = {"mode": "cpu dry run" if args.cpu else "gpu", "devices": devices,
            "python": platform.python_version(), "machine": platform.machine(), "steps": {}}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

  def save() -> None:
    """Writes the figures so far: a check stopped from outside keeps its finished steps."""
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["failed"] = [name for name, step in report["steps"].items() if not step["ok"]]
    with open(args.out, "w") as handle:
      json.dump(report, handle, indent=1)

  with tempfile.TemporaryDirectory() as scratch:
    tests = [t for t in args.tests.split(",") if t]
    report["steps"]["acquisition_tests"] = run_step(
        "acquisition tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "-n", "0", *tests], env, args.step_timeout)
    save()
    acquisition_out = os.path.join(scratch, "acquisition.json")
    step = run_step("acquisition benchmark", [
        sys.executable, "scripts/benchmark_acquisition.py", f"--sizes={sizes}", "--runs=3",
        "--baseline-runs=0", "--baseline-pa-runs=0", "--impls=cpu,reduce_window",
        f"--out={acquisition_out}"], env, args.step_timeout)
    if step["ok"]:
      with open(acquisition_out) as handle:
        step["rows"] = json.load(handle)["rows"]
    report["steps"]["acquisition_benchmark"] = step
    save()
    for dtype in ("float32", "bfloat16"):
      out = os.path.join(scratch, f"train_step_{dtype}.json")
      step = run_step(f"train step {dtype}", [
          sys.executable, "scripts/benchmark_train_step.py", *step_args, f"--dtype={dtype}",
          f"--output={out}"], env, args.step_timeout)
      if step["ok"]:
        with open(out) as handle:
          step["result"] = json.load(handle)
      report["steps"][f"train_step_{dtype}"] = step
      save()
  failed = report["failed"]
  print(f"[gpu_check] wrote {args.out} in {report['seconds']:.0f} s"
        + (f"; FAILED: {', '.join(failed)}" if failed else "; every step passed"))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
