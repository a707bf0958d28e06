"""Checkpoints of a training run: the whole train state, label ledger and progress, via orbax.

A checkpoint is one orbax step folder under `workdir/checkpoints/<step>` with four items:
"model" (the segmentation model's nnx state, on its own so that another run can start from
it), "state" (everything else in the `TrainState`: optimizers and the objective's extra
networks), the ledger's arrays, and a JSON of progress (step, data-iterator states, metric
sums). Saves are synchronous and orbax commits a folder only when complete, so a process
killed mid-save leaves the previous checkpoint as the latest one.

Checksums. Orbax does not notice bytes that change after the commit: a corrupted array file
loads silently and shows up as a NaN later, and damaged metadata fails with an error that
blocks every rerun. So once orbax has committed a step folder, `save` writes
`<step>/checksums.json` (atomically: a temporary file, then `os.replace`):

  {"format": 1, "step": 10, "algorithm": "sha256",
   "files": {"model/ocdbt.process_0/d/1f0c...": {"size": 151795, "sha256": "9a2e..."}, ...}}

listing every file of the folder by its path relative to it. Every restore first checks the
sizes and then the hashes (streamed, files in parallel). A checkpoint is damaged when a
listed file is missing or differs, when its manifest is unreadable, or when it has no
manifest although an older checkpoint of the directory has one (the process stopped between
orbax's commit and the manifest). A folder without a manifest and no older one with it was
written before checksums existed (or is a run's first save, cut short): it is restored
unverified, with a warning, unless orbax cannot read its metadata, which makes it damaged.
A checkpoint whose files pass their checksums is never called damaged: if orbax then cannot
restore it, the error is raised as it is (the settings differ from the run that saved it;
moving the checkpoint aside would not help).

Damage. `restore` (the run resuming in its own workdir) resumes from the newest intact
checkpoint: every newer damaged one is moved, never deleted, to
`workdir/checkpoints_damaged/<step>` (`<step>.1`, ... if taken), with one warning line each
saying why, and orbax's manager forgets it; the rerun then redoes those steps identically.
With no intact checkpoint left it returns None (a fresh start) and says that all were moved
aside. `restore_model` and `restore_ledger` read other runs too and never move anything:
they fall back to the newest intact checkpoint with a warning, and raise
`DamagedCheckpointError` naming the damage when none is intact or an explicitly requested
step is damaged. `Checkpoints(directory, read_only=True)` (for `model.init_from`) never
writes: it raises FileNotFoundError when the folder does not exist instead of creating it,
refuses `save`, and never moves a damaged checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from ripu_jax.errors import DamagedCheckpointError, StateMismatchError
from ripu_jax.ledger import LabelLedger

MANIFEST = "checksums.json"
MANIFEST_FORMAT = 1
_ALGORITHM = "sha256"
_HASH_THREADS = 8

# Statuses of a step folder (see the module docstring).
INTACT, UNVERIFIED, DAMAGED = "intact", "unverified", "damaged"


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _rest(state: nnx.Module) -> dict[str, Any]:
  """The train state's members other than the model, by name (optimizers, extras)."""
  names = ("optimizer",) + tuple(state.extra_names)
  return {name: nnx.state(getattr(state, name)) for name in names}


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  line = text.splitlines()[0] if text else ""
  return f"{type(error).__name__}: {line}"[:300]


def _reasons(damaged: list[tuple[int, str]]) -> str:
  return "; ".join(f"step {step}: {reason}" for step, reason in damaged)


def _files(folder: str) -> list[str]:
  """Paths of the files under `folder`, relative to it with '/', sorted; manifests excluded."""
  found = []
  for root, _, names in os.walk(folder):
    for name in names:
      if name.startswith(MANIFEST):  # the manifest and a temporary one left by a kill
        continue
      found.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
  return sorted(found)


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, _ALGORITHM).hexdigest()  # streams in 256 KiB reads


def _hashes(folder: str, relpaths: list[str]) -> dict[str, str]:
  """sha256 of each file; threads, since hashlib releases the GIL on large buffers."""
  paths = [os.path.join(folder, *rel.split("/")) for rel in relpaths]
  workers = max(1, min(_HASH_THREADS, os.cpu_count() or 1, len(paths)))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return dict(zip(relpaths, pool.map(_sha256, paths)))


