"""Label maps shared by every dataset: the 19-class Cityscapes train-id set.

All datasets are stored with Cityscapes train ids (0..18) and 255 for "ignore", so a model
trained on one domain predicts directly in the label space of the other. GTAV and Cityscapes
annotate with Cityscapes label ids; SYNTHIA uses its own ids, of which 16 classes overlap the
19 (no terrain, truck, train; SYNTHIA's own terrain/truck/train annotations are not used, as in
the domain-adaptation literature).
"""

from __future__ import annotations

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
  table = np.zeros((256, 3), np.uint8)
  table[:NUM_CLASSES] = PALETTE
  return table[np.asarray(train_ids, np.uint8)]
