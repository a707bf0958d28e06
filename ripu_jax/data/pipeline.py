"""grain input pipelines: source training, target training with active labels, selection, eval.

Every loader reads a *split*: a sequence of examples {"image": uint8 [H, W, 3], "label": uint8
[H, W], "name": str} such as `open_split(...)` or `SyntheticSplit(...)` returns. Records are
read encoded (`split.encoded(i)` when available) and decoded, masked, resized, cropped, flipped
and normalised by grain operations, in `worker_count` worker processes (0 = in this process).

Batches are dicts of numpy arrays, NHWC float32 images normalised with the ImageNet mean/std,
int32 labels with 255 = ignore, and int32 "index" (position of the example in its split).
Sizes are (height, width). Randomness comes from `seed` and the sample's position in the
stream only, so two loaders with equal arguments produce equal batches, and an iterator
restored from `iterator.get_state()` continues exactly where the saved one was. grain batches
inside each worker process (worker w gets every worker_count-th sample), so the grouping of
samples into batches depends on `worker_count` (0 and 1 agree); keep it fixed across a resume.

Label spaces: every loader takes an optional `label_map`, a [256] table from the split's
stored ids to the run's label space (`ripu_jax.data.catalog.label_map`). It is applied right
after decoding, at full resolution and before the labelled-mask step, so labels leave the
pipeline already in the run's space (int32, 255 = ignore); mapping commutes with masking,
nearest resizing and flipping because the table keeps 255 ignored. Without a table labels pass
as stored. With a table the class-balanced sampler also counts classes in the run's space.

Features: a split's examples may carry extra keys, declared as key -> role (`features`, by
default the split's own `features` attribute, which `catalog.open_role` sets from the
catalogue). Every loader carries them, each moved by its role (`FEATURE_ROLES`):

  depth        float32 [H, W]  nearest resize, flipped with the image. Nearest, not bilinear:
                               interpolating across an object's outline invents depths between
                               foreground and background ("flying pixels") that project to
                               empty space, and blends 0 (= invalid) into valid neighbours.
  superpixels  int32 [H, W]    nearest resize (ids, not quantities), flipped.
  pose         float32 [4, 4]  unchanged (a camera-to-world transform does not depend on the
                               image grid).
  intrinsics   float32 [3, 3]  rows scaled by the resize factors (fx, cx by the width factor,
                               fy, cy by the height factor), and on a horizontal flip mirrored:
                               cx -> W - 1 - cx and fx -> -fx, so K^-1 [u', v', 1] of a
                               mirrored pixel u' = W - 1 - u is the ray of the original pixel
                               and the pose still holds. Pixel centres at integer coordinates.
  scene        int32 []        unchanged (which scene of a multi-view dataset the frame
                               belongs to; frames share geometry only within one scene).

Dense features and intrinsics live on the *label grid*: they are resized to the labels' output
size (`label_size`, or the label's full resolution where labels stay full-size; in selection
passes, the full label size), so a superpixel or a depth covers exactly the pixels of its label
(the same nearest-neighbour grid as the labels). Intrinsics of a dataset describe its
full-resolution label grid. A role the pipeline does not know fails when the loader is built.

Training options of `source_train_loader` and `target_train_loader` (each off by default):

  crop_size    (height, width) window placed uniformly at random after the resize to
               `image_size` and before the flip, the same window for image, label and every
               feature: dense features are sliced, "pose" is unchanged and "intrinsics" shift
               the principal point by the offset (cx - left, cy - top). Labels must be at the
               image size (`label_size` None or equal to `image_size`), and the window must fit
               in `image_size`. To crop without rescaling, pass the stored size as image_size.
               The crop draws from the sample's generator before the flip, so with a crop a
               sample's flip may differ from the one it gets without.
  strong_view  adds "strong_image" float32 [h, w, 3], normalised like "image": the strong view
               of the final (cropped, flipped) uint8 image by `strong_augment`, colour jitter
               (`COLOR_JITTER`, in random order) then grayscale with probability `GRAYSCALE_P`.
               Photometric only, so it has the weak view's geometry; it draws after the crop
               and the flip, so "image" and "label" are the same with it on or off.
  indices      (`target_train_loader`) samples only these images of the split, in shuffled
               endless epochs over the subset; "index" stays the image's position in the whole
               split, so `labeled_masks[index]` and the ledger still apply. Empty, repeated or
               out-of-range indices raise ValueError; restoring a state saved with another
               subset fails.

Active labels: the training loop owns the label ledger; `target_train_loader` only reads it
through `labeled_masks[index]` -> bool [H, W] at the label's full resolution. With
`worker_count=0` reads are live; with worker processes each worker holds a copy taken when the
iterator starts, so after a selection round continue with
`restore_iterator(loader, iterator.get_state())`, which starts workers with the updated masks.
Where labels come from annotators rather than the dataset, `target_train_loader` takes
`bought_labels[index]` -> uint8 [H, W] (the ledger's answers, already in the run's label space,
255 elsewhere) and never reads the split's labels; everything after the decode is the same.
"""

from __future__ import annotations

import dataclasses
import sys
import zlib
from collections.abc import Mapping
from typing import Any, Callable, Protocol, Sequence

from absl import flags
import grain
import numpy as np
from PIL import Image

from ripu_jax.data import catalog
from ripu_jax.data import labels as labels_lib
from ripu_jax.data import reader

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
SAMPLINGS = ("class_balanced", "uniform")
# Sub-epoch of the class-balanced draw: the running class frequency restarts every this many
# draws, as in the reference implementation.
DEFAULT_SUB_EPOCH_SIZE = 3000


class LabeledMasks(Protocol):
  """Read-only view of the active-label ledger: True where a target pixel is labelled."""

  def __getitem__(self, index: int) -> np.ndarray:
    ...

  def __len__(self) -> int:
    ...


