"""Acquirers: how labels are bought from the target pool, chosen by `config.active.kind`.

An acquirer owns one method's acquisition protocol end to end: when rounds run, what a
round buys (squares around picked pixels, masks, whole frames) and how it picks. The
trainer builds one from the config (`ACQUIRERS.get(config.active.kind)(config)`) and calls:

  acquirer.round_steps               training steps before which a round runs (may be empty)
  acquirer.ledger_radii(label_shape) (label_radius, suppress_radius) for a new ledger
  acquirer.start(ledger, names)      labels bought before training starts (new runs only);
                                     names(i) is image i's name; may return a RoundResult,
                                     exported as round 0
  acquirer.run_round(pool, ledger)   one round over the pool -> RoundResult

The acquirer writes the ledger itself (`record`, `record_mask`, `record_frame`) and never
sees the trainer, a model or a dataset: `RoundPool` hands it a fresh pass over the pool's
batches and a prediction function returning the named outputs of a network of the train
state (the model, or an extra network such as a selector) on device. Built-in
members: "ra" and "pa" (RIPU's greedy rounds over a registered strategy), "all" (every
target pixel labelled from the start: the supervised upper bound), "split" (whole images
labelled from the start: the semi-supervised setting) and "none" (no target labels).
Register more with `@ACQUIRERS.register("name")` on a subclass of `Acquirer`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ripu_jax import image_ops
from ripu_jax import sharding
from ripu_jax.acquisition import scores as scores_lib
from ripu_jax.acquisition import strategies as strategies_lib
from ripu_jax.acquisition.selection_round import (RoundPlan, mesh_platform, plan_round,
                                                  select_round)
from ripu_jax.errors import ConfigError
from ripu_jax.registry import Registry


@dataclasses.dataclass
class RoundPool:
  """What a round may read: the target pool in batches and the model's predictions.

  batches(with_labels=False): a fresh pass over the pool; each batch is a dict with "image"
    (float [B, h, w, 3], normalised), "index" (int [B], image index in the pool),
    "label_size" (int [B, 2]), "valid" (bool [B]; False on padding rows), the dataset's
    features (depth, pose, superpixels, ...) at the label size, and with `with_labels` the
    ground truth "label" (e.g. for scores that skip ignored pixels).
  predict(images, outputs, network="model"): named outputs (e.g. ("logits",)) of a network
    of the train state ("model", or an extra such as "selector") on device, in eval mode,
    sharded over `mesh`.
  predict_mc(images, key, passes, label_size, network="model"): float32 [B, H, W, C], the
    mean softmax of `passes` Monte-Carlo dropout passes (eval mode with the network's
    channel dropout on, `ripu_jax.models.mc_logits`) at `label_size`, on device.
  groups: int [N] group of each pool image (the scene of a frame, for datasets of scenes),
    or None.
  coverage(group, distance_threshold): the superpixel coverage table a dataset of scenes
    stores per group (its split's `scene_coverage`), or None.
  """
  round_number: int
  seed: int
  batches: Callable[..., Iterable[Mapping[str, np.ndarray]]]
  num_batches: int
  name: Callable[[int], str]
  predict: Callable[..., Mapping[str, jax.Array]]
  mesh: Any
  num_overlays: int = 0
  progress: Callable[..., Iterable] = lambda iterable, **_: iterable
  predict_mc: Callable[..., jax.Array] | None = None
  groups: np.ndarray | None = None
  coverage: Callable[..., np.ndarray] | None = None


@dataclasses.dataclass
class ImageRecord:
  """One image's purchase in a round, for the exports."""
  index: int
  name: str
  labeled: np.ndarray  # bool [H, W]: pixels bought in this round
  picks: np.ndarray | None = None  # int32 [N, 2] (row, col) for square-shaped purchases


@dataclasses.dataclass
class Overlay:
  """A picture of one image's round: prediction, score map and the pixels bought."""
  name: str
  image: np.ndarray  # the normalised network input [h, w, 3]
  prediction: np.ndarray  # int [H, W]
  score: np.ndarray  # float [H, W]
  labeled: np.ndarray  # bool [H, W]


@dataclasses.dataclass
class RoundResult:
  images: list[ImageRecord]
  unit: str  # what `count` counts: "regions", "pixels", "segments", "frames"
  count: int
  strategy: str | None = None
  label_radius: int = 0
  overlays: list[Overlay] = dataclasses.field(default_factory=list)


class Acquirer:
  """Base class: no rounds, nothing bought (the `none` acquirer)."""

  def __init__(self, config):
    self.config = config
    self.active = config.active

  @classmethod
  def validate(cls, config) -> None:
    """Raises ValueError naming the field when `config` cannot run with this acquirer."""

  @property
  def buys_target_labels(self) -> bool:
    return bool(self.round_steps)

  @property
  def round_steps(self) -> tuple[int, ...]:
    return ()

  def ledger_radii(self, label_shape: tuple[int, int]) -> tuple[int, int]:
    del label_shape
    return 0, 0

  def start(self, ledger, names: Callable[[int], str]) -> RoundResult | None:
    """Labels bought before the first training step (called once, on a new ledger)."""
    del ledger, names
    return None

  def run_round(self, pool: RoundPool, ledger) -> RoundResult:
    raise NotImplementedError(f"{type(self).__name__} runs no selection rounds")


ACQUIRERS: Registry[type[Acquirer]] = Registry("acquirer")
ACQUIRERS.register("none", Acquirer)


def _invalid(message: str) -> ConfigError:
  return ConfigError(f"invalid config: {message}")


@ACQUIRERS.register("all")
class AllLabels(Acquirer):
  """Every target pixel labelled from the start (the supervised upper bound)."""

  @property
  def buys_target_labels(self) -> bool:
    return True

  def start(self, ledger, names: Callable[[int], str]) -> None:
    del names
    for index in range(ledger.num_images):
      ledger.record_frame(0, index)


def _list_key(entry: str) -> str:
  """An image's key in a list file: the file stem of the line's first field, without
  Cityscapes' "_leftImg8bit" (so "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png
  gtFine/..." and "aachen_000000_000019" name the same image)."""
  stem = os.path.splitext(os.path.basename(entry.split()[0]))[0]
  return stem.removesuffix("_leftImg8bit")


def read_image_list(path: str) -> list[str]:
  """Keys of the images a list file names, one per non-empty line (# starts a comment)."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise _invalid(f"active.labelled_list={path!r} does not exist; give a text file naming "
                   "one labelled image per line, or leave it empty for a seeded split of "
                   "active.labelled_fraction")
  with open(path) as f:
    lines = [line.split("#")[0].strip() for line in f]
  return [_list_key(line) for line in lines if line]


@ACQUIRERS.register("split")
class LabelledSplit(Acquirer):
  """The semi-supervised setting: whole target images labelled before training, no rounds.

  The labelled images are those `active.labelled_list` names (a file, one image per line:
  a name or a dataset-relative path), else a split drawn with `config.seed`:
  floor(active.labelled_fraction x pool size) images (1/8 of Cityscapes' 2,975 is 371, as
  the published lists). The split is exported as round 0 (rounds/0/picks.json names every
  labelled image; its names, one per line, make a list file for another run).
  """

  @classmethod
  def validate(cls, config) -> None:
    active = config.active
    if not active.get("labelled_list"):
      fraction = active.get("labelled_fraction")
      if fraction is None or not 0 < fraction < 1:
        raise _invalid(f"active.labelled_fraction must lie in (0, 1) (e.g. 0.125 for 1/8), "
                       f"got {fraction}; or name the labelled images in active.labelled_list")

  @property
  def buys_target_labels(self) -> bool:
    return True

  def labelled_indices(self, num_images: int, names: Callable[[int], str]) -> np.ndarray:
    listed = self.active.get("labelled_list")
    if listed:
      keys = read_image_list(listed)
      position = {_list_key(names(i)): i for i in range(num_images)}
      unknown = [key for key in keys if key not in position]
      if unknown:
        raise _invalid(
            f"active.labelled_list {listed!r} names {len(unknown)} image(s) that are not in "
            f"the target training split, e.g. {unknown[:3]}; its images are named like "
            f"{[names(i) for i in range(min(2, num_images))]}")
      indices = sorted({position[key] for key in keys})
      if not indices:
        raise _invalid(f"active.labelled_list {listed!r} names no image")
      return np.asarray(indices, np.int64)
    count = max(1, int(self.active.labelled_fraction * num_images))
    rng = np.random.default_rng([self.config.seed, 0x5EED])
    return np.sort(rng.choice(num_images, size=count, replace=False))

  def start(self, ledger, names: Callable[[int], str]) -> RoundResult:
    images = []
    for index in self.labelled_indices(ledger.num_images, names):
      ledger.record_frame(0, int(index))
      images.append(ImageRecord(int(index), names(int(index)),
                                ledger.labeled_mask(int(index))))
    return RoundResult(images, unit="images", count=len(images))


class ScheduledRounds(Acquirer):
  """Base of acquirers whose rounds run at active.round_steps over active.batch_size images."""

  @classmethod
  def validate(cls, config) -> None:
    active = config.active
    steps = tuple(active.round_steps)
    if not steps:
      raise _invalid("active.round_steps must list at least one step")
    if list(steps) != sorted(set(steps)) or steps[0] < 0:
      raise _invalid(f"active.round_steps must be distinct, increasing and >= 0, got {steps}")
    if steps[-1] >= config.num_steps:
      raise _invalid(f"active.round_steps {steps} must come before num_steps "
                     f"({config.num_steps})")
    if active.batch_size < 1:
      raise _invalid("active.batch_size must be >= 1")

  @property
  def round_steps(self) -> tuple[int, ...]:
    return tuple(int(s) for s in self.active.round_steps)

  @staticmethod
  def pool_batches(pool: RoundPool, **options
                   ) -> Iterator[tuple[Mapping[str, np.ndarray], tuple[int, int]]]:
    """(batch, label size) over one pass of the pool (`options` go to `pool.batches`), with a
    progress bar; a round scores a batch at one label size, so a batch mixing sizes raises
    with the fix."""
    for batch in pool.progress(pool.batches(**options), total=pool.num_batches,
                               desc=f"round {pool.round_number}"):
      sizes = {tuple(int(v) for v in size) for size in batch["label_size"]}
      if len(sizes) != 1:
        raise ValueError(f"target images of one selection batch have different label sizes "
                         f"{sorted(sizes)}; set --config.active.batch_size={pool.mesh.size}")
      yield batch, sizes.pop()


class GreedyRounds(ScheduledRounds):
  """RIPU's rounds: a strategy scores every pixel, the exact greedy picks squares.

  Reads active.strategy, active.radius (k), active.round_steps and the budget
  (active.ratio for RA, active.pixels for PA); the budget is split evenly over the rounds.
  acquisition.impl chooses the score code of strategies that take it.
  """
  kind = ""  # "ra" or "pa"
  unit = ""

  @classmethod
  def validate(cls, config) -> None:
    active = config.active
    if active.strategy not in strategies_lib.STRATEGIES:
      raise _invalid(f"active.strategy must be one of {strategies_lib.available_strategies()}, "
                     f"got {active.strategy!r}; a strategy defined outside ripu_jax needs "
                     "its module in --config.plugins")
    if active.radius < 0:
      raise _invalid(f"active.radius must be >= 0, got {active.radius}")
    super().validate(config)

  def plan(self, label_shape: tuple[int, int]) -> RoundPlan:
    active = self.active
    budget = {"ratio": active.ratio} if self.kind == "ra" else {"pixels": active.pixels}
    return plan_round(self.kind, *label_shape, radius=active.radius,
                      rounds=len(active.round_steps), **budget)

  def ledger_radii(self, label_shape: tuple[int, int]) -> tuple[int, int]:
    plan = self.plan(label_shape)
    return plan.label_radius, plan.suppress_radius

  def run_round(self, pool: RoundPool, ledger) -> RoundResult:
    name = self.active.strategy
    strategy = strategies_lib.get_strategy(name)
    # Resolved once, so the overlays' score maps come from the code that picked.
    impl = scores_lib.resolve_impl(self.config.acquisition.impl, mesh_platform(pool.mesh))
    inputs = strategies_lib.model_outputs(strategy)
    images, overlays = [], []
    for batch, label_size in self.pool_batches(pool):
      plan = self.plan(label_size)
      indices = [int(i) for i in batch["index"]]
      names = [pool.name(i) for i in indices]
      outputs = pool.predict(batch["image"], inputs)
      excluded = np.stack([ledger.excluded_mask(i) for i in indices])
      selection = select_round(
          outputs, plan=plan, strategy=name, label_size=label_size, excluded=excluded,
          image_ids=np.asarray(indices, np.int32), seed=pool.seed, image_names=names,
          mesh=pool.mesh, input_size=batch["image"].shape[1:3], impl=impl)
      for j in np.flatnonzero(batch["valid"]):
        picks = selection.picks[j][selection.picks[j, :, 0] >= 0]
        ledger.record(pool.round_number, indices[j], picks)
        images.append(ImageRecord(indices[j], names[j], selection.labeled[j], picks))
        if len(overlays) < pool.num_overlays:
          overlays.append(self._overlay(strategy, inputs, outputs, j, batch["image"][j],
                                        names[j], indices[j], selection.labeled[j], plan,
                                        label_size, pool.seed, impl))
    return RoundResult(images, unit=self.unit, count=sum(len(r.picks) for r in images),
                       strategy=name, label_radius=ledger.label_radius, overlays=overlays)

  @staticmethod
  def _overlay(strategy, inputs, outputs, j, image, name, index, labeled, plan, label_size,
               seed, impl) -> Overlay:
    upsampled = [image_ops.upsample_to_labels(sharding.to_host(outputs[key])[j:j + 1],
                                              label_size, np.shape(image)[:2])
                 for key in inputs]
    key = jax.random.fold_in(jax.random.key(seed), index)[None]
    score = strategies_lib.call_strategy(strategy, *upsampled, radius=plan.radius,
                                         mode=plan.mode, keys=key, impl=impl)[0]
    prediction = np.asarray(jnp.argmax(upsampled[0][0], -1))
    return Overlay(name, np.asarray(image), prediction, np.asarray(score), labeled)


@ACQUIRERS.register("ra")
class RegionRounds(GreedyRounds):
  """RA: (2k+1)^2 regions, active.ratio of the pixels over all rounds."""
  kind, unit = "ra", "regions"

  @classmethod
  def validate(cls, config) -> None:
    super().validate(config)
    if not 0 < config.active.ratio <= 1:
      raise _invalid(f"active.ratio must lie in (0, 1], got {config.active.ratio}")


@ACQUIRERS.register("pa")
class PixelRounds(GreedyRounds):
  """PA: single pixels, active.pixels per image over all rounds (k only scores)."""
  kind, unit = "pa", "pixels"

  @classmethod
  def validate(cls, config) -> None:
    super().validate(config)
    if config.active.pixels < 1:
      raise _invalid(f"active.pixels must be >= 1, got {config.active.pixels}")
