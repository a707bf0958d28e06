"""ViewAL's acquirer "viewal": a seed set of whole frames, then superpixels bought by rounds.

Before training, the seed frames are labelled whole (`active.labelled_list`, the release's
seedset file, or a seeded draw of `active.labelled_fraction` of the frames, as the "split"
acquirer). At each of `active.round_steps`, one round over the training frames:

1. Monte-Carlo dropout: the mean softmax of `viewal.passes` passes of the round's best-val
   model (`viewal.select_with`), at the label grid (`RoundPool.predict_mc`, the batches split
   over the mesh).
2. Per scene, as soon as its frames are in: view entropy and view divergence
   (`scoring.view_scores`, pixels whose ground truth is 255 scored 0, as the release), their
   superpixel means, and the superpixel overlaps (`scoring.coverage_table`, cov > 0.25 either
   way). Complete scenes wait until there is one for each device of the mesh; then each
   device scores one (`scene_scores.score_scenes`). Only that many scenes' predictions are
   held at a time.
3. The selection walk over all frames (`selection.select_superpixels`, `viewal.mode`
   "paper" or "release") until the round's budget: `viewal.budget_frames` frames' worth of
   pixels (the release's active-selection-size x 240 x 320), the scenes' walks split over the
   mesh.

`viewal.strategy` swaps the scores for the baselines on the same superpixels and budget:
"entropy" (the region mean of the predictive entropy of the frame's own MC prediction,
highest first) and "random" (superpixels in a seeded random order); both take superpixels in
score order without the walk. The ledger records each bought superpixel as a mask.

The overlaps come from the coverage table the dataset stores per scene (`coverage`: written
when a dataset is prepared, computed once for the rooms generated in memory), checked against
the frames the round reads; for a dataset without tables they are computed from the frames'
depth, pose, intrinsics and superpixels at every round (about 0.2 s per scene of 20 frames
at 240x320).
"""

from __future__ import annotations

import collections

import jax
import numpy as np

from ripu_jax import sharding
from ripu_jax.acquisition.acquirers import (ACQUIRERS, ImageRecord, LabelledSplit, Overlay,
                                            RoundPool, RoundResult, ScheduledRounds)
from ripu_jax.data.labels import IGNORE_LABEL
from ripu_jax.errors import ConfigError
from ripu_jax.methods.viewal import scene_scores
from ripu_jax.methods.viewal import selection

STRATEGIES = ("viewal", "entropy", "random")
FEATURES = ("depth", "pose", "intrinsics", "superpixels")


def _invalid(message: str) -> ConfigError:
  return ConfigError(f"invalid config: {message}")