# ----------------------------------------------------------------------------- array ops


def normalize_image(image: np.ndarray) -> np.ndarray:
  """uint8 RGB [..., 3] -> float32 (x / 255 - mean) / std with ImageNet statistics."""
  return (np.asarray(image, np.float32) * np.float32(1.0 / 255.0) - IMAGENET_MEAN) / IMAGENET_STD


def denormalize_image(image: np.ndarray) -> np.ndarray:
  """Inverse of `normalize_image`, back to uint8 (for visualisation)."""
  pixels = (np.asarray(image, np.float32) * IMAGENET_STD + IMAGENET_MEAN) * 255.0
  return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of a uint8 RGB image to (height, width)."""
  if image.shape[:2] == tuple(size):
    return image
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of a uint8 label map to (height, width)."""
  if label.shape[:2] == tuple(size):
    return label
  return np.asarray(Image.fromarray(label).resize((size[1], size[0]), Image.NEAREST))


def _nearest_indices(length: int, size: int) -> np.ndarray:
  """Source index of each output position of PIL's nearest resize along one axis."""
  positions = Image.fromarray(np.arange(length, dtype=np.int32)[None, :])
  return np.asarray(positions.resize((size, 1), Image.NEAREST))[0]


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of any [H, W, ...] array, on exactly `resize_label`'s grid (so
  resized superpixels and depths stay aligned with resized labels), keeping its dtype."""
  if array.shape[:2] == tuple(size):
    return array
  rows = _nearest_indices(array.shape[0], size[0])
  cols = _nearest_indices(array.shape[1], size[1])
  return array[rows[:, None], cols[None, :]]


# ----------------------------------------------------------------------------- strong view

# The strong view's photometric augmentation: colour jitter of these strengths (factors drawn
# uniformly from [1 - x, 1 + x], the hue shift from [-hue, hue] turns) in a random order, then
# grayscale with probability GRAYSCALE_P.
COLOR_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
GRAYSCALE_P = 0.2
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
# hsv -> rgb: per hue sector (0..5), which of (v, q, p, t) give red, green and blue.
_SECTOR_CHANNELS = np.array([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]])


def grayscale(image: np.ndarray) -> np.ndarray:
  """Luma 0.299 R + 0.587 G + 0.114 B of a float RGB [..., 3] image -> [...].

  Summed per pixel rather than by a matrix product, whose rounding may depend on a pixel's
  position, so equal pixels always get equal luma.
  """
  image = np.asarray(image, np.float32)
  return (image[..., 0] * _GRAY_WEIGHTS[0] + image[..., 1] * _GRAY_WEIGHTS[1]
          + image[..., 2] * _GRAY_WEIGHTS[2])


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
  """Float RGB [..., 3] in [0, 1] -> HSV [..., 3], hue in turns [0, 1) (colorsys's formulas,
  vectorised; grey pixels get hue and saturation 0)."""
  image = np.asarray(image, np.float32)
  red, green, blue = np.moveaxis(image, -1, 0)
  value = image.max(-1)
  spread = value - image.min(-1)
  grey = spread == 0
  safe_spread = np.where(grey, np.float32(1), spread)
  saturation = np.where(grey, np.float32(0), spread / np.where(grey, np.float32(1), value))
  red_c, green_c, blue_c = ((value - c) / safe_spread for c in (red, green, blue))
  hue = np.where(value == red, blue_c - green_c,
                 np.where(value == green, 2 + red_c - blue_c, 4 + green_c - red_c))
  hue = np.where(grey, np.float32(0), (hue / 6) % np.float32(1))
  return np.stack([hue, saturation, value], -1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
  """Inverse of `rgb_to_hsv` (hue in turns, any real value wraps)."""
  hsv = np.asarray(hsv, np.float32)
  hue, saturation, value = np.moveaxis(hsv, -1, 0)
  sector = (hue % np.float32(1)) * 6
  whole = np.floor(sector)
  fraction = sector - whole
  p = value * (1 - saturation)
  q = value * (1 - saturation * fraction)
  t = value * (1 - saturation * (1 - fraction))
  candidates = np.stack([value, q, p, t], -1)
  channels = _SECTOR_CHANNELS[whole.astype(np.int64) % 6]
  return np.take_along_axis(candidates, channels, -1)


def strong_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The strong view of an RGB image (uint8, or float in [0, 1]) -> float32 [H, W, 3] in [0, 1].

  Photometric only, so it keeps the weak view's geometry. Draws, in this order: the order of
  the four jitters (`rng.permutation(4)` over brightness, contrast, saturation, hue), the
  brightness, contrast and saturation factors (each `rng.uniform(1 - x, 1 + x)`), the hue shift
  (`rng.uniform(-hue, hue)`), then one `rng.random() < GRAYSCALE_P` for grayscale. Jitters
  (each result clipped to [0, 1]): brightness multiplies the image; contrast blends with the
  mean luma of the image, c * x + (1 - c) * mean; saturation blends with each pixel's luma;
  hue adds the shift to the HSV hue (in turns). Grayscale replaces RGB by the luma, x3.
  """
  x = np.asarray(image)
  x = (x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8
       else x.astype(np.float32))
  order = rng.permutation(4)
  factors = [np.float32(rng.uniform(1 - COLOR_JITTER[name], 1 + COLOR_JITTER[name]))
             for name in ("brightness", "contrast", "saturation")]
  shift = np.float32(rng.uniform(-COLOR_JITTER["hue"], COLOR_JITTER["hue"]))
  for jitter in order:
    if jitter == 0:
      x = factors[0] * x
    elif jitter == 1:
      x = factors[1] * x + (1 - factors[1]) * grayscale(x).mean(dtype=np.float32)
    elif jitter == 2:
      x = factors[2] * x + (1 - factors[2]) * grayscale(x)[..., None]
    else:
      hsv = rgb_to_hsv(x)
      hsv[..., 0] = (hsv[..., 0] + shift) % np.float32(1)
      x = hsv_to_rgb(hsv)
    x = np.clip(x, 0, 1).astype(np.float32)
  if rng.random() < GRAYSCALE_P:
    x = np.repeat(grayscale(x)[..., None], 3, -1)
  return x


