"""LabOR's training objective ("labor"): model A, the pixel selector B and the discriminator D,
updated in one jitted step (spec: ../shared/docs/labor-method.md, "Objective").

Per step, on a source and a target batch:
  A: CE(source) + CE(target, bought pixels only) + adversarial_weight * BCE(D(softmax A(x_t)),
     source). D sees softmax predictions upsampled to the input size, as in AdaptSeg.
  D: BCE(D(softmax A(x_s)), source) + BCE(D(softmax A(x_t)), target) on A's outputs of this
     step, detached; Adam.
  B: CE(C1, y~) + CE(C2, y~) - discrepancy_weight * mean|p1 - p2|, where y~ are A's target
     pseudo labels chosen by IAST's class-adaptive thresholds (carried in the train state and
     checkpointed), overwritten by bought labels. The discrepancy reaches only the two heads:
     it is computed from stop-gradient backbone features (the heads run twice), so the
     backbone learns from the pseudo-label CE alone. It is measured at the network's output
     resolution (the CE at label size).
B is a separate DeepLab (`selector`: head "logits" = C1, auxiliary head "aux/0" = C2) that
starts, on a fresh run, from A's starting weights with a fresh C2 (`initialize`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ripu_jax import config_lib
from ripu_jax import losses as ripu_losses
from ripu_jax import models
from ripu_jax.errors import ConfigError
from ripu_jax.image_ops import upsample_logits
from ripu_jax.methods.labor import iast
from ripu_jax.methods.labor import losses
from ripu_jax.methods.labor.networks import OutputDiscriminator
from ripu_jax.methods.ripu.objectives import forward_pair
from ripu_jax.objectives import OBJECTIVES, Objective, TrainState, optimizer_for

SELECTOR = "selector"


class IastThreshold(nnx.Variable):
  """IAST's per-class confidence thresholds: state, not a parameter (no optimizer sees it)."""


class Thresholds(nnx.Module):

  def __init__(self, num_classes: int, value: float):
    self.value = IastThreshold(iast.initial_thresholds(num_classes, value))


def _softmax_at(logits: jax.Array, size) -> jax.Array:
  return jax.nn.softmax(upsample_logits(logits, size), axis=-1)


