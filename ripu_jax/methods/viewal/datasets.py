"""The multi-view RGB-D datasets ViewAL runs on, in the dataset catalogue.

Four datasets, each a sequence of frames grouped into scenes (geometry is shared only inside
one scene), with per-frame RGB, labels, metric depth, pose, intrinsics and superpixels:

  viewal_synthetic  procedural rooms (`scenes`), generated locally, 9 classes
  scannet           ScanNet v2, every 35th frame, NYU40 (40 classes)
  scenenet_rgbd     SceneNet RGB-D, 30 frames per trajectory, NYU13 (13 classes)
  matterport3d      Matterport3D undistorted images, NYU40 (40 classes)

Every frame carries the features (key = role of `ripu_jax.data.pipeline.FEATURE_ROLES`):
"depth" float32 [H, W] metres (0 = invalid), "superpixels" int32 [H, W] (ids 0..S-1),
"pose" float32 [4, 4] camera-to-world in OpenCV axes (x right, y down, z forward),
"intrinsics" float32 [3, 3] on the label grid, and "scene" int32 (index into `scene_names`).
Labels are stored as class indices of the dataset's label space (0..C-1, 255 = ignore); the
real datasets' id 0 (unannotated) becomes 255 and ids 1..C become 0..C-1. The real datasets
are resized to ViewAL's working size 240x320 when prepared (image bilinear, labels, depth and
superpixels nearest; K rescaled per axis), depth goes from the files' units to metres, and
superpixels (SEEDS, `seeds_superpixels`) are computed then, on the resized image.

Opened splits (`catalog.open_role`) also carry `scene_ids` (int32 [N]), `scene_names` (all
scenes of the dataset, indexed by id) and `seed_indices` (the frames labelled from the start:
ViewAL's 1.5% seed set of the training split, empty for the others); `scene_frames(split)`
groups frame indices by scene.

Splits: where ViewAL's release ships frame lists, the user puts them in
<manual_dir>/selections/ (see each dataset's `help`); otherwise scenes are split
deterministically (70/15/15 %), and the seed set is drawn deterministically.

`register_datasets()` adds the datasets and label spaces to the catalogue. To prepare from the
command line (which registers them first):

  python -m ripu_jax.methods.viewal.prepare --dataset viewal_synthetic --data_dir DIR \
      [--height 120 --width 160 --train_scenes 8 ...]
  python -m ripu_jax.methods.viewal.prepare --dataset scannet --manual_dir RAW --data_dir DIR

or `prepare_dataset(name, ...)`. Preparation goes through `ripu_jax.data.prepare`: TFDS writes
into a temporary folder renamed only once every split is written, so an interrupted
preparation leaves nothing that reads as prepared. Both then write each scene's superpixel
coverage table (`coverage`) into the dataset's folder; opened splits read it as
`scene_coverage(scene)`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import re
import sys
import types
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import logging
import numpy as np
from PIL import Image

from ripu_jax.data import catalog
from ripu_jax.data import labels as labels_lib
from ripu_jax.data import manual
from ripu_jax.data import reader
from ripu_jax.methods.viewal import coverage as coverage_lib
from ripu_jax.methods.viewal import scenes

SYNTHETIC = "viewal_synthetic"
SCANNET = "scannet"
SCENENET = "scenenet_rgbd"
MATTERPORT = "matterport3d"
NAMES = (SYNTHETIC, SCANNET, SCENENET, MATTERPORT)

TRAIN, VAL, TEST = scenes.TRAIN, scenes.VAL, scenes.TEST
SPLITS = scenes.SPLITS
WORKING_SIZE = scenes.WORKING_SIZE  # (height, width) of prepared real frames.
IGNORE = labels_lib.IGNORE_LABEL

FEATURES = types.MappingProxyType({"depth": "depth", "superpixels": "superpixels",
                                   "pose": "pose", "intrinsics": "intrinsics",
                                   "scene": "scene"})
# Roles: the pool is the train split, evaluation uses val (test is for the final report).
ROLES = {catalog.TARGET_TRAIN: TRAIN, catalog.TARGET_VAL: VAL, "target_test": TEST}

SEED_FRACTION = scenes.SEED_FRACTION
MIN_SEED_FRAMES = scenes.MIN_SEED_FRAMES
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)  # Deterministic scene-level split without lists.
SCANNET_FRAME_STRIDE = 35  # Frame numbers that are multiples of this are used.
SCENENET_FRAME_STRIDE = 250  # SceneNet numbers frames 0, 25, ...: every 10th, 30 a trajectory.
# SceneNet RGB-D renders 320x240 with a 60 x 45 degree field of view.
SCENENET_INTRINSICS = np.array([[160 / np.tan(np.radians(30)), 0, 160],
                                [0, 120 / np.tan(np.radians(22.5)), 120], [0, 0, 1]])
SCANNET_TSV = "scannetv2-labels.combined.tsv"
LIST_FILES = {TRAIN: "train_frames.txt", VAL: "val_frames.txt", TEST: "test_frames.txt"}
SEED_LIST_FILE = "seedset_0_frames.txt"

# ----------------------------------------------------------------------------- label spaces

NYU40_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop")
NYU13_NAMES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture",
               "sofa", "table", "tv", "wall", "window")


def _palette(count: int) -> np.ndarray:
  """Distinct colours: hues by the golden ratio, alternating brightness."""
  hues = (np.arange(count) * 0.618034) % 1.0
  out = []
  for index, hue in enumerate(hues):
    value = 0.95 if index % 2 == 0 else 0.7
    sector, fraction = int(hue * 6) % 6, hue * 6 - int(hue * 6)
    p, q, t = value * 0.35, value * (1 - 0.65 * fraction), value * (1 - 0.65 * (1 - fraction))
    out.append([(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value),
                (value, p, q)][sector])
  return np.rint(np.array(out) * 255).astype(np.uint8)


def _space(name: str, class_names: Sequence[str], palette=None) -> labels_lib.LabelSpace:
  count = len(class_names)
  return labels_lib.LabelSpace(name, tuple(class_names),
                               _palette(count) if palette is None else palette,
                               {"miou": tuple(range(count))})


SYNTHETIC_SPACE = _space(SYNTHETIC, scenes.CLASS_NAMES, scenes.PALETTE)
NYU40_SPACE = _space("nyu40", NYU40_NAMES)
NYU13_SPACE = _space("nyu13", NYU13_NAMES)
LABEL_SPACES = (SYNTHETIC_SPACE, NYU40_SPACE, NYU13_SPACE)


def shift_class_ids(raw: np.ndarray, num_classes: int) -> np.ndarray:
  """uint8 stored ids of raw dataset ids: 0 (unannotated) and ids above `num_classes` -> 255,
  1..num_classes -> 0..num_classes-1."""
  raw = np.asarray(raw).astype(np.int64)
  valid = (raw >= 1) & (raw <= num_classes)
  return np.where(valid, raw - 1, IGNORE).astype(np.uint8)


# ----------------------------------------------------------------------------- superpixels


def seeds_superpixels(image: np.ndarray, *, num_superpixels: int = 40, iterations: int = 10,
                      num_levels: int = 4, prior: int = 2, histogram_bins: int = 5,
                      double_step: bool = False) -> np.ndarray:
  """SEEDS superpixels of an RGB uint8 image: int32 [H, W] ids 0..S-1 (no gaps).

  ViewAL runs davidstutz/seeds-revised with 40 superpixels, 10 iterations, spatial weight 0.2
  and confidence 0.001. This uses OpenCV contrib's SEEDS (cv2.ximgproc), which maps as:
    superpixels 40  -> num_superpixels. OpenCV grids the image in blocks of power-of-two
                       subdivisions, so only some counts are reachable: the request given to
                       OpenCV is chosen so that the initial grid is the one closest to
                       `num_superpixels` (48 at 240x320, an 8x6 grid of 40-pixel blocks);
                       superpixels can vanish while iterating, and ids are then renumbered.
    iterations 10   -> iterations (OpenCV's `iterate(image, iterations)`).
    spatial weight  -> no equivalent; OpenCV's `prior` (0..5, 3x3 shape smoothing; 2 is its
                       default) is the closest control of compactness.
    confidence      -> no equivalent (OpenCV always updates when the histogram term wins).
    (automatic)     -> num_levels: block levels of the hierarchy (4, fewer where the image is
                       too small for them), histogram_bins 5 and double_step False (OpenCV's
                       defaults).
  Both run on colour histograms; OpenCV is fed CIELab, as its documentation recommends.
  Deterministic: the same image gives the same ids.
  """
  import cv2  # pylint: disable=g-import-not-at-top  (OpenCV contrib: only preparation needs it)
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"seeds_superpixels needs an RGB uint8 [H, W, 3] image, got {image.dtype} "
                     f"{image.shape}")
  if not hasattr(cv2, "ximgproc"):
    raise ImportError("cv2.ximgproc is missing: install opencv-contrib-python-headless (not "
                      "opencv-python) for SEEDS superpixels")
  height, width = image.shape[:2]
  request, levels = _seeds_grid(height, width, int(num_superpixels), int(num_levels))
  seeds = cv2.ximgproc.createSuperpixelSEEDS(width, height, 3, request, levels, int(prior),
                                             int(histogram_bins), bool(double_step))
  seeds.iterate(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2Lab), int(iterations))
  _, ids = np.unique(seeds.getLabels(), return_inverse=True)
  return ids.reshape(height, width).astype(np.int32)


@functools.lru_cache(maxsize=64)
def _seeds_grid(height: int, width: int, wanted: int, max_levels: int) -> tuple[int, int]:
  """(request, num_levels) whose initial OpenCV SEEDS grid has the count closest to `wanted`
  (more levels first, then the smaller request)."""
  import cv2  # pylint: disable=g-import-not-at-top
  if wanted < 1 or max_levels < 1:
    raise ValueError(f"num_superpixels and num_levels must be >= 1, got {wanted}, {max_levels}")
  best = None
  for levels in range(max_levels, 0, -1):
    for request in range(max(1, wanted // 2), 3 * wanted + 2):
      count = cv2.ximgproc.createSuperpixelSEEDS(width, height, 3, request, levels, 2, 5,
                                                 False).getNumberOfSuperpixels()
      key = (abs(count - wanted), -levels, request)
      if best is None or key < best[0]:
        best = (key, request, levels)
  return best[1], best[2]


# ----------------------------------------------------------------------------- synthetic


class ViewalSyntheticSplit:
  """A split of the procedural benchmark as a random-access sequence, generated on demand.

  Offers the interface of the prepared splits (`len`, `[i]`, `encoded`, `label`, `name`,
  `label_shape`, `class_presence`, `features`) plus `scene_ids`, `scene_names` and
  `seed_indices`.
  """

  features = FEATURES

  def __init__(self, config: scenes.ViewalSyntheticConfig | None = None, split: str = TRAIN):
    self.config = config or scenes.ViewalSyntheticConfig()
    self.config.scenes(split)  # Checks the split.
    self.split = split
    self.dataset_name = SYNTHETIC
    self.num_classes = SYNTHETIC_SPACE.num_classes
    self._coverage: dict[tuple[int, float], np.ndarray] = {}

  def __len__(self) -> int:
    return self.config.num_frames(self.split)

  def _index(self, index) -> int:
    index = int(index)
    return index + len(self) if index < 0 else index

  def __getitem__(self, index: int) -> dict:
    return scenes.generate_frame(self.config, self.split, self._index(index))

  def encoded(self, index: int) -> dict:
    """Same as `self[index]`: generated frames need no decoding."""
    return self[index]

  def label(self, index: int) -> np.ndarray:
    return scenes.generate_frame(self.config, self.split, self._index(index),
                                 superpixels=False)["label"]

  def name(self, index: int) -> str:
    return scenes.frame_name(*scenes.frame_of(self.config, self.split, self._index(index)))

  def label_shape(self, index: int) -> tuple[int, int]:
    del index  # Every frame has the configured size.
    return self.config.height, self.config.width

  @functools.cached_property
  def class_presence(self) -> np.ndarray:
    """[N, num_classes] bool: which classes each frame contains."""
    presence = np.zeros((len(self), self.num_classes), bool)
    for index in range(len(self)):
      counts = np.bincount(self.label(index).ravel(), minlength=256)[:self.num_classes]
      presence[index] = counts > 0
    return presence

  @property
  def class_index(self) -> tuple[np.ndarray, ...]:
    return tuple(np.flatnonzero(self.class_presence[:, c]) for c in range(self.num_classes))

  @property
  def scene_ids(self) -> np.ndarray:
    """int32 [N]: the scene of each frame (index into `scene_names`)."""
    return np.repeat(np.asarray(self.config.scenes(self.split), np.int32),
                     self.config.frames_per_scene)

  @property
  def scene_names(self) -> tuple[str, ...]:
    return tuple(scenes.scene_name(s) for s in range(self.config.num_scenes))

  @property
  def seed_indices(self) -> np.ndarray:
    """Sorted frame indices of the seed set (training split only; empty otherwise)."""
    if self.split != TRAIN:
      return np.zeros(0, np.int64)
    return scenes.seed_indices(self.config)

  def scene_coverage(self, scene_id: int,
                     distance_threshold: float = coverage_lib.DISTANCE_THRESHOLD
                     ) -> np.ndarray:
    """float32 [F, S, F, S]: the superpixel coverage of one scene (`coverage`), computed on
    first use and kept."""
    key = (int(scene_id), float(distance_threshold))
    if key not in self._coverage:
      self._coverage[key] = coverage_lib.compute(self, scene_id, distance_threshold)
    return self._coverage[key]

  def __repr__(self) -> str:
    return f"ViewalSyntheticSplit(config={self.config!r}, split={self.split!r})"


def scene_frames(split) -> dict[int, np.ndarray]:
  """scene id -> sorted indices of the split's frames of that scene."""
  ids = np.asarray(split.scene_ids)
  return {int(scene): np.flatnonzero(ids == scene) for scene in np.unique(ids)}