@ACQUIRERS.register("viewal")
class ViewalRounds(ScheduledRounds, LabelledSplit):
  """Seed frames, then ViewAL's superpixel rounds (module docstring)."""

  @classmethod
  def validate(cls, config) -> None:
    ScheduledRounds.validate.__func__(cls, config)
    LabelledSplit.validate.__func__(cls, config)
    if "viewal" not in config:
      raise _invalid("active.kind 'viewal' needs the config group `viewal` (build the config "
                     "with ripu_jax.methods.viewal.viewal_config)")
    viewal = config.viewal
    if viewal.strategy not in STRATEGIES:
      raise _invalid(f"viewal.strategy must be one of {STRATEGIES}, got {viewal.strategy!r}")
    if viewal.mode not in selection.MODES:
      raise _invalid(f"viewal.mode must be one of {selection.MODES}, got {viewal.mode!r}")
    if viewal.select_with not in ("best", "last"):
      raise _invalid(f"viewal.select_with must be 'best' or 'last', got "
                     f"{viewal.select_with!r}")
    if not viewal.budget_frames > 0:
      raise _invalid(f"viewal.budget_frames must be > 0, got {viewal.budget_frames}")
    if viewal.passes < 1:
      raise _invalid(f"viewal.passes must be >= 1, got {viewal.passes}")

  @property
  def buys_target_labels(self) -> bool:
    return True

  def start(self, ledger, names) -> RoundResult:
    """The seed frames; then the whole schedule's budget is checked against the pool, before
    any training."""
    result = LabelledSplit.start(self, ledger, names)
    height, width = (int(v) for v in ledger.label_shapes[0])
    rounds = len(self.round_steps)
    _check_budget(rounds * int(round(self.config.viewal.budget_frames * height * width)),
                  ledger, self.config.viewal.budget_frames, rounds)
    return result

  def run_round(self, pool: RoundPool, ledger) -> RoundResult:
    viewal = self.config.viewal
    if pool.round_number in ledger.rounds_recorded:
      raise ValueError(f"round {pool.round_number} is already recorded in the ledger")
    if pool.groups is None:
      raise ConfigError(f"the viewal acquirer needs frames grouped into scenes; the pool "
                        f"{pool.name(0)!r}... has no scene ids. Use a multi-view dataset "
                        "(viewal_synthetic, scannet, scenenet_rgbd, matterport3d)")
    groups = np.asarray(pool.groups)
    frames_of = collections.Counter(groups.tolist())
    network = "best_model" if viewal.select_with == "best" else "model"
    key = jax.random.key(pool.seed)
    rng = np.random.default_rng(pool.seed)

    pending: dict[int, list[dict]] = collections.defaultdict(list)
    complete: list[tuple[int, list[dict]]] = []  # scenes waiting for a group of mesh.size
    scored: dict[int, dict] = {}  # frame index -> region scores and superpixel data
    overlap_tables: dict[int, np.ndarray] = {}
    pictured = set(range(min(pool.num_overlays, len(groups))))  # frames drawn as overlays
    pictures: dict[int, dict] = {}
    budget = None

    def score_complete():
      overlap_tables.update(self._score_scenes(complete, pool, scored, ledger, rng, pictures))
      complete.clear()

    for number, (batch, label_size) in enumerate(self.pool_batches(pool, with_labels=True)):
      if budget is None:
        budget = int(round(viewal.budget_frames * label_size[0] * label_size[1]))
        _check_budget(budget, ledger, viewal.budget_frames)
      missing = [name for name in FEATURES if name not in batch]
      if missing:
        raise ConfigError(f"the viewal acquirer reads the frames' {list(FEATURES)}; the pool's "
                          f"batches lack {missing}: use a multi-view RGB-D dataset")
      probs = None
      if viewal.strategy != "random":
        probs = np.asarray(sharding.to_host(pool.predict_mc(
            batch["image"], jax.random.fold_in(key, number), viewal.passes,
            label_size, network)))
      for row in np.flatnonzero(np.asarray(batch["valid"])):
        index = int(batch["index"][row])
        scene = int(groups[index])
        pending[scene].append(dict(
            index=index, probs=None if probs is None else probs[row],
            ignore=np.asarray(batch["label"][row]) == IGNORE_LABEL,
            **{name: np.asarray(batch[name][row]) for name in FEATURES}))
        if index in pictured:
          pictures[index] = dict(image=np.asarray(batch["image"][row]), prediction=(
              np.zeros(label_size, np.int32) if probs is None else probs[row].argmax(-1)))
        if len(pending[scene]) == frames_of[scene]:
          complete.append((scene, sorted(pending.pop(scene), key=lambda f: f["index"])))
          if len(complete) == pool.mesh.size:
            score_complete()
    if pending:
      raise ValueError(f"the round saw only part of scenes {sorted(pending)[:5]}: the pool's "
                       "pass and its scene ids disagree")
    score_complete()

    picks = self._pick(scored, overlap_tables, groups, budget, pool.mesh)
    return self._record(pool, ledger, scored, picks, pictures)

  def _score_scenes(self, complete: list[tuple[int, list[dict]]], pool: RoundPool,
                    scored: dict, ledger, rng, pictures: dict) -> dict[int, np.ndarray]:
    """Region scores of the frames of complete scenes into `scored` (and the pixel score of
    pictured frames into `pictures`), the scenes side by side over the mesh; returns each
    scene's overlap relation (empty for the baselines)."""
    viewal = self.config.viewal
    strategy = viewal.strategy
    scenes = []
    for scene, frames in complete:
      stack = {name: np.stack([f[name] for f in frames]) for name in (*FEATURES, "ignore")}
      scenes.append(scene_scores.Scene(
          depth=stack["depth"], intrinsics=stack["intrinsics"], pose=stack["pose"],
          superpixels=stack["superpixels"].astype(np.int32), ignore=stack["ignore"],
          probs=None if strategy == "random" else np.stack([f["probs"] for f in frames])))
      if strategy == "viewal" and pool.coverage is not None:
        scenes[-1].coverage = self._stored_coverage(pool, scene, scenes[-1], frames)
    kind = {"viewal": "viewal", "entropy": "entropy", "random": "sizes"}[strategy]
    results = scene_scores.score_scenes(
        scenes, kind=kind, mesh=pool.mesh, distance_threshold=viewal.distance_threshold,
        overlap_threshold=viewal.overlap_threshold,
        pixel_scores=any(f["index"] in pictures for _, frames in complete for f in frames))
    overlap_tables = {}
    for (scene, frames), arrays, result in zip(complete, scenes, results):
      superpixels = arrays.superpixels
      if strategy == "random":
        result.region_ve = rng.random(result.sizes.shape).astype(np.float32)
        result.pixel_score = result.region_ve[np.arange(len(frames))[:, None, None], superpixels]
      region_vd = np.zeros_like(result.region_ve) if result.region_vd is None else result.region_vd
      for position, frame in enumerate(frames):
        labelled_pixels = np.bincount(
            superpixels[position].reshape(-1),
            weights=ledger.labeled_mask(frame["index"]).reshape(-1).astype(np.float64),
            minlength=arrays.num_superpixels)
        scored[frame["index"]] = dict(
            ve=result.region_ve[position], vd=region_vd[position],
            sizes=result.sizes[position], labelled=labelled_pixels > 0,
            superpixels=superpixels[position].astype(np.uint16))
        if frame["index"] in pictures:
          pictures[frame["index"]]["score"] = result.pixel_score[position]
      overlap_tables[scene] = (np.zeros((0,), bool) if result.overlaps is None
                               else result.overlaps)
    return overlap_tables

  def _stored_coverage(self, pool: RoundPool, scene: int, arrays, frames) -> np.ndarray:
    """The dataset's coverage table of `scene`, checked against the frames the round read."""
    cov = np.asarray(pool.coverage(scene, self.config.viewal.distance_threshold))
    f, s = len(frames), arrays.num_superpixels
    if tuple(cov.shape) != (f, s, f, s):
      raise ValueError(f"the dataset's coverage table of the scene of frame "
                       f"{frames[0]['index']} is {tuple(cov.shape)}, but its frames give "
                       f"{(f, s, f, s)} (frames x superpixels, twice): prepare the dataset "
                       "again (its superpixels changed since the table was written)")
    return cov

  def _pick(self, scored: dict, overlap_tables: dict, groups: np.ndarray,
            budget: int, mesh) -> np.ndarray:
    """(frame, superpixel) picks [P, 2] in pick order."""
    viewal = self.config.viewal
    indices = np.asarray(sorted(scored))
    width = max(len(scored[i]["ve"]) for i in indices)

    def table(field, dtype):
      out = np.zeros((len(indices), width), dtype)
      for row, i in enumerate(indices):
        out[row, :len(scored[i][field])] = scored[i][field]
      return out

    ve, vd = table("ve", np.float32), table("vd", np.float32)
    sizes, labelled = table("sizes", np.int64), table("labelled", bool)
    if viewal.strategy == "viewal":
      padded = {}
      for scene, relation in overlap_tables.items():
        f, s = relation.shape[:2]
        full = np.zeros((f, width, f, width), bool)
        full[:, :s, :, :s] = relation
        padded[scene] = full
      chosen = selection.select_superpixels(
          ve, vd, groups[indices], padded, sizes, labelled, budget, mode=viewal.mode,
          mesh=mesh).picks
    else:
      rows, columns = np.nonzero((sizes > 0) & ~labelled)
      taken = selection.take_in_score_order(ve[rows, columns], sizes[rows, columns], budget)
      chosen = np.stack([rows[taken], columns[taken]], axis=1)
    chosen = np.asarray(chosen, np.int64).reshape(-1, 2)
    return np.stack([indices[chosen[:, 0]], chosen[:, 1]], axis=1)

  def _record(self, pool: RoundPool, ledger, scored: dict, picks: np.ndarray,
              pictures: dict) -> RoundResult:
    images = []
    by_frame = collections.defaultdict(list)
    for frame, superpixel in picks.tolist():
      by_frame[frame].append(superpixel)
    for frame in sorted(by_frame):
      mask = np.isin(scored[frame]["superpixels"], by_frame[frame])
      ledger.record_mask(pool.round_number, frame, mask)
      images.append(ImageRecord(frame, pool.name(frame), mask))
    bought = {image.index: image.labeled for image in images}
    overlays = [Overlay(pool.name(index), picture["image"], picture["prediction"],
                        picture["score"], bought.get(index, np.zeros_like(picture["prediction"],
                                                                          bool)))
                for index, picture in sorted(pictures.items())]
    return RoundResult(images, unit="superpixels", count=len(picks),
                       strategy=self.config.viewal.strategy, overlays=overlays)


def _check_budget(budget: int, ledger, budget_frames: float, rounds: int = 1) -> None:
  """`rounds` rounds' budget (`budget` pixels) must fit in the pixels not labelled yet."""
  total = int(np.prod(ledger.label_shapes, axis=1).sum())
  left = total - ledger.labeled_pixels()
  if budget > left:
    what = "a round buys" if rounds == 1 else f"{rounds} rounds of"
    raise ConfigError(f"invalid config: {what} viewal.budget_frames={budget_frames} "
                      f"frames' worth of pixels ({budget}), but only {left} target pixels are "
                      "left unlabelled; lower viewal.budget_frames or run fewer rounds")
