"""RIPU's score pooled over superpixels: RIPU's region-shape ablation, on any target dataset.

The acquirer "ra_superpixels" runs RIPU's region rounds (`active.ratio` of the target pixels
over `active.round_steps`) with superpixels in place of the (2k+1)^2 squares. For superpixel
s of an image, from the model's pseudo labels and softmax entropies at the label size (the
logits upsampled as RIPU's rounds do):

  impurity(s)    = -sum_c q_c log(q_c + eps) / log C   (q_c: share of s predicted c)
  uncertainty(s) = mean over s of the pixel entropy / log C
  score(s)       = impurity(s) * uncertainty(s)

RIPU's region impurity and prediction uncertainty (its formulas, eps = 1e-6 included) with
the region being s rather than the window around a pixel. Superpixels: the dataset's "superpixels" feature when it has one (the
multi-view datasets), else SEEDS (`datasets.seeds_superpixels`, OpenCV) on the pool image,
`active.superpixel_area` pixels each on average, recomputed every round (SEEDS is
deterministic) rather than held for the whole pool. A round ranks every unlabelled
superpixel of the pool by score and buys them in that order until the round's share of the
pool's pixels (ratio / rounds) is spent; the last one may overshoot it, as in ViewAL's
rounds. The mean superpixel size is our choice: RIPU's paper names superpixels among its
region shapes but not their size.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ripu_jax import image_ops
from ripu_jax import sharding
from ripu_jax.acquisition import scores as scores_lib
from ripu_jax.acquisition.acquirers import (ACQUIRERS, ImageRecord, Overlay, RoundPool,
                                            RoundResult, ScheduledRounds)
from ripu_jax.data import pipeline
from ripu_jax.errors import ConfigError
from ripu_jax.methods.viewal import scoring
from ripu_jax.methods.viewal import selection


def _invalid(message: str) -> ConfigError:
  return ConfigError(f"invalid config: {message}")


def superpixel_scores_traced(logits, superpixels, num_superpixels: int):
  """(score, sizes) [B, S] of RIPU's score per superpixel (module docstring) from logits and
  superpixel ids [B, H, W] at one size; absent superpixels score -inf."""
  num_classes = logits.shape[-1]
  stats = scores_lib.pixel_stats(logits)
  superpixels = superpixels.astype(jnp.int32)
  sizes = scoring.superpixel_sizes(superpixels, num_superpixels)
  counts = scoring.superpixel_sizes(superpixels * num_classes + stats.label,
                                    num_superpixels * num_classes)
  share = counts.reshape(*sizes.shape, num_classes) / jnp.maximum(sizes, 1)[..., None]
  impurity = -jnp.sum(share * jnp.log(share + scores_lib.EPS), axis=-1)
  uncertainty = scoring.superpixel_means(stats.entropy, superpixels, num_superpixels)
  score = impurity * uncertainty / math.log(num_classes) ** 2
  return jnp.where(sizes > 0, score, -jnp.inf), sizes


@functools.partial(jax.jit, static_argnames=("label_size", "input_size", "num_superpixels"))
def _batch_scores(logits, superpixels, *, label_size, input_size, num_superpixels):
  logits = image_ops.upsample_to_labels(logits, label_size, input_size)
  return superpixel_scores_traced(logits, superpixels, num_superpixels)


def superpixel_scores(logits, superpixels, *, label_size=None, input_size=None):
  """RIPU's score per superpixel of a batch: logits [B, h, w, C] (upsampled to `label_size`,
  through `input_size` as the release's rounds, when given), superpixel ids [B, H, W] at the
  label size. Returns numpy (score, sizes), each [B, S] with S = max id + 1."""
  superpixels = np.asarray(superpixels)
  label_size = tuple(int(v) for v in (label_size or superpixels.shape[1:3]))
  if superpixels.ndim != 3 or tuple(superpixels.shape[1:]) != label_size:
    raise ValueError(f"superpixels must be [B, {label_size[0]}, {label_size[1]}] (the label "
                     f"size), got {superpixels.shape}")
  if superpixels.size and superpixels.min() < 0:
    raise ValueError(f"superpixel ids must be >= 0, got {superpixels.min()}")
  scores_lib.validate_logits(logits)
  score, sizes = _batch_scores(
      jnp.asarray(logits), jnp.asarray(superpixels, jnp.int32), label_size=label_size,
      input_size=None if input_size is None else tuple(int(v) for v in input_size),
      num_superpixels=int(superpixels.max()) + 1)
  return np.asarray(score), np.asarray(sizes)


def seeds_of_image(image: np.ndarray, label_size: tuple[int, int], area: int) -> np.ndarray:
  """SEEDS superpixels of a normalised pool image [h, w, 3] at `label_size`, about `area`
  pixels each (computed at the image's size, ids resized nearest)."""
  from ripu_jax.methods.viewal import datasets  # pylint: disable=g-import-not-at-top
  pixels = pipeline.denormalize_image(image)
  height, width = pixels.shape[:2]
  count = max(1, int(round(height * width / area)))
  ids = datasets.seeds_superpixels(pixels, num_superpixels=count)
  return pipeline.resize_nearest(ids, label_size).astype(np.int32)


@ACQUIRERS.register("ra_superpixels")
class SuperpixelRounds(ScheduledRounds):
  """RIPU's score over superpixels, bought in pool-wide score order (module docstring)."""
  unit = "superpixels"

  @classmethod
  def validate(cls, config) -> None:
    super().validate(config)
    active = config.active
    if active.strategy != "ripu":
      raise _invalid(f"active.kind 'ra_superpixels' scores with RIPU; active.strategy must be "
                     f"'ripu', got {active.strategy!r}")
    if not 0 < active.ratio <= 1:
      raise _invalid(f"active.ratio must lie in (0, 1], got {active.ratio}")
    if active.superpixel_area < 1:
      raise _invalid(f"active.superpixel_area must be >= 1 pixel, got "
                     f"{active.superpixel_area}")

  @property
  def buys_target_labels(self) -> bool:
    return True

  def superpixels_of(self, batch, label_size) -> np.ndarray:
    """int32 [B, H, W] superpixel ids of a pool batch at the label size (zeros on padding)."""
    if "superpixels" in batch:
      return np.asarray(batch["superpixels"], np.int32)
    images = np.asarray(batch["image"])
    out = np.zeros((len(images), *label_size), np.int32)
    for row in np.flatnonzero(np.asarray(batch["valid"])):
      out[row] = seeds_of_image(images[row], label_size, self.active.superpixel_area)
    return out

  def run_round(self, pool: RoundPool, ledger) -> RoundResult:
    """Scores every superpixel of the pool (one pass with the network), chooses, then builds
    the chosen superpixels' masks in a second pass without it: only per-superpixel scores are
    held between the two, not the pool's superpixel maps."""
    if pool.round_number in ledger.rounds_recorded:
      raise ValueError(f"round {pool.round_number} is already recorded in the ledger")
    total = int(np.prod(ledger.label_shapes, axis=1).sum())
    budget = int(math.ceil(total * self.active.ratio / len(self.round_steps)))
    candidates = {}  # image index -> (scores [S], sizes [S])
    pictures = {}  # image index -> (image, prediction, superpixels)
    for batch, label_size in self.pool_batches(pool):
      images = np.asarray(batch["image"])
      superpixels = self.superpixels_of(batch, label_size)
      logits = sharding.to_host(pool.predict(images, ("logits",))["logits"])
      score, sizes = superpixel_scores(logits, superpixels, label_size=label_size,
                                       input_size=images.shape[1:3])
      for row in np.flatnonzero(np.asarray(batch["valid"])):
        index = int(batch["index"][row])
        labelled = np.bincount(superpixels[row].reshape(-1),
                               weights=ledger.labeled_mask(index).reshape(-1),
                               minlength=score.shape[1]) > 0
        candidates[index] = (np.where(labelled, -np.inf, score[row]), sizes[row])
        if len(pictures) < pool.num_overlays:
          upsampled = image_ops.upsample_to_labels(logits[row:row + 1], label_size,
                                                   images.shape[1:3])
          pictures[index] = (images[row], np.asarray(jnp.argmax(upsampled[0], -1)),
                             superpixels[row])
    chosen = self._choose(candidates, budget)
    images = []
    for batch, label_size in self.pool_batches(pool):
      rows = [row for row in np.flatnonzero(np.asarray(batch["valid"]))
              if int(batch["index"][row]) in chosen]
      if not rows:
        continue
      superpixels = self.superpixels_of(batch, label_size)
      for row in rows:
        index = int(batch["index"][row])
        mask = np.isin(superpixels[row], chosen[index])
        ledger.record_mask(pool.round_number, index, mask)
        images.append(ImageRecord(index, pool.name(index), mask))
    bought = {image.index: image.labeled for image in images}
    overlays = []
    for index, (image, prediction, superpixels) in sorted(pictures.items()):
      score = candidates[index][0]
      overlays.append(Overlay(pool.name(index), image, prediction,
                              np.where(np.isfinite(score), score, 0.0)[superpixels],
                              bought.get(index, np.zeros(superpixels.shape, bool))))
    return RoundResult(images, unit=self.unit, count=sum(len(v) for v in chosen.values()),
                       strategy="ripu", overlays=overlays)

  def _choose(self, candidates: dict, budget: int) -> dict[int, np.ndarray]:
    """{image index: superpixel ids bought} in pool-wide score order up to `budget` pixels."""
    indices = sorted(candidates)
    owner = np.concatenate([np.full(len(candidates[i][0]), i) for i in indices])
    local = np.concatenate([np.arange(len(candidates[i][0])) for i in indices])
    scores = np.concatenate([candidates[i][0] for i in indices])
    sizes = np.concatenate([candidates[i][1] for i in indices]).astype(np.int64)
    keep = np.flatnonzero(np.isfinite(scores))
    if sizes[keep].sum() < budget:
      raise ConfigError(f"invalid config: a round buys {budget} pixels (active.ratio "
                        f"{self.active.ratio} over {len(self.round_steps)} rounds) but only "
                        f"{int(sizes[keep].sum())} unlabelled pixels are left; lower "
                        "active.ratio")
    chosen = keep[selection.take_in_score_order(scores[keep], sizes[keep], budget)]
    return {int(i): np.sort(local[chosen][owner[chosen] == i])
            for i in np.unique(owner[chosen])}
