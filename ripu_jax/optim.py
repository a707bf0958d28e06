"""RIPU's optimiser: SGD with momentum, L2 weight decay, poly schedule, 10x head LR.

Mirrors the release's torch setup: `torch.optim.SGD(momentum=0.9, weight_decay=5e-4)`
adds `weight_decay * param` to the gradient before the momentum buffer; the backbone's
learning rate is `base_lr * (1 - step / max_iter) ** 0.9` and every parameter outside the
backbone uses 10x that. Frozen batch-norm state is not an `nnx.Param`, so it never reaches
the optimiser.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

BACKBONE = "backbone"
HEAD = "head"


def poly_schedule(base_lr: float, max_iter: int, power: float = 0.9) -> optax.Schedule:
  """lr(step) = base_lr * (1 - step / max_iter) ** power, clipped at 0 past max_iter."""
  if base_lr < 0:
    raise ValueError(f"base_lr must be >= 0, got {base_lr}")
  if max_iter < 1:
    raise ValueError(f"max_iter must be >= 1, got {max_iter}")

  def schedule(step: jax.Array) -> jax.Array:
    fraction = jnp.clip(jnp.asarray(step, jnp.float32) / max_iter, 0.0, 1.0)
    return base_lr * (1.0 - fraction) ** power

  return schedule


def _top_level_name(path: tuple[Any, ...]) -> str:
  key = path[0]
  for attribute in ("key", "name", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def parameter_groups(params: Any, backbone_name: str = BACKBONE) -> Any:
  """Labels every leaf of a parameter tree BACKBONE (under `backbone_name`) or HEAD."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: BACKBONE if _top_level_name(path) == backbone_name else HEAD, params)


def ripu_sgd(
    base_lr: float = 2.5e-4,
    max_iter: int = 62_500,
    *,
    head_lr_multiplier: float = 10.0,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    power: float = 0.9,
    backbone_name: str = BACKBONE,
) -> optax.GradientTransformation:
  """The release's optimiser as an optax transformation over a model's parameters.

  Args:
    base_lr: backbone learning rate at step 0 (2.5e-4 in the release).
    max_iter: length of the poly schedule (62,500); training itself may stop earlier
      (40,000) — that bound belongs to the training loop, not to the schedule.
    head_lr_multiplier: learning-rate factor for every parameter outside the backbone.
    momentum: heavy-ball momentum (torch semantics: buffer = momentum * buffer + grad).
    weight_decay: L2 coefficient added to the gradient, for all parameters.
    power: poly exponent.
    backbone_name: top-level attribute holding the backbone.

  Returns:
    An optax transformation; pass it to `nnx.Optimizer(model, tx, wrt=nnx.Param)`.
  """
  if head_lr_multiplier < 0:
    raise ValueError(f"head_lr_multiplier must be >= 0, got {head_lr_multiplier}")
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"momentum must be in [0, 1), got {momentum}")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
  backbone_schedule = poly_schedule(base_lr, max_iter, power)
  head_schedule = poly_schedule(base_lr * head_lr_multiplier, max_iter, power)
  # Weight decay and momentum are shared (they commute with a per-group learning rate);
  # only the final scaling differs between groups.
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.trace(decay=momentum, nesterov=False),
      optax.multi_transform(
          {
              BACKBONE: optax.scale_by_learning_rate(backbone_schedule),
              HEAD: optax.scale_by_learning_rate(head_schedule),
          },
          lambda params: parameter_groups(params, backbone_name),
      ),
  )


def create_optimizer(model: nnx.Module, tx: optax.GradientTransformation | None = None,
                     **kwargs: Any) -> nnx.Optimizer:
  """nnx.Optimizer over the model's `nnx.Param`s (frozen BN excluded by type).

  Args:
    model: the network; its backbone must sit under the `backbone` attribute.
    tx: an optax transformation; None builds `ripu_sgd(**kwargs)`.
    **kwargs: forwarded to `ripu_sgd` when `tx` is None.
  """
  if tx is None:
    tx = ripu_sgd(**kwargs)
  elif kwargs:
    raise ValueError(f"pass either tx or ripu_sgd keyword arguments, not both: {sorted(kwargs)}")
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


def learning_rates(step: int, base_lr: float = 2.5e-4, max_iter: int = 62_500, *,
                   head_lr_multiplier: float = 10.0, power: float = 0.9) -> dict[str, float]:
  """Backbone and head learning rates at `step`, for logging."""
  backbone = float(poly_schedule(base_lr, max_iter, power)(step))
  return {BACKBONE: backbone, HEAD: backbone * head_lr_multiplier}
