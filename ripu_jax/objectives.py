"""Objectives: what a training step optimises, chosen by `config.train.objective`.

An objective is the unit a method plugs in for training. It says

  domains                 which training streams it reads (`DOMAINS`: "source"; "target",
                          the target pool with its bought labels; "labelled" / "unlabelled",
                          the pool's images with / without bought labels, the
                          semi-supervised streams); the trainer builds only those loaders and
                          the batch holds "<domain>_images" [B, H, W, 3] and
                          "<domain>_labels" [B, H, W] (unlabelled: 255)
  loader_options(domain)  extra options of that domain's loader (e.g. {"strong_view": True}
                          adds "<domain>_strong_image", a colour-jittered copy)
  build_state(model)      the `TrainState` it trains: the segmentation model, its optimizer
                          and any extra networks and optimizers (a selector, a
                          discriminator, a teacher), all saved whole by the checkpoints
  initialize(state)       once, on a fresh run, after the model got its starting weights
                          (`model.init_from`, or a whole run's state with
                          `train.continue_from`): e.g. copy them into an extra network
  check_start(step)       a clear error when a continued run cannot start at that step
  model_kwargs()          constructor arguments it adds to config.model.kwargs (e.g. extra
                          heads on the model); `init_from_may_lack()` names the model's
                          top-level parts a `model.init_from` checkpoint may lack (they
                          keep their fresh initialisation, for `initialize` to set)
  train_step(state, b)    one update, traced: the trainer jits it once with the state
                          donated and calls it with a batch sharded over the devices; it
                          returns float32 scalar metrics including "total"
  hooks()                 trainer hooks the method needs (e.g. a stage after the rounds)
  validate(config)        a clear error when the config cannot run with it

The base class implements the common case, a `loss(model, batch)` differentiated with
respect to the model's `nnx.Param`s and applied by its optimizer; RIPU's objectives
(`ripu_jax.methods.ripu`) only define `loss`. Every network built with `optimizer_for`
keeps the release's rules: frozen batch-norm statistics are not parameters (so no optimizer
touches them), and parameters outside a network's `backbone` get 10x its learning rate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax
from flax import nnx

from ripu_jax import optim
from ripu_jax.errors import ConfigError
from ripu_jax.registry import Registry

DOMAINS = ("source", "target", "labelled", "unlabelled")
Batch = Mapping[str, jax.Array]


class TrainState(nnx.Module):
  """Everything a training step updates: `model`, its `optimizer`, and named extras.

  Extras are more networks or optimizers, e.g. `TrainState(model, opt, selector=net,
  selector_optimizer=optimizer_for(net, config.optim))`, reached as `state.selector`.
  """

  def __init__(self, model: nnx.Module, optimizer: nnx.Optimizer, **extras: Any):
    self.model = model
    self.optimizer = optimizer
    for name, value in extras.items():
      if name in ("model", "optimizer", "extra_names") or name.startswith("_"):
        raise ValueError(f"{name!r} cannot name an extra of the train state")
      setattr(self, name, value)
    self.extra_names = tuple(extras)


def optimizer_for(network: nnx.Module, optim_config) -> nnx.Optimizer:
  """`config.optim`'s optimiser (the release's SGD with the poly schedule by default; 10x
  learning rate outside `backbone`) over `network`'s params."""
  return optim.create_optimizer(network, optim.from_config(optim_config))


def check_batch(batch: Batch, domains: tuple[str, ...]) -> None:
  """Raises naming what is missing or misshapen in a batch for `domains`."""
  keys = [f"{d}_{part}" for d in domains for part in ("images", "labels")]
  missing = [key for key in keys if key not in batch]
  if missing:
    raise ValueError(f"batch is missing {missing}; expected keys {keys}")
  for domain in domains:
    images, labels = batch[f"{domain}_images"], batch[f"{domain}_labels"]
    if images.ndim != 4 or labels.ndim != 3 or images.shape[0] != labels.shape[0]:
      raise ValueError(f"{domain} images must be [B, H, W, C] and labels [B, H, W], got "
                       f"{images.shape} and {labels.shape}")


class Objective:
  """Base objective: `loss(model, batch) -> (total, terms)` on the state's model."""

  domains: tuple[str, ...] = ("source", "target")

  def __init__(self, config):
    self.config = config

  @classmethod
  def validate(cls, config) -> None:
    """Raises ValueError naming the field when `config` cannot run with this objective."""

  def build_state(self, model: nnx.Module) -> TrainState:
    return TrainState(model, optimizer_for(model, self.config.optim))

  def initialize(self, state: TrainState) -> None:
    """Called once on a fresh run after the model's starting weights are in place."""

  def check_start(self, step: int) -> None:
    """Raises ConfigError when a run continued from another (`train.continue_from`) cannot
    start at `step` with this objective."""
    del step

  def model_kwargs(self) -> dict[str, Any]:
    """Constructor arguments this objective adds to config.model.kwargs (e.g. extra heads)."""
    return {}

  def init_from_may_lack(self) -> tuple[str, ...]:
    """Top-level parts of the model (e.g. "aux_heads") that a `model.init_from` checkpoint
    may lack: parts this objective adds to a plain model."""
    return ()

  def hooks(self) -> list:
    return []

  def loader_options(self, domain: str) -> dict[str, Any]:
    """Extra keyword arguments for `domain`'s training loader (`ripu_jax.data.pipeline`)."""
    del domain
    return {}

  def loss(self, model: nnx.Module, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    raise NotImplementedError(f"{type(self).__name__} defines neither loss nor train_step")

  def train_step(self, state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    grads, terms = nnx.grad(self.loss, has_aux=True)(state.model, batch)
    state.optimizer.update(state.model, grads)
    return {**terms, "grad_norm": optax.tree.norm(grads)}

  def make_step(self) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """`step(state, batch) -> metrics`: checks the batch, then one jitted, donated update.

    Keys of domains the objective does not read are dropped, so a trainer may pass a
    richer batch; extra features of its domains ("target_depth", ...) pass through.
    """
    domains = tuple(self.domains)

    @nnx.jit(donate_argnames=("state",))
    def jitted(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
      return self.train_step(state, batch)

    def step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
      check_batch(batch, domains)
      return jitted(state, {k: v for k, v in batch.items() if k.split("_")[0] in domains})

    return step


OBJECTIVES: Registry[type[Objective]] = Registry("objective")


def model_kwargs(config) -> dict[str, Any]:
  """The model's constructor arguments: config.model.kwargs plus what the objective adds.

  Raises ConfigError when the config sets one of the objective's to another value.
  """
  own = config.model.kwargs.to_dict()
  objective = config.train.objective
  added = OBJECTIVES.get(objective)(config).model_kwargs()
  for key, value in added.items():
    if key in own and own[key] != value:
      raise ConfigError(
          f"invalid config: model.kwargs.{key}={own[key]!r}, but train.objective "
          f"{objective!r} builds the model with {key}={value!r} with this config; drop "
          f"--config.model.kwargs.{key}")
  return {**own, **added}