# ----------------------------------------------------------------------------- features


@dataclasses.dataclass(frozen=True)
class _Role:
  """How a feature moves: its output dtype, whether it is a dense [H, W] map on the label
  grid, and its resize (value, from (h, w), to (h, w)), flip (value, grid width) and crop
  (value, top, left, (h, w) of the window)."""

  dtype: Any
  dense: bool
  resize: Callable[[np.ndarray, tuple, tuple], np.ndarray]
  flip: Callable[[np.ndarray, int], np.ndarray]
  crop: Callable[[np.ndarray, int, int, tuple], np.ndarray]
  shape: tuple[int, ...] | None = None


def _flip_columns(value: np.ndarray, width: int) -> np.ndarray:
  del width
  return value[:, ::-1]


def _crop_window(value: np.ndarray, top: int, left: int, size: tuple) -> np.ndarray:
  return value[top:top + size[0], left:left + size[1]]


def _shift_intrinsics(value: np.ndarray, top: int, left: int, size: tuple) -> np.ndarray:
  """K of the window: pixel (u, v) of the window is (u + left, v + top) of the grid, so the
  principal point moves by the offset (rows minus offset x the last row, which is [0, 0, 1])."""
  del size
  shifted = np.array(value, np.float64)
  shifted[0] -= left * shifted[2]
  shifted[1] -= top * shifted[2]
  return shifted


def _scale_intrinsics(value: np.ndarray, grid: tuple, size: tuple) -> np.ndarray:
  scaled = np.array(value, np.float64)
  scaled[0] *= size[1] / grid[1]
  scaled[1] *= size[0] / grid[0]
  return scaled


def _mirror_intrinsics(value: np.ndarray, width: int) -> np.ndarray:
  mirrored = np.array(value, np.float64)
  mirrored[0, :2] = -mirrored[0, :2]  # fx (and skew) change sign: u' = W - 1 - u.
  mirrored[0, 2] = (width - 1) - mirrored[0, 2]
  return mirrored


FEATURE_ROLES: Mapping[str, _Role] = {
    "depth": _Role(np.float32, True, lambda v, grid, size: resize_nearest(v, size),
                   _flip_columns, _crop_window),
    "superpixels": _Role(np.int32, True, lambda v, grid, size: resize_nearest(v, size),
                         _flip_columns, _crop_window),
    "pose": _Role(np.float32, False, lambda v, grid, size: v, lambda v, width: v,
                  lambda v, top, left, size: v, (4, 4)),
    "intrinsics": _Role(np.float32, False, _scale_intrinsics, _mirror_intrinsics,
                        _shift_intrinsics, (3, 3)),
    "scene": _Role(np.int32, False, lambda v, grid, size: v, lambda v, width: v,
                   lambda v, top, left, size: v, ()),
}

_RESERVED_KEYS = (*catalog.RESERVED_KEYS, "_grid")  # "_grid": the label grid, internal.


def _check_features(split, features) -> dict[str, str]:
  """key -> role from `features` (None: the split's `features` attribute); unknown roles and
  reserved keys raise here, when the loader is built."""
  if features is None:
    features = getattr(split, "features", None) or {}
  if isinstance(features, str):
    features = (features,)
  features = (dict(features) if isinstance(features, Mapping)
              else {key: key for key in features})
  for key, role in features.items():
    if key in _RESERVED_KEYS:
      raise ValueError(f"feature key {key!r} is reserved ({', '.join(_RESERVED_KEYS[:-1])}); "
                       "rename the feature")
    if role not in FEATURE_ROLES:
      raise ValueError(f"feature {key!r} has role {role!r}, which the input pipeline does not "
                       f"know; known roles: {', '.join(FEATURE_ROLES)}. Declare one of them in "
                       "the dataset's features, or add the role to "
                       "ripu_jax.data.pipeline.FEATURE_ROLES")
  return features


def _decode_feature(value, key: str, role: str, name) -> np.ndarray:
  array = reader.decode_png(value) if isinstance(value, bytes) else np.asarray(value)
  spec = FEATURE_ROLES[role]
  if spec.dense and array.ndim != 2:
    raise ValueError(f"example {name!r}: feature {key!r} ({role}) must be [H, W], got shape "
                     f"{array.shape}")
  if spec.shape is not None and array.shape != spec.shape:
    raise ValueError(f"example {name!r}: feature {key!r} ({role}) must have shape "
                     f"{spec.shape}, got {array.shape}")
  return array


def _check_label_map(label_map) -> np.ndarray | None:
  """The table as read-only uint8 [256], or None."""
  if label_map is None:
    return None
  table = np.asarray(label_map)
  if table.shape != (256,) or table.dtype.kind not in "iu":
    raise ValueError(f"label_map must be an integer table of 256 entries (stored id -> class "
                     f"index), got {table.dtype} {table.shape}; use "
                     "ripu_jax.data.catalog.label_map(dataset, space)")
  if table.min() < 0 or table.max() > labels_lib.IGNORE_LABEL:
    raise ValueError(f"label_map values must lie in [0, {labels_lib.IGNORE_LABEL}], got "
                     f"[{table.min()}, {table.max()}]")
  if table[labels_lib.IGNORE_LABEL] != labels_lib.IGNORE_LABEL:
    raise ValueError(f"label_map must keep {labels_lib.IGNORE_LABEL} (ignore) ignored, got "
                     f"label_map[{labels_lib.IGNORE_LABEL}] = {table[labels_lib.IGNORE_LABEL]}")
  table = table.astype(np.uint8)
  table.setflags(write=False)
  return table


