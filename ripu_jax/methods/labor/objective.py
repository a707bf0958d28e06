"""LabOR's training objective ("labor"): model A, the pixel selector B and the discriminator D,
updated in one jitted step (spec: ../shared/docs/labor-method.md, "Objective").

Per step, on a source and a target batch:
  A: CE(source) + CE(target, bought pixels only) + adversarial_weight * BCE(D(softmax A(x_t)),
     source). D sees softmax predictions upsampled to the input size, as in AdaptSeg.
  D: BCE(D(softmax A(x_s)), source) + BCE(D(softmax A(x_t)), target) on A's outputs of this
     step, detached; Adam. labor.gan_loss "lsgan" puts the least-squares loss in place of
     both BCEs (IAST's release).
  B: CE(C1, y~) + CE(C2, y~) - discrepancy_weight * mean|p1 - p2|, where y~ are A's target
     pseudo labels chosen by IAST's class-adaptive thresholds (carried in the train state and
     checkpointed), overwritten by bought labels. The discrepancy reaches only the two heads:
     it is computed from stop-gradient backbone features, so a backbone learns from the
     pseudo-label CE alone. It is measured at the network's output resolution (the CE at
     label size).

Where B's backbone F lives (labor.share_backbone):
  False  B is a separate DeepLab (`selector`: head "logits" = C1, auxiliary head "aux/0" = C2)
         with its own optimizer, started on a fresh run from A's starting weights with a
         fresh C2 (`initialize`); F learns from B's pseudo-label CE.
  True   C1 and C2 are A's auxiliary heads "aux/0" and "aux/1" on stop-gradient features
         (the objective adds them to the model), so F is A's backbone, trained by A's loss
         only, and B's loss joins A's in one update by A's optimizer (heads at 10x). No
         second backbone: less memory and time. C1 starts as a copy of A's head; a
         `model.init_from` checkpoint without the heads is fine, C2 then starts fresh.
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

SELECTOR_HEADS = ("logits", "aux/0")  # C1, C2 of a separate selector
SHARED_HEADS = ("aux/0", "aux/1")  # C1, C2 on the model's own backbone


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
    if labor.get("gan_loss", "bce") not in losses.GAN_LOSSES:
      raise ConfigError(f"invalid config: labor.gan_loss must be one of "
                        f"{tuple(losses.GAN_LOSSES)}, got {labor.gan_loss!r}")
    for name in ("adversarial_weight", "discrepancy_weight", "discriminator_lr"):
      if labor[name] < 0:
        raise ConfigError(f"invalid config: labor.{name} must be >= 0, got {labor[name]}")
    if not 0 < labor.iast_beta < 1 or labor.iast_alpha <= 0 or labor.iast_gamma <= 0:
      raise ConfigError("invalid config: labor.iast_alpha and labor.iast_gamma must be > 0 and "
                        f"labor.iast_beta in (0, 1), got {labor.iast_alpha}, "
                        f"{labor.iast_gamma}, {labor.iast_beta}")

  @property
  def _shared(self) -> bool:
    labor = self.config.get("labor")
    return bool(labor is not None and labor.get("share_backbone", False))

  def model_kwargs(self) -> dict:
    return dict(aux_heads=2, aux_stop_gradient=True) if self._shared else {}

  def init_from_may_lack(self) -> tuple[str, ...]:
    return ("aux_heads",) if self._shared else ()

  def build_state(self, model: nnx.Module) -> TrainState:
    config, labor = self.config, self.config.labor
    num_classes = config_lib.num_classes(config)
    extras = {}
    if not self._shared:
      kwargs = dict(config.model.kwargs.to_dict(), aux_heads=1)
      selector = models.build_model(config.model.name, num_classes,
                                    rngs=nnx.Rngs(config.seed + 1), dtype=config.model.dtype,
                                    **kwargs)
      extras.update(selector=selector, selector_optimizer=optimizer_for(selector, config.optim))
    discriminator = OutputDiscriminator(num_classes, channels=labor.discriminator_channels,
                                        rngs=nnx.Rngs(config.seed + 2))
    return TrainState(
        model, optimizer_for(model, config.optim), **extras,
        discriminator=discriminator,
        discriminator_optimizer=nnx.Optimizer(
            discriminator, optax.adam(labor.discriminator_lr, b1=0.9, b2=0.99), wrt=nnx.Param),
        thresholds=Thresholds(num_classes, labor.iast_init))

  def initialize(self, state: TrainState) -> None:
    """C1 starts as A's head; a separate B also copies A's backbone. C2 stays as it is."""
    # Copies, not shared buffers: the train step donates every array of the state.
    copy = lambda module: jax.tree.map(jnp.copy, nnx.state(module))  # noqa: E731
    if self._shared:
      nnx.update(state.model.aux_heads[0], copy(state.model.head))
      return
    nnx.update(state.selector.backbone, copy(state.model.backbone))
    nnx.update(state.selector.head, copy(state.model.head))

  def train_step(self, state: TrainState, batch) -> dict[str, jax.Array]:
    labor = self.config.labor
    source_images, source_labels = batch["source_images"], batch["source_labels"]
    target_images, target_labels = batch["target_images"], batch["target_labels"]
    input_size = target_images.shape[1:3]
    label_size = target_labels.shape[1:3]
    gan_loss = losses.GAN_LOSSES[labor.get("gan_loss", "bce")]

    def pseudo_labels(target_logits, thresholds):
      return iast.pseudo_labels(
          jax.lax.stop_gradient(_softmax_at(target_logits, label_size)), thresholds,
          target_labels, alpha=labor.iast_alpha, beta=labor.iast_beta, gamma=labor.iast_gamma)

    def selector_loss(heads, frozen_heads, pseudo):
      """B's loss: CE of both heads on y~ minus the discrepancy of the frozen-feature heads."""
      ce = sum(ripu_losses.cross_entropy(upsample_logits(head, label_size), pseudo)
               for head in heads)
      p1, p2 = (jax.nn.softmax(head.astype(jnp.float32), axis=-1) for head in frozen_heads)
      discrepancy = losses.discrepancy(p1, p2)
      return ce - labor.discrepancy_weight * discrepancy, {"selector_ce": ce,
                                                           "discrepancy": discrepancy}

    # Model A against the labels and the discriminator (with B's heads when they are A's).
    def loss_a(model, discriminator, thresholds):
      if self._shared:
        source_logits, target_logits, heads = _forward_with_heads(
            model, source_images, target_images)
      else:
        source_logits, target_logits = forward_pair(model, source_images, target_images)
      source_ce = ripu_losses.cross_entropy(
          upsample_logits(source_logits, source_labels.shape[1:3]), source_labels)
      target_ce = ripu_losses.cross_entropy(
          upsample_logits(target_logits, label_size), target_labels)
      adversarial = gan_loss(
          discriminator(_softmax_at(target_logits, input_size)), 0.0)
      total = source_ce + target_ce + labor.adversarial_weight * adversarial
      terms = {"source_ce": source_ce, "target_ce": target_ce, "adversarial": adversarial,
               "total": total}
      pseudo = thresholds
      if self._shared:  # the heads already read stop-gradient features
        pseudo, thresholds = pseudo_labels(target_logits, thresholds)
        b_loss, b_terms = selector_loss(heads, heads, pseudo)
        terms.update(b_terms)
        total = total + b_loss
      return total, (terms, source_logits, target_logits, pseudo, thresholds)

    grads, (terms, source_logits, target_logits, pseudo, thresholds) = nnx.grad(
        loss_a, argnums=0, has_aux=True)(state.model, state.discriminator,
                                         state.thresholds.value[...])
    state.optimizer.update(state.model, grads)
    metrics = {**terms, "grad_norm": optax.tree.norm(grads)}

    # Discriminator D on this step's (detached) predictions.
    source_probs = jax.lax.stop_gradient(_softmax_at(source_logits, source_images.shape[1:3]))
    target_probs = jax.lax.stop_gradient(_softmax_at(target_logits, input_size))

    def loss_d(discriminator):
      return (gan_loss(discriminator(source_probs), 0.0)
              + gan_loss(discriminator(target_probs), 1.0))

    d_loss, d_grads = nnx.value_and_grad(loss_d)(state.discriminator)
    state.discriminator_optimizer.update(state.discriminator, d_grads)
    metrics["discriminator"] = d_loss

    # A separate selector B on IAST pseudo labels (bought labels win), heads pushed apart.
    if not self._shared:
      pseudo, thresholds = pseudo_labels(target_logits, thresholds)

      def loss_b(selector):
        features = selector.backbone(target_images)
        frozen = jax.tree.map(jax.lax.stop_gradient, features)
        heads = selector.outputs_from_features(features, SELECTOR_HEADS)
        frozen_heads = selector.outputs_from_features(frozen, SELECTOR_HEADS)
        return selector_loss(tuple(heads.values()), tuple(frozen_heads.values()), pseudo)

      (_, b_terms), b_grads = nnx.value_and_grad(loss_b, has_aux=True)(state.selector)
      state.selector_optimizer.update(state.selector, b_grads)
      metrics.update(b_terms)
    state.thresholds.value[...] = thresholds
    metrics["pseudo_labelled"] = jnp.mean(
        (pseudo != ripu_losses.IGNORE_INDEX).astype(jnp.float32))
    return metrics


def _forward_with_heads(model, source_images, target_images):
  """(source logits, target logits, (C1, C2) on the target) from one pass per domain.

  The heads are the model's auxiliary heads on its stop-gradient target features.
  """
  if source_images.shape[1:] == target_images.shape[1:]:
    split = source_images.shape[0]
    features = model.backbone(jnp.concatenate([source_images, target_images], axis=0))
    logits = model.outputs_from_features(features, ("logits",))["logits"]
    target_features = jax.tree.map(lambda f: f[split:], features)
    source_logits, target_logits = logits[:split], logits[split:]
  else:
    source_logits = model(source_images)
    target_features = model.backbone(target_images)
    target_logits = model.outputs_from_features(target_features, ("logits",))["logits"]
  heads = model.outputs_from_features(target_features, SHARED_HEADS)
  return source_logits, target_logits, tuple(heads.values())
