"""A workdir is one run: a lock keeps a second process out, and the recorded config guards it.

Layout this module owns: `lock` (host, pid and start time of the process running the run;
held with an OS file lock, which the system releases when that process dies, even by
SIGKILL, so a stale file never blocks a rerun), `config.json` (the config of the run that
produced the checkpoints) and `config_changes.jsonl` (every change a user allowed, with the
step it took effect).

Rules: while the workdir holds no checkpoint, a rerun may use another config (it replaces
config.json: nothing computed depends on it yet). Once a checkpoint exists, a rerun with a
different config is refused, naming the fields, unless each differing field is allowed
explicitly (`--allow_config_change=num_steps,eval.every`); what changed is then recorded.
`progress_bars`, `model.init_from` and `train.continue_from` (used only by a fresh start)
and `acquisition.impl` may always differ, and a field added to ripu_jax after the run was
recorded does not count while it is at the default that keeps the earlier behaviour.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from ripu_jax.errors import WorkdirError

LOCK_FILE = "lock"
CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
# Fields that never change what a resumed run computes (acquisition.impl: the score code, same
# scores to float32 rounding; its "auto" already differs from machine to machine).
FREE_FIELDS = ("progress_bars", "model.init_from", "train.continue_from", "acquisition.impl")
_MISSING = "<absent>"


def check_path(workdir: str) -> str:
  """The absolute workdir; an empty one (e.g. `--workdir=`) is refused."""
  if not str(workdir or "").strip():
    raise WorkdirError("--workdir is empty; give the directory this run writes to "
                       "(e.g. --workdir=/tmp/ripu_demo)")
  return os.path.abspath(os.path.expanduser(str(workdir)))


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class WorkdirLock:
  """Exclusive use of a workdir by this process, released on `release()` or process exit."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = open(self.path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self._file.seek(0)
      holder = self._file.read().strip()
      self._file.close()
      try:
        holder = "pid {pid} on host {host} (started {started})".format(**json.loads(holder))
      except (ValueError, KeyError, TypeError):
        holder = "another process"
      raise WorkdirError(
          f"the workdir {workdir} is in use by {holder}. Two processes on one workdir would "
          "overwrite each other's checkpoints: wait for that run to end or stop it, or give "
          "this one another --workdir") from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "started": _now()}) + "\n")
    self._file.flush()

  def release(self) -> None:
    if not self._file.closed:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """A config as JSON ({group: {field: value}}) -> {"group.field": value}."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def config_differences(recorded: Mapping[str, Any], current: Mapping[str, Any],
                       defaults: Mapping[str, Any] | None = None
                       ) -> dict[str, tuple[Any, Any]]:
  """field -> (recorded, current) for every field that differs, free fields left out.

  A field the recorded config lacks (added to ripu_jax since) does not differ while the
  current config holds it at its default in `defaults`, the value that keeps the earlier
  behaviour.
  """
  old, new = flatten(recorded), flatten(current)
  defaults = defaults or {}

  def differs(name: str) -> bool:
    if name in FREE_FIELDS or old.get(name, _MISSING) == new.get(name, _MISSING):
      return False
    return not (name not in old and name in defaults and new.get(name) == defaults[name])

  return {name: (old.get(name, _MISSING), new.get(name, _MISSING))
          for name in sorted(old.keys() | new.keys()) if differs(name)}


def _allowed(name: str, allowed: Iterable[str]) -> bool:
  return any(name == a or name.startswith(a + ".") for a in allowed)


def record_config(workdir: str, config_json: str, *, checkpoint_step: int | None,
                  allow_changes: Iterable[str] = (),
                  defaults: Mapping[str, Any] | None = None) -> None:
  """Writes config.json, or checks the rerun's config against it (see the module docstring).

  config_json: `config.to_json_best_effort(indent=1, sort_keys=True)`.
  checkpoint_step: the step the run resumes from, None when it has no checkpoint.
  defaults: {dotted field: default} of fields added since (`config_lib.field_defaults()`).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if checkpoint_step is None or not os.path.exists(path):
    _write(path, config_json)
    return
  try:
    with open(path) as f:
      recorded = json.load(f)
  except ValueError as error:
    raise WorkdirError(f"{path} is not valid JSON ({error}); it records the config of the run "
                       "whose checkpoints are in this workdir. Restore it, or use a fresh "
                       "--workdir") from None
  differences = config_differences(recorded, json.loads(config_json), defaults)
  if not differences:
    return
  allow_changes = tuple(allow_changes)
  refused = [name for name in differences if not _allowed(name, allow_changes)]
  if refused:
    lines = "\n".join(f"  {name}: {old!r} in the workdir, {new!r} now"
                      for name, (old, new) in differences.items() if name in refused)
    raise WorkdirError(
        f"the workdir {workdir} holds a run (checkpoint at step {checkpoint_step}) of another "
        f"config; these fields differ:\n{lines}\nRerun with the workdir's config "
        f"({path}), use a fresh --workdir, or allow the change explicitly with "
        f"--allow_config_change={','.join(refused)}")
  with open(os.path.join(workdir, CHANGES_FILE), "a") as f:
    f.write(json.dumps({"step": checkpoint_step, "time": _now(), "changes": {
        name: {"from": old, "to": new} for name, (old, new) in differences.items()}}) + "\n")
  _write(path, config_json)


def _write(path: str, text: str) -> None:
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