def _presence_in_space(presence: np.ndarray, table: np.ndarray | None) -> np.ndarray:
  """[N, C'] class presence in the run's space from [N, C] presence of stored ids."""
  presence = np.asarray(presence, bool)
  if table is None:
    return presence
  mapped = table[:presence.shape[1]]
  kept = mapped != labels_lib.IGNORE_LABEL
  if not kept.any():
    return np.zeros((presence.shape[0], 1), bool)
  out = np.zeros((presence.shape[0], int(mapped[kept].max()) + 1), bool)
  for stored_id in np.flatnonzero(kept):
    out[:, mapped[stored_id]] |= presence[:, stored_id]
  return out


def _check_size(size, what: str) -> tuple[int, int] | None:
  if size is None:
    return None
  try:
    height, width = (int(v) for v in size)
  except (TypeError, ValueError):
    raise ValueError(f"{what} must be (height, width), got {size!r}") from None
  if height < 1 or width < 1:
    raise ValueError(f"{what} must be positive, got {size!r}")
  return height, width


def _check_batch_size(batch_size: int, num_devices: int | None) -> int:
  if num_devices is None:
    import jax  # pylint: disable=g-import-not-at-top
    num_devices = jax.local_device_count()
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if batch_size % num_devices:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {num_devices} devices; "
                     "use a multiple so every device gets the same share")
  return num_devices


# ----------------------------------------------------------------------------- sources


def _record(split, index: int) -> dict:
  encoded = getattr(split, "encoded", None)
  return dict(encoded(index) if encoded is not None else split[index])


class _IndexedRecords:
  """Random-access source of encoded records tagged with their index in the split."""

  def __init__(self, split):
    self._split = split

  def __len__(self) -> int:
    return len(self._split)

  def __getitem__(self, index) -> dict:
    record = _record(self._split, int(index))
    record["index"] = np.int32(index)
    return record

  def __repr__(self) -> str:
    return f"_IndexedRecords({self._split!r})"


class _SubsetRecords:
  """Random-access source over some images of a split: position i reads split[indices[i]]
  and tags it with that index, its position in the whole split (what the ledger uses)."""

  def __init__(self, split, indices: np.ndarray):
    self._split = split
    self._indices = indices
    self._checksum = zlib.crc32(indices.astype(np.int64).tobytes())

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, position) -> dict:
    index = int(self._indices[int(position)])
    record = _record(self._split, index)
    record["index"] = np.int32(index)
    return record

  def __repr__(self) -> str:
    # grain compares the source's repr on restore: a different subset must not resume.
    return (f"_SubsetRecords({self._split!r}, count={len(self._indices)}, "
            f"indices_crc={self._checksum})")


def _check_indices(indices, num_examples: int) -> np.ndarray:
  """Sorted int64 subset of range(num_examples); empty, repeated or out-of-range raise."""
  array = np.asarray(indices)
  if array.ndim != 1:
    raise ValueError(f"indices must be a flat sequence of image indices, got shape "
                     f"{array.shape}")
  if not array.size:
    raise ValueError("indices is empty: the subset of the split to sample has no images")
  if array.dtype.kind not in "iu":
    raise ValueError(f"indices must be integers (positions in the split), got {array.dtype}")
  array = np.sort(array.astype(np.int64))
  outside = array[(array < 0) | (array >= num_examples)]
  if outside.size:
    raise ValueError(f"indices {outside.tolist()[:10]} lie outside the split's "
                     f"{num_examples} images")
  repeated = np.unique(array[1:][array[1:] == array[:-1]])
  if repeated.size:
    raise ValueError(f"indices {repeated.tolist()[:10]} are repeated; give each image once")
  array.setflags(write=False)
  return array


class _PaddedRecords:
  """Pads a split to `length` by repeating its last record with valid=False."""

  def __init__(self, split, length: int):
    self._split = split
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index) -> dict:
    index = int(index)
    real = min(index, len(self._split) - 1)
    record = _record(self._split, real)
    record["index"] = np.int32(real)
    record["valid"] = np.bool_(index < len(self._split))
    return record

  def __repr__(self) -> str:
    return f"_PaddedRecords({self._split!r}, length={self._length})"


# ----------------------------------------------------------------------------- operations


class _DecodeResize(grain.transforms.Map):
  """Decodes, maps labels to the run's space, applies active-label masks at full resolution,
  resizes image, label and features."""

  def __init__(self, image_size, label_size, *, with_label: bool = True,
               labeled_masks: LabeledMasks | None = None, split=None,
               label_map: np.ndarray | None = None, features: Mapping[str, str] | None = None,
               with_label_size: bool = False, bought_labels: Sequence | None = None):
    self._image_size = image_size
    self._label_size = label_size
    self._with_label = with_label
    self._labeled_masks = labeled_masks
    self._bought_labels = bought_labels
    self._split = split
    self._label_map = label_map
    self._features = dict(features or {})
    self._with_label_size = with_label_size

  def map(self, element: dict) -> dict:
    out = {key: element[key] for key in ("index", "valid") if key in element}
    name = element.get("name")
    image = reader.decode_png(element["image"])
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"example {name!r}: expected an RGB image, got shape {image.shape}")
    out["image"] = resize_image(image, self._image_size)
    if self._with_label and self._bought_labels is not None:
      label = np.asarray(self._bought_labels[int(element["index"])], np.uint8)
    elif self._with_label:
      label = reader.decode_png(element["label"])
      if label.ndim == 3:
        label = label[..., 0]
      if self._label_map is not None:
        label = self._label_map[label]
    if self._with_label:
      if self._labeled_masks is not None:
        label = self._mask(label, int(element["index"]), name)
      grid = label.shape
      out["label"] = label if self._label_size is None else resize_label(label, self._label_size)
    else:
      grid = tuple(self._split.label_shape(int(element["index"])))
    if not self._with_label or self._with_label_size:
      out["label_size"] = np.asarray(grid, np.int32)
    size = self._label_size if self._with_label and self._label_size is not None else grid
    for key, role in self._features.items():
      if key not in element:
        raise KeyError(f"example {name!r} lacks the declared feature {key!r} ({role}); it has "
                       f"{sorted(element)}")
      value = _decode_feature(element[key], key, role, name)
      out[key] = FEATURE_ROLES[role].resize(value, grid, tuple(size))
    if self._features:
      out["_grid"] = tuple(int(v) for v in size)
    return out

  def _mask(self, label: np.ndarray, index: int, name) -> np.ndarray:
    mask = np.asarray(self._labeled_masks[index])
    if mask.shape != label.shape:
      raise ValueError(f"labeled_masks[{index}] has shape {mask.shape} but the label of "
                       f"{name!r} is {label.shape}; masks must be at full label resolution")
    if mask.dtype != np.bool_:
      raise TypeError(f"labeled_masks[{index}] must be a bool array, got {mask.dtype}")
    return np.where(mask, label, np.uint8(labels_lib.IGNORE_LABEL))