# ----------------------------------------------------------------------------- real frames


@dataclasses.dataclass(frozen=True, eq=False)
class RgbdFrame:
  """One frame of a manual download: its files and camera.

  Attributes:
    name: frame name (ViewAL's list naming where it has one).
    scene: scene name (frames share geometry only within a scene).
    image, depth, label: the files.
    pose: a text file holding the 4x4 camera-to-world matrix, or the matrix itself
      (OpenCV axes either way).
    intrinsics: [3, 3] K on `intrinsics_grid`.
    intrinsics_grid: the pixel grid K describes: "depth" or "image" (that file's size), or a
      (height, width).
  """

  name: str
  scene: str
  image: manual.Entry
  depth: manual.Entry
  label: manual.Entry
  pose: manual.Entry | np.ndarray
  intrinsics: np.ndarray
  intrinsics_grid: str | tuple[int, int]

  @property
  def entries(self) -> list[manual.Entry]:
    files = [self.image, self.depth, self.label]
    return files + [self.pose] if isinstance(self.pose, manual.Entry) else files


def _full_parts(tree: manual.FileTree, entry: manual.Entry) -> tuple[str, ...]:
  """Path components relative to the manual dir, through an archive's own folder."""
  if entry.archive is None:
    return entry.parts
  folder = os.path.relpath(os.path.dirname(entry.archive), tree.root)
  return (() if folder == "." else tuple(folder.split(os.sep))) + entry.parts


def _read_text(tree: manual.FileTree, entry: manual.Entry) -> str:
  try:
    return tree.read(entry).decode("utf-8")
  except UnicodeDecodeError as err:
    raise manual.CorruptFileError(f"{entry} is not a text file ({err}); download or export it "
                                  "again.") from err


