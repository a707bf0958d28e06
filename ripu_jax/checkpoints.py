"""Checkpoints of a training run: the whole train state, label ledger and progress, via orbax.

A checkpoint is one orbax step folder under `workdir/checkpoints/<step>` with four items:
"model" (the segmentation model's nnx state, on its own so that another run can start from
it), "state" (everything else in the `TrainState`: optimizers and the objective's extra
networks), the ledger's arrays, and a JSON of progress (step, data-iterator states, metric
sums). Saves are synchronous and orbax commits a folder only when complete, so a process
killed mid-save leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from ripu_jax.ledger import LabelLedger


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _rest(state: nnx.Module) -> dict[str, Any]:
  """The train state's members other than the model, by name (optimizers, extras)."""
  names = ("optimizer",) + tuple(state.extra_names)
  return {name: nnx.state(getattr(state, name)) for name in names}


class Checkpoints:
  """Saves and restores the full training state of a run."""

  def __init__(self, directory: str, *, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False),
        item_handlers={"model": ocp.StandardCheckpointHandler(),
                       "state": ocp.StandardCheckpointHandler(),
                       "ledger": ocp.StandardCheckpointHandler(),
                       "progress": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, *, state: nnx.Module, ledger: LabelLedger, progress: dict) -> None:
    if self._manager.latest_step() == step:
      return  # Nothing has changed since that save.
    self._manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(nnx.state(state.model)),
        state=ocp.args.StandardSave(_rest(state)),
        ledger=ocp.args.StandardSave(ledger.state()),
        progress=ocp.args.JsonSave(dict(progress, step=step)),
    ))

  def _check_layout(self, step: int) -> None:
    items = set(self._manager.item_metadata(step).keys())
    if "state" not in items:
      raise ValueError(
          f"the checkpoint {self.directory}/{step} was written by an earlier ripu_jax (items "
          f"{sorted(items)}; this version saves the whole train state as 'model' + 'state') "
          "and cannot be resumed. Start the run again in a fresh --workdir; to start from its "
          "model, pass that workdir as --config.model.init_from")

  def restore(self, *, state: nnx.Module,
              step: int | None = None) -> tuple[LabelLedger, dict] | None:
    """Loads the latest (or given) checkpoint into the train state in place.

    Returns (ledger, progress), or None when there is no checkpoint.
    """
    step = self._manager.latest_step() if step is None else step
    if step is None:
      return None
    self._check_layout(step)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract(nnx.state(state.model))),
        state=ocp.args.StandardRestore(_abstract(_rest(state))),
        progress=ocp.args.JsonRestore(),
    ))
    nnx.update(state.model, restored.model)
    for name, value in restored.state.items():
      nnx.update(getattr(state, name), value)
    return self.restore_ledger(step), dict(restored.progress)

  def restore_ledger(self, step: int | None = None) -> LabelLedger:
    """The ledger of the latest (or given) checkpoint, on any device count."""
    step = self._manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    # Host numpy targets, shaped from the saved metadata: the ledger does not depend on the
    # device topology it was saved under.
    metadata = self._manager.item_metadata(step)["ledger"]
    target = {key: np.zeros(value.shape, value.dtype) for key, value in metadata.items()}
    restored = self._manager.restore(step, args=ocp.args.Composite(
        ledger=ocp.args.StandardRestore(target)))
    return LabelLedger.from_state(dict(restored.ledger))

  def restore_model(self, model: nnx.Module) -> int:
    """Loads only the model of the latest checkpoint (to start another run from it)."""
    step = self._manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract(nnx.state(model)))))
    nnx.update(model, restored.model)
    return step

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
