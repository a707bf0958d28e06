"""LabOR's acquirers: label only where the selector's two heads disagree.

Registers two members of `ripu_jax.acquisition.acquirers.ACQUIRERS`:

  "labor_spl"  segment-based: every inconsistent pixel not yet labelled (the paper), or,
               with labor.spl_cap, the most discrepant ones up to a cumulative per-image
               fraction; recorded as masks, counted in pixels.
  "labor_ppl"  point-based: one prototype point per predicted class of the inconsistent
               pixels, at most pixels_per_round(H, W, active.pixels, rounds) per image and
               round (active.pixels is the 40-points-at-1280x640 budget, scaled with the
               image area as RIPU-PA); recorded as picks of radius 0, counted in points.

The paper gives no schedule, so both run RIPU's rounds (active.round_steps; one round is
the "ask once" reading) and spend their budget on the pool's images through the ledger,
which refuses any pixel bought twice. The mask comes from the heads C1, C2: with
labor.share_backbone False the outputs "logits" and "aux/0" of the train state's extra
network "selector"; with True the model's "aux/0" and "aux/1" (the objective "labor" adds
them). PPL's class probabilities
are model A's softmax (labor.prototype_probs "model") or the heads' mean ("heads"). Overlays
show A's prediction, the discrepancy map and the pixels bought.

A config without a `labor` group (e.g. `config_lib.base_config()`) reads the defaults:
share_backbone False, spl_cap None, prototype_probs "model".
"""

from __future__ import annotations

import dataclasses
import functools
import math
from fractions import Fraction
from numbers import Real

import jax
import jax.numpy as jnp
import numpy as np

from ripu_jax import image_ops
from ripu_jax import objectives
from ripu_jax import sharding
from ripu_jax.acquisition import budgets
from ripu_jax.acquisition.acquirers import (ACQUIRERS, ImageRecord, Overlay, RoundPool,
                                            RoundResult, ScheduledRounds)
from ripu_jax.errors import ConfigError
from ripu_jax.methods.labor import selection

PROTOTYPE_PROBS = ("model", "heads")


def _invalid(message: str) -> ConfigError:
  return ConfigError(f"invalid config: {message}")


@dataclasses.dataclass(frozen=True)
class LaborOptions:
  """The `config.labor` fields the acquirers read (defaults where the group is absent)."""
  share_backbone: bool = False
  spl_cap: float | None = None
  prototype_probs: str = "model"

  @classmethod
  def from_config(cls, config) -> "LaborOptions":
    group = config.get("labor")
    if group is None:
      return cls()
    return cls(**{f.name: group.get(f.name, f.default) for f in dataclasses.fields(cls)})

  @property
  def heads(self) -> tuple[str, tuple[str, str]]:
    """(network, (output of C1, output of C2))."""
    if self.share_backbone:
      return "model", ("aux/0", "aux/1")
    return "selector", ("logits", "aux/0")

  def check(self, config) -> None:
    if not isinstance(self.share_backbone, bool):
      raise _invalid(f"labor.share_backbone must be True or False, got {self.share_backbone!r}")
    if self.share_backbone:
      aux_heads = objectives.model_kwargs(config).get("aux_heads", 0)
      if not isinstance(aux_heads, int) or aux_heads < 2:
        raise _invalid(
            "labor.share_backbone=True puts the selector's heads C1, C2 on the model's "
            "auxiliary heads 'aux/0' and 'aux/1', but the model has "
            f"{aux_heads!r}; use --config.train.objective=labor (which adds them) or give the "
            "model two auxiliary heads (model.kwargs.aux_heads=2 in the config file)")
    cap = self.spl_cap
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, Real)
                            or not 0 < cap <= 1):
      raise _invalid(f"labor.spl_cap must lie in (0, 1] or be None, got {cap!r}")
    if self.prototype_probs not in PROTOTYPE_PROBS:
      raise _invalid(f"labor.prototype_probs must be one of {PROTOTYPE_PROBS} (model A's "
                     f"softmax, or the mean of the selector's heads), got "
                     f"{self.prototype_probs!r}")


@functools.partial(jax.jit, static_argnames=("label_size", "input_size", "probs_from"))
def _round_maps(head1, head2, logits, *, label_size, input_size, probs_from):
  """(mask, discrepancy, probs or None) of a batch at the label size, on device."""
  mask, discrepancy = selection.inconsistency(head1, head2, label_size, input_size)
  if probs_from == "heads":
    probs = (selection.probabilities(head1, label_size, input_size)
             + selection.probabilities(head2, label_size, input_size)) / 2
  elif probs_from == "model":
    probs = selection.probabilities(logits, label_size, input_size)
  else:
    probs = None
  return mask, discrepancy, probs