class _RandomCrop(grain.transforms.RandomMap):
  """A uniformly placed `size` window of image, label and features (by role); the label (and
  the features' grid) must have the image's size."""

  def __init__(self, size: tuple[int, int], features: Mapping[str, str] | None = None):
    self._size = tuple(size)
    self._features = dict(features or {})

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    height, width = element["image"].shape[:2]
    top = int(rng.integers(0, height - self._size[0] + 1))
    left = int(rng.integers(0, width - self._size[1] + 1))
    element = dict(element)
    element["image"] = _crop_window(element["image"], top, left, self._size)
    if "label" in element:
      element["label"] = _crop_window(element["label"], top, left, self._size)
    for key, role in self._features.items():
      element[key] = FEATURE_ROLES[role].crop(element[key], top, left, self._size)
    if "_grid" in element:
      element["_grid"] = self._size
    return element


class _RandomFlip(grain.transforms.RandomMap):
  """Horizontal flip of image, label and features (by role) with probability 1/2."""

  def __init__(self, features: Mapping[str, str] | None = None):
    self._features = dict(features or {})

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    if rng.random() < 0.5:
      element = dict(element)
      element["image"] = element["image"][:, ::-1]
      if "label" in element:
        element["label"] = element["label"][:, ::-1]
      for key, role in self._features.items():
        element[key] = FEATURE_ROLES[role].flip(element[key], element["_grid"][1])
    return element


class _StrongView(grain.transforms.RandomMap):
  """Adds "strong_image" (float [0, 1]), `strong_augment` of the final uint8 image.

  grain hands every random operation of a sample the same generator, seeded by the sample's
  stream position; this one runs after the crop and the flip, so its draws come after theirs
  and the weak view is the same with or without it.
  """

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    element = dict(element)
    element["strong_image"] = strong_augment(element["image"], rng)
    return element


class _Finalize(grain.transforms.Map):
  """Normalises the image(s) and fixes output dtypes."""

  def __init__(self, features: Mapping[str, str] | None = None):
    self._features = dict(features or {})

  def map(self, element: dict) -> dict:
    out = {"image": normalize_image(element["image"]), "index": np.int32(element["index"])}
    if "strong_image" in element:
      out["strong_image"] = (element["strong_image"] - IMAGENET_MEAN) / IMAGENET_STD
    if "label" in element:
      out["label"] = np.ascontiguousarray(element["label"], np.int32)
    if "label_size" in element:
      out["label_size"] = element["label_size"]
    if "valid" in element:
      out["valid"] = np.bool_(element["valid"])
    for key, role in self._features.items():
      value = np.asarray(element[key], FEATURE_ROLES[role].dtype)
      # ascontiguousarray would turn a scalar (role "scene") into shape [1].
      out[key] = np.ascontiguousarray(value) if value.ndim else value
    return out


def _batch_examples(examples: Sequence[dict]) -> dict:
  """Stacks examples; explains label-size mismatches instead of a bare numpy error."""
  batch = {}
  for key in examples[0]:
    values = [example[key] for example in examples]
    shapes = {np.shape(v) for v in values}
    if len(shapes) > 1:
      raise ValueError(f"cannot batch {key!r} of different shapes {sorted(shapes)}; pass a "
                       "fixed label_size to the loader to resize labels to one size")
    batch[key] = np.stack(values)
  return batch


# ----------------------------------------------------------------------------- samplers


class ProcessBatchOrder:
  """A training sampler reordered so that the processes' batches, stacked in process order,
  are row for row the batches one process would read.

  grain deals a stream's records to the processes and, within each, to its workers in turn
  (stream position g goes to process g % P, then worker (g // P) % W), and each worker
  batches its own records. Without reordering, P processes read the same records per global
  batch as one process but in another row order, and per-row randomness (dropout masks drawn
  by the row's position in the global batch) then differs between 1 and P processes.
  """

  def __init__(self, sampler, *, batch_size: int, shard_count: int, worker_count: int):
    self._sampler = sampler
    self._batch_size = int(batch_size)  # per process
    self._shard_count = int(shard_count)
    self._workers = max(1, int(worker_count))

  def __len__(self) -> int:
    return len(self._sampler)

  def __repr__(self) -> str:  # grain compares it with a checkpoint's on resume
    return (f"ProcessBatchOrder({self._sampler!r}, batch_size={self._batch_size}, "
            f"shard_count={self._shard_count}, worker_count={self._workers})")

  def __getitem__(self, position: int):
    processes, workers, rows = self._shard_count, self._workers, self._batch_size
    process, rest = position % processes, position // processes
    worker, step = rest % workers, rest // workers
    batch, row = divmod(step, rows)
    return self._sampler[worker + workers * (batch * rows * processes + process * rows + row)]


