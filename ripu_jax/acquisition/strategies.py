"""Acquisition strategies, chosen by name from a registry.

A strategy maps a batch of logits [B, H, W, C] at label resolution to a score map
[B, H, W] (higher is picked first). Every strategy is traceable (it runs inside the jitted,
sharded selection round) and gets the same arguments:

  radius: the region radius k; mode: "region" (RA) or "pixel" (PA);
  keys: one PRNG key per image (derived from the image's index in the dataset, so results do
  not depend on how the batch is split over devices).

A strategy may also take an `impl` keyword ("cpu" or "reduce_window": which implementation
of the window code to trace, see `scores`); rounds pass it only to strategies whose signature
names it (`call_strategy`), so a strategy written for the arguments above needs nothing more.
The built-in ones take it.

In region mode a baseline's pixel value is averaged over the (2k+1)^2 window, as RIPU's
uncertainty is; "random" is not averaged (an average of noise is still noise). New
strategies (a two-head discrepancy, a multi-view entropy) register with
`@register_strategy("name")`; one that reads other model outputs than the logits names them,
`@register_strategy("name", inputs=("aux/0", "aux/1"))`, and receives those arrays (each
upsampled to label resolution) as its positional arguments, in that order.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Protocol

import jax
import jax.numpy as jnp

from ripu_jax.acquisition import scores as scores_lib
from ripu_jax.registry import Registry


class Strategy(Protocol):

  def __call__(self, logits: jax.Array, *, radius: int, mode: str, keys: jax.Array) -> jax.Array:
    ...


STRATEGIES: Registry[Strategy] = Registry("acquisition strategy")


def register_strategy(name: str, *, inputs: tuple[str, ...] = ("logits",)
                      ) -> Callable[[Strategy], Strategy]:
  """Decorator adding a strategy under `name`; `inputs` are the model outputs it reads."""
  inputs = tuple(inputs)
  if not inputs or not all(isinstance(i, str) and i for i in inputs):
    raise ValueError(f"inputs must name at least one model output, got {inputs!r}")

  def add(fn: Strategy) -> Strategy:
    fn.model_outputs = inputs
    return STRATEGIES.register(name)(fn)

  return add


def model_outputs(strategy: Strategy) -> tuple[str, ...]:
  """The named model outputs a strategy reads, in argument order ("logits" by default)."""
  return getattr(strategy, "model_outputs", ("logits",))


def takes_impl(strategy: Strategy) -> bool:
  """Whether a strategy's signature has an `impl` keyword (the choice of window code)."""
  try:
    parameter = inspect.signature(strategy).parameters.get("impl")
  except (TypeError, ValueError):
    return False
  return parameter is not None and parameter.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                      inspect.Parameter.POSITIONAL_OR_KEYWORD)


def call_strategy(strategy: Strategy, *inputs, radius: int, mode: str, keys: jax.Array,
                  impl: str = "auto") -> jax.Array:
  """strategy(*inputs, radius=, mode=, keys=), with impl= when the strategy takes it."""
  extra = {"impl": impl} if takes_impl(strategy) else {}
  return strategy(*inputs, radius=radius, mode=mode, keys=keys, **extra)


def get_strategy(name: str) -> Strategy:
  return STRATEGIES.get(name)


def available_strategies() -> list[str]:
  return STRATEGIES.names()


def _normalised(values: jax.Array, num_classes: int) -> jax.Array:
  return values / math.log(num_classes)


def _pixel_or_window(values: jax.Array, radius: int, mode: str, impl: str) -> jax.Array:
  return scores_lib.window_mean(values, radius, impl) if mode == "region" else values


@register_strategy("ripu")
def ripu(logits, *, radius, mode, keys, impl="auto"):
  """Region impurity x prediction uncertainty."""
  del keys
  return scores_lib.ripu_scores_traced(logits, radius, mode, impl)[0].score


@register_strategy("impurity")
def impurity(logits, *, radius, mode, keys, impl="auto"):
  """Region impurity alone (the paper's ablation)."""
  del mode, keys
  label = scores_lib.pseudo_label(logits, impl)
  return _normalised(scores_lib.region_impurity(label, logits.shape[-1], radius, impl),
                     logits.shape[-1])


@register_strategy("uncertainty")
def uncertainty(logits, *, radius, mode, keys, impl="auto"):
  """Prediction uncertainty alone: RIPU's U (window mean of entropy in region mode)."""
  del keys
  entropy = scores_lib.pixel_stats(logits, impl).entropy
  return _normalised(_pixel_or_window(entropy, radius, mode, impl), logits.shape[-1])


@register_strategy("entropy")
def entropy(logits, *, radius, mode, keys, impl="auto"):
  """ENT baseline: softmax entropy (window mean in region mode; then it equals U)."""
  return uncertainty(logits, radius=radius, mode=mode, keys=keys, impl=impl)


@register_strategy("confidence")
def confidence(logits, *, radius, mode, keys, impl="auto"):
  """SCONF baseline: 1 - max softmax probability (window mean in region mode)."""
  del keys
  least_confident = 1.0 - scores_lib.pixel_stats(logits, impl).max_prob
  return _pixel_or_window(least_confident, radius, mode, impl)


@register_strategy("random")
def random(logits, *, radius, mode, keys):
  """RAND baseline: uniform scores from each image's own key."""
  del radius, mode
  shape = logits.shape[1:3]
  return jax.vmap(lambda key: jax.random.uniform(key, shape, jnp.float32))(keys)
