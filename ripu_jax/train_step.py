"""The jitted RIPU training step, shared by the trainer and the benchmark.

One step: forward source and target images, upsample the logits to the label size,
evaluate the objective, differentiate with respect to the `nnx.Param`s and apply the
optimiser, all inside one `nnx.jit` whose model and optimiser buffers are donated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ripu_jax import losses
from ripu_jax.models import upsample

SOURCE_IMAGES = "source_images"
SOURCE_LABELS = "source_labels"
TARGET_IMAGES = "target_images"
TARGET_LABELS = "target_labels"

OBJECTIVE_KEYS = {
    "ripu": (SOURCE_IMAGES, SOURCE_LABELS, TARGET_IMAGES, TARGET_LABELS),
    "source_only": (SOURCE_IMAGES, SOURCE_LABELS),
    "source_free": (TARGET_IMAGES, TARGET_LABELS),
}

TrainStep = Callable[[nnx.Module, nnx.Optimizer, Mapping[str, jax.Array]], dict[str, jax.Array]]


def _check_batch(batch: Mapping[str, jax.Array], keys: tuple[str, ...]) -> None:
  missing = [key for key in keys if key not in batch]
  if missing:
    raise ValueError(f"batch is missing {missing}; expected keys {list(keys)}")
  for prefix in ("source", "target"):
    images, labels = batch.get(f"{prefix}_images"), batch.get(f"{prefix}_labels")
    if images is None or labels is None:
      continue
    if images.ndim != 4 or labels.ndim != 3 or images.shape[0] != labels.shape[0]:
      raise ValueError(
          f"{prefix} images must be [B, H, W, 3] and labels [B, H, W], got "
          f"{images.shape} and {labels.shape}")


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


def make_train_step(
    *,
    objective: str = "ripu",
    consistency_weight: float = 0.1,
    negative_weight: float = 1.0,
    negative_threshold: float = 0.05,
    ignore_index: int = losses.IGNORE_INDEX,
) -> TrainStep:
  """Builds `step(model, optimizer, batch) -> metrics`, jitted, state donated.

  Args:
    objective: "ripu" (source CE + target CE + L_cr + L_nl), "source_only" (source CE +
      L_cr; the batch needs only the source keys) or "source_free" (target CE + L_nl; the
      batch needs only the target keys).
    consistency_weight: weight of L_cr on the source prediction (0.1).
    negative_weight: weight of L_nl on the target prediction (1.0).
    negative_threshold: probability below which L_nl pushes a class down (0.05).
    ignore_index: label value that carries no supervision (255).

  Returns:
    A function of (model, optimizer, batch). `batch` maps "source_images" /
    "target_images" (float [B, H, W, 3]) and "source_labels" / "target_labels" (int
    [B, H, W]; unlabelled target pixels hold `ignore_index`). It updates model and
    optimizer in place (their old buffers are donated) and returns float32 scalars: the
    loss terms, "total" and "grad_norm". Dropout follows the model's mode: call
    `model.train()` before training.
  """
  if objective not in OBJECTIVE_KEYS:
    raise ValueError(f"objective must be one of {tuple(OBJECTIVE_KEYS)}, got {objective!r}")
  keys = OBJECTIVE_KEYS[objective]

  def loss_fn(model: nnx.Module, batch: Mapping[str, jax.Array]):
    if objective == "source_only":
      source_labels = batch[SOURCE_LABELS]
      return losses.source_only_objective(
          upsample(model(batch[SOURCE_IMAGES]), source_labels.shape[1:3]),
          source_labels,
          consistency_weight=consistency_weight,
          ignore_index=ignore_index,
      )
    target_labels = batch[TARGET_LABELS]
    if objective == "source_free":
      target_logits = upsample(model(batch[TARGET_IMAGES]), target_labels.shape[1:3])
      return losses.source_free_objective(
          target_logits,
          target_labels,
          negative_weight=negative_weight,
          negative_threshold=negative_threshold,
          ignore_index=ignore_index,
      )
    source_labels = batch[SOURCE_LABELS]
    source_logits, target_logits = forward_pair(
        model, batch[SOURCE_IMAGES], batch[TARGET_IMAGES])
    return losses.ripu_objective(
        upsample(source_logits, source_labels.shape[1:3]),
        source_labels,
        upsample(target_logits, target_labels.shape[1:3]),
        target_labels,
        consistency_weight=consistency_weight,
        negative_weight=negative_weight,
        negative_threshold=negative_threshold,
        ignore_index=ignore_index,
    )

  @nnx.jit(donate_argnames=("model", "optimizer"))
  def jitted_step(model: nnx.Module, optimizer: nnx.Optimizer,
                  batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    grads, terms = nnx.grad(loss_fn, has_aux=True)(model, batch)
    optimizer.update(model, grads)
    metrics = dict(terms)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return metrics

  def step(model: nnx.Module, optimizer: nnx.Optimizer,
           batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    _check_batch(batch, keys)
    return jitted_step(model, optimizer, {key: batch[key] for key in keys})

  return step
