"""One selection round over a batch of images, data-parallel over a device mesh.

Logits (or the named model outputs a strategy reads) come in at the network's resolution,
are upsampled on device to the label size, scored by a registered strategy and turned into
picks by the exact greedy selection. Only picks and masks come back to the host. The batch
is sharded over the mesh's "data" axis:
scoring is per image, so `jax.jit` with NamedSharding partitions it without communication;
the greedy loop is sequential per image, so it runs per device under `shard_map`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from ripu_jax import image_ops
from ripu_jax import sharding
from ripu_jax.acquisition import budgets
from ripu_jax.acquisition.greedy import Selection, select_batch
from ripu_jax.acquisition.scores import (finite_per_image, raise_if_not_finite, resolve_impl,
                                         validate_logits, validate_mode, validate_radius)
from ripu_jax.acquisition.strategies import call_strategy, get_strategy, model_outputs

DATA_AXIS = sharding.DATA_AXIS
KINDS = ("ra", "pa")


class RoundPlan(NamedTuple):
  """What one round picks per image, in the method's terms."""
  num_picks: int
  radius: int  # k of the impurity (and, in region mode, uncertainty) window
  mode: str  # "region" (RA) or "pixel" (PA)
  label_radius: int  # labelled square around a pick: k for RA, 0 for PA
  suppress_radius: int  # excluded square around a pick: 2k for RA, k for PA


def plan_round(kind: str, height: int, width: int, *, radius: int, rounds: int,
               ratio: float | None = None, pixels: int | None = None) -> RoundPlan:
  """The release's round for RA (`ratio` of pixels in total) or PA (`pixels` per image)."""
  radius = validate_radius(radius)
  if kind == "ra":
    if ratio is None:
      raise ValueError("RA needs `ratio`, the total labelled fraction (e.g. 0.022)")
    num = budgets.regions_per_round(height, width, ratio, rounds, radius)
    return RoundPlan(num, radius, "region", radius, 2 * radius)
  if kind == "pa":
    if pixels is None:
      raise ValueError("PA needs `pixels`, the total labelled pixels per image (e.g. 40)")
    num = budgets.pixels_per_round(height, width, pixels, rounds)
    return RoundPlan(num, radius, "pixel", 0, radius)
  raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


class CompiledRound:
  """A round as three jitted stages; the label-size logits and the score map pass between
  them on device.

  Separate programs rather than one, measured on XLA CPU: with the select stage in the
  score's program the round ran 20-30% slower (1024x2048, RA and PA); with the upsample in
  it, XLA fused the two-tap gather into every per-class read of the score code and the round
  from network logits ran 2.4x slower than upsample and score called one after the other.

  With `recycle` (CPU), the label-size logits of one call are donated to the next call's
  upsample, which writes into them: a fresh 159 MB buffer per 1024x2048 image costs ~39,000
  page faults, measured at about twice the upsample itself. The buffer stays allocated
  between calls.
  """

  def __init__(self, label_size: tuple[int, int], upsample: Callable,
               upsample_into: Callable, score: Callable, select: Callable, recycle: bool):
    self.label_size = tuple(label_size)
    self.upsample = upsample  # (inputs) -> (inputs at the label size, finite [B])
    self._upsample_into = upsample_into  # (inputs, donated scratch) -> as `upsample`
    self.score = score  # (inputs at the label size, image_ids, seed) -> (score, finite [B])
    self.select = select  # (score, excluded) -> Selection
    self._recycle = recycle
    self._scratch = None  # the last call's label-size logits, when recycled

  def scores(self, inputs, image_ids, seed):
    """(score [B, H, W], finite [B]) of logits at any size: upsampled first unless they are
    at the label size already (a jitted identity would copy them)."""
    if all(tuple(x.shape[1:3]) == self.label_size for x in inputs):
      return self.score(inputs, image_ids, seed)
    scratch, self._scratch = self._scratch, None
    shapes = [(x.shape[0], *self.label_size, x.shape[-1]) for x in inputs]
    if scratch is not None and [tuple(x.shape) for x in scratch] == shapes:
      inputs, finite = self._upsample_into(inputs, scratch)
    else:
      inputs, finite = self.upsample(inputs)
    score, _ = self.score(inputs, image_ids, seed)
    if self._recycle:
      self._scratch = inputs
    return score, finite

  def __call__(self, inputs, excluded, image_ids, seed):
    score, finite = self.scores(inputs, image_ids, seed)
    return self.select(score, excluded), finite


def mesh_platform(mesh: Mesh) -> str:
  """The platform ("cpu", "gpu", "tpu") of a mesh's devices."""
  return mesh.devices.flat[0].platform


def _compiled_round(mesh: Mesh, strategy_name: str, label_size: tuple[int, int],
                    plan: RoundPlan, input_size: tuple[int, int] | None,
                    impl: str = "auto") -> CompiledRound:
  """The round's compiled stages; `impl` ("auto" resolved for the mesh's platform first, so
  it shares its compilation with the name it stands for) is passed to strategies taking it."""
  return _compile_round(mesh, strategy_name, label_size, plan, input_size,
                        resolve_impl(impl, mesh_platform(mesh)))