def _read_matrix(tree: manual.FileTree, entry: manual.Entry, shape: tuple[int, int]
                 ) -> np.ndarray:
  text = _read_text(tree, entry)
  try:
    values = np.array(text.split(), np.float64)
  except ValueError as err:
    raise manual.CorruptFileError(f"{entry} does not hold numbers ({err}); expected a "
                                  f"{shape[0]}x{shape[1]} matrix") from err
  if values.size != shape[0] * shape[1]:
    raise manual.CorruptFileError(f"{entry} holds {values.size} numbers; expected a "
                                  f"{shape[0]}x{shape[1]} matrix")
  return values.reshape(shape)


def _missing(help_text: str, tree: manual.FileTree, what: str) -> manual.ManualDataError:
  sample = ", ".join(str(e) for e in tree.entries[:3]) or "no files at all"
  hint = ""
  if tree.unsupported_archives:
    hint = ("\nFound archives this tool cannot read directly; extract them first: " +
            ", ".join(tree.unsupported_archives[:5]))
  return manual.ManualDataError(
      f"No {what} found under {tree.root} (it contains: {sample}).{hint}\n{help_text}")


def _incomplete(dataset: str, help_text: str, missing: list[tuple[str, list[str]]]
                ) -> manual.ManualDataError:
  shown = "".join(f"\n  {name}: no {', '.join(kinds)}" for name, kinds in missing[:5])
  more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
  return manual.ManualDataError(
      f"{dataset}: {len(missing)} frame(s) lack some of their files (a partial download or "
      f"export; complete it, or remove those frames' files):{shown}{more}\n{help_text}")


def _prefer(found: dict, key, entry: manual.Entry) -> None:
  """Keeps one entry per key; an extracted file wins over the same file in an archive."""
  previous = found.get(key)
  if previous is None or (previous.archive is not None and entry.archive is None):
    found[key] = entry


def _assemble(dataset: str, help_text: str, files: Mapping[str, dict], keys,
              make: _FrameMaker) -> list[RgbdFrame]:
  """Frames for `keys` from `files` (kind -> {key: entry}); a key lacking a kind raises."""
  frames, missing = [], []
  for key in keys:
    lacking = [kind for kind, found in files.items() if key not in found]
    if lacking:
      missing.append((make.name_of(key), lacking))
    else:
      frames.append(make(key, **{kind: found[key] for kind, found in files.items()}))
  if missing:
    raise _incomplete(dataset, help_text, missing)
  return frames


class _FrameMaker:
  """Builds an `RgbdFrame` from a key and its files (per-dataset naming and camera)."""

  def __init__(self, name_of, scene_of, camera_of):
    self.name_of, self._scene_of, self._camera_of = name_of, scene_of, camera_of

  def __call__(self, key, **entries) -> RgbdFrame:
    pose, k, grid = self._camera_of(key, entries)
    return RgbdFrame(self.name_of(key), self._scene_of(key), entries["image"], entries["depth"],
                     entries["label"], pose, k, grid)


class _FoundFrames(dict):
  """{split: frames} as the catalogue expects, plus `seed_names` (ViewAL's seed list or
  None)."""

  def __init__(self, splits: dict, seed_names: list[str] | None):
    super().__init__(splits)
    self.seed_names = seed_names


# ----------------------------------------------------------------------------- split lists


def _find_lists(tree: manual.FileTree, dataset: str, help_text: str
                ) -> tuple[dict[str, list[str]] | None, list[str] | None]:
  """ViewAL's frame lists from <manual_dir>/selections/, if given: ({split: names} or None,
  seed names or None). Some but not all of the three split lists raises."""
  found = {}
  wanted = {**{name: split for split, name in LIST_FILES.items()}, SEED_LIST_FILE: "seed"}
  for entry in tree.entries:
    parts = _full_parts(tree, entry)
    if len(parts) >= 2 and parts[-2].lower() == "selections" and entry.name in wanted:
      found[wanted[entry.name]] = entry
  tree.prefetch(found.values())
  lists = {key: [line.split()[0] for line in _read_text(tree, entry).splitlines()
                 if line.strip()] for key, entry in found.items()}
  seed = lists.pop("seed", None)
  if not lists:
    if seed is not None:
      raise manual.ManualDataError(
          f"{dataset}: found selections/{SEED_LIST_FILE} but no split lists; add "
          f"{', '.join(LIST_FILES.values())} next to it, or remove it.\n{help_text}")
    return None, None
  absent = [LIST_FILES[split] for split in SPLITS if split not in lists]
  if absent:
    raise manual.ManualDataError(
        f"{dataset}: the frame lists in selections/ are incomplete: {', '.join(absent)} "
        f"missing (give all of {', '.join(LIST_FILES.values())}, or none).\n{help_text}")
  return lists, seed


def _split_by_lists(dataset: str, help_text: str, frames: Mapping[str, Mapping[str, Any]],
                    lists: Mapping[str, list[str]]) -> dict[str, list[str]]:
  """{split: listed keys present in frames[split]}; listed names not found are warned about,
  and a split with none found raises."""
  result = {}
  for split in SPLITS:
    present = [name for name in lists[split] if name in frames[split]]
    absent = len(lists[split]) - len(present)
    if absent:
      example = next(name for name in lists[split] if name not in frames[split])
      logging.warning("%s %s: %d of the %d frames of %s are not in the download (e.g. %s); "
                      "they are left out", dataset, split, absent, len(lists[split]),
                      LIST_FILES[split], example)
    if not present:
      raise manual.ManualDataError(
          f"{dataset}: none of the {len(lists[split])} frames listed in {LIST_FILES[split]} "
          f"is in the download (e.g. {lists[split][0] if lists[split] else 'an empty list'})."
          f"\n{help_text}")
    result[split] = present
  return result


def split_scenes(scene_names: Sequence[str], dataset: str = "") -> dict[str, list[str]]:
  """Deterministic scene-level split (`SPLIT_FRACTIONS`, at least one scene each): scenes in
  sorted order, shuffled with a fixed seed."""
  names = sorted(set(scene_names))
  if len(names) < 3:
    raise manual.ManualDataError(
        f"{dataset}: a scene-level train/val/test split needs at least 3 scenes, found "
        f"{len(names)} ({', '.join(names) or 'none'}); add scenes, or give ViewAL's frame lists "
        "in selections/")
  order = [names[i] for i in np.random.default_rng(0).permutation(len(names))]
  val = max(1, int(round(SPLIT_FRACTIONS[1] * len(names))))
  test = max(1, int(round(SPLIT_FRACTIONS[2] * len(names))))
  train = len(names) - val - test
  if train < 1:
    train, val = 1, len(names) - 1 - test
  return {TRAIN: sorted(order[:train]), VAL: sorted(order[train:train + val]),
          TEST: sorted(order[train + val:])}


def seed_set(names: Sequence[str], listed: Sequence[str] | None = None) -> np.ndarray:
  """Sorted indices (into `names`, the training frames) of the seed set: the `listed` names
  (ViewAL's seedset_0 list) when given, else about 1.5% (at least MIN_SEED_FRAMES) drawn with
  a fixed seed."""
  if listed is not None:
    position = {name: index for index, name in enumerate(names)}
    chosen = sorted(position[name] for name in set(listed) if name in position)
    if len(chosen) < len(set(listed)):
      logging.warning("%d seed-set frame(s) of %s are not among the training frames; they are "
                      "left out", len(set(listed)) - len(chosen), SEED_LIST_FILE)
    return np.asarray(chosen, np.int64)
  count = len(names)
  wanted = min(count, max(MIN_SEED_FRAMES, int(round(SEED_FRACTION * count))))
  return np.sort(np.random.default_rng(0).choice(count, wanted, replace=False)).astype(np.int64)


# ----------------------------------------------------------------------------- ScanNet

