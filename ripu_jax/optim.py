"""RIPU's optimiser: SGD with momentum, L2 weight decay, poly schedule, 10x head LR.

Mirrors the release's torch setup: `torch.optim.SGD(momentum=0.9, weight_decay=5e-4)`
adds `weight_decay * param` to the gradient before the momentum buffer; the backbone's
learning rate is `base_lr * (1 - step / max_iter) ** 0.9` and every parameter outside the
backbone uses 10x that. Frozen batch-norm state is not an `nnx.Param`, so it never reaches
the optimiser.

`from_config(config.optim)` also offers Adam (torch semantics: the L2 term joins the gradient
before the moments), AdamW (torch semantics: decoupled decay, `param -= lr * weight_decay *
param` beside the Adam step, ELN's optimiser), a cosine schedule with warm restarts, as IAST's
release trains, and a constant rate (`optim.name`, `optim.schedule`); the defaults are RIPU's.
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


def cosine_restarts_schedule(base_lr: float, period: int) -> optax.Schedule:
  """lr(step) = base_lr * (1 + cos(pi * (step mod period) / period)) / 2: restarts every period
  steps (torch's CosineAnnealingWarmRestarts with T_mult 1 and eta_min 0)."""
  if base_lr < 0:
    raise ValueError(f"base_lr must be >= 0, got {base_lr}")
  if period < 1:
    raise ValueError(f"period must be >= 1, got {period}")

  def schedule(step: jax.Array) -> jax.Array:
    phase = jnp.mod(jnp.asarray(step, jnp.float32), period) / period
    return base_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * phase))

  return schedule


OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("poly", "cosine_restarts", "constant")


def schedule_from_config(optim_config, base_lr: float) -> optax.Schedule:
  """`optim.schedule` at `base_lr`: "poly" to optim.max_iter, "cosine_restarts" with a
  period of optim.restart_every steps (None: optim.max_iter, one cosine), or "constant"."""
  name = optim_config.get("schedule", "poly")
  if name == "constant":
    if base_lr < 0:
      raise ValueError(f"base_lr must be >= 0, got {base_lr}")
    return optax.constant_schedule(base_lr)
  if name == "poly":
    return poly_schedule(base_lr, optim_config.max_iter, optim_config.power)
  if name == "cosine_restarts":
    return cosine_restarts_schedule(
        base_lr, optim_config.get("restart_every") or optim_config.max_iter)
  raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {name!r}")


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
  return _grouped(optax.trace(decay=momentum, nesterov=False), weight_decay,
                  poly_schedule(base_lr, max_iter, power),
                  poly_schedule(base_lr * head_lr_multiplier, max_iter, power), backbone_name)


def _grouped(direction: optax.GradientTransformation, weight_decay: float,
             backbone_schedule: optax.Schedule, head_schedule: optax.Schedule,
             backbone_name: str = BACKBONE, *,
             decoupled: bool = False) -> optax.GradientTransformation:
  """L2 term, then `direction` (momentum or Adam's moments), then each group's learning rate.

  Weight decay and the direction are shared (they commute with a per-group learning rate);
  only the final scaling differs between groups. `decoupled` adds the decay after the
  direction instead (AdamW: the decay is scaled by the learning rate, not by Adam).
  """
  steps = [direction, optax.add_decayed_weights(weight_decay)] if decoupled else [
      optax.add_decayed_weights(weight_decay), direction]
  return optax.chain(
      *steps,
      optax.multi_transform(
          {
              BACKBONE: optax.scale_by_learning_rate(backbone_schedule),
              HEAD: optax.scale_by_learning_rate(head_schedule),
          },
          lambda params: parameter_groups(params, backbone_name),
      ),
  )


def from_config(optim_config) -> optax.GradientTransformation:
  """The optimiser `config.optim` names: RIPU's SGD by default, or Adam (optim.betas)."""
  name = optim_config.get("name", "sgd")
  if name == "sgd":
    direction = optax.trace(decay=optim_config.momentum, nesterov=False)
  elif name in ("adam", "adamw"):
    beta1, beta2 = optim_config.betas
    direction = optax.scale_by_adam(b1=beta1, b2=beta2, eps=1e-8)
  else:
    raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {name!r}")
  base_lr = optim_config.base_lr
  return _grouped(direction, optim_config.weight_decay,
                  schedule_from_config(optim_config, base_lr),
                  schedule_from_config(optim_config, base_lr * optim_config.head_lr_multiplier),
                  decoupled=name == "adamw")


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
  """Backbone and head learning rates of RIPU's schedule at `step`, for logging."""
  backbone = float(poly_schedule(base_lr, max_iter, power)(step))
  return {BACKBONE: backbone, HEAD: backbone * head_lr_multiplier}


def learning_rates_from_config(step: int, optim_config) -> dict[str, float]:
  """Backbone and head learning rates of `config.optim`'s schedule at `step`, for logging."""
  backbone = float(schedule_from_config(optim_config, optim_config.base_lr)(step))
  return {BACKBONE: backbone, HEAD: backbone * optim_config.head_lr_multiplier}
