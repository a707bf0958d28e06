"""Pipeline ops for label spaces and extra features: label_map tables and feature roles."""

import numpy as np
import pytest

from ripu_jax.data import catalog
from ripu_jax.data import labels
from ripu_jax.data import pipeline
from ripu_jax.data import synthetic
from data_fakes import RandomMasks

SMALL = synthetic.SyntheticConfig(height=32, width=48, num_source_train=12, num_target_train=6,
                                  num_target_val=5)
HEIGHT, WIDTH = 8, 12
K = np.array([[20.0, 0.0, 5.0], [0.0, 16.0, 3.0], [0.0, 0.0, 1.0]])


def _take(loader, count):
  iterator = iter(loader)
  return [next(iterator) for _ in range(count)]


class RgbdSplit:
  """A fake multi-view split: each pixel's superpixel id encodes its position, and label,
  depth and image are functions of the superpixel, so alignment survives any resize/flip."""

  features = {"depth": "depth", "superpixels": "superpixels", "pose": "pose",
              "intrinsics": "intrinsics"}

  def __init__(self, count=4, height=HEIGHT, width=WIDTH):
    self.count, self.height, self.width = count, height, width

  def __len__(self):
    return self.count

  def __getitem__(self, index):
    rows, cols = np.mgrid[:self.height, :self.width]
    superpixels = (rows // 2) * 100 + cols + 1000 * index
    pose = np.eye(4)
    pose[:3, 3] = (index, 2.0, -1.0)
    return {
        "image": np.full((self.height, self.width, 3), 30 * index, np.uint8),
        "label": (superpixels % 1000 % 19).astype(np.uint8),
        "name": f"frame{index}",
        "depth": (superpixels * 0.01).astype(np.float64),
        "superpixels": superpixels.astype(np.int64),
        "pose": pose,
        "intrinsics": K,
    }

  def label_shape(self, index):
    del index
    return self.height, self.width

  @property
  def class_presence(self):
    return np.stack([labels.class_presence(self[i]["label"]) for i in range(len(self))])


def _check_aligned(batch, row, table=None):
  """Label, depth and superpixels of one batch row come from the same source pixels."""
  superpixels = batch["superpixels"][row]
  expected = (superpixels % 1000 % 19) if table is None else table[superpixels % 1000 % 19]
  np.testing.assert_array_equal(batch["label"][row], expected)
  np.testing.assert_allclose(batch["depth"][row], (superpixels * 0.01).astype(np.float32))
  assert (superpixels // 1000 == batch["index"][row]).all()


# ----------------------------------------------------------------------------- label_map


def test_label_map_in_the_loaders_equals_the_old_trainer_lookup():
  old_table = np.full(256, 255, np.int32)
  old_table[list(synthetic.SYNTHETIC_CLASSES)] = synthetic.SYNTHETIC_CLASSES
  table = catalog.label_map("synthetic", catalog.run_label_space("synthetic", "synthetic"))
  source = synthetic.SyntheticSplit(SMALL, synthetic.SOURCE_TRAIN)
  target = synthetic.SyntheticSplit(SMALL, synthetic.TARGET_TRAIN)
  val = synthetic.SyntheticSplit(SMALL, synthetic.TARGET_VAL)
  masks = RandomMasks(len(target), (SMALL.height, SMALL.width))
  pairs = [
      (lambda m: pipeline.source_train_loader(source, batch_size=2, image_size=(16, 24), seed=3,
                                              label_map=m), 3),
      (lambda m: pipeline.target_train_loader(target, masks, batch_size=2, image_size=(16, 24),
                                              seed=1, label_map=m), 4),
      (lambda m: pipeline.eval_loader(val, batch_size=2, image_size=(16, 24), num_devices=1,
                                      label_map=m), 3),
  ]
  for make, count in pairs:
    plain, mapped = _take(make(None), count), _take(make(table), count)
    for a, b in zip(plain, mapped):
      assert b["label"].dtype == np.int32
      np.testing.assert_array_equal(b["label"], old_table[a["label"]])
      np.testing.assert_array_equal(b["index"], a["index"])  # Same sampling.
      np.testing.assert_array_equal(b["image"], a["image"])


def test_label_map_is_applied_before_masks_and_reaches_sixteen_classes():
  # Stored 19-space ids of every class; the SYNTHIA space keeps 16 of them.
  label = np.arange(24, dtype=np.uint8).reshape(4, 6) % 19
  label[0, 0] = 255
  split = _ListSplit([{"image": np.zeros((4, 6, 3), np.uint8), "label": label, "name": "a"}])
  table = catalog.label_map("cityscapes", "synthia16")
  masks = RandomMasks(1, (4, 6), seed=2)
  batch = next(iter(pipeline.target_train_loader(split, masks, batch_size=1, image_size=(4, 6),
                                                 flip=False, label_map=table)))
  expected = np.where(masks[0], table[label], 255)
  np.testing.assert_array_equal(batch["label"][0], expected)
  assert batch["label"].max() <= 15 or batch["label"].max() == 255
  selection = next(iter(pipeline.selection_loader(split, batch_size=1, image_size=(4, 6),
                                                  num_devices=1, with_labels=True,
                                                  label_map=table)))
  np.testing.assert_array_equal(selection["label"][0], table[label])
  assert selection["label_size"][0].tolist() == [4, 6]


def test_class_balanced_sampling_counts_classes_of_the_run_space():
  presence = np.zeros((3, 19), bool)
  presence[0, [0, 9]] = presence[1, [14]] = presence[2, [10, 18]] = True
  table = catalog.label_map("synthia", "synthia16")
  mapped = pipeline._presence_in_space(presence, table)
  assert mapped.shape == (3, 16)
  assert np.flatnonzero(mapped[0]).tolist() == [0]  # Terrain (9) is not a SYNTHIA class.
  assert not mapped[1].any()
  assert np.flatnonzero(mapped[2]).tolist() == [9, 15]  # Sky, bicycle.


def test_bad_label_maps_are_explained():
  split = _ListSplit([{"image": np.zeros((4, 6, 3), np.uint8),
                       "label": np.zeros((4, 6), np.uint8), "name": "a"}])
  bad_ignore = np.arange(256)
  bad_ignore[255] = 0
  for table, message in ((np.zeros(19, np.int32), "256 entries"),
                         (np.full(256, 300), r"lie in \[0, 255\]"),
                         (bad_ignore, "ignored")):
    with pytest.raises(ValueError, match=message):
      pipeline.eval_loader(split, batch_size=1, image_size=(4, 6), num_devices=1,
                           label_map=table)


class _ListSplit:

  def __init__(self, examples):
    self.examples = examples

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, index):
    return self.examples[index]

  def label_shape(self, index):
    return self.examples[index]["label"].shape


# ----------------------------------------------------------------------------- features


def test_nearest_resize_matches_the_label_grid():
  rng = np.random.default_rng(0)
  for shape, size in (((8, 12), (4, 6)), ((7, 13), (16, 5)), ((1052, 1914), (513, 777)),
                      ((31, 17), (31, 40))):
    label = rng.integers(0, 255, shape, dtype=np.uint8)
    np.testing.assert_array_equal(pipeline.resize_nearest(label, size),
                                  pipeline.resize_label(label, size))
    wide = label.astype(np.int64) * 100_000
    assert pipeline.resize_nearest(wide, size).dtype == np.int64
    np.testing.assert_array_equal(pipeline.resize_nearest(wide, size) // 100_000,
                                  pipeline.resize_label(label, size))


def test_training_loader_moves_features_by_role():
  split = RgbdSplit(count=8)
  table = catalog.label_map("cityscapes", "synthia16")
  loader = pipeline.source_train_loader(split, batch_size=4, image_size=(6, 9),
                                        label_size=(4, 6), sampling="uniform", flip=True,
                                        seed=0, label_map=table)
  flips = 0
  for batch in _take(loader, 4):
    assert batch["depth"].shape == (4, 4, 6) and batch["depth"].dtype == np.float32
    assert batch["superpixels"].shape == (4, 4, 6) and batch["superpixels"].dtype == np.int32
    assert batch["pose"].shape == (4, 4, 4) and batch["intrinsics"].shape == (4, 3, 3)
    assert batch["intrinsics"].dtype == np.float32
    for row in range(4):
      _check_aligned(batch, row, table)
      index = int(batch["index"][row])
      np.testing.assert_array_equal(batch["pose"][row], split[index]["pose"].astype(np.float32))
      columns = batch["superpixels"][row][0] % 100
      flipped = columns[0] > columns[-1]
      flips += flipped
      sx, sy = 6 / WIDTH, 4 / HEIGHT
      fx, cx = K[0, 0] * sx, K[0, 2] * sx
      expected = np.array([[-fx if flipped else fx, 0, (6 - 1) - cx if flipped else cx],
                           [0, K[1, 1] * sy, K[1, 2] * sy], [0, 0, 1]])
      np.testing.assert_allclose(batch["intrinsics"][row], expected, rtol=1e-6)
  assert 0 < flips < 16  # Both cases were checked.


def test_mirrored_intrinsics_keep_each_pixel_on_its_ray():
  scaled = pipeline.FEATURE_ROLES["intrinsics"].resize(K, (HEIGHT, WIDTH), (4, 6))
  mirrored = pipeline.FEATURE_ROLES["intrinsics"].flip(scaled, 6)
  for u in range(6):
    for v in range(4):
      ray = np.linalg.solve(scaled, [u, v, 1.0])
      mirrored_ray = np.linalg.solve(mirrored, [6 - 1 - u, v, 1.0])
      np.testing.assert_allclose(mirrored_ray, ray, atol=1e-12)


def test_eval_and_selection_keep_features_on_the_full_label_grid():
  split = RgbdSplit(count=3)
  batches = list(pipeline.eval_loader(split, batch_size=2, image_size=(4, 6), num_devices=1))
  assert batches[0]["depth"].shape == (2, HEIGHT, WIDTH)
  assert [b["valid"].tolist() for b in batches] == [[True, True], [True, False]]
  for batch in batches:
    for row in range(2):
      _check_aligned(batch, row)
  np.testing.assert_allclose(batches[0]["intrinsics"][0], K)
  selection = list(pipeline.selection_loader(split, batch_size=2, image_size=(4, 6),
                                             num_devices=1))
  assert set(selection[0]) == {"image", "index", "label_size", "valid", "depth", "superpixels",
                               "pose", "intrinsics"}
  assert selection[0]["superpixels"].shape == (2, HEIGHT, WIDTH)
  np.testing.assert_array_equal(selection[1]["superpixels"][0], split[2]["superpixels"])
  # Eval with a label size moves the features to it.
  resized = next(iter(pipeline.eval_loader(split, batch_size=2, image_size=(4, 6),
                                           label_size=(2, 3), num_devices=1)))
  assert resized["depth"].shape == (2, 2, 3)
  np.testing.assert_allclose(resized["intrinsics"][0][0], K[0] * [0.25, 1, 0.25])


def test_target_loader_carries_features_and_features_can_be_chosen():
  split = RgbdSplit(count=4)
  masks = RandomMasks(4, (HEIGHT, WIDTH))
  batch = next(iter(pipeline.target_train_loader(split, masks, batch_size=2, image_size=(8, 12),
                                                 seed=5)))
  for row in range(2):
    index = int(batch["index"][row])
    flipped = batch["superpixels"][row][0, 0] % 100 > batch["superpixels"][row][0, -1] % 100
    mask = masks[index][:, ::-1] if flipped else masks[index]
    truth = batch["superpixels"][row] % 1000 % 19
    np.testing.assert_array_equal(batch["label"][row], np.where(mask, truth, 255))
  only_depth = next(iter(pipeline.eval_loader(split, batch_size=2, image_size=(4, 6),
                                              num_devices=1, features=("depth",))))
  assert set(only_depth) == {"image", "label", "index", "valid", "depth"}
  none = next(iter(pipeline.eval_loader(split, batch_size=2, image_size=(4, 6), num_devices=1,
                                        features={})))
  assert "depth" not in none


def test_unknown_roles_and_bad_features_are_explained():
  split = RgbdSplit(count=2)
  with pytest.raises(ValueError, match="role 'normals'.*known roles: depth, superpixels"):
    pipeline.source_train_loader(split, batch_size=2, image_size=(4, 6),
                                 features={"n": "normals"})
  with pytest.raises(ValueError, match="reserved"):
    pipeline.eval_loader(split, batch_size=2, image_size=(4, 6), num_devices=1,
                         features={"label": "depth"})
  missing = pipeline.eval_loader(split, batch_size=2, image_size=(4, 6), num_devices=1,
                                 features={"normal_map": "depth"})
  with pytest.raises(KeyError, match="lacks the declared feature 'normal_map'"):
    next(iter(missing))
  wrong_shape = pipeline.eval_loader(split, batch_size=2, image_size=(4, 6), num_devices=1,
                                     features={"pose": "intrinsics"})
  with pytest.raises(ValueError, match=r"must have shape \(3, 3\)"):
    next(iter(wrong_shape))