SCANNET_HELP = f"""\
ScanNet v2 (RGB-D scans of indoor scenes, NYU40 labels), as ViewAL uses it: every
{SCANNET_FRAME_STRIDE}th frame of each scan, 240x320.
Request access at http://www.scan-net.org/ and download, per scan, <scan>.sens and
<scan>_2d-label-filt.zip, and once {SCANNET_TSV}. Export each .sens with ScanNet's SensReader
(python reader.py --filename <scan>.sens --output_path scans/<scan> --export_color_images
--export_depth_images --export_poses --export_intrinsics) and put the label zip in the scan's
folder (as it is, or extracted), so that --manual_dir holds:
  <manual_dir>/{SCANNET_TSV}
  <manual_dir>/scans/<scan>/                 e.g. scans/scene0000_00/
    color/<frame>.jpg                        (1296x968)
    depth/<frame>.png                        (16-bit, millimetres)
    pose/<frame>.txt                         (4x4 camera-to-world)
    intrinsic/intrinsic_depth.txt            (4x4; K of the depth images)
    label-filt/<frame>.png                   (16-bit raw ScanNet label ids)
Labels: the raw ids of label-filt are mapped to NYU40 with the tsv's "id" -> "nyu40id" columns
(pre-mapped NYU40 PNGs are not accepted); NYU40 0 -> 255 (ignore), 1..40 -> 0..39. Depth is
divided by 1000; K is intrinsic_depth.txt rescaled from the depth images' size to 320x240
(halved). Frames with a non-finite pose (ScanNet marks failed tracking with -inf) are skipped.
Splits: ViewAL's lists, if given, choose the frames:
  <manual_dir>/selections/train_frames.txt, val_frames.txt, test_frames.txt
  <manual_dir>/selections/seedset_0_frames.txt   (optional: the seed set)
(from the ViewAL release's dataset/scannet/selections/; one frame a line, named
<scan>_<frame:06d>, e.g. scene0000_00_000035). Without them, scans are split 70/15/15 % into
train/val/test (deterministic), and the seed set is 1.5% of the training frames.
"""

_SCAN = re.compile(r"scene\d{4}_\d{2}$")
_SCANNET_FOLDERS = {"color": "image", "depth": "depth", "pose": "pose", "label-filt": "label"}


def _scannet_name(key) -> str:
  return f"{key[0]}_{key[1]:06d}"


# FileTree -> its raw-id table (read once per tree, not once per label).
_SCANNET_LOOKUPS: "weakref.WeakKeyDictionary[manual.FileTree, np.ndarray]" = (
    weakref.WeakKeyDictionary())


def _parse_scannet_tsv(data: bytes) -> np.ndarray:
  lines = data.decode("utf-8").splitlines()
  header = lines[0].split("\t") if lines else []
  if "id" not in header or "nyu40id" not in header:
    raise manual.CorruptFileError(f"{SCANNET_TSV} has no 'id' and 'nyu40id' columns (header: "
                                  f"{header[:6]})")
  raw_column, nyu_column = header.index("id"), header.index("nyu40id")
  table = np.zeros(1 << 16, np.uint8)  # Unknown raw ids: NYU40 0 (unannotated).
  for line in lines[1:]:
    cells = line.split("\t")
    if len(cells) > max(raw_column, nyu_column) and cells[raw_column].strip().isdigit():
      nyu = cells[nyu_column].strip()
      table[int(cells[raw_column])] = int(nyu) if nyu.isdigit() else 0
  table.setflags(write=False)
  return table


def _scannet_lookup(tree: manual.FileTree) -> np.ndarray:
  """[65536] uint8 table raw ScanNet label id -> NYU40 id, from the tsv in the manual dir."""
  table = _SCANNET_LOOKUPS.get(tree)
  if table is None:
    entries = [e for e in tree.entries if e.name == SCANNET_TSV]
    if not entries:
      raise _missing(SCANNET_HELP, tree, f"{SCANNET_TSV} (the raw-id -> NYU40 table)")
    entry = min(entries, key=lambda e: (e.archive is not None, len(e.parts)))
    tree.prefetch([entry])
    table = _SCANNET_LOOKUPS[tree] = _parse_scannet_tsv(tree.read(entry))
  return table


def _decode_uint16(entry: manual.Entry, data: bytes, what: str) -> np.ndarray:
  """[H, W] uint16 of a 16-bit (or 8-bit) single-channel PNG."""
  import cv2  # pylint: disable=g-import-not-at-top
  try:
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  except cv2.error as err:
    decoded, reason = None, str(err)
  else:
    reason = "not a readable image"
  if decoded is None:
    raise manual.CorruptFileError(f"Cannot decode the {what} {entry} ({reason}); download or "
                                  "export it again.")
  if decoded.ndim != 2 or decoded.dtype not in (np.uint8, np.uint16):
    raise manual.CorruptFileError(f"The {what} {entry} is {decoded.dtype} {decoded.shape}; "
                                  "expected a single-channel 16-bit PNG")
  return decoded.astype(np.uint16)


def load_scannet_label(tree: manual.FileTree, entry: manual.Entry) -> np.ndarray:
  """[H, W] uint8 stored ids (NYU40 1..40 -> 0..39, else 255) of a label-filt PNG."""
  raw = _decode_uint16(entry, tree.read(entry), "label")
  return shift_class_ids(_scannet_lookup(tree)[raw], NYU40_SPACE.num_classes)


def find_scannet(tree: manual.FileTree) -> dict[str, list[RgbdFrame]]:
  """{split: frames} of ScanNet (see SCANNET_HELP)."""
  files = {kind: {} for kind in ("image", "depth", "pose", "label")}
  intrinsics = {}
  for entry in tree.entries:
    parts = _full_parts(tree, entry)
    if len(parts) < 3 or not _SCAN.match(parts[-3]):
      continue
    folder, scan = parts[-2].lower(), parts[-3]
    if folder == "intrinsic" and entry.name == "intrinsic_depth.txt":
      _prefer(intrinsics, scan, entry)
    elif folder in _SCANNET_FOLDERS and entry.stem.isdigit():
      _prefer(files[_SCANNET_FOLDERS[folder]], (scan, int(entry.stem)), entry)
  for kind, what in (("image", "colour frames (scans/<scan>/color/<frame>.jpg)"),
                     ("depth", "depth frames (scans/<scan>/depth/<frame>.png)"),
                     ("pose", "poses (scans/<scan>/pose/<frame>.txt)"),
                     ("label", "labels (scans/<scan>/label-filt/<frame>.png)")):
    if not files[kind]:
      raise _missing(SCANNET_HELP, tree, f"ScanNet {what}")
  _scannet_lookup(tree)  # Fails early without the tsv.
  scans = sorted({scan for scan, _ in files["image"]})
  without = [scan for scan in scans if scan not in intrinsics]
  if without:
    raise _missing(SCANNET_HELP, tree, f"intrinsics of {len(without)} scan(s) (e.g. "
                   f"scans/{without[0]}/intrinsic/intrinsic_depth.txt)")
  tree.prefetch(intrinsics.values())
  k_of = {scan: _read_matrix(tree, intrinsics[scan], (4, 4))[:3, :3] for scan in scans}
  lists, seed = _find_lists(tree, SCANNET, SCANNET_HELP)
  by_name = {_scannet_name(key): key for key in files["image"]}
  if lists is not None:
    selected = _split_by_lists(SCANNET, SCANNET_HELP, {s: by_name for s in SPLITS}, lists)
    keys = {split: [by_name[name] for name in names] for split, names in selected.items()}
  else:
    chosen = sorted(key for key in files["image"] if key[1] % SCANNET_FRAME_STRIDE == 0)
    if not chosen:
      raise _missing(SCANNET_HELP, tree, f"ScanNet frames numbered by multiples of "
                     f"{SCANNET_FRAME_STRIDE}")
    parts = split_scenes([scan for scan, _ in chosen], SCANNET)
    keys = {split: [key for key in chosen if key[0] in parts[split]] for split in SPLITS}
  make = _FrameMaker(_scannet_name, lambda key: key[0],
                     lambda key, entries: (entries["pose"], k_of[key[0]], "depth"))
  result = {split: _assemble(SCANNET, SCANNET_HELP, files, split_keys, make)
            for split, split_keys in keys.items()}
  return _FoundFrames(result, seed)