def write_manifest(folder: str, step: int) -> None:
  """Writes `folder/checksums.json` for the files the folder holds now."""
  relpaths = _files(folder)
  digests = _hashes(folder, relpaths)
  files = {rel: {"size": os.path.getsize(os.path.join(folder, *rel.split("/"))),
                 _ALGORITHM: digests[rel]} for rel in relpaths}
  manifest = {"format": MANIFEST_FORMAT, "step": step, "algorithm": _ALGORITHM,
              "files": files}
  path = os.path.join(folder, MANIFEST)
  temporary = f"{path}.tmp{os.getpid()}"
  with open(temporary, "w") as f:
    json.dump(manifest, f, indent=0, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)


def verify_manifest(folder: str) -> str | None:
  """Why `folder` does not match its checksums.json, or None when it does.

  Raises FileNotFoundError when the folder has no manifest.
  """
  path = os.path.join(folder, MANIFEST)
  try:
    with open(path) as f:
      manifest = json.load(f)
    files = manifest["files"]
    if manifest.get("algorithm") != _ALGORITHM or not isinstance(files, dict):
      raise ValueError(f"expected {_ALGORITHM} file entries")
    expected = {rel: (int(entry["size"]), str(entry[_ALGORITHM]))
                for rel, entry in files.items()}
  except FileNotFoundError:
    raise
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
    return f"its {MANIFEST} is unreadable ({_first_line(error)})"
  missing = [rel for rel in sorted(expected)
             if not os.path.isfile(os.path.join(folder, *rel.split("/")))]
  if missing:
    more = f" and {len(missing) - 1} more files are" if len(missing) > 1 else " is"
    return f"{missing[0]}{more} missing"
  for rel in sorted(expected):
    size = os.path.getsize(os.path.join(folder, *rel.split("/")))
    if size != expected[rel][0]:
      return f"{rel} has {size} bytes, {expected[rel][0]} when saved"
  digests = _hashes(folder, sorted(expected))
  for rel in sorted(expected):
    if digests[rel] != expected[rel][1]:
      return f"checksum mismatch in {rel}"
  return None