@jax.jit
def _gather_rows(probs, flat):
  """[B, N, C]: rows `flat` [B, N] of the flattened [B, H, W, C] probabilities."""
  batch, height, width, classes = probs.shape
  return jnp.take_along_axis(probs.reshape(batch, height * width, classes), flat[..., None],
                             axis=1)


@functools.partial(jax.jit, static_argnames=("label_size", "input_size"))
def _prediction(logits, *, label_size, input_size):
  return jnp.argmax(image_ops.upsample_to_labels(logits, label_size, input_size), axis=-1)


def _bucket(count: int) -> int:
  """Padded gather length: a power of two (>= 64), so few shapes compile."""
  return max(64, 1 << max(count - 1, 0).bit_length())


class LaborRounds(ScheduledRounds):
  """Rounds at active.round_steps; each buys, per image, from the heads' inconsistency mask."""
  kind = ""  # "labor_spl" or "labor_ppl"
  unit = ""
  probs_from: str | None = None  # whose probabilities the purchase reads (PPL)

  def __init__(self, config):
    super().__init__(config)
    self.options = LaborOptions.from_config(config)

  @classmethod
  def validate(cls, config) -> None:
    super().validate(config)
    LaborOptions.from_config(config).check(config)

  def ledger_radii(self, label_shape: tuple[int, int]) -> tuple[int, int]:
    del label_shape
    return 0, 0  # masks and single points: nothing around them is labelled or suppressed

  # ---------------------------------------------------------------- predictions

  def _predict(self, pool: RoundPool, images, network: str, names: tuple[str, ...]) -> dict:
    """pool.predict, with a missing network or head reported as the config to change."""
    try:
      outputs = pool.predict(images, names, network=network)
      missing = [name for name in names if name not in outputs]
    except ValueError as error:
      if "unknown output" not in str(error) and "no network" not in str(error):
        raise
      missing, cause = list(names), error
    else:
      cause = None
    if not missing:
      return {name: outputs[name] for name in names}
    if self.options.share_backbone or network == "model":
      fix = ("with labor.share_backbone=True the heads C1, C2 are the model's 'aux/0' and "
             "'aux/1': use --config.train.objective=labor (which adds them) or give the "
             "model two auxiliary heads (model.kwargs.aux_heads=2 in the config file)")
    else:
      fix = ("the selector (C1 = its 'logits', C2 = its 'aux/0') is the extra network that "
             "the LabOR objective builds: set --config.train.objective=labor")
    problem = str(cause) if cause else f"it returned no {missing}"
    raise ConfigError(f"{self.kind} reads outputs {list(names)} of network {network!r}, but "
                      f"{problem}; {fix}") from cause

  def _batch_outputs(self, pool: RoundPool, images, with_model_logits: bool):
    """(head1, head2, model logits or None) of one batch."""
    network, names = self.options.heads
    requests = {network: list(names)}
    if with_model_logits:
      requests.setdefault("model", []).append("logits")
    outputs = {}
    for net, wanted in requests.items():
      got = self._predict(pool, images, net, tuple(wanted))
      outputs.update({(net, name): value for name, value in got.items()})
    return (outputs[(network, names[0])], outputs[(network, names[1])],
            outputs.get(("model", "logits")))

  # ---------------------------------------------------------------- rounds

  def run_round(self, pool: RoundPool, ledger) -> RoundResult:
    images, overlays = [], []
    for batch, label_size in self.pool_batches(pool):
      rows = np.flatnonzero(batch["valid"])
      if not len(rows):
        continue
      indices = [int(i) for i in batch["index"]]
      want_overlay = len(overlays) < pool.num_overlays
      head1, head2, logits = self._batch_outputs(
          pool, batch["image"], with_model_logits=want_overlay or self.probs_from == "model")
      input_size = tuple(batch["image"].shape[1:3])
      mask, discrepancy, probs = _round_maps(head1, head2, logits, label_size=label_size,
                                             input_size=input_size,
                                             probs_from=self.probs_from)
      mask, discrepancy = sharding.to_host(mask), sharding.to_host(discrepancy)
      excluded = {j: ledger.excluded_mask(indices[j]) for j in rows}
      bought = self._buy(pool.round_number, ledger, label_size, rows, indices, mask,
                         discrepancy, probs, excluded)
      for j in rows:
        labeled, picks = bought[j]
        name = pool.name(indices[j])
        images.append(ImageRecord(indices[j], name, labeled, picks))
        if len(overlays) < pool.num_overlays:
          prediction = np.asarray(_prediction(
              sharding.to_host(logits)[j:j + 1], label_size=label_size,
              input_size=input_size))[0]
          overlays.append(Overlay(name, np.asarray(batch["image"][j]), prediction,
                                  discrepancy[j], labeled))
    return RoundResult(images, unit=self.unit, count=self._count(images), strategy=self.kind,
                       label_radius=ledger.label_radius, overlays=overlays)

  def _buy(self, round_number, ledger, label_size, rows, indices, mask, discrepancy, probs,
           excluded) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    """Records the purchase of each valid row j -> (labeled bool [H, W], picks or None)."""
    raise NotImplementedError

  @staticmethod
  def _count(images: list[ImageRecord]) -> int:
    raise NotImplementedError