# ----------------------------------------------------------------------------- SceneNet RGB-D

SCENENET_HELP = f"""\
SceneNet RGB-D (rendered indoor trajectories, NYU13 labels), as ViewAL uses it: 30 frames per
trajectory (frame numbers that are multiples of {SCENENET_FRAME_STRIDE}), 240x320.
Download from https://robotvault.bitbucket.io/scenenet-rgbd.html the training parts
train_0 ... train_16, the validation set val, and their protobufs (scenenet_rgbd_train_<n>.pb,
scenenet_rgbd_val.pb). The protobufs (camera poses, instance -> class tables) are not read
here: export from them, per trajectory, with pySceneNetRGBD
(https://github.com/jmccormac/pySceneNetRGBD):
  label13/<frame>.png   8-bit NYU13 class ids (0 = unknown, 1..13): instance/<frame>.png mapped
                        through the protobuf's instance -> WordNet id -> NYU13 table (as its
                        convert_instance2class.py does);
  pose/<frame>.txt      the 4x4 camera-to-world matrix of the view at shutter open, OpenCV axes
                        (x right, y down, z forward): the inverse of
                        world_to_camera_with_pose(view.shutter_open) of its
                        camera_pose_and_intrinsics_example.py.
--manual_dir then holds:
  <manual_dir>/train/<n>/<trajectory>/photo/<frame>.jpg, depth/<frame>.png (16-bit mm),
                                      label13/<frame>.png, pose/<frame>.txt
  <manual_dir>/val/<n>/<trajectory>/...  (the same)
Labels: NYU13 0 -> 255 (ignore), 1..13 -> 0..12. Depth is divided by 1000. K: fx 277.13,
fy 289.71, centre (160, 120) at 320x240 (SceneNet's 60 x 45 degree field of view).
Splits: trajectories under train/ form the train split; those under val/ form both val and
test (ViewAL's test list is its val list). ViewAL's lists, if given, choose the frames:
  <manual_dir>/selections/train_frames.txt, val_frames.txt, test_frames.txt
  <manual_dir>/selections/seedset_0_frames.txt   (optional: the seed set)
(from the ViewAL release's dataset/scenenet-rgbd/selections/; one frame a line named
<n:02d>_<trajectory:05d>_<frame:04d>, e.g. 04_04981_1250; train names are looked up under
train/, val and test names under val/). Without a seed list, the seed set is 1.5% of the
training frames.
"""

_SCENENET_FOLDERS = {"photo": "image", "depth": "depth", "pose": "pose", "label13": "label"}


def _scenenet_name(key) -> str:
  return f"{key[1]:02d}_{key[2]:05d}_{key[3]:04d}"


def load_scenenet_label(tree: manual.FileTree, entry: manual.Entry) -> np.ndarray:
  """[H, W] uint8 stored ids (NYU13 1..13 -> 0..12, else 255) of a label13 PNG."""
  raw = _decode_uint16(entry, tree.read(entry), "label")
  return shift_class_ids(raw, NYU13_SPACE.num_classes)


def find_scenenet_rgbd(tree: manual.FileTree) -> dict[str, list[RgbdFrame]]:
  """{split: frames} of SceneNet RGB-D (see SCENENET_HELP)."""
  files = {kind: {} for kind in ("image", "depth", "pose", "label")}
  for entry in tree.entries:
    parts = _full_parts(tree, entry)
    if len(parts) < 5 or parts[-2].lower() not in _SCENENET_FOLDERS:
      continue
    source, part, trajectory = parts[-5].lower(), parts[-4], parts[-3]
    if source in ("train", "val") and part.isdigit() and trajectory.isdigit() and (
        entry.stem.isdigit()):
      key = (source, int(part), int(trajectory), int(entry.stem))
      _prefer(files[_SCENENET_FOLDERS[parts[-2].lower()]], key, entry)
  for kind, what in (("image", "photos (train/<n>/<trajectory>/photo/<frame>.jpg)"),
                     ("depth", "depth frames (<trajectory>/depth/<frame>.png)"),
                     ("pose", "exported poses (<trajectory>/pose/<frame>.txt)"),
                     ("label", "exported labels (<trajectory>/label13/<frame>.png)")):
    if not files[kind]:
      raise _missing(SCENENET_HELP, tree, f"SceneNet RGB-D {what}")
  sources = {source for source, *_ in files["image"]}
  for source in ("train", "val"):
    if source not in sources:
      raise _missing(SCENENET_HELP, tree, f"SceneNet RGB-D {source} photos "
                     f"({source}/<n>/<trajectory>/photo/<frame>.jpg)")
  lists, seed = _find_lists(tree, SCENENET, SCENENET_HELP)
  by_source = {source: {_scenenet_name(key): key for key in files["image"] if key[0] == source}
               for source in ("train", "val")}
  from_source = {TRAIN: "train", VAL: "val", TEST: "val"}
  if lists is not None:
    selected = _split_by_lists(SCENENET, SCENENET_HELP,
                               {s: by_source[from_source[s]] for s in SPLITS}, lists)
    keys = {s: [by_source[from_source[s]][name] for name in names]
            for s, names in selected.items()}
  else:
    keys = {s: sorted(key for key in files["image"] if key[0] == from_source[s] and
                      key[3] % SCENENET_FRAME_STRIDE == 0) for s in SPLITS}
    for split, split_keys in keys.items():
      if not split_keys:
        raise _missing(SCENENET_HELP, tree, f"SceneNet RGB-D {from_source[split]} frames "
                       f"numbered by multiples of {SCENENET_FRAME_STRIDE}")
  make = _FrameMaker(_scenenet_name, lambda key: f"{key[0]}/{key[1]:02d}_{key[2]:05d}",
                     lambda key, entries: (entries["pose"], SCENENET_INTRINSICS, (240, 320)))
  result = {split: _assemble(SCENENET, SCENENET_HELP, files, split_keys, make)
            for split, split_keys in keys.items()}
  return _FoundFrames(result, seed)


# ----------------------------------------------------------------------------- Matterport3D

MATTERPORT_HELP = """\
Matterport3D (90 buildings; NYU40 labels rendered from the annotated meshes), as ViewAL uses
it: the undistorted images, 240x320.
Request access at https://niessner.github.io/Matterport/ and download (download_mp.py), per
house, undistorted_color_images, undistorted_depth_images and undistorted_camera_parameters.
Matterport3D ships no 2D labels: render them from house_segmentations/<house>.ply (each face's
category -> the nyu40id column of metadata/category_mapping.tsv) at every undistorted colour
camera of the .conf file, one 8-bit PNG of NYU40 ids (0 = unlabelled) per colour image, at its
size and named like it (<pano>_i<camera>_<yaw>.png), in the house's nyu40_labels/ folder.
--manual_dir then holds (the downloaded .zip files as they are or extracted):
  <manual_dir>/.../<house>/undistorted_color_images/<pano>_i<camera>_<yaw>.jpg   (1280x1024)
  <manual_dir>/.../<house>/undistorted_depth_images/<pano>_d<camera>_<yaw>.png   (16-bit,
                                                                      0.25 mm per unit)
  <manual_dir>/.../<house>/undistorted_camera_parameters/<house>.conf
  <manual_dir>/.../<house>/nyu40_labels/<pano>_i<camera>_<yaw>.png
Frames: every "scan" line of a house's .conf whose colour image is present. Poses: the .conf's
camera-to-world matrices (a camera looking down -z with y up) with y and z negated (OpenCV
axes); K: the preceding intrinsics_matrix line, in top-left-origin pixel coordinates as the
images are read (as common readers of these files take it), rescaled to 320x240. Depth is
divided by 4000. Labels: NYU40 0 -> 255 (ignore), 1..40 -> 0..39. One scene per house.
Splits: lists, if given, choose the frames:
  <manual_dir>/selections/train_frames.txt, val_frames.txt, test_frames.txt
  <manual_dir>/selections/seedset_0_frames.txt   (optional: the seed set)
one frame a line named <house>_<pano>_i<camera>_<yaw>. (ViewAL's own Matterport lists name
frames that are not the raw files, so they cannot be used here.) Without lists, houses are
split 70/15/15 % into train/val/test (deterministic), and the seed set is 1.5% of the training
frames.
"""

_OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


def _parse_conf(tree: manual.FileTree, entry: manual.Entry) -> dict[str, tuple]:
  """color file stem -> (depth file name, pose (OpenCV axes), K) of a Matterport .conf."""
  cameras, k = {}, None
  for number, line in enumerate(_read_text(tree, entry).splitlines(), start=1):
    fields = line.split()
    if not fields:
      continue
    try:
      if fields[0] == "intrinsics_matrix":
        k = np.array(fields[1:10], np.float64).reshape(3, 3)
      elif fields[0] == "scan":
        if k is None:
          raise ValueError("a scan line before any intrinsics_matrix line")
        pose = np.array(fields[3:19], np.float64).reshape(4, 4) @ _OPENGL_TO_OPENCV
        cameras[os.path.splitext(fields[2])[0]] = (fields[1], pose, k)
    except ValueError as err:
      raise manual.CorruptFileError(f"{entry} line {number} cannot be read ({err}); download "
                                    "undistorted_camera_parameters again.") from err
  return cameras


def _matterport_name(key) -> str:
  return f"{key[0]}_{key[1]}"


def load_matterport_label(tree: manual.FileTree, entry: manual.Entry) -> np.ndarray:
  """[H, W] uint8 stored ids (NYU40 1..40 -> 0..39, else 255) of a rendered label PNG."""
  raw = _decode_uint16(entry, tree.read(entry), "label")
  return shift_class_ids(raw, NYU40_SPACE.num_classes)


def find_matterport3d(tree: manual.FileTree) -> dict[str, list[RgbdFrame]]:
  """{split: frames} of Matterport3D (see MATTERPORT_HELP)."""
  images, depths, labels, confs = {}, {}, {}, {}
  for entry in tree.entries:
    parts = _full_parts(tree, entry)
    if len(parts) < 3:
      continue
    folder, house = parts[-2].lower(), parts[-3]
    if folder == "undistorted_color_images" and entry.name.lower().endswith(".jpg"):
      _prefer(images, (house, entry.stem), entry)
    elif folder == "undistorted_depth_images" and entry.name.lower().endswith(".png"):
      _prefer(depths, (house, entry.name), entry)
    elif folder == "nyu40_labels" and entry.name.lower().endswith(".png"):
      _prefer(labels, (house, entry.stem), entry)
    elif folder == "undistorted_camera_parameters" and entry.name.lower().endswith(".conf"):
      _prefer(confs, house, entry)
  for found, what in ((images, "undistorted colour images "
                       "(<house>/undistorted_color_images/*.jpg)"),
                      (confs, "camera parameters "
                       "(<house>/undistorted_camera_parameters/<house>.conf)"),
                      (depths, "undistorted depth images "
                       "(<house>/undistorted_depth_images/*.png)"),
                      (labels, "rendered labels (<house>/nyu40_labels/*.png)")):
    if not found:
      raise _missing(MATTERPORT_HELP, tree, f"Matterport3D {what}")
  houses = sorted({house for house, _ in images})
  without = [house for house in houses if house not in confs]
  if without:
    raise _missing(MATTERPORT_HELP, tree, f"camera parameters of {len(without)} house(s) "
                   f"(e.g. {without[0]}/undistorted_camera_parameters/{without[0]}.conf)")
  tree.prefetch(confs[house] for house in houses)
  cameras = {(house, stem): camera for house in houses
             for stem, camera in _parse_conf(tree, confs[house]).items()}
  keys_all = sorted(key for key in images if key in cameras)
  if not keys_all:
    raise _missing(MATTERPORT_HELP, tree, "colour images named in the .conf files' scan lines")
  files = {"image": images, "label": {key: labels[key] for key in keys_all if key in labels},
           "depth": {key: depths[(key[0], cameras[key][0])] for key in keys_all
                     if (key[0], cameras[key][0]) in depths}}
  lists, seed = _find_lists(tree, MATTERPORT, MATTERPORT_HELP)
  by_name = {_matterport_name(key): key for key in keys_all}
  if lists is not None:
    selected = _split_by_lists(MATTERPORT, MATTERPORT_HELP, {s: by_name for s in SPLITS},
                               lists)
    keys = {split: [by_name[name] for name in names] for split, names in selected.items()}
  else:
    parts = split_scenes([house for house, _ in keys_all], MATTERPORT)
    keys = {split: [key for key in keys_all if key[0] in parts[split]] for split in SPLITS}
  make = _FrameMaker(_matterport_name, lambda key: key[0],
                     lambda key, entries: (cameras[key][1], cameras[key][2], "image"))
  result = {split: _assemble(MATTERPORT, MATTERPORT_HELP, files, split_keys, make)
            for split, split_keys in keys.items()}
  return _FoundFrames(result, seed)


# ----------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True)
class _RealDataset:
  """What preparing one manual dataset needs beyond the catalogue's spec."""

  units_per_metre: float  # Depth file units in a metre.


_REAL = {SCANNET: _RealDataset(1000.0), SCENENET: _RealDataset(1000.0),
         MATTERPORT: _RealDataset(4000.0)}


def _resize(array: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
  if array.shape[:2] == tuple(size):
    return array
  return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))


def scale_intrinsics(k: np.ndarray, grid: tuple[int, int], size: tuple[int, int]
                     ) -> np.ndarray:
  """K of `grid` (height, width) rescaled to `size`: fx, cx by the width ratio, fy, cy by the
  height ratio (as ViewAL rescales: no half-pixel shift)."""
  scaled = np.array(k, np.float64)
  scaled[0] *= size[1] / grid[1]
  scaled[1] *= size[0] / grid[0]
  return scaled


def load_frame(name: str, tree: manual.FileTree, frame: RgbdFrame,
               size: tuple[int, int] = WORKING_SIZE) -> dict | None:
  """One frame of dataset `name` at `size`: {"image", "label", "depth", "pose", "intrinsics",
  "name"} (without superpixels and scene). None if its pose is not finite (skipped)."""
  spec = catalog.get(name)
  loaded = manual.load_image(tree, frame.image)
  encoded = loaded.encoded
  if isinstance(encoded, bytes):
    with Image.open(io.BytesIO(encoded)) as image:
      encoded = image.convert("RGB")
  image = np.asarray(encoded.resize((size[1], size[0]), Image.BILINEAR)
                     if encoded.size != (size[1], size[0]) else encoded, np.uint8)
  label = _resize(spec.label_loader(tree, frame.label), size, Image.NEAREST)
  raw_depth = _decode_uint16(frame.depth, tree.read(frame.depth), "depth")
  depth = raw_depth.astype(np.float32) / np.float32(_REAL[name].units_per_metre)
  grid = {"depth": raw_depth.shape, "image": (loaded.height, loaded.width)}.get(
      frame.intrinsics_grid, frame.intrinsics_grid)
  pose = (_read_matrix(tree, frame.pose, (4, 4)) if isinstance(frame.pose, manual.Entry)
          else np.asarray(frame.pose, np.float64))
  if not np.all(np.isfinite(pose)):
    return None
  return {"image": np.ascontiguousarray(image), "label": label,
          "depth": _resize(depth, size, Image.NEAREST),
          "pose": pose.astype(np.float32),
          "intrinsics": scale_intrinsics(frame.intrinsics, tuple(grid), size).astype(np.float32),
          "name": frame.name}


# ----------------------------------------------------------------------------- TFDS builders


