"""Acquisition strategies compared on the synthetic benchmark: mIoU per strategy and budget.

  python scripts/compare_strategies.py --workdir runs/compare            # 3 seeds, ~3 h on 2 CPU cores
  python scripts/compare_strategies.py --workdir /tmp/compare --smoke    # tiny, a minute or two
  python scripts/compare_strategies.py --workdir runs/compare --report   # tabulate finished runs

The command line of `ripu_jax.experiments.compare`, whose docstring states the protocol (the
settings, resuming, results shared without checkpoints, the outputs): this script only turns
flags into its arguments. Rerun the same command to resume; `--report` trains nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from ripu_jax.experiments import compare  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="where every run and the results go")
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
  parser.add_argument("--settings", default=",".join(s.name for s in compare.SETTINGS),
                      help="comma-separated subset of: " + ", ".join(compare.SETTINGS_BY_NAME))
  parser.add_argument("--source-steps", type=int, default=None,
                      help=f"steps of the source-only stage (default {compare.DEFAULT_STEPS[0]}; "
                      f"smoke {compare.SMOKE_STEPS[0]})")
  parser.add_argument("--adapt-steps", type=int, default=None,
                      help=f"steps of every other setting (default {compare.DEFAULT_STEPS[1]}; "
                      f"smoke {compare.SMOKE_STEPS[1]})")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny images and networks: checks the pipeline, not the method")
  parser.add_argument("--report", action="store_true",
                      help="train nothing: tabulate and plot the runs that have finished")
  args = parser.parse_args(argv)
  try:
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  except ValueError:
    parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
  names = [s.strip() for s in args.settings.split(",") if s.strip()]
  try:
    args.settings = compare.resolve_settings(names)  # source_only added: the rest start from it
  except ValueError as error:
    parser.error(str(error))
  if not names or not args.seeds:
    parser.error("--settings and --seeds must not be empty")
  source_steps, adapt_steps = compare.default_steps(args.smoke)
  args.source_steps = args.source_steps or source_steps
  args.adapt_steps = args.adapt_steps or adapt_steps
  if args.source_steps < 1 or args.adapt_steps < compare.ROUNDS:
    parser.error(f"--source-steps must be >= 1 and --adapt-steps >= {compare.ROUNDS} "
                 f"({compare.ROUNDS} selection rounds)")
  return args


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  return compare.run_comparison(
      args.workdir, args.seeds, args.settings, source_steps=args.source_steps,
      adapt_steps=args.adapt_steps, smoke=args.smoke, report=args.report,
      progress_bars=sys.stderr.isatty())


if __name__ == "__main__":
  main()