class Checkpoints:
  """Saves and restores the full training state of a run, verifying checksums on restore."""

  def __init__(self, directory: str, *, keep: int = 2, read_only: bool = False):
    self.directory = os.path.abspath(os.path.expanduser(directory))
    self.read_only = read_only
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(
          f"{self.directory} does not exist, so there is no checkpoint to read. Give the "
          "workdir of a run that saved checkpoints (for model.init_from: a finished run); "
          "its checkpoints/ folder is only read")
    # Not orbax's read_only option (it logs a warning line per manager): this class never
    # saves or moves in read-only mode, and orbax writes nothing without create or save.
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep,
                                             create=not read_only,
                                             enable_async_checkpointing=False),
        item_handlers={"model": ocp.StandardCheckpointHandler(),
                       "state": ocp.StandardCheckpointHandler(),
                       "ledger": ocp.StandardCheckpointHandler(),
                       "progress": ocp.JsonCheckpointHandler()})
    self._checked: dict[int, tuple[str, str | None]] = {}  # step -> (status, reason)
    self._current_step: int | None = None  # the step last restored or saved here
    self._warned_unverified: set[int] = set()
    self._all_damaged: list[tuple[int, str]] = []  # when no step was readable

  @property
  def damaged_directory(self) -> str:
    """Where `restore` moves damaged checkpoints: `<workdir>/checkpoints_damaged`."""
    return self.directory.rstrip(os.sep) + "_damaged"

  def step_directory(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, *, state: nnx.Module, ledger: LabelLedger, progress: dict) -> None:
    if self.read_only:
      raise RuntimeError(f"Checkpoints({self.directory!r}, read_only=True) cannot save; "
                         "open the run's own checkpoints without read_only")
    if self._manager.latest_step() == step:
      return  # Nothing has changed since that save.
    saved = self._manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(nnx.state(state.model)),
        state=ocp.args.StandardSave(_rest(state)),
        ledger=ocp.args.StandardSave(ledger.state()),
        progress=ocp.args.JsonSave(dict(progress, step=step)),
    ))
    if not saved:
      return
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      write_manifest(self.step_directory(step), step)
    self._checked[step] = (INTACT, None)
    self._current_step = step

  # ------------------------------------------------------------------ verification

  def check(self, step: int) -> tuple[str, str | None]:
    """(status, reason): INTACT, UNVERIFIED (no manifest, none expected) or DAMAGED, why."""
    if step not in self._checked:
      self._checked[step] = self._check(step)
    return self._checked[step]

  def _check(self, step: int) -> tuple[str, str | None]:
    folder = self.step_directory(step)
    try:
      reason = verify_manifest(folder)
    except FileNotFoundError:
      if any(os.path.exists(os.path.join(self.step_directory(older), MANIFEST))
             for older in self.all_steps() if older < step):
        return DAMAGED, (f"it has no {MANIFEST} although older checkpoints have one (the "
                         "process stopped between saving it and writing its checksums)")
      try:
        self._manager.item_metadata(step)
      except Exception as error:  # pylint: disable=broad-exception-caught
        return DAMAGED, f"it has no {MANIFEST} and orbax could not read it: {_first_line(error)}"
      return UNVERIFIED, f"it has no {MANIFEST} (saved without checksums)"
    return (INTACT, None) if reason is None else (DAMAGED, reason)

  def _newest_readable(self, *, move_damaged: bool) -> int | None:
    """The newest intact (or unverified) step; warns about each newer damaged one."""
    skipped, chosen = [], None
    for step in reversed(self.all_steps()):
      status, reason = self.check(step)
      if status != DAMAGED:
        chosen = step
        break
      skipped.append((step, reason, self._move_aside(step) if move_damaged else None))
    if move_damaged and skipped:
      self._manager.reload()
    if chosen is None:  # the caller reports it
      self._all_damaged = [(step, reason) for step, reason, _ in skipped]
      return None
    for step, reason, moved in skipped:
      what = f"Moved it to {moved}" if moved else "Left it in place"
      logging.warning("checkpoint %s is damaged: %s. %s; using step %d instead",
                      self.step_directory(step), reason, what, chosen)
    return chosen

  def settle(self) -> None:
    """Moves damaged newer checkpoints aside now (process 0, before every process restores)."""
    if not self.read_only:
      self._newest_readable(move_damaged=True)

  def reload(self) -> None:
    """Forgets what this process knew of the folder (after another process settled it)."""
    self._checked.clear()
    self._manager.reload()

  def _move_aside(self, step: int) -> str:
    os.makedirs(self.damaged_directory, exist_ok=True)
    target, suffix = os.path.join(self.damaged_directory, str(step)), 0
    while os.path.exists(target):
      suffix += 1
      target = os.path.join(self.damaged_directory, f"{step}.{suffix}")
    os.rename(self.step_directory(step), target)
    self._checked.pop(step, None)
    return target

  def _readable(self, step: int | None, *, move_damaged: bool = False) -> int | None:
    """`step` if given and readable (raises if damaged), else the newest readable one."""
    if step is None:
      step = self._newest_readable(move_damaged=move_damaged)
      if step is None:
        return None
    elif step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory} (it has "
                              f"{self.all_steps()})")
    status, reason = self.check(step)
    if status == DAMAGED:
      raise DamagedCheckpointError(
          f"checkpoint {self.step_directory(step)} is damaged: {reason}. Use another step "
          f"of {self.all_steps()}, or restore without a step to use the newest intact one")
    if status == UNVERIFIED and step not in self._warned_unverified:
      self._warned_unverified.add(step)
      logging.warning("checkpoint %s has no %s (saved by a ripu_jax without checksums); "
                      "restoring it unverified", self.step_directory(step), MANIFEST)
    return step

  def _none_intact(self) -> DamagedCheckpointError | FileNotFoundError:
    if not self._all_damaged:
      return FileNotFoundError(f"no checkpoint in {self.directory}")
    return DamagedCheckpointError(
        f"every checkpoint in {self.directory} is damaged ({_reasons(self._all_damaged)}); "
        "they were left as they are. Rerunning that run in its own workdir moves them aside and "
        "starts it afresh")

  # ------------------------------------------------------------------ restoring

  def _check_layout(self, step: int) -> None:
    items = set(self._manager.item_metadata(step).keys())
    if "state" not in items:
      raise StateMismatchError(
          f"the checkpoint {self.directory}/{step} was written by an earlier ripu_jax (items "
          f"{sorted(items)}; this version saves the whole train state as 'model' + 'state') "
          "and cannot be resumed. Start the run again in a fresh --workdir; to start from its "
          "model, pass that workdir as --config.model.init_from")

  def restore(self, *, state: nnx.Module,
              step: int | None = None) -> tuple[LabelLedger, dict] | None:
    """Loads the newest intact (or the given) checkpoint into the train state in place.

    Damaged newer checkpoints are moved aside (not in read-only mode). Returns
    (ledger, progress), or None when there is no checkpoint (or none intact).
    """
    step = self._readable(step, move_damaged=not self.read_only)
    if step is None:
      if self._all_damaged:
        what = ("left them in place" if self.read_only else
                f"moved them to {self.damaged_directory}; starting from scratch")
        logging.warning("no intact checkpoint in %s: all %d were damaged (%s); %s",
                        self.directory, len(self._all_damaged), _reasons(self._all_damaged),
                        what)
      return None
    self._check_layout(step)
    restored = self._restore_matching(step, "train state", ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract(nnx.state(state.model))),
        state=ocp.args.StandardRestore(_abstract(_rest(state))),
        progress=ocp.args.JsonRestore(),
    ))
    nnx.update(state.model, restored.model)
    for name, value in restored.state.items():
      nnx.update(getattr(state, name), value)
    self._current_step = step
    return self.restore_ledger(step), dict(restored.progress)

  def restore_ledger(self, step: int | None = None) -> LabelLedger:
    """The ledger of `step`; by default of the step last restored or saved here, else the
    newest intact one. Works on any device count; never moves a damaged checkpoint."""
    if step is None and self._current_step in self.all_steps():
      step = self._current_step
    step = self._readable(step)
    if step is None:
      raise self._none_intact()
    # Host numpy targets, shaped from the saved metadata: the ledger does not depend on the
    # device topology it was saved under.
    metadata = self._manager.item_metadata(step)["ledger"]
    target = {key: np.zeros(value.shape, value.dtype) for key, value in metadata.items()}
    restored = self._manager.restore(step, args=ocp.args.Composite(
        ledger=ocp.args.StandardRestore(target)))
    return LabelLedger.from_state(dict(restored.ledger))

  def restore_model(self, model: nnx.Module, *, step: int | None = None,
                    may_lack: tuple[str, ...] = ()) -> int:
    """Loads only the model of the newest intact (or given) checkpoint; returns its step.

    For starting another run from this one: never moves a damaged checkpoint; falls back
    past damaged ones with a warning. Top-level parts of `model` named in `may_lack` (e.g.
    heads a method adds to a plain model) keep their values when the checkpoint has none.
    """
    step = self._readable(step)
    if step is None:
      raise self._none_intact()
    target = nnx.state(model)
    if may_lack:
      saved = self._manager.item_metadata(step)["model"]
      target = nnx.State({key: value for key, value in target.items()
                          if key in saved or key not in may_lack})
    restored = self._restore_matching(step, "model", ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract(target))))
    nnx.update(model, restored.model)
    return step

  def restore_continued(self, state: nnx.Module, *,
                        step: int | None = None) -> tuple[LabelLedger, dict, tuple[str, ...]]:
    """Loads another run's newest intact (or given) checkpoint into `state`, for a run that
    continues it with more networks: the model and every member of the train state the
    checkpoint holds; members it lacks (a method's extra networks) keep their values.

    Returns (ledger, progress, names of the members left as they were). Never moves a
    damaged checkpoint.
    """
    step = self._readable(step)
    if step is None:
      raise self._none_intact()
    saved = self._manager.item_metadata(step)["state"]
    members = {name: value for name, value in _rest(state).items() if name in saved}
    restored = self._restore_matching(step, "train state", ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract(nnx.state(state.model))),
        state=ocp.args.StandardRestore(_abstract(members)),
        progress=ocp.args.JsonRestore(),
    ))
    nnx.update(state.model, restored.model)
    for name, value in restored.state.items():
      nnx.update(getattr(state, name), value)
    fresh = tuple(name for name in _rest(state) if name not in members)
    return self.restore_ledger(step), dict(restored.progress), fresh

  def _restore_matching(self, step: int, what: str, args) -> Any:
    """orbax's restore; a tree or shape that differs from this config's is one clear error."""
    try:
      return self._manager.restore(step, args=args)
    except (ValueError, KeyError, TypeError) as error:
      raise StateMismatchError(
          f"the checkpoint {self.step_directory(step)} holds a {what} that does not fit the "
          f"one this config builds (another class count, network, or method?): "
          f"{_first_line(error)}. Use the config that wrote it, or a fresh --workdir"
      ) from error

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