class _Statistics:
  """Per-split metadata: the class index and label sizes the reader needs, plus scene ids."""

  def __init__(self, space: labels_lib.LabelSpace):
    self.space = space
    self.presence_bits: list[int] = []
    self.label_shapes: list[list[int]] = []
    self.scene_ids: list[int] = []
    self.names: list[str] = []
    self.pixel_counts = np.zeros(space.num_classes, np.int64)
    self._weights = 1 << np.arange(space.num_classes, dtype=np.int64)

  def add(self, example: dict) -> np.ndarray:
    label = example["label"]
    counts = np.bincount(label.ravel(), minlength=256)[:self.space.num_classes].astype(np.int64)
    self.pixel_counts += counts
    self.presence_bits.append(int(np.sum(self._weights[counts > 0])))
    self.label_shapes.append([int(label.shape[0]), int(label.shape[1])])
    self.scene_ids.append(int(example["scene"]))
    self.names.append(example["name"])
    return counts

  def as_metadata(self, seed_indices: Sequence[int]) -> dict:
    return {"num_examples": len(self.presence_bits), "class_presence": self.presence_bits,
            "label_shapes": self.label_shapes, "pixel_counts": self.pixel_counts.tolist(),
            "class_names": list(self.space.class_names), "scene_ids": self.scene_ids,
            "seed_indices": [int(i) for i in seed_indices]}


def _record(example: dict) -> dict:
  return {"image": Image.fromarray(example["image"]), "label": Image.fromarray(example["label"]),
          "name": example["name"], "depth": np.asarray(example["depth"], np.float32),
          "superpixels": np.asarray(example["superpixels"], np.int32),
          "pose": np.asarray(example["pose"], np.float32),
          "intrinsics": np.asarray(example["intrinsics"], np.float32),
          "scene": np.int32(example["scene"])}


@functools.lru_cache(maxsize=1)
def _builder_classes() -> dict[str, type]:
  """The TFDS builders, defined on first use (TFDS is slow to import)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  from ripu_jax.data import builders  # pylint: disable=g-import-not-at-top

  def progress(iterable, total, description):
    return tqdm.tqdm(iterable, total=total, desc=description, unit=" frame",
                     disable=not builders.SHOW_PROGRESS["enabled"], dynamic_ncols=True)

  class RgbdBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared: features, metadata and writing of multi-view RGB-D frames."""

    VERSION = tfds.core.Version(reader.VERSION)
    RELEASE_NOTES = {reader.VERSION: "Frames with depth, pose, intrinsics, superpixels, scene."}
    DESCRIPTION = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):  # No checksum files ship next to this code.
      return None

    def _info(self) -> tfds.core.DatasetInfo:
      zlib = tfds.features.Encoding.ZLIB
      return tfds.core.DatasetInfo(
          builder=self, description=self.DESCRIPTION,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
              "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
              "name": tfds.features.Text(),
              "depth": tfds.features.Tensor(shape=(None, None), dtype=np.float32,
                                            encoding=zlib),
              "superpixels": tfds.features.Tensor(shape=(None, None), dtype=np.int32,
                                                  encoding=zlib),
              "pose": tfds.features.Tensor(shape=(4, 4), dtype=np.float32),
              "intrinsics": tfds.features.Tensor(shape=(3, 3), dtype=np.float32),
              "scene": tfds.features.Tensor(shape=(), dtype=np.int32),
          }),
          metadata=tfds.core.MetadataDict(), disable_shuffling=True)

    def _write(self, split: str, examples, total: int, space, seed_of):
      """Yields records of `examples` and stores the split's metadata; `seed_of(names)` gives
      the seed indices once the split's frames are known."""
      stats = _Statistics(space)
      for index, example in enumerate(progress(examples, total, f"{self.name} {split}")):
        if not stats.add(example).any():
          self.labels_without_classes.append((split, example["name"]))
        yield index, _record(example)
      self.info.metadata[split] = stats.as_metadata(seed_of(stats.names))

  @dataclasses.dataclass(eq=False)
  class SyntheticBuilderConfig(tfds.core.BuilderConfig):
    """TFDS config of the procedural benchmark: the generator parameters."""

    generator: scenes.ViewalSyntheticConfig = dataclasses.field(
        default_factory=scenes.ViewalSyntheticConfig)

    @classmethod
    def from_generator(cls, generator):
      return cls(name=generator.name, generator=generator,
                 description=f"Procedural multi-view rooms: {generator}")

  class ViewalSyntheticBuilder(RgbdBuilder, skip_registration=True):
    """The procedural rooms of `scenes` (generated, no download)."""

    name = SYNTHETIC
    DESCRIPTION = "Procedural multi-view RGB-D rooms for ViewAL."
    BUILDER_CONFIGS = [SyntheticBuilderConfig.from_generator(scenes.ViewalSyntheticConfig())]

    @classmethod
    def from_config(cls, data_dir, generator, **kwargs):
      """The builder of `generator`'s dataset (the catalogue's generated-data hook)."""
      registered = {c.name: c for c in cls.BUILDER_CONFIGS}
      config = registered.get(generator.name) or SyntheticBuilderConfig.from_generator(
          generator)
      return cls(data_dir=data_dir, config=config, **kwargs)

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing to download.
      generator = self.builder_config.generator
      self.labels_without_classes = []
      self.info.metadata["generator"] = dataclasses.asdict(generator)
      self.info.metadata["scene_names"] = [scenes.scene_name(s)
                                           for s in range(generator.num_scenes)]
      return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
      generator = self.builder_config.generator
      count = generator.num_frames(split)
      examples = (scenes.generate_frame(generator, split, i) for i in range(count))
      seeds = scenes.seed_indices(generator) if split == TRAIN else []
      yield from self._write(split, examples, count, SYNTHETIC_SPACE, lambda names: seeds)

  class ManualRgbdBuilder(RgbdBuilder, skip_registration=True):
    """A manual download: frames from the catalogue's finder, resized, with superpixels."""

    def _split_generators(self, dl_manager):
      spec = catalog.get(self.name)
      root = manual.check_manual_dir(self.name, dl_manager.manual_dir, spec.help)
      tree = manual.FileTree(root)
      found = spec.finder(tree)
      scene_names = sorted({frame.scene for frames in found.values() for frame in frames})
      self.info.metadata["scene_names"] = scene_names
      self.labels_without_classes = []
      scene_id = {name: index for index, name in enumerate(scene_names)}
      space = catalog.label_space(spec.stored_space)
      seed_names = getattr(found, "seed_names", None)
      return {split: self._generate_examples(tree, split, frames, scene_id, space, seed_names)
              for split, frames in found.items()}

    def _generate_examples(self, tree, split, frames, scene_id, space, seed_names):
      tree.prefetch([entry for frame in frames for entry in frame.entries])
      skipped = []

      def examples():
        for frame in frames:
          example = load_frame(self.name, tree, frame)
          if example is None:
            skipped.append(frame.name)
            continue
          example["superpixels"] = seeds_superpixels(example["image"])
          example["scene"] = scene_id[frame.scene]
          yield example
        if skipped:
          logging.warning("%s %s: skipped %d frame(s) with a non-finite pose, e.g. %s",
                          self.name, split, len(skipped), skipped[0])

      seed_of = (lambda names: seed_set(names, seed_names)) if split == TRAIN else (
          lambda names: [])
      yield from self._write(split, examples(), len(frames), space, seed_of)

  classes = {"ViewalSyntheticBuilder": ViewalSyntheticBuilder}
  for class_name, dataset, homepage in (
      ("ScannetBuilder", SCANNET, "http://www.scan-net.org/"),
      ("ScenenetRgbdBuilder", SCENENET, "https://robotvault.bitbucket.io/scenenet-rgbd.html"),
      ("Matterport3dBuilder", MATTERPORT, "https://niessner.github.io/Matterport/")):
    classes[class_name] = type(class_name, (ManualRgbdBuilder,), {
        "name": dataset, "HOMEPAGE": homepage,
        "MANUAL_DOWNLOAD_INSTRUCTIONS": _HELP[dataset],
        "DESCRIPTION": f"{dataset} frames at 240x320 with depth, pose, K and superpixels."},
        skip_registration=True)
  return classes


_HELP = {SCANNET: SCANNET_HELP, SCENENET: SCENENET_HELP, MATTERPORT: MATTERPORT_HELP}


