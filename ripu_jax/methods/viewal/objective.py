"""ViewAL's training: cross-entropy on the labelled pixels, restarted every round.

The objective "viewal" reads the target pool alone (seed frames and bought superpixels, the
rest 255) and keeps, next to the model, a copy of the round's best model on target val
(`best_model`, with its mIoU in `best`): the release trains each round from ImageNet
weights and selects (and reports) with the round's best-val checkpoint. Its hook
(`RoundRestart`) does both halves of that loop:

  after_eval   the model is copied into `best_model` when its val mIoU beats the round's best
  after_round  the train state is rebuilt as a new run starts it (`Trainer.reinitialize`):
               the model from its initial (ImageNet) weights, a new optimizer, no best yet

Both live in the train state, so a resumed run continues mid-round exactly. The loss is the
release's (utils/loss.py): softmax cross-entropy averaged over valid pixels, divided by the
batch size (`viewal.loss_per_batch`; False keeps the plain average).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ripu_jax import losses
from ripu_jax.errors import ConfigError
from ripu_jax.hooks import Hook
from ripu_jax.image_ops import upsample_logits
from ripu_jax.objectives import OBJECTIVES, Objective, TrainState, optimizer_for


def copy_weights(target: nnx.Module, source: nnx.Module) -> None:
  """target <- copies of source's variables (copies: the train step donates the state, and
  one buffer may not be donated twice), keeping their placement."""
  nnx.update(target, jax.tree.map(jnp.copy, nnx.state(source)))


class RoundBest(nnx.Variable):
  """The round's best val mIoU so far (-1: none yet)."""


class BestScore(nnx.Module):
  def __init__(self):
    self.miou = RoundBest(jnp.float32(-1.0))


@OBJECTIVES.register("viewal")
class ViewalObjective(Objective):
  """CE(target, bought labels), with the round's best model kept for selection."""

  domains = ("target",)

  @classmethod
  def validate(cls, config) -> None:
    if "viewal" not in config:
      raise ConfigError("invalid config: the viewal objective needs the config group "
                        "`viewal` (build the config with ripu_jax.methods.viewal.viewal_config)")
    if config.active.kind == "none":
      raise ConfigError("invalid config: the viewal objective trains on target labels; "
                        "active.kind must buy some ('viewal', 'split' or 'all')")

  def build_state(self, model: nnx.Module) -> TrainState:
    best_model = nnx.clone(model)
    copy_weights(best_model, model)
    return TrainState(model, optimizer_for(model, self.config.optim),
                      best_model=best_model, best=BestScore())

  def initialize(self, state: TrainState) -> None:
    """The best model starts as the model's starting weights."""
    copy_weights(state.best_model, state.model)

  def hooks(self) -> list:
    return [RoundRestart(self.config)]

  def loss(self, model, batch):
    labels = batch["target_labels"]
    logits = upsample_logits(model(batch["target_images"]), labels.shape[1:3])
    loss = losses.cross_entropy(logits, labels)
    if self.config.viewal.loss_per_batch:
      loss = loss / labels.shape[0]
    return loss, {"total": loss, "target_ce": loss}


class RoundRestart(Hook):
  """Keeps the round's best-val model; restarts training after every round."""

  def __init__(self, config):
    self.config = config

  def after_eval(self, trainer, summary: dict) -> None:
    state = trainer.state
    best = state.best.miou[...]
    if float(summary["miou"]) > float(best):
      copy_weights(state.best_model, state.model)
      state.best.miou[...] = jax.device_put(jnp.float32(summary["miou"]), best.sharding)

  def after_round(self, trainer, result) -> None:
    del result
    if self.config.viewal.restart_each_round:
      trainer.reinitialize()
