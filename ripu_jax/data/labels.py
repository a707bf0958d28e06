"""Label ids on disk, the one ignore value, and label spaces (what a network predicts).

Storage: today's datasets are stored with Cityscapes train ids (0..18) and 255 for "ignore".
GTAV and Cityscapes annotate with Cityscapes label ids; SYNTHIA uses its own ids, of which 16
classes overlap the 19 (no terrain, truck, train; SYNTHIA's own terrain/truck/train annotations
are not used, as in the domain-adaptation literature). The on-disk format does not depend on
the run, so one prepared copy serves every experiment. PASCAL VOC 2012 (with the SBD labels) is
stored with its own 21 class indices (0 = background, 255 = the VOC boundary/void label).

Label spaces: a run trains and evaluates in one `LabelSpace` (its source dataset's, see
`ripu_jax.data.catalog`): its class names, palette, number of network outputs and evaluation
class sets. A dataset's stored ids reach the run's space through a 256-entry table
(`LabelSpace.table_from`), matched by class name, so SYNTHIA -> Cityscapes runs predict the 16
shared classes with a 16-output network (as the reference release, NUM_CLASSES: 16) while both
datasets stay stored as 19-space train ids. `IGNORE_LABEL` is the single ignore value of the
project; tables keep it ignored.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence

import numpy as np

NUM_CLASSES = 19
IGNORE_LABEL = 255

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle",
)

# Official Cityscapes colour of each train id, for visualisation.
PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
        (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    np.uint8,
)

# Cityscapes label id -> train id for the 19 evaluated classes; every other id
# (void, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan,
# trailer, license plate) is ignored.
CITYSCAPES_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

# SYNTHIA (RAND-CITYSCAPES) class id -> Cityscapes train id. SYNTHIA ids: 0 void,
# 1 sky, 2 building, 3 road, 4 sidewalk, 5 fence, 6 vegetation, 7 pole, 8 car,
# 9 traffic sign, 10 pedestrian, 11 bicycle, 12 motorcycle, 13 parking slot,
# 14 road work, 15 traffic light, 16 terrain, 17 rider, 18 truck, 19 bus,
# 20 train, 21 wall, 22 lane marking. Only the 16 classes shared with the
# benchmark protocol are kept.
SYNTHIA_ID_TO_TRAIN_ID = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10,
    10: 11, 17: 12, 8: 13, 19: 15, 12: 17, 11: 18,
}

# Train ids evaluated on SYNTHIA -> Cityscapes: mIoU over 16 classes, mIoU* over
# 13 (the 16 without wall, fence and pole).
SYNTHIA_CLASSES = tuple(sorted(SYNTHIA_ID_TO_TRAIN_ID.values()))
SYNTHIA_13_CLASSES = tuple(c for c in SYNTHIA_CLASSES if c not in (3, 4, 5))

ALL_CLASSES = tuple(range(NUM_CLASSES))


def lookup_table(id_to_train_id: dict[int, int], size: int = 256) -> np.ndarray:
  """Dense [size] uint8 table: raw id -> train id, IGNORE_LABEL for unknown ids."""
  table = np.full((size,), IGNORE_LABEL, np.uint8)
  for raw_id, train_id in id_to_train_id.items():
    table[raw_id] = train_id
  return table


CITYSCAPES_LOOKUP = lookup_table(CITYSCAPES_ID_TO_TRAIN_ID)
SYNTHIA_LOOKUP = lookup_table(SYNTHIA_ID_TO_TRAIN_ID, size=1 << 16)

# PASCAL VOC: background and the 20 object classes, in the order of their ids.
VOC_CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
VOC_NUM_CLASSES = len(VOC_CLASS_NAMES)


def voc_palette(num_colors: int = 256) -> np.ndarray:
  """[num_colors, 3] uint8 VOC colour map: bits 0, 1, 2 of id i go to the top bit of red,
  green, blue, bits 3, 4, 5 to the next bit, and so on (the devkit's `labelcolormap`)."""
  palette = np.zeros((num_colors, 3), np.uint8)
  for index in range(num_colors):
    value, shift = index, 7
    while value:
      for channel in range(3):
        palette[index, channel] |= ((value >> channel) & 1) << shift
      value >>= 3
      shift -= 1
  return palette


VOC_PALETTE = voc_palette(VOC_NUM_CLASSES)
# VOC label files already hold class ids: 0..20 stay, 255 (boundary) and anything else is
# ignored.
VOC_LOOKUP = lookup_table({c: c for c in range(VOC_NUM_CLASSES)})


def to_train_ids(raw_ids: np.ndarray, table: np.ndarray) -> np.ndarray:
  """Maps an integer label map through `table`; ids beyond the table are ignored."""
  raw_ids = np.asarray(raw_ids)
  if raw_ids.dtype.kind not in "iu":
    raise TypeError(f"label ids must be integers, got dtype {raw_ids.dtype}")
  raw = raw_ids.astype(np.int64, copy=False)
  inside = (raw >= 0) & (raw < table.shape[0])
  return np.where(inside, table[np.clip(raw, 0, table.shape[0] - 1)], IGNORE_LABEL).astype(
      np.uint8)


def class_presence(train_ids: np.ndarray) -> np.ndarray:
  """[NUM_CLASSES] bool: which train ids occur in a label map (255 excluded)."""
  counts = np.bincount(np.asarray(train_ids, np.uint8).ravel(), minlength=256)
  return counts[:NUM_CLASSES] > 0


def pixel_counts(train_ids: np.ndarray) -> np.ndarray:
  """[NUM_CLASSES] int64 pixel count per train id (255 excluded)."""
  counts = np.bincount(np.asarray(train_ids, np.uint8).ravel(), minlength=256)
  return counts[:NUM_CLASSES].astype(np.int64)


def colorize(train_ids: np.ndarray) -> np.ndarray:
  """[H, W, 3] uint8 visualisation of a train-id map (ignored pixels black)."""
  return CITYSCAPES_19.colorize(train_ids)


# ----------------------------------------------------------------------------- label spaces


def _read_only(array: np.ndarray) -> np.ndarray:
  array = np.array(array)
  array.setflags(write=False)
  return array


@dataclasses.dataclass(frozen=True, eq=False)
class LabelSpace:
  """The classes a run's network predicts, and which of them are trained and evaluated.

  Attributes:
    name: registry name (e.g. "cityscapes19").
    class_names: one name per network output; stored ids of any dataset are matched to the
      space by these names.
    palette: [num_classes, 3] uint8 colour of each class (visualisation).
    eval_sets: evaluation class sets, name -> class indices within the space; "miou" is
      required (the trainer reports it), others are extra (SYNTHIA's "miou_13").
    kept: the class indices labels keep (default: all); a stored class outside it becomes
      IGNORE_LABEL. Every evaluated class must be kept. The synthetic benchmark keeps the 12
      classes its generator paints out of a 19-output network.
  """

  name: str
  class_names: tuple[str, ...]
  palette: np.ndarray
  eval_sets: Mapping[str, tuple[int, ...]]
  kept: tuple[int, ...] | None = None

  def __post_init__(self):
    names = tuple(self.class_names)
    if not names or len(names) >= IGNORE_LABEL:
      raise ValueError(f"label space {self.name!r} needs 1..{IGNORE_LABEL - 1} classes, got "
                       f"{len(names)}")
    if len(set(names)) != len(names):
      raise ValueError(f"label space {self.name!r} has repeated class names {names}")
    palette = np.asarray(self.palette)
    if palette.shape != (len(names), 3):
      raise ValueError(f"label space {self.name!r}: palette must be [{len(names)}, 3] "
                       f"(one RGB colour per class), got shape {palette.shape}")
    kept = tuple(range(len(names))) if self.kept is None else tuple(int(c) for c in self.kept)
    self._check_indices(kept, "kept")
    sets = {str(k): tuple(int(c) for c in v) for k, v in dict(self.eval_sets).items()}
    if "miou" not in sets:
      raise ValueError(f"label space {self.name!r} needs an evaluation set named 'miou' (the "
                       f"trainer reports it), got {sorted(sets)}")
    for set_name, classes in sets.items():
      self._check_indices(classes, f"eval set {set_name!r}")
      outside = sorted(set(classes) - set(kept))
      if outside:
        raise ValueError(f"label space {self.name!r}: eval set {set_name!r} lists classes "
                         f"{outside} that are not kept (their labels would all be ignored)")
    object.__setattr__(self, "class_names", names)
    object.__setattr__(self, "palette", _read_only(palette.astype(np.uint8)))
    object.__setattr__(self, "eval_sets", types.MappingProxyType(sets))
    object.__setattr__(self, "kept", kept)

  def _check_indices(self, classes: Sequence[int], what: str) -> None:
    if not classes or len(set(classes)) != len(classes) or not all(
        0 <= c < len(self.class_names) for c in classes):
      raise ValueError(f"label space {self.name!r}: {what} must list distinct class indices in "
                       f"[0, {len(self.class_names)}), got {tuple(classes)}")

  @property
  def num_classes(self) -> int:
    """Network outputs."""
    return len(self.class_names)

  def table_from(self, stored: "LabelSpace") -> np.ndarray:
    """[256] uint8 read-only table: a stored id of `stored` -> index in this space.

    Ids are matched by class name; a stored class this space does not keep, every id beyond
    `stored`'s classes, and IGNORE_LABEL map to IGNORE_LABEL.

    Raises:
      ValueError: when the two spaces share no kept class (no label would survive).
    """
    index = {self.class_names[c]: c for c in self.kept}
    table = np.full(256, IGNORE_LABEL, np.uint8)
    for stored_id, name in enumerate(stored.class_names):
      if name in index:
        table[stored_id] = index[name]
    if (table == IGNORE_LABEL).all():
      raise ValueError(f"labels stored as {stored.name!r} share no class with the label space "
                       f"{self.name!r} ({', '.join(self.class_names)}); every label would be "
                       "ignored. Train in a space with common class names")
    return _read_only(table)

  def colorize(self, ids: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 visualisation of a map of this space's indices (ignored pixels black)."""
    table = np.zeros((256, 3), np.uint8)
    table[:self.num_classes] = self.palette
    return table[np.asarray(ids, np.uint8)]

  def __repr__(self) -> str:
    return (f"LabelSpace({self.name!r}, num_classes={self.num_classes}, "
            f"eval_sets={dict(self.eval_sets)})")


# The 19 Cityscapes train ids, all trained and evaluated (GTAV -> Cityscapes).
CITYSCAPES_19 = LabelSpace("cityscapes19", CLASS_NAMES, PALETTE, {"miou": ALL_CLASSES})

# SYNTHIA's 16 classes, indices 0..15 in the order of SYNTHIA_CLASSES; mIoU over the 16 and
# mIoU* over the 13 without wall, fence and pole (SYNTHIA -> Cityscapes).
SYNTHIA_16 = LabelSpace(
    "synthia16", tuple(CLASS_NAMES[c] for c in SYNTHIA_CLASSES), PALETTE[list(SYNTHIA_CLASSES)],
    {"miou": tuple(range(len(SYNTHIA_CLASSES))),
     "miou_13": tuple(SYNTHIA_CLASSES.index(c) for c in SYNTHIA_13_CLASSES)})

# PASCAL VOC's 21 classes (background included), all trained and evaluated.
VOC_21 = LabelSpace("voc", VOC_CLASS_NAMES, VOC_PALETTE,
                    {"miou": tuple(range(VOC_NUM_CLASSES))})