def __getattr__(name: str):
  """The TFDS builder classes, created when first asked for (the catalogue's "module:Class")."""
  if name in ("ViewalSyntheticBuilder", "ScannetBuilder", "ScenenetRgbdBuilder",
              "Matterport3dBuilder"):
    return _builder_classes()[name]
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- opening


def _with_scene_info(split) -> Any:
  """A prepared split with `scene_ids`, `scene_names` and `seed_indices` read from its
  metadata."""
  path = os.path.join(split.directory, "metadata.json")
  try:
    with open(path, "rb") as f:
      metadata = json.loads(f.read().decode("utf-8"))
    own = metadata[split.split]
    split.scene_ids = np.asarray(own["scene_ids"], np.int32)
    split.seed_indices = np.asarray(own["seed_indices"], np.int64)
    split.scene_names = tuple(metadata["scene_names"])
  except (OSError, ValueError, KeyError, TypeError) as err:
    raise reader.damaged_error(split.dataset_name, split.directory,
                               reason=f"{path} lacks the scene index of split {split.split!r} "
                                      f"({type(err).__name__}: {err})") from err
  if len(split.scene_ids) != len(split):
    raise reader.damaged_error(split.dataset_name, split.directory,
                               reason=f"{path} gives {len(split.scene_ids)} scene ids for "
                                      f"{len(split)} frames of split {split.split!r}")
  return split


def _open_prepared(spec: catalog.DatasetSpec, split: str, data_dir, **options) -> Any:
  """The prepared copy with its scene information; a missing or damaged copy's error gives
  this module's prepare command (the generic one does not know these datasets)."""
  try:
    opened = _with_scene_info(catalog.open_prepared(spec, split, data_dir=data_dir, **options))
  except catalog.DatasetNotPreparedError as err:
    raise catalog.DatasetNotPreparedError(_own_command(str(err))) from None
  config = spec.config_from_options(options) if spec.config_type is not None else None
  hint = _own_command(reader.prepare_command(spec.name, data_dir, config))
  opened.scene_coverage = functools.partial(coverage_lib.read_table, opened, prepare_hint=hint)
  return opened


def _own_command(text: str) -> str:
  """`text` with the generic prepare command replaced by this module's."""
  return text.replace("-m ripu_jax.data.prepare ", f"-m {PREPARE_COMMAND} ")


def _open_synthetic(spec: catalog.DatasetSpec, split: str, *, data_dir=None,
                    prepared: bool = False, **fields) -> Any:
  """Options: the generator fields, and `prepared` (False: generate in memory; True: read the
  copy `python -m ripu_jax.methods.viewal.prepare --dataset viewal_synthetic` wrote)."""
  if prepared:
    return _open_prepared(spec, split, data_dir, **fields)
  return ViewalSyntheticSplit(spec.config_from_options(fields), split)


def _open_real(spec: catalog.DatasetSpec, split: str, *, data_dir=None, **options) -> Any:
  return _open_prepared(spec, split, data_dir, **options)


# ----------------------------------------------------------------------------- catalogue

_MODULE = "ripu_jax.methods.viewal.datasets"
PREPARE_COMMAND = "ripu_jax.methods.viewal.prepare"  # the command line (`main`)


def dataset_specs() -> list[catalog.DatasetSpec]:
  """The catalogue entries of the four datasets (`register_datasets` adds them)."""
  common = dict(splits=SPLITS, roles=ROLES, features=FEATURES, try_without_downloads=(
      "--config configs/viewal/synthetic.py --workdir /tmp/viewal"))
  return [
      catalog.DatasetSpec(name=SYNTHETIC, label_space=SYNTHETIC_SPACE.name,
                          builder=f"{_MODULE}:ViewalSyntheticBuilder", opener=_open_synthetic,
                          config_type=scenes.ViewalSyntheticConfig, **common),
      catalog.DatasetSpec(name=SCANNET, label_space=NYU40_SPACE.name,
                          builder=f"{_MODULE}:ScannetBuilder", finder=find_scannet,
                          label_loader=load_scannet_label, help=SCANNET_HELP,
                          opener=_open_real, **common),
      catalog.DatasetSpec(name=SCENENET, label_space=NYU13_SPACE.name,
                          builder=f"{_MODULE}:ScenenetRgbdBuilder", finder=find_scenenet_rgbd,
                          label_loader=load_scenenet_label, help=SCENENET_HELP,
                          opener=_open_real, **common),
      catalog.DatasetSpec(name=MATTERPORT, label_space=NYU40_SPACE.name,
                          builder=f"{_MODULE}:Matterport3dBuilder", finder=find_matterport3d,
                          label_loader=load_matterport_label, help=MATTERPORT_HELP,
                          opener=_open_real, **common),
  ]


def register_datasets() -> None:
  """Adds the four datasets and their label spaces to the catalogue (again: no-op)."""
  for space in LABEL_SPACES:
    if space.name not in catalog.LABEL_SPACES:
      catalog.LABEL_SPACES.register(space.name, space)
  for spec in dataset_specs():
    if spec.name not in catalog.DATASETS:
      catalog.register(spec)


def prepare_dataset(name: str, *, manual_dir: str | os.PathLike | None = None,
                    data_dir: str | os.PathLike | None = None,
                    config: scenes.ViewalSyntheticConfig | None = None, overwrite: bool = False,
                    progress: bool = False,
                    post_prepare: Callable[[str, dict[str, Any]], None] | None = None) -> str:
  """Prepares one of the four datasets (`ripu_jax.data.prepare.prepare`) with its superpixel
  coverage tables (`coverage`), and returns its folder.

  Args:
    name: "viewal_synthetic", "scannet", "scenenet_rgbd" or "matterport3d".
    manual_dir, data_dir, overwrite, progress: as in `ripu_jax.data.prepare.prepare`.
    config: viewal_synthetic's generator parameters (default: `ViewalSyntheticConfig()`).
    post_prepare: a hook for more tables derived from the prepared frames: called as
      post_prepare(directory, {split: opened split}) once the dataset folder and its coverage
      tables are complete, also when they were prepared before. It owns its outputs: write
      them atomically (a temporary name, then rename) and skip work already done, so an
      interrupted step leaves nothing that looks finished.
  """
  register_datasets()
  if name not in NAMES:
    raise ValueError(f"prepare_dataset prepares {', '.join(NAMES)}, not {name!r}")
  from ripu_jax.data import prepare as prepare_lib  # pylint: disable=g-import-not-at-top
  directory = prepare_lib.prepare(name, manual_dir=manual_dir, data_dir=data_dir, config=config,
                                  overwrite=overwrite, progress=progress)
  opened = _finish_prepared(name, directory, data_dir, config, progress)
  if post_prepare is not None:
    post_prepare(directory, opened)
  return directory


def _finish_prepared(name: str, directory: str, data_dir, config, progress: bool
                     ) -> dict[str, Any]:
  """Writes the coverage tables a prepared dataset lacks; returns its opened splits."""
  spec = catalog.get(name)
  options = {"prepared": True} if spec.config_type is not None else {}
  if config is not None:
    options.update(dataclasses.asdict(config))
  opened = {split: spec.open(split, data_dir=data_dir, **options) for split in spec.splits}
  coverage_lib.write_tables(directory, list(opened.values()), progress=progress)
  return opened


def main(argv: list[str] | None = None) -> int:
  """`python -m ripu_jax.methods.viewal.prepare`: the prepare command line with these
  datasets registered (same flags as `python -m ripu_jax.data.prepare`), which also writes the
  coverage tables."""
  register_datasets()
  from ripu_jax.data import prepare as prepare_lib  # pylint: disable=g-import-not-at-top

  def after(name, directory, data_dir, config):
    if name in NAMES:
      _finish_prepared(name, directory, data_dir, config, progress=True)

  return prepare_lib.main(sys.argv[1:] if argv is None else list(argv),
                          prog=f"python -m {PREPARE_COMMAND}", after=after)