class ClassBalancedSampler:
  """Draws images so that rare classes are seen often (infinite stream).

  Per draw: with f_c the fraction of class occurrences among the images drawn so far in the
  current sub-epoch, pick class c with probability proportional to 1 / log(1.01 + f_c), then
  the next image containing c (each class cycles through its images in a fresh random order).
  The running frequencies restart every `sub_epoch_size` draws. Each sub-epoch is drawn from
  its own seed, so any position of the stream is computed without replaying the past, which
  makes the sampler random-access as grain requires.
  """

  def __init__(self, class_presence: np.ndarray, *, seed: int = 0,
               sub_epoch_size: int = DEFAULT_SUB_EPOCH_SIZE):
    presence = np.asarray(class_presence, bool)
    if presence.ndim != 2 or presence.shape[0] < 1:
      raise ValueError(f"class_presence must be [num_images, num_classes], got {presence.shape}")
    if sub_epoch_size < 1:
      raise ValueError(f"sub_epoch_size must be >= 1, got {sub_epoch_size}")
    self._presence = presence
    self._seed = int(seed)
    self._sub_epoch_size = int(sub_epoch_size)
    self._files = [np.flatnonzero(presence[:, c]) for c in range(presence.shape[1])]
    self._classes = np.array([c for c, files in enumerate(self._files) if len(files)], np.int64)
    if not len(self._classes):
      raise ValueError("no image contains any labelled class; class-balanced sampling needs "
                       "labels (use sampling='uniform')")
    self._checksum = zlib.crc32(np.packbits(presence).tobytes())
    self._cache: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return sys.maxsize

  def __repr__(self) -> str:
    return (f"ClassBalancedSampler(num_records={self._presence.shape[0]}, seed={self._seed}, "
            f"sub_epoch_size={self._sub_epoch_size}, presence_crc={self._checksum})")

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"] = {}
    return state

  def _sub_epoch(self, number: int) -> np.ndarray:
    if number in self._cache:
      return self._cache[number]
    rng = np.random.default_rng([self._seed, number])
    counts = np.zeros(self._presence.shape[1], np.float64)
    orders = {int(c): rng.permutation(self._files[c]) for c in self._classes}
    positions = dict.fromkeys(orders, 0)
    draws = np.empty(self._sub_epoch_size, np.int64)
    for i in range(self._sub_epoch_size):
      total = counts.sum()
      frequency = counts[self._classes] / total if total > 0 else np.zeros(len(self._classes))
      weights = 1.0 / np.log(1.01 + frequency)
      cumulative = np.cumsum(weights)
      pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
      c = int(self._classes[min(pick, len(self._classes) - 1)])
      if positions[c] >= len(orders[c]):
        orders[c] = rng.permutation(self._files[c])
        positions[c] = 0
      image = int(orders[c][positions[c]])
      positions[c] += 1
      draws[i] = image
      counts += self._presence[image]
    if len(self._cache) >= 4:
      self._cache.pop(next(iter(self._cache)))
    self._cache[number] = draws
    return draws

  def record_keys(self, start: int, stop: int) -> np.ndarray:
    """Image indices drawn at stream positions [start, stop)."""
    return np.array([self._key(i) for i in range(start, stop)], np.int64)

  def _key(self, index: int) -> int:
    number, offset = divmod(index, self._sub_epoch_size)
    return int(self._sub_epoch(number)[offset])

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    if index < 0:
      raise IndexError(f"negative sampler index {index}")
    rng = np.random.Generator(np.random.Philox(key=self._seed + index))
    return grain.RecordMetadata(index=index, record_key=self._key(index), rng=rng)


# ----------------------------------------------------------------------------- loaders


def _loader(source, sampler, operations, *, worker_count: int, worker_buffer_size: int,
            shard_options, batch_size: int, endless: bool = False) -> grain.DataLoader:
  """grain's loader; an `endless` (training) stream read by several processes is reordered
  with `ProcessBatchOrder`, so its global batches are one process's."""
  if worker_count < 0:
    raise ValueError(f"worker_count must be >= 0, got {worker_count}")
  if endless and shard_options is not None and shard_options.shard_count > 1:
    sampler = ProcessBatchOrder(sampler, batch_size=batch_size,
                                shard_count=shard_options.shard_count, worker_count=worker_count)
  if worker_count > 0 and not flags.FLAGS.is_parsed():
    # grain's worker processes read its absl flags, which fail unless parsed; outside an
    # absl app (tests, notebooks) the defaults are what we want.
    flags.FLAGS.mark_as_parsed()
  return grain.DataLoader(
      data_source=source,
      sampler=sampler,
      operations=list(operations),
      worker_count=worker_count,
      worker_buffer_size=worker_buffer_size,
      shard_options=shard_options or grain.sharding.NoSharding(),
      read_options=grain.ReadOptions(num_threads=2, prefetch_buffer_size=max(8, 2 * batch_size)),
  )


def _check_crop(crop_size, image_size, label_size) -> tuple[int, int] | None:
  """crop_size as (height, width), or None; it must fit the image, and labels (with the
  dense features on their grid) must share the image's size so one window cuts all."""
  crop_size = _check_size(crop_size, "crop_size")
  if crop_size is None:
    return None
  if label_size is not None and label_size != image_size:
    raise ValueError(f"crop_size needs labels at the image size: got label_size {label_size} "
                     f"and image_size {image_size}; pass label_size=None or equal to image_size")
  if crop_size[0] > image_size[0] or crop_size[1] > image_size[1]:
    raise ValueError(f"crop_size {crop_size} is larger than image_size {image_size}")
  return crop_size


