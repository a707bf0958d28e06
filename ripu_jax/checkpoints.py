"""Checkpoints of a training run: model, optimizer, label ledger and progress, via orbax.

A checkpoint is one orbax step folder under `workdir/checkpoints/<step>` with four items:
the model's and the optimizer's nnx state, the ledger's arrays, and a JSON of progress (step,
data-iterator states). Saves are synchronous and orbax commits a folder only when complete,
so a process killed mid-save leaves the previous checkpoint as the latest one.
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


class Checkpoints:
  """Saves and restores the full training state of a run."""

  def __init__(self, directory: str, *, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False),
        item_handlers={"model": ocp.StandardCheckpointHandler(),
                       "optimizer": ocp.StandardCheckpointHandler(),
                       "ledger": ocp.StandardCheckpointHandler(),
                       "progress": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, *, model: nnx.Module, optimizer: nnx.Optimizer,
           ledger: LabelLedger, progress: dict) -> None:
    if self._manager.latest_step() == step:
      return  # Nothing has changed since that save.
    self._manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(nnx.state(model)),
        optimizer=ocp.args.StandardSave(nnx.state(optimizer)),
        ledger=ocp.args.StandardSave(ledger.state()),
        progress=ocp.args.JsonSave(dict(progress, step=step)),
    ))

  def restore(self, *, model: nnx.Module, optimizer: nnx.Optimizer,
              step: int | None = None) -> tuple[LabelLedger, dict] | None:
    """Loads the latest (or given) checkpoint into model and optimizer in place.

    Returns (ledger, progress), or None when there is no checkpoint.
    """
    step = self._manager.latest_step() if step is None else step
    if step is None:
      return None
    restored = self._manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract(nnx.state(model))),
        optimizer=ocp.args.StandardRestore(_abstract(nnx.state(optimizer))),
        progress=ocp.args.JsonRestore(),
    ))
    nnx.update(model, restored.model)
    nnx.update(optimizer, restored.optimizer)
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