@functools.lru_cache(maxsize=32)
def _compile_round(mesh: Mesh, strategy_name: str, label_size: tuple[int, int],
                   plan: RoundPlan, input_size: tuple[int, int] | None,
                   impl: str) -> CompiledRound:
  strategy = get_strategy(strategy_name)
  batch = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  select = functools.partial(select_batch, num_picks=plan.num_picks,
                             label_radius=plan.label_radius,
                             suppress_radius=plan.suppress_radius)
  select_per_device = jax.shard_map(select, mesh=mesh, in_specs=(P(DATA_AXIS), P(DATA_AXIS)),
                                    out_specs=P(DATA_AXIS), check_vma=False)

  def upsample(inputs):
    finite = functools.reduce(jnp.logical_and, [finite_per_image(x) for x in inputs])
    return [image_ops.upsample_to_labels(x, label_size, input_size) for x in inputs], finite

  def upsample_into(inputs, scratch):
    del scratch  # donated: the outputs take its memory
    return upsample(inputs)

  def score_images(inputs, image_ids, seed):
    finite = functools.reduce(jnp.logical_and, [finite_per_image(x) for x in inputs])
    base = jax.random.key(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(image_ids)
    score = call_strategy(strategy, *inputs, radius=plan.radius, mode=plan.mode, keys=keys,
                          impl=impl)
    return jnp.where(jnp.isnan(score), -jnp.inf, score), finite

  return CompiledRound(
      label_size=tuple(label_size),
      upsample=jax.jit(upsample, in_shardings=(batch,), out_shardings=(batch, batch)),
      upsample_into=jax.jit(upsample_into, in_shardings=(batch, batch),
                            out_shardings=(batch, batch), donate_argnums=1, keep_unused=True),
      score=jax.jit(score_images, in_shardings=(batch, batch, replicated),
                    out_shardings=(batch, batch)),
      select=jax.jit(select_per_device, in_shardings=(batch, batch),
                     out_shardings=Selection(batch, batch, batch)),
      recycle=mesh_platform(mesh) == "cpu")


def select_round(logits, *, plan: RoundPlan, strategy: str = "ripu",
                 label_size: tuple[int, int] | None = None, excluded=None, image_ids=None,
                 seed: int = 0, image_names=None, mesh: Mesh | None = None,
                 input_size: tuple[int, int] | None = None, impl: str = "auto") -> Selection:
  """Scores and selects on a batch of logits [B, h, w, C]; returns numpy picks and masks.

  logits: the logits, or a mapping of named model outputs holding every output the strategy
  reads (`strategies.model_outputs`), each [B, h, w, channels].
  label_size: (H, W) at which regions are scored and labelled (default: the logits' size).
  input_size: (H, W) of the images the network saw: the logits reach the label size through
  it, in two bilinear steps, as the release's rounds (default: one step). Logits already at
  the label size are scored as they are.
  excluded: bool [B, H, W], pixels labelled or suppressed in earlier rounds.
  image_ids: int [B], each image's index in its dataset (seeds "random" per image; defaults to
  0..B-1). The batch must divide evenly over the mesh's devices.
  impl: the score code for strategies that take it: "cpu", "reduce_window" (accelerators) or
  "auto" (the one for the mesh's platform).
  """
  names = model_outputs(get_strategy(strategy))
  if isinstance(logits, Mapping):
    missing = [n for n in names if n not in logits]
    if missing:
      raise ValueError(f"strategy {strategy!r} reads model outputs {list(names)}; missing "
                       f"{missing} (given {sorted(logits)})")
    inputs = tuple(logits[n] for n in names)
  elif names == ("logits",):
    inputs = (logits,)
  else:
    raise ValueError(f"strategy {strategy!r} reads model outputs {list(names)}: pass a "
                     "mapping of named outputs, not one array")
  for x in inputs:
    validate_logits(x)
  logits = inputs[0]
  validate_mode(plan.mode)
  mesh = mesh or sharding.default_mesh()
  impl = resolve_impl(impl, mesh_platform(mesh))
  batch = logits.shape[0]
  if any(x.shape[0] != batch for x in inputs):
    raise ValueError(f"model outputs {list(names)} hold different batch sizes")
  devices = mesh.shape[DATA_AXIS]
  if batch % devices:
    raise ValueError(f"batch of {batch} images does not split over {devices} devices; "
                     f"use a batch size that is a multiple of {devices}")
  label_size = tuple(int(v) for v in (label_size or logits.shape[1:3]))
  if len(label_size) != 2 or min(label_size) < 1:
    raise ValueError(f"label_size must be (height, width), got {label_size!r}")
  if excluded is None:
    excluded = np.zeros((batch, *label_size), bool)
  if tuple(excluded.shape) != (batch, *label_size) or excluded.dtype != bool:
    raise ValueError(f"excluded must be bool of shape {(batch, *label_size)}, got "
                     f"{excluded.dtype} {tuple(excluded.shape)}")
  if image_ids is None:
    image_ids = np.arange(batch, dtype=np.int32)
  image_ids = np.asarray(image_ids, np.int32)
  if image_ids.shape != (batch,):
    raise ValueError(f"image_ids must have shape ({batch},), got {image_ids.shape}")
  if input_size is not None:
    input_size = tuple(int(v) for v in input_size)
  run = _compiled_round(mesh, strategy, label_size, RoundPlan(*plan), input_size, impl)
  # Host inputs are whole on every process; each places its own devices' rows.
  excluded, image_ids = (x if isinstance(x, jax.Array) else sharding.put_global_batch(x, mesh)
                         for x in (excluded, image_ids))
  selection, finite = run(inputs, excluded, image_ids, np.int32(seed))
  raise_if_not_finite(sharding.to_host(finite), image_names)
  return Selection(*(sharding.to_host(x) for x in selection))