def _training_operations(image_size, label_size, flip: bool, batch_size: int,
                         labeled_masks=None, label_map=None, features=None, crop_size=None,
                         strong_view: bool = False, bought_labels=None) -> list:
  operations = [_DecodeResize(image_size, label_size or image_size, labeled_masks=labeled_masks,
                              label_map=label_map, features=features,
                              bought_labels=bought_labels)]
  if crop_size is not None:
    operations.append(_RandomCrop(crop_size, features))
  if flip:
    operations.append(_RandomFlip(features))
  if strong_view:
    operations.append(_StrongView())
  operations += [_Finalize(features), grain.transforms.Batch(batch_size, drop_remainder=True,
                                                             batch_fn=_batch_examples)]
  return operations


def source_train_loader(split, *, batch_size: int, image_size: tuple[int, int],
                        label_size: tuple[int, int] | None = None,
                        sampling: str = "class_balanced", flip: bool = True, seed: int = 0,
                        worker_count: int = 0, worker_buffer_size: int = 2,
                        shard_options: grain.sharding.ShardOptions | None = None,
                        sub_epoch_size: int = DEFAULT_SUB_EPOCH_SIZE,
                        label_map: np.ndarray | None = None,
                        features: Mapping[str, str] | Sequence[str] | None = None,
                        crop_size: tuple[int, int] | None = None, strong_view: bool = False
                        ) -> grain.DataLoader:
  """Endless batches {"image", "label", "index", <features>} of the labelled source domain.

  Args:
    split: source split (needs `class_presence` for class-balanced sampling).
    batch_size: examples per batch (per process when sharded).
    image_size: network input (height, width), e.g. (720, 1280) for GTAV.
    label_size: training label size; defaults to `image_size`.
    sampling: "class_balanced" (rare classes drawn often) or "uniform" (shuffled epochs).
    flip: random horizontal flips.
    seed: seeds the sampling and the flips.
    worker_count: worker processes (0 = in this process).
    worker_buffer_size: batches each worker prepares ahead.
    shard_options: grain sharding across processes (default: none).
    sub_epoch_size: class-balanced sub-epoch length (draws).
    label_map: [256] table, stored id -> the run's class index (`catalog.label_map`); None
      keeps stored ids. Class-balanced sampling then counts classes of the run's space.
    features: extra example keys to carry, key -> role (None: `split.features`, if any).
    crop_size: (height, width) of a uniformly random crop taken after resizing to
      `image_size` and before the flip (None: no crop); needs label_size None or equal to
      image_size, and must fit in image_size.
    strong_view: also return "strong_image", `strong_augment` of the (cropped, flipped) image,
      normalised like "image"; "image" and "label" stay exactly as without it.
  """
  image_size = _check_size(image_size, "image_size")
  label_size = _check_size(label_size, "label_size")
  crop_size = _check_crop(crop_size, image_size, label_size)
  label_map = _check_label_map(label_map)
  features = _check_features(split, features)
  if sampling == "class_balanced":
    sampler = ClassBalancedSampler(_presence_in_space(split.class_presence, label_map),
                                   seed=seed, sub_epoch_size=sub_epoch_size)
  elif sampling == "uniform":
    sampler = grain.samplers.IndexSampler(len(split), shuffle=True, seed=seed, num_epochs=None)
  else:
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
  _check_batch_size(batch_size, 1)
  return _loader(_IndexedRecords(split), sampler,
                 _training_operations(image_size, label_size, flip, batch_size,
                                      label_map=label_map, features=features,
                                      crop_size=crop_size, strong_view=strong_view),
                 worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                 shard_options=shard_options, batch_size=batch_size, endless=True)


def target_train_loader(split, labeled_masks: LabeledMasks, *, batch_size: int,
                        image_size: tuple[int, int], label_size: tuple[int, int] | None = None,
                        flip: bool = True, seed: int = 0, worker_count: int = 0,
                        worker_buffer_size: int = 2,
                        shard_options: grain.sharding.ShardOptions | None = None,
                        label_map: np.ndarray | None = None,
                        features: Mapping[str, str] | Sequence[str] | None = None,
                        indices: Sequence[int] | None = None,
                        crop_size: tuple[int, int] | None = None, strong_view: bool = False,
                        bought_labels: Sequence | None = None) -> grain.DataLoader:
  """Endless shuffled batches {"image", "label", "index", <features>} of the target pool.

  Labels keep the ground truth only where `labeled_masks[index]` is True (255 elsewhere); the
  mask is applied at full label resolution, after `label_map` and before resizing. Images
  without labelled pixels still come (the unsupervised target losses use them).

  Args:
    split: target training split.
    labeled_masks: `labeled_masks[i]` -> bool [H, W] at split[i]'s label size; read only.
    indices: sample only these images of the split (shuffled endless epochs over the subset;
      their order does not matter); "index" stays the position in the whole split. None: all
      images. Empty, repeated or out-of-range indices raise ValueError.
    bought_labels: `bought_labels[i]` -> uint8 [H, W], image i's labels in the run's space from
      annotators (255 where none); read instead of the split's labels (then `label_map` is not
      applied: the labels are already in the run's space). None: the split's labels.
    batch_size, image_size, label_size, flip, seed, worker_count, worker_buffer_size,
    shard_options, label_map, features, crop_size, strong_view: as in `source_train_loader`.
  """
  if len(labeled_masks) != len(split):
    raise ValueError(f"labeled_masks has {len(labeled_masks)} entries but the split has "
                     f"{len(split)} images")
  if bought_labels is not None and len(bought_labels) != len(split):
    raise ValueError(f"bought_labels has {len(bought_labels)} entries but the split has "
                     f"{len(split)} images")
  image_size = _check_size(image_size, "image_size")
  label_size = _check_size(label_size, "label_size")
  crop_size = _check_crop(crop_size, image_size, label_size)
  label_map = _check_label_map(label_map)
  features = _check_features(split, features)
  _check_batch_size(batch_size, 1)
  if indices is None:
    source = _IndexedRecords(split)
  else:
    source = _SubsetRecords(split, _check_indices(indices, len(split)))
  sampler = grain.samplers.IndexSampler(len(source), shuffle=True, seed=seed, num_epochs=None)
  return _loader(source, sampler,
                 _training_operations(image_size, label_size, flip, batch_size, labeled_masks,
                                      label_map=label_map, features=features,
                                      crop_size=crop_size, strong_view=strong_view,
                                      bought_labels=bought_labels),
                 worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                 shard_options=shard_options, batch_size=batch_size, endless=True)


