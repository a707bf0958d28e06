"""The label ledger: which target pixels have been bought, round by round.

A round buys labels on an image in one of three shapes:
  * picks (row, col) with the squares around them (RIPU's regions and pixels),
  * a mask of arbitrary pixels (segments, superpixels), stored as flat pixel indices,
  * the whole frame (full supervision, a frame-level query).
The labelled and the excluded masks follow from these records and the ledger's radii: a
pick labels the (2 * label_radius + 1)^2 square around it and excludes the
(2 * suppress_radius + 1)^2 one from later picks; masks and frames exclude their pixels
grown by label_radius, so no later square can reach them. Being the only record of the
budget, the ledger is what checkpoints save and what the input pipeline reads
(`ledger.labeled_masks`): spent budget can be neither lost nor spent twice, because a round
already recorded for an image cannot be recorded again, a pick on an excluded pixel is
refused and a mask or frame over labelled pixels is refused.

Answers: where labels come from people rather than from the dataset (`active.oracle =
"annotators"`), the ledger also keeps the labels bought, per round and image: the class ids
on exactly the pixels that round bought (`round_mask`), 255 where an annotator could not tell.
A round without answers is *pending*; `bought_labels[i]` is image i's label from the answers
alone (255 elsewhere), which the input pipeline reads instead of the dataset's labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Column order of `LabelLedger.picks`.
ROUND, IMAGE, ROW, COL = range(4)


def square_union(shape: tuple[int, int], points: np.ndarray, radius: int) -> np.ndarray:
  """bool [H, W]: union of the (2r+1)^2 squares centred on `points` [N, 2], clipped."""
  height, width = shape
  mask = np.zeros(shape, bool)
  if not len(points):
    return mask
  rows, cols = points[:, 0], points[:, 1]
  if radius == 0:
    mask[rows, cols] = True
    return mask
  # Corners of every square in a difference array; two cumulative sums fill the squares.
  top, bottom = np.clip(rows - radius, 0, height), np.clip(rows + radius + 1, 0, height)
  left, right = np.clip(cols - radius, 0, width), np.clip(cols + radius + 1, 0, width)
  corners = np.zeros((height + 1, width + 1), np.int32)
  np.add.at(corners, (top, left), 1)
  np.add.at(corners, (top, right), -1)
  np.add.at(corners, (bottom, left), -1)
  np.add.at(corners, (bottom, right), 1)
  return corners.cumsum(0).cumsum(1)[:height, :width] > 0


class _PerImage:
  """Read-only sequence view of a per-image ledger method: `view[i]` -> method(i)."""
  _method = ""

  def __init__(self, ledger: "LabelLedger"):
    self._ledger = ledger

  def __len__(self) -> int:
    return self._ledger.num_images

  def __getitem__(self, index: int) -> np.ndarray:
    return getattr(self._ledger, self._method)(index)


class LabeledMasks(_PerImage):
  """`masks[i]` -> bool [H, W], True where image i is labelled."""
  _method = "labeled_mask"


class BoughtLabels(_PerImage):
  """`labels[i]` -> uint8 [H, W], the answers bought for image i (255 elsewhere)."""
  _method = "bought_label"


class LabelLedger:
  """Picks per target image and round, with the masks they imply.

  Args:
    label_shapes: (height, width) of every target image's full-resolution label.
    label_radius: labelled square around a pick (k for RA, 0 for PA).
    suppress_radius: square around a pick that later picks avoid (2k for RA, k for PA).
  """

  def __init__(self, label_shapes: Sequence[tuple[int, int]], *, label_radius: int,
               suppress_radius: int):
    self.label_shapes = np.asarray(label_shapes, np.int64).reshape(-1, 2)
    if label_radius < 0 or suppress_radius < label_radius:
      raise ValueError(f"need 0 <= label_radius <= suppress_radius, got {label_radius} and "
                       f"{suppress_radius}")
    self.label_radius = int(label_radius)
    self.suppress_radius = int(suppress_radius)
    self._picks: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(self.num_images)]
    # Per image: (round, sorted flat pixel indices) of each mask; rounds of whole frames.
    self._masks: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(self.num_images)]
    self._frames: list[list[int]] = [[] for _ in range(self.num_images)]
    # Per image: round -> (sorted flat pixel indices, uint8 class ids) of the answers.
    self._answers: list[dict[int, tuple[np.ndarray, np.ndarray]]] = [
        {} for _ in range(self.num_images)]

  @property
  def num_images(self) -> int:
    return len(self.label_shapes)

  def _shape(self, index: int) -> tuple[int, int]:
    height, width = self.label_shapes[index]
    return int(height), int(width)

  def image_picks(self, index: int, upto: int | None = None) -> np.ndarray:
    """int32 [N, 2] (row, col) of every pick on image `index`, all rounds or rounds <= upto."""
    picks = [p for r, p in self._picks[index] if upto is None or r <= upto]
    return np.concatenate(picks) if picks else np.zeros((0, 2), np.int32)

  def _bought_mask(self, index: int, upto: int | None = None) -> np.ndarray:
    """bool [H, W]: pixels bought as masks or whole frames (not squares)."""
    shape = self._shape(index)
    if any(upto is None or r <= upto for r in self._frames[index]):
      return np.ones(shape, bool)
    mask = np.zeros(shape, bool)
    for r, pixels in self._masks[index]:
      if upto is None or r <= upto:
        mask.flat[pixels] = True
    return mask

  def labeled_mask(self, index: int, upto: int | None = None) -> np.ndarray:
    """bool [H, W]: pixels labelled by all rounds, or by the rounds numbered <= upto."""
    squares = square_union(self._shape(index), self.image_picks(index, upto), self.label_radius)
    if self._masks[index] or self._frames[index]:
      squares |= self._bought_mask(index, upto)
    return squares

  def round_mask(self, round_index: int, image_index: int) -> np.ndarray:
    """bool [H, W]: the pixels of image `image_index` that round `round_index` bought (labelled
    after it, not before it): what an annotator is asked to label."""
    if round_index not in self.rounds_of(image_index):
      raise ValueError(f"round {round_index} is not recorded for image {image_index}")
    earlier = [r for r in self.rounds_of(image_index) if r < round_index]
    mask = self.labeled_mask(image_index, upto=round_index)
    if earlier:
      mask &= ~self.labeled_mask(image_index, upto=max(earlier))
    return mask

  # ------------------------------------------------------------------ answers

  def record_answers(self, round_index: int, image_index: int, pixels: np.ndarray,
                     values: np.ndarray) -> None:
    """Stores the labels bought in one round for one image: class ids `values` (uint8, 255 =
    cannot tell) on the flat pixel indices `pixels`, which must be that round's pixels."""
    image_index = int(image_index)
    if round_index in self._answers[image_index]:
      raise ValueError(f"round {round_index}'s labels for image {image_index} are already "
                       "recorded; labels are bought once")
    expected = np.flatnonzero(self.round_mask(round_index, image_index))
    pixels = np.asarray(pixels, np.int64).ravel()
    values = np.asarray(values).ravel()
    if not np.array_equal(pixels, expected):
      raise ValueError(
          f"the labels for image {image_index} of round {round_index} cover {len(pixels)} "
          f"pixels, but the round bought {len(expected)} others; they belong to another query")
    if values.shape != pixels.shape or values.dtype != np.uint8:
      raise ValueError(f"need one uint8 class id per pixel, got {values.dtype} {values.shape} "
                       f"for {len(pixels)} pixels")
    self._answers[image_index][int(round_index)] = (pixels.astype(np.int32), values.copy())

  def pending(self) -> dict[int, list[int]]:
    """round -> images whose labels for that round have not been recorded yet."""
    waiting: dict[int, list[int]] = {}
    for index in range(self.num_images):
      for round_index in self.rounds_of(index):
        if round_index not in self._answers[index]:
          waiting.setdefault(round_index, []).append(index)
    return dict(sorted(waiting.items()))

  def bought_label(self, index: int) -> np.ndarray:
    """uint8 [H, W]: image `index`'s answers of every round, 255 where nothing was bought."""
    label = np.full(self._shape(index), 255, np.uint8)
    for pixels, values in self._answers[index].values():
      label.flat[pixels] = values
    return label

  @property
  def bought_labels(self) -> BoughtLabels:
    return BoughtLabels(self)

  def excluded_mask(self, index: int) -> np.ndarray:
    excluded = square_union(self._shape(index), self.image_picks(index), self.suppress_radius)
    if self._masks[index] or self._frames[index]:
      bought = self._bought_mask(index)
      rows, cols = np.nonzero(bought)
      excluded |= (square_union(bought.shape, np.stack([rows, cols], 1), self.label_radius)
                   if self.label_radius else bought)
    return excluded

  @property
  def labeled_masks(self) -> LabeledMasks:
    return LabeledMasks(self)

  def rounds_of(self, index: int) -> tuple[int, ...]:
    """Rounds recorded for image `index`, in any shape (picks, mask, frame)."""
    return tuple(sorted([r for r, _ in self._picks[index]] + [r for r, _ in self._masks[index]]
                        + self._frames[index]))

  @property
  def rounds_recorded(self) -> tuple[int, ...]:
    """Sorted round numbers that hold at least one image's record."""
    return tuple(sorted({r for i in range(self.num_images) for r in self.rounds_of(i)}))

  def _check_new_record(self, round_index: int, image_index: int) -> int:
    image_index = int(image_index)
    if not 0 <= image_index < self.num_images:
      raise IndexError(f"image {image_index} is outside the pool of {self.num_images}")
    if round_index in self.rounds_of(image_index):
      raise ValueError(f"round {round_index} is already recorded for image {image_index}; "
                       "budget would be spent twice")
    return image_index

  def record_mask(self, round_index: int, image_index: int, mask: np.ndarray) -> None:
    """Adds one image's mask of one round (segments, superpixels); refuses labelled pixels."""
    image_index = self._check_new_record(round_index, image_index)
    mask = np.asarray(mask)
    if mask.shape != self._shape(image_index) or mask.dtype != bool:
      raise ValueError(f"the mask for image {image_index} must be bool "
                       f"{self._shape(image_index)}, got {mask.dtype} {mask.shape}")
    if (mask & self.labeled_mask(image_index)).any():
      raise ValueError(f"round {round_index}'s mask covers already labelled pixels of image "
                       f"{image_index}; budget would be spent twice")
    self._masks[image_index].append((int(round_index), np.flatnonzero(mask).astype(np.int32)))

  def record_frame(self, round_index: int, image_index: int) -> None:
    """Labels the whole of one image in one round; refused if any pixel is labelled."""
    image_index = self._check_new_record(round_index, image_index)
    if self.rounds_of(image_index):
      raise ValueError(f"image {image_index} already has labels; labelling the whole frame "
                       "would spend budget twice")
    self._frames[image_index].append(int(round_index))

  def record(self, round_index: int, image_index: int, picks: np.ndarray) -> None:
    """Adds one image's picks of one round; rows of -1 (no candidate left) are dropped."""
    image_index = self._check_new_record(round_index, image_index)
    picks = np.asarray(picks, np.int32).reshape(-1, 2)
    picks = picks[picks[:, 0] >= 0]
    height, width = self._shape(image_index)
    if len(picks) and (picks[:, 0].max() >= height or picks[:, 1].max() >= width
                       or picks.min() < 0):
      raise ValueError(f"picks for image {image_index} fall outside its {height}x{width} label")
    if len(picks) and self.excluded_mask(image_index)[picks[:, 0], picks[:, 1]].any():
      raise ValueError(f"round {round_index} picks already excluded pixels of image "
                       f"{image_index}; they were labelled or suppressed before")
    self._picks[image_index].append((int(round_index), picks))

  def labeled_pixels(self) -> int:
    """Labelled pixels over the pool.

    With suppress_radius >= 2 * label_radius (RA's 2k, PA's k >= 0) labelled squares never
    overlap, and masks and frames never overlap anything (see `excluded_mask`), so their
    areas add up without building masks.
    """
    if self.suppress_radius >= 2 * self.label_radius:
      total = sum(len(p) for image in self._masks for _, p in image)
      total += sum(int(np.prod(self._shape(i))) for i in range(self.num_images)
                   if self._frames[i])
      for index in range(self.num_images):
        picks = self.image_picks(index)
        height, width = self._shape(index)
        rows = (np.minimum(picks[:, 0] + self.label_radius, height - 1)
                - np.maximum(picks[:, 0] - self.label_radius, 0) + 1)
        cols = (np.minimum(picks[:, 1] + self.label_radius, width - 1)
                - np.maximum(picks[:, 1] - self.label_radius, 0) + 1)
        total += int((rows * cols).sum())
      return total
    return int(sum(self.labeled_mask(i).sum() for i in range(self.num_images)
                   if self.rounds_of(i)))

  def labeled_fraction(self) -> float:
    """Labelled pixels over all pixels of the pool."""
    return self.labeled_pixels() / float(np.prod(self.label_shapes, axis=1).sum())

  @property
  def picks(self) -> np.ndarray:
    """int32 [M, 4]: (round, image, row, col) of every pick, by image then round."""
    rows = [np.concatenate([np.full((len(p), 2), (r, i), np.int32), p], axis=1)
            for i, image in enumerate(self._picks) for r, p in image]
    return np.concatenate(rows) if rows else np.zeros((0, 4), np.int32)

  def state(self) -> dict[str, np.ndarray]:
    """Arrays that restore the ledger (no empty arrays: a header row leads `picks`)."""
    header = np.array([[-1, -1, self.label_radius, self.suppress_radius]], np.int32)
    records = np.array([(r, i) for i, image in enumerate(self._picks) for r, _ in image],
                       np.int32).reshape(-1, 2)
    mask_records, offset = [], 0
    for i, image in enumerate(self._masks):
      for r, pixels in image:
        mask_records.append((r, i, offset, offset + len(pixels)))
        offset += len(pixels)
    pixels = [p for image in self._masks for _, p in image]
    frames = [(r, i) for i, rounds in enumerate(self._frames) for r in rounds]
    answer_records, offset = [], 0
    for i, image in enumerate(self._answers):
      for r, (answered_pixels, _) in sorted(image.items()):
        answer_records.append((r, i, offset, offset + len(answered_pixels)))
        offset += len(answered_pixels)
    answered = [image[r] for image in self._answers for r in sorted(image)]
    return {"picks": np.concatenate([header, self.picks]),
            "records": np.concatenate([np.full((1, 2), -1, np.int32), records]),
            "label_shapes": self.label_shapes.astype(np.int32),
            "mask_records": np.array([(-1, -1, 0, 0)] + mask_records, np.int32),
            "mask_pixels": np.concatenate([np.full(1, -1, np.int32)] + pixels),
            "frames": np.array([(-1, -1)] + frames, np.int32),
            "answer_records": np.array([(-1, -1, 0, 0)] + answer_records, np.int32),
            "answer_pixels": np.concatenate([np.full(1, -1, np.int32)]
                                            + [p for p, _ in answered]),
            "answer_values": np.concatenate([np.full(1, 255, np.uint8)]
                                            + [v for _, v in answered])}

  @classmethod
  def from_state(cls, state: dict[str, np.ndarray]) -> "LabelLedger":
    picks = np.asarray(state["picks"], np.int32)
    ledger = cls(np.asarray(state["label_shapes"]), label_radius=int(picks[0, 2]),
                 suppress_radius=int(picks[0, 3]))
    picks = picks[1:]
    for round_index, image_index in np.asarray(state["records"], np.int32)[1:]:
      chosen = (picks[:, ROUND] == round_index) & (picks[:, IMAGE] == image_index)
      ledger._picks[image_index].append((int(round_index), picks[chosen][:, [ROW, COL]]))
    # Ledgers saved before masks and frames existed have neither key.
    if "mask_records" in state:
      pixels = np.asarray(state["mask_pixels"], np.int32)[1:]
      for round_index, image_index, start, stop in np.asarray(state["mask_records"])[1:]:
        ledger._masks[image_index].append((int(round_index), pixels[start:stop].copy()))
      for round_index, image_index in np.asarray(state["frames"])[1:]:
        ledger._frames[image_index].append(int(round_index))
    if "answer_records" in state:  # and before answers existed, neither these
      pixels = np.asarray(state["answer_pixels"], np.int32)[1:]
      values = np.asarray(state["answer_values"], np.uint8)[1:]
      for round_index, image_index, start, stop in np.asarray(state["answer_records"])[1:]:
        ledger._answers[image_index][int(round_index)] = (pixels[start:stop].copy(),
                                                          values[start:stop].copy())
    return ledger

  def __eq__(self, other) -> bool:
    if not isinstance(other, LabelLedger):
      return NotImplemented
    mine, theirs = self.state(), other.state()
    return all(np.array_equal(mine[key], theirs[key]) for key in mine)

  def check_matches(self, label_shapes: Sequence[tuple[int, int]]) -> None:
    """Raises if a restored ledger belongs to a different target pool."""
    shapes = np.asarray(label_shapes, np.int64).reshape(-1, 2)
    if not np.array_equal(shapes, self.label_shapes):
      raise ValueError(
          f"the checkpoint's label ledger covers {self.num_images} target images whose label "
          f"sizes differ from the configured target pool ({len(shapes)} images); resume with "
          "the configuration the run started with, or use a fresh workdir")