@ACQUIRERS.register("labor_spl")
class SegmentRounds(LaborRounds):
  """SPL: the inconsistent pixels, all of them or up to labor.spl_cap (cumulative)."""
  kind, unit = "labor_spl", "pixels"

  def quota(self, ledger, index: int, label_size: tuple[int, int], round_number: int):
    """None (no cap), or the pixels image `index` may still get by round `round_number`:
    ceil(cap * H * W * r / R) minus those already labelled, never negative."""
    cap = self.options.spl_cap
    if cap is None:
      return None
    rounds = len(self.round_steps)
    height, width = label_size
    reached = Fraction(min(round_number, rounds), rounds)
    allowed = math.ceil(Fraction(str(cap)) * height * width * reached)
    return max(0, allowed - int(ledger.labeled_mask(index).sum()))

  def _buy(self, round_number, ledger, label_size, rows, indices, mask, discrepancy, probs,
           excluded):
    del probs
    bought = {}
    for j in rows:
      index = indices[j]
      quota = self.quota(ledger, index, label_size, round_number)
      labeled = selection.spl_pixels(mask[j], discrepancy[j], excluded[j], quota)
      ledger.record_mask(round_number, index, labeled)
      bought[j] = labeled, None
    return bought

  @staticmethod
  def _count(images):
    return int(sum(int(r.labeled.sum()) for r in images))


@ACQUIRERS.register("labor_ppl")
class PointRounds(LaborRounds):
  """PPL: one prototype point per class of the inconsistent pixels, active.pixels in all."""
  kind, unit = "labor_ppl", "points"

  def __init__(self, config):
    super().__init__(config)
    self.probs_from = self.options.prototype_probs

  @classmethod
  def validate(cls, config) -> None:
    super().validate(config)
    pixels, rounds = config.active.pixels, len(tuple(config.active.round_steps))
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < rounds:
      raise _invalid(f"active.pixels={pixels!r} is a PPL budget below one point per round "
                     f"over {rounds} rounds; set --config.active.pixels to at least {rounds} "
                     "(the paper's budget is 40 points per image at 1280x640)")

  def quota(self, label_size: tuple[int, int]) -> int:
    """Points per image and round: the PA budget rule at this label size."""
    return budgets.pixels_per_round(*label_size, self.active.pixels, len(self.round_steps))

  def _buy(self, round_number, ledger, label_size, rows, indices, mask, discrepancy, probs,
           excluded):
    del discrepancy
    flats = {j: np.flatnonzero(mask[j] & ~excluded[j]) for j in rows}
    # Copy only the candidates' probabilities to the host, padded to a few gather shapes.
    padded = np.zeros((mask.shape[0], _bucket(max(len(f) for f in flats.values()))), np.int32)
    for j, flat in flats.items():
      padded[j, :len(flat)] = flat
    gathered = sharding.to_host(_gather_rows(probs, padded))
    quota = self.quota(label_size)
    bought = {}
    for j in rows:
      flat = flats[j]
      points = selection.prototype_points(flat, gathered[j, :len(flat)], width=label_size[1],
                                          quota=quota)
      ledger.record(round_number, indices[j], points)
      labeled = np.zeros(label_size, bool)
      labeled[points[:, 0], points[:, 1]] = True
      bought[j] = labeled, points
    return bought

  @staticmethod
  def _count(images):
    return int(sum(len(r.picks) for r in images))
