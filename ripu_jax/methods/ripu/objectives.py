"""RIPU's training objectives: "ripu", "source_only" and "source_free".

Each forwards its domains' images, upsamples the logits to the label size and evaluates
the formulas of `ripu_jax.losses` with the weights in `config.train` (consistency_weight
for L_cr, negative_weight and negative_threshold for L_nl).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from ripu_jax import losses
from ripu_jax.errors import ConfigError
from ripu_jax.image_ops import upsample_logits
from ripu_jax.objectives import OBJECTIVES, Objective


def forward_pair(model: nnx.Module, source_images: jax.Array,
                 target_images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Logits for both domains; one concatenated pass when their shapes agree.

  With frozen batch norm a concatenated batch computes exactly what two passes would,
  and one larger pass uses the CPU better.
  """
  if source_images.shape[1:] == target_images.shape[1:]:
    logits = model(jnp.concatenate([source_images, target_images], axis=0))
    split = source_images.shape[0]
    return logits[:split], logits[split:]
  return model(source_images), model(target_images)


def _at_labels(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return upsample_logits(logits, labels.shape[1:3])


@OBJECTIVES.register("ripu")
class RipuObjective(Objective):
  """CE(source) + CE(target, bought labels) + w_cr L_cr(source) + w_nl L_nl(target)."""

  domains = ("source", "target")

  def loss(self, model, batch):
    train = self.config.train
    source_labels, target_labels = batch["source_labels"], batch["target_labels"]
    source_logits, target_logits = forward_pair(model, batch["source_images"],
                                                batch["target_images"])
    return losses.ripu_objective(
        _at_labels(source_logits, source_labels), source_labels,
        _at_labels(target_logits, target_labels), target_labels,
        consistency_weight=train.consistency_weight, negative_weight=train.negative_weight,
        negative_threshold=train.negative_threshold)


@OBJECTIVES.register("source_only")
class SourceOnlyObjective(Objective):
  """CE(source) + w_cr L_cr(source): the source-only model (w_cr = 0: plain CE)."""

  domains = ("source",)

  def loss(self, model, batch):
    labels = batch["source_labels"]
    return losses.source_only_objective(
        _at_labels(model(batch["source_images"]), labels), labels,
        consistency_weight=self.config.train.consistency_weight)


@OBJECTIVES.register("source_free")
class SourceFreeObjective(Objective):
  """CE(target, bought labels) + w_nl L_nl(target), starting from a source-only model."""

  domains = ("target",)

  @classmethod
  def validate(cls, config) -> None:
    if config.active.kind == "none":
      raise ConfigError("invalid config: the source-free objective needs target labels "
                       "(active.kind 'ra', 'pa' or 'all')")

  def initialize(self, state) -> None:
    del state
    if not self.config.model.init_from:
      logging.warning("source-free training without model.init_from starts from ImageNet "
                      "(or random) weights; the method starts from a source-only run: "
                      "--config.model.init_from=WORKDIR_OF_A_SOURCE_ONLY_RUN")

  def loss(self, model, batch):
    train = self.config.train
    labels = batch["target_labels"]
    return losses.source_free_objective(
        _at_labels(model(batch["target_images"]), labels), labels,
        negative_weight=train.negative_weight, negative_threshold=train.negative_threshold)
