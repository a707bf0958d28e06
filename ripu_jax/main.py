"""Command line: `python -m ripu_jax.main --config configs/demo.py --workdir /tmp/ripu_demo`.

Any config field can be overridden, e.g. `--config.active.ratio=0.05`; a small run of any
config is `--config configs/synthia.py:smoke`. Rerunning the same command resumes; a rerun
with another config is refused unless the changed fields are named in
`--allow_config_change` (e.g. `--allow_config_change=num_steps` to extend a run).

Errors the user can fix (a bad config value or field, missing data, a workdir in use or of
another config) print one line; `--verbosity=1` or RIPU_JAX_TRACEBACK=1 adds the traceback.
Ctrl-C stops the run with one line saying how to resume.

Several processes (hosts) run one job with the same command plus, where the platform does
not tell JAX (SLURM, Open MPI and TPU pod slices do), `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`; see `ripu_jax.distributed`. Process 0 writes the run's
files and prints; the others print only errors.
"""

import os
import re
import signal
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ripu_jax import distributed
from ripu_jax import errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py), optionally with ':arg'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, rounds.")
_ALLOW = flags.DEFINE_list(
    "allow_config_change", [], "Config fields that may differ from the config recorded in a "
    "workdir that already holds checkpoints, e.g. num_steps,eval.every (recorded in "
    "config_changes.jsonl).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, for a run over several processes "
    "(not needed on SLURM, Open MPI or a TPU pod slice).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 to N-1.")
_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout", 300, "Seconds to wait for every process to join the run.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout", 60, "Seconds without a sign of life after which the other processes "
    "of a run stop (a process was killed or crashed).")
flags.mark_flags_as_required(["config", "workdir"])


def _show_tracebacks(argv=None) -> bool:
  if os.environ.get("RIPU_JAX_TRACEBACK", "") not in ("", "0"):
    return True
  if flags.FLAGS.is_parsed():
    return flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 1
  return any(arg.startswith(("--verbosity=", "-v=")) and arg.split("=", 1)[1] not in ("0", "-1")
             for arg in (argv or []))


def _fail(message: str, code: int = 2) -> None:
  where = (f"process {distributed.process_index()}: " if distributed.process_count() > 1
           else "")
  distributed.report_failure(message)
  print(f"error: {where}{message}", file=sys.stderr)
  sys.exit(code)


def _parse_flags(argv):
  """absl's parsing, with a one-line error for a bad `--config.<field>` (no traceback)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    text = str(error)
    if "Traceback (most recent call last)" in text and not _show_tracebacks(argv):
      # A config file that raised: its flag, then the exception's own line, not the traceback.
      lines = [line for line in text.splitlines() if line.strip()]
      _fail(f"{lines[0].rstrip(':')}: {lines[-1]}")
    _fail(f"{text}. See --helpfull for the flags.")
  except (AttributeError, KeyError, TypeError, ValueError, errors.UserError) as error:
    if _show_tracebacks(argv):
      raise
    text = str(error).replace("\\n", " ").replace("\\'", "'")
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    unknown = re.search(r"'(\w+)'", text)
    if isinstance(error, (AttributeError, KeyError)) and unknown:
      field = unknown.group(1)
      where = [a for a in overrides if re.search(rf"[.]{field}(=|$)", a.split("=", 1)[0] + "=")]
      suggestion = re.search(r'Did you mean "([^"]+)"', text)
      hint = f"; did you mean {suggestion.group(1)!r}?" if suggestion else ""
      _fail(f"{', '.join(where) or 'a --config override'}: the config has no field "
            f"{field!r}{hint}")
    _fail(f"could not apply the config overrides {overrides}: {text}")
  return argv


_STOP_MESSAGE = ("\nstopped (Ctrl-C). Rerun the same command to resume {workdir} from its last "
                 "checkpoint.")


def _stop_now() -> None:
  print(_STOP_MESSAGE.format(workdir=_WORKDIR.value), file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(130)  # pylint: disable=protected-access  (no tracebacks from worker threads)


def _on_interrupt(signum, frame):
  """Ctrl-C: KeyboardInterrupt wherever the main thread is; a second one leaves at once.

  Being our own handler (not Python's default) also keeps asyncio, which orbax's saves run
  on, from turning Ctrl-C into a task cancellation that a library could swallow.
  """
  del signum, frame
  if _on_interrupt.seen:
    _stop_now()
  _on_interrupt.seen = True
  raise KeyboardInterrupt


_on_interrupt.seen = False


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # Progress bars and one line per eval/round say what happens; library INFO logs
    # (orbax writes several per checkpoint) would drown them. --verbosity=0 shows them.
    logging.set_verbosity(logging.WARNING)
  signal.signal(signal.SIGINT, _on_interrupt)
  try:
    several = distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                                     _PROCESS_ID.value, timeout_s=_TIMEOUT.value,
                                     heartbeat_s=_HEARTBEAT.value)
    if several and not distributed.is_primary():  # silence its stdout, C++ libraries' too
      sys.stdout.flush()
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    from ripu_jax import train  # pylint: disable=g-import-not-at-top  (after the JAX setup)
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                             allow_config_change=tuple(_ALLOW.value))
  except KeyboardInterrupt:
    _stop_now()
  except errors.UserError as error:
    if _show_tracebacks():
      raise
    _fail(str(error), code=1)
  except BaseException as error:
    distributed.report_failure(f"{type(error).__name__}: {error}")
    raise


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
