"""Label maps against the official Cityscapes label table (cityscapesscripts)."""

import numpy as np
import pytest

from ripu_jax.data import labels

cityscapes_labels = pytest.importorskip("cityscapesscripts.helpers.labels")

# SYNTHIA class ids as documented with the dataset, named by their Cityscapes counterpart.
SYNTHIA_ID_TO_CITYSCAPES_NAME = {
    1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation", 7: "pole",
    8: "car", 9: "traffic sign", 10: "person", 11: "bicycle", 12: "motorcycle",
    15: "traffic light", 17: "rider", 19: "bus", 21: "wall",
}


def _official_train_id(label) -> int:
  return 255 if label.trainId in (255, -1) else label.trainId


def test_cityscapes_lookup_matches_official_table():
  for label in cityscapes_labels.labels:
    if label.id < 0:
      continue
    assert labels.CITYSCAPES_LOOKUP[label.id] == _official_train_id(label), label.name
  assert set(range(34, 256)).isdisjoint(labels.CITYSCAPES_ID_TO_TRAIN_ID)
  assert (labels.CITYSCAPES_LOOKUP[34:] == 255).all()


def test_class_names_and_palette_match_official_table():
  official = {l.trainId: l for l in cityscapes_labels.labels if 0 <= l.trainId < 255}
  assert sorted(official) == list(range(labels.NUM_CLASSES))
  for train_id, label in official.items():
    assert labels.CLASS_NAMES[train_id] == label.name
    assert tuple(labels.PALETTE[train_id]) == label.color


def test_synthia_map_agrees_with_cityscapes_names():
  name2label = cityscapes_labels.name2label
  expected = {sid: name2label[name].trainId for sid, name in SYNTHIA_ID_TO_CITYSCAPES_NAME.items()}
  assert labels.SYNTHIA_ID_TO_TRAIN_ID == expected
  assert len(labels.SYNTHIA_CLASSES) == 16
  missing = set(range(19)) - set(labels.SYNTHIA_CLASSES)
  assert {labels.CLASS_NAMES[c] for c in missing} == {"terrain", "truck", "train"}
  dropped = set(labels.SYNTHIA_CLASSES) - set(labels.SYNTHIA_13_CLASSES)
  assert {labels.CLASS_NAMES[c] for c in dropped} == {"wall", "fence", "pole"}
  # SYNTHIA's own terrain (16), truck (18), train (20), void and lane marking are ignored.
  for synthia_id in (0, 13, 14, 16, 18, 20, 22, 1000):
    assert labels.SYNTHIA_LOOKUP[synthia_id] == 255


def test_to_train_ids_ignores_unknown_and_out_of_range_ids():
  raw = np.array([[7, 26, 0, 33], [255, 300, -1, 24]], np.int32)
  out = labels.to_train_ids(raw, labels.CITYSCAPES_LOOKUP)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, [[0, 13, 255, 18], [255, 255, 255, 11]])
  with pytest.raises(TypeError):
    labels.to_train_ids(raw.astype(np.float32), labels.CITYSCAPES_LOOKUP)


def test_presence_and_counts_skip_ignore():
  label = np.array([[0, 0, 255], [18, 255, 255]], np.uint8)
  assert np.flatnonzero(labels.class_presence(label)).tolist() == [0, 18]
  counts = labels.pixel_counts(label)
  assert counts[0] == 2 and counts[18] == 1 and counts.sum() == 3
  assert labels.colorize(label)[1, 1].tolist() == [0, 0, 0]