@OBJECTIVES.register("labor")
class LaborObjective(Objective):
  """LabOR (ICCV 2021): A learns from source, bought target labels and D; B learns to find
  the pixels A is unsure of."""

  domains = ("source", "target")

  @classmethod
  def validate(cls, config) -> None:
    labor = config.get("labor")
    if labor is None:
      raise ConfigError("invalid config: train.objective 'labor' needs the config group "
                        "`labor` (start from a config under configs/labor/)")
    if labor.share_backbone:
      raise ConfigError("invalid config: labor.share_backbone=True is not available yet; "
                        "use the separate selector (labor.share_backbone=False)")
    for name in ("adversarial_weight", "discrepancy_weight", "discriminator_lr"):
      if labor[name] < 0:
        raise ConfigError(f"invalid config: labor.{name} must be >= 0, got {labor[name]}")
    if not 0 < labor.iast_beta < 1 or labor.iast_alpha <= 0 or labor.iast_gamma <= 0:
      raise ConfigError("invalid config: labor.iast_alpha and labor.iast_gamma must be > 0 and "
                        f"labor.iast_beta in (0, 1), got {labor.iast_alpha}, "
                        f"{labor.iast_gamma}, {labor.iast_beta}")

  def build_state(self, model: nnx.Module) -> TrainState:
    config, labor = self.config, self.config.labor
    num_classes = config_lib.num_classes(config)
    kwargs = dict(config.model.kwargs.to_dict(), aux_heads=1)
    selector = models.build_model(config.model.name, num_classes,
                                  rngs=nnx.Rngs(config.seed + 1), dtype=config.model.dtype,
                                  **kwargs)
    discriminator = OutputDiscriminator(num_classes, channels=labor.discriminator_channels,
                                        rngs=nnx.Rngs(config.seed + 2))
    return TrainState(
        model, optimizer_for(model, config.optim),
        selector=selector, selector_optimizer=optimizer_for(selector, config.optim),
        discriminator=discriminator,
        discriminator_optimizer=nnx.Optimizer(
            discriminator, optax.adam(labor.discriminator_lr, b1=0.9, b2=0.99), wrt=nnx.Param),
        thresholds=Thresholds(num_classes, labor.iast_init))

  def initialize(self, state: TrainState) -> None:
    """B starts from A's starting weights: its backbone and C1 copy A's; C2 stays fresh."""
    # Copies, not shared buffers: the train step donates every array of the state.
    nnx.update(state.selector.backbone, jax.tree.map(jnp.copy, nnx.state(state.model.backbone)))
    nnx.update(state.selector.head, jax.tree.map(jnp.copy, nnx.state(state.model.head)))

  def train_step(self, state: TrainState, batch) -> dict[str, jax.Array]:
    labor = self.config.labor
    source_images, source_labels = batch["source_images"], batch["source_labels"]
    target_images, target_labels = batch["target_images"], batch["target_labels"]
    input_size = target_images.shape[1:3]

    # Model A against the labels and the discriminator.
    def loss_a(model, discriminator):
      source_logits, target_logits = forward_pair(model, source_images, target_images)
      source_ce = ripu_losses.cross_entropy(
          upsample_logits(source_logits, source_labels.shape[1:3]), source_labels)
      target_ce = ripu_losses.cross_entropy(
          upsample_logits(target_logits, target_labels.shape[1:3]), target_labels)
      adversarial = losses.discriminator_bce(
          discriminator(_softmax_at(target_logits, input_size)), 0.0)
      total = source_ce + target_ce + labor.adversarial_weight * adversarial
      terms = {"source_ce": source_ce, "target_ce": target_ce, "adversarial": adversarial,
               "total": total}
      return total, (terms, source_logits, target_logits)

    grads, (terms, source_logits, target_logits) = nnx.grad(loss_a, argnums=0, has_aux=True)(
        state.model, state.discriminator)
    state.optimizer.update(state.model, grads)
    metrics = {**terms, "grad_norm": optax.tree.norm(grads)}

    # Discriminator D on this step's (detached) predictions.
    source_probs = jax.lax.stop_gradient(_softmax_at(source_logits, source_images.shape[1:3]))
    target_probs = jax.lax.stop_gradient(_softmax_at(target_logits, input_size))

    def loss_d(discriminator):
      return (losses.discriminator_bce(discriminator(source_probs), 0.0)
              + losses.discriminator_bce(discriminator(target_probs), 1.0))

    d_loss, d_grads = nnx.value_and_grad(loss_d)(state.discriminator)
    state.discriminator_optimizer.update(state.discriminator, d_grads)
    metrics["discriminator"] = d_loss

    # Selector B on IAST pseudo labels (bought labels win), heads pushed apart.
    label_size = target_labels.shape[1:3]
    pseudo, thresholds = iast.pseudo_labels(
        jax.lax.stop_gradient(_softmax_at(target_logits, label_size)),
        state.thresholds.value[...], target_labels, alpha=labor.iast_alpha,
        beta=labor.iast_beta, gamma=labor.iast_gamma)
    state.thresholds.value[...] = thresholds

    def loss_b(selector):
      features = selector.backbone(target_images)
      head1, head2 = selector.head(features), selector.aux_heads[0](features)
      ce1 = ripu_losses.cross_entropy(upsample_logits(head1, label_size), pseudo)
      ce2 = ripu_losses.cross_entropy(upsample_logits(head2, label_size), pseudo)
      frozen = jax.tree.map(jax.lax.stop_gradient, features)
      p1 = jax.nn.softmax(selector.head(frozen).astype(jnp.float32), axis=-1)
      p2 = jax.nn.softmax(selector.aux_heads[0](frozen).astype(jnp.float32), axis=-1)
      discrepancy = losses.discrepancy(p1, p2)
      return ce1 + ce2 - labor.discrepancy_weight * discrepancy, (ce1 + ce2, discrepancy)

    (_, (selector_ce, discrepancy)), b_grads = nnx.value_and_grad(loss_b, has_aux=True)(
        state.selector)
    state.selector_optimizer.update(state.selector, b_grads)
    metrics.update(selector_ce=selector_ce, discrepancy=discrepancy,
                   pseudo_labelled=jnp.mean((pseudo != ripu_losses.IGNORE_INDEX)
                                            .astype(jnp.float32)))
    return metrics