def _padded_pass(split, operations, *, batch_size: int, num_devices: int | None,
                 worker_count: int, worker_buffer_size: int, shard_options,
                 features) -> grain.DataLoader:
  _check_batch_size(batch_size, num_devices)
  padded = _padded_length(len(split), batch_size, shard_options, worker_count)
  sampler = grain.samplers.IndexSampler(padded, shuffle=False, num_epochs=1)
  operations = list(operations) + [_Finalize(features), grain.transforms.Batch(
      batch_size, drop_remainder=False, batch_fn=_batch_examples)]
  return _loader(_PaddedRecords(split, padded), sampler, operations, worker_count=worker_count,
                 worker_buffer_size=worker_buffer_size, shard_options=shard_options,
                 batch_size=batch_size)


def selection_loader(split, *, batch_size: int, image_size: tuple[int, int],
                     num_devices: int | None = None, worker_count: int = 0,
                     worker_buffer_size: int = 2,
                     shard_options: grain.sharding.ShardOptions | None = None,
                     with_labels: bool = False, label_map: np.ndarray | None = None,
                     features: Mapping[str, str] | Sequence[str] | None = None
                     ) -> grain.DataLoader:
  """One ordered pass over the target pool for a selection round.

  Batches {"image": [B, H, W, 3], "index": [B], "label_size": [B, 2] (full-resolution label
  height, width), "valid": [B], <features at full label resolution>}: scores are computed at
  label resolution from the logits of the resized image; the last batch is padded
  (valid=False) so all batches are full. `num_devices` is as in `eval_loader`.

  Args:
    with_labels: also return "label" [B, h, w] int32 at full resolution (ground truth, e.g.
      for strategies that skip ignored pixels); images of a batch must then share a size.
    label_map, features: as in `source_train_loader`.
  """
  image_size = _check_size(image_size, "image_size")
  if not hasattr(split, "label_shape"):
    raise TypeError(f"{split!r} has no label_shape(index); use open_split or SyntheticSplit")
  label_map = _check_label_map(label_map)
  features = _check_features(split, features)
  operations = [_DecodeResize(image_size, None, with_label=with_labels, split=split,
                              label_map=label_map, features=features, with_label_size=True)]
  return _padded_pass(split, operations, batch_size=batch_size, num_devices=num_devices,
                      worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                      shard_options=shard_options, features=features)


def eval_loader(split, *, batch_size: int, image_size: tuple[int, int],
                label_size: tuple[int, int] | None = None, num_devices: int | None = None,
                worker_count: int = 0, worker_buffer_size: int = 2,
                shard_options: grain.sharding.ShardOptions | None = None,
                label_map: np.ndarray | None = None,
                features: Mapping[str, str] | Sequence[str] | None = None) -> grain.DataLoader:
  """One ordered, padded pass for evaluation.

  Batches {"image": [B, H, W, 3], "label": [B, h, w] int32, "index": [B], "valid": [B],
  <features>}. Labels stay at full resolution unless `label_size` is given (logits are
  upsampled to them). The number of examples is padded up to a multiple of batch_size x shard
  count, so every device and process runs the same number of full batches; padded examples
  repeat the last one with valid=False and must be excluded from the metrics.

  Args:
    num_devices: devices sharing each batch; batch_size must be divisible by it
      (None: jax.local_device_count()).
    label_map, features: as in `source_train_loader`.
  """
  image_size = _check_size(image_size, "image_size")
  label_size = _check_size(label_size, "label_size")
  label_map = _check_label_map(label_map)
  features = _check_features(split, features)
  operations = [_DecodeResize(image_size, label_size, label_map=label_map, features=features)]
  return _padded_pass(split, operations, batch_size=batch_size, num_devices=num_devices,
                      worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                      shard_options=shard_options, features=features)


def _padded_length(num_examples: int, batch_size: int, shard_options, worker_count: int) -> int:
  """Pads so every process and every worker process gets only full batches.

  grain batches inside each worker, over every worker_count-th record of the process's shard.
  """
  shards = shard_options.shard_count if shard_options is not None else 1
  per_round = batch_size * shards * max(worker_count, 1)
  return -(-num_examples // per_round) * per_round


def pass_batches(num_examples: int, batch_size: int,
                 shard_options: grain.sharding.ShardOptions | None = None,
                 worker_count: int = 0) -> int:
  """Batches each process gets in one selection/eval pass (after padding)."""
  shards = shard_options.shard_count if shard_options is not None else 1
  return _padded_length(num_examples, batch_size, shard_options, worker_count) // (
      batch_size * shards)


def restore_iterator(loader: grain.DataLoader, state: bytes) -> Any:
  """A fresh iterator of `loader` positioned at a saved `iterator.get_state()`."""
  iterator = iter(loader)
  try:
    iterator.set_state(state)
  except ValueError as error:
    raise ValueError(f"{error}\nThe saved data position belongs to a loader that reads "
                     "another data order: resume with the data, data.worker_count and number "
                     "of processes the run started with") from error
  return iterator
