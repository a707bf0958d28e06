"""Training-loader views: index subsets, random crops and the strong (colour-jittered) view."""

import colorsys
import gc
import itertools

import grain
import numpy as np
import pytest

from ripu_jax import data
from ripu_jax.data import pipeline
from ripu_jax.data import synthetic
from data_fakes import RandomMasks

SMALL = synthetic.SyntheticConfig(height=32, width=48, num_source_train=12, num_target_train=10,
                                  num_target_val=4)
HEIGHT, WIDTH = 8, 12
K = np.array([[20.0, 0.0, 5.5], [0.0, 16.0, 3.0], [0.0, 0.0, 1.0]])


def _take(loader, count, state=None):
  iterator = iter(loader) if state is None else pipeline.restore_iterator(loader, state)
  return [next(iterator) for _ in range(count)]


def _assert_batches_equal(first, second, keys=None):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in keys or a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


class GridSplit:
  """Every pixel knows where it came from: superpixel id = 1000 index + 100 row + column, the
  image's red/green channels are 20 row / 20 column, and label and depth derive from the id."""

  features = {"depth": "depth", "superpixels": "superpixels", "pose": "pose",
              "intrinsics": "intrinsics"}

  def __init__(self, count=4):
    self.count = count

  def __len__(self):
    return self.count

  def __getitem__(self, index):
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    superpixels = 1000 * index + 100 * rows + cols
    image = np.stack([20 * rows, 20 * cols, np.full_like(rows, 10 * index)], -1)
    pose = np.eye(4)
    pose[:3, 3] = (index, 1.0, 2.0)
    return {"image": image.astype(np.uint8), "label": (superpixels % 19).astype(np.uint8),
            "name": f"grid{index}", "depth": superpixels * 0.01,
            "superpixels": superpixels, "pose": pose, "intrinsics": K}

  def label_shape(self, index):
    del index
    return HEIGHT, WIDTH


# ----------------------------------------------------------------------------- indices


def test_no_indices_keeps_todays_sampling_and_all_indices_agree():
  split = data.SyntheticSplit(SMALL, synthetic.TARGET_TRAIN)
  masks = RandomMasks(len(split), (SMALL.height, SMALL.width))

  def loader(**kwargs):
    return pipeline.target_train_loader(split, masks, batch_size=2, image_size=(16, 24), seed=4,
                                        **kwargs)

  plain = _take(loader(), 8)
  sampler = grain.samplers.IndexSampler(len(split), shuffle=True, seed=4, num_epochs=None)
  expected = [sampler[i].record_key for i in range(16)]
  assert np.concatenate([b["index"] for b in plain]).tolist() == expected
  _assert_batches_equal(_take(loader(indices=None), 8), plain)
  # The whole split as a subset samples the same stream.
  _assert_batches_equal(_take(loader(indices=list(range(len(split)))[::-1]), 8), plain)


def test_subset_samples_only_its_images_with_their_split_index():
  split = data.SyntheticSplit(SMALL, synthetic.TARGET_TRAIN)
  masks = RandomMasks(len(split), (SMALL.height, SMALL.width), seed=3)
  subset = [7, 2, 5]

  def loader(indices, seed=0):
    return pipeline.target_train_loader(split, masks, batch_size=1, image_size=(32, 48),
                                        flip=False, seed=seed, indices=indices)

  batches = _take(loader(subset), 12)
  drawn = [int(b["index"][0]) for b in batches]
  for epoch in range(4):  # Shuffled epochs over the subset.
    assert sorted(drawn[3 * epoch:3 * epoch + 3]) == [2, 5, 7]
  assert len({tuple(drawn[i:i + 3]) for i in range(0, 12, 3)}) > 1
  for batch in batches:
    index = int(batch["index"][0])
    truth = split[index]["label"]
    np.testing.assert_array_equal(batch["label"][0], np.where(masks[index], truth, 255))
    np.testing.assert_array_equal(pipeline.denormalize_image(batch["image"][0]),
                                  split[index]["image"])
  _assert_batches_equal(_take(loader(np.array([2, 5, 7])), 12), batches)  # Order is irrelevant.
  other = [int(b["index"][0]) for b in _take(loader(subset, seed=1), 12)]
  assert other != drawn and sorted(other) == sorted(drawn)


def test_bad_indices_are_explained():
  split = data.SyntheticSplit(SMALL, synthetic.TARGET_TRAIN)  # 10 images.
  masks = RandomMasks(len(split), (SMALL.height, SMALL.width))

  def build(indices):
    return pipeline.target_train_loader(split, masks, batch_size=1, image_size=(16, 24),
                                        indices=indices)

  with pytest.raises(ValueError, match="indices is empty"):
    build([])
  with pytest.raises(ValueError, match=r"indices \[-1, 10\] lie outside the split's 10 images"):
    build([3, 10, -1])
  with pytest.raises(ValueError, match=r"indices \[4\] are repeated"):
    build([4, 1, 4])
  with pytest.raises(ValueError, match="must be integers"):
    build([0.5, 1.0])


def test_subset_resume_is_exact_and_needs_the_same_subset():
  split = data.SyntheticSplit(SMALL, synthetic.TARGET_TRAIN)
  masks = RandomMasks(len(split), (SMALL.height, SMALL.width))

  def loader(indices):
    return pipeline.target_train_loader(split, masks, batch_size=2, image_size=(16, 24), seed=2,
                                        indices=indices)

  iterator = iter(loader([0, 3, 4, 8, 9]))
  for _ in range(2):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(5)]  # Crosses epochs of the 5 images.
  _assert_batches_equal(_take(loader([9, 8, 4, 3, 0]), 5, state), expected)
  with pytest.raises(ValueError, match="DataSource in checkpoint does not match"):
    _take(loader([0, 3, 4, 8, 7]), 1, state)


# ----------------------------------------------------------------------------- crop


def _check_window(batch, row, crop):
  """The row is one crop_size window of its image (maybe mirrored), the same for every key,
  and each output pixel's intrinsics ray is its source pixel's ray."""
  superpixels = batch["superpixels"][row]
  index = int(batch["index"][row])
  assert (superpixels // 1000 == index).all()
  rows, cols = superpixels % 1000 // 100, superpixels % 100
  flipped = cols[0, 0] > cols[0, -1]
  top, left = rows[0, 0], cols[0, -1] if flipped else cols[0, 0]
  grid_rows, grid_cols = np.mgrid[top:top + crop[0], left:left + crop[1]]
  np.testing.assert_array_equal(rows, grid_rows)
  np.testing.assert_array_equal(cols, grid_cols[:, ::-1] if flipped else grid_cols)
  image = pipeline.denormalize_image(batch["image"][row])
  np.testing.assert_array_equal(image[..., 0], 20 * rows)
  np.testing.assert_array_equal(image[..., 1], 20 * cols)
  np.testing.assert_array_equal(batch["label"][row], superpixels % 19)
  np.testing.assert_allclose(batch["depth"][row], (superpixels * 0.01).astype(np.float32))
  intrinsics = batch["intrinsics"][row].astype(np.float64)
  for v, u in ((0, 0), (crop[0] - 1, crop[1] - 1), (1, crop[1] // 2)):
    ray = np.linalg.solve(intrinsics, [u, v, 1.0])
    np.testing.assert_allclose(ray, np.linalg.solve(K, [cols[v, u], rows[v, u], 1.0]),
                               atol=1e-5)
  return int(top), int(left), bool(flipped)


def test_crop_cuts_one_window_of_image_label_and_features():
  split = GridSplit(count=6)
  crop = (5, 7)
  masks = RandomMasks(6, (HEIGHT, WIDTH))
  masks.masks = [np.ones((HEIGHT, WIDTH), bool)] * 6
  loaders = [
      pipeline.source_train_loader(split, batch_size=3, image_size=(HEIGHT, WIDTH),
                                   sampling="uniform", seed=0, crop_size=crop),
      pipeline.target_train_loader(split, masks, batch_size=3, image_size=(HEIGHT, WIDTH),
                                   label_size=(HEIGHT, WIDTH), seed=1, crop_size=crop),
  ]
  windows = []
  for loader in loaders:
    for batch in _take(loader, 12):
      assert batch["image"].shape == (3, *crop, 3)
      assert batch["label"].shape == batch["depth"].shape == batch["superpixels"].shape == (
          3, *crop)
      for row in range(3):
        windows.append(_check_window(batch, row, crop))
        np.testing.assert_array_equal(batch["pose"][row],
                                      split[int(batch["index"][row])]["pose"])
  tops, lefts, flips = zip(*windows)
  assert set(tops) == set(range(HEIGHT - crop[0] + 1))  # Every offset, both ends included.
  assert set(lefts) == set(range(WIDTH - crop[1] + 1))
  assert set(flips) == {False, True}


def test_crop_after_resize_and_full_size_crop():
  split = GridSplit(count=2)
  batch = next(iter(pipeline.source_train_loader(split, batch_size=2, image_size=(4, 6),
                                                 sampling="uniform", flip=False,
                                                 crop_size=(3, 4))))
  assert batch["image"].shape == (2, 3, 4, 3) and batch["superpixels"].shape == (2, 3, 4)
  whole = _take(pipeline.source_train_loader(split, batch_size=2, image_size=(HEIGHT, WIDTH),
                                             sampling="uniform", flip=False,
                                             crop_size=(HEIGHT, WIDTH)), 2)
  plain = _take(pipeline.source_train_loader(split, batch_size=2, image_size=(HEIGHT, WIDTH),
                                             sampling="uniform", flip=False), 2)
  _assert_batches_equal(whole, plain)


def test_bad_crops_are_explained():
  split = GridSplit(count=2)
  masks = RandomMasks(2, (HEIGHT, WIDTH))
  with pytest.raises(ValueError, match=r"crop_size \(9, 4\) is larger than image_size \(8, 12\)"):
    pipeline.source_train_loader(split, batch_size=1, image_size=(HEIGHT, WIDTH),
                                 crop_size=(9, 4))
  with pytest.raises(ValueError, match=r"label_size \(4, 6\) and image_size \(8, 12\)"):
    pipeline.target_train_loader(split, masks, batch_size=1, image_size=(HEIGHT, WIDTH),
                                 label_size=(4, 6), crop_size=(4, 4))
  with pytest.raises(ValueError, match="crop_size must be positive"):
    pipeline.target_train_loader(split, masks, batch_size=1, image_size=(HEIGHT, WIDTH),
                                 crop_size=(0, 4))


# ----------------------------------------------------------------------------- strong view


def _oracle(image_uint8, seed):
  """strong_augment written out pixel by pixel in float64, with colorsys for the hue."""
  rng = np.random.default_rng(seed)
  order = rng.permutation(4)
  brightness = rng.uniform(0.6, 1.4)
  contrast = rng.uniform(0.6, 1.4)
  saturation = rng.uniform(0.6, 1.4)
  hue = rng.uniform(-0.1, 0.1)
  gray_out = rng.random() < 0.2
  height, width = image_uint8.shape[:2]
  pixels = [[list(image_uint8[y, x] / 255.0) for x in range(width)] for y in range(height)]

  def luma(p):
    return 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]

  def clip(p):
    return [min(max(v, 0.0), 1.0) for v in p]

  for jitter in order:
    mean = sum(luma(p) for line in pixels for p in line) / (height * width)
    for y in range(height):
      for x in range(width):
        p = pixels[y][x]
        if jitter == 0:
          p = [brightness * v for v in p]
        elif jitter == 1:
          p = [contrast * v + (1 - contrast) * mean for v in p]
        elif jitter == 2:
          p = [saturation * v + (1 - saturation) * luma(p) for v in p]
        else:
          h, s, v = colorsys.rgb_to_hsv(*p)
          p = list(colorsys.hsv_to_rgb((h + hue) % 1.0, s, v))
        pixels[y][x] = clip(p)
  if gray_out:
    pixels = [[[luma(p)] * 3 for p in line] for line in pixels]
  return np.array(pixels), gray_out, list(order)


def test_strong_augment_equals_a_pixel_loop_oracle():
  image = np.array([[[200, 30, 40], [20, 180, 60], [10, 20, 230], [128, 128, 128]],
                    [[255, 255, 0], [0, 0, 0], [255, 255, 255], [90, 40, 160]],
                    [[250, 120, 5], [5, 250, 200], [60, 60, 61], [180, 10, 130]]], np.uint8)
  grays, orders = set(), set()
  for seed in range(40):
    expected, gray_out, order = _oracle(image, seed)
    out = pipeline.strong_augment(image, np.random.default_rng(seed))
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out, expected, atol=2e-5, err_msg=f"seed {seed}")
    from_float = pipeline.strong_augment(image / 255.0, np.random.default_rng(seed))
    np.testing.assert_allclose(from_float, out, atol=1e-6)
    grays.add(gray_out)
    orders.add(order.index(3))
  assert grays == {False, True} and orders == {0, 1, 2, 3}  # Every branch was compared.
  assert pipeline.COLOR_JITTER == dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
  assert pipeline.GRAYSCALE_P == 0.2


def test_hsv_round_trip_matches_colorsys():
  rng = np.random.default_rng(0)
  rgb = rng.random((50, 3)).astype(np.float32)
  rgb[:5] = rgb[:5, :1]  # Greys.
  hsv = pipeline.rgb_to_hsv(rgb)
  np.testing.assert_allclose(hsv, [colorsys.rgb_to_hsv(*p) for p in rgb.astype(np.float64)],
                             atol=1e-6)
  np.testing.assert_allclose(pipeline.hsv_to_rgb(hsv), rgb, atol=1e-6)


def _edge_columns(image):
  """Column after which each row's luma jumps the most."""
  gray = np.asarray(image, np.float64) @ [0.299, 0.587, 0.114]
  return np.abs(np.diff(gray, axis=1)).argmax(axis=1)


def test_strong_augment_keeps_a_sharp_edge_in_place():
  image = np.zeros((6, 10, 3), np.uint8)
  image[:, :4] = (40, 60, 200)
  image[:, 4:] = (200, 180, 30)
  for seed in range(30):
    out = pipeline.strong_augment(image, np.random.default_rng(seed))
    assert (out[:, :4] == out[:1, :1]).all() and (out[:, 4:] == out[:1, 4:5]).all()
    assert (_edge_columns(out) == 3).all()
    assert not np.allclose(out, image / 255.0, atol=1e-3)


class _EdgeSplit:
  """Images with a vertical colour edge at a different column each."""

  def __len__(self):
    return 4

  def __getitem__(self, index):
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[:, :3 + index] = (40, 60, 200)
    image[:, 3 + index:] = (200, 180, 30)
    label = np.zeros((HEIGHT, WIDTH), np.uint8)
    label[:, 3 + index:] = 1
    return {"image": image, "label": label, "name": f"edge{index}"}


def test_strong_view_has_the_weak_geometry_and_leaves_the_weak_view_alone():
  split = _EdgeSplit()
  masks = RandomMasks(4, (HEIGHT, WIDTH))

  def loader(strong_view):
    return pipeline.target_train_loader(split, masks, batch_size=2, image_size=(HEIGHT, WIDTH),
                                        crop_size=(6, 10), seed=3, strong_view=strong_view)

  weak_only, both = _take(loader(False), 6), _take(loader(True), 6)
  for a, b in zip(weak_only, both):
    assert set(b) == set(a) | {"strong_image"}
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert b["strong_image"].shape == b["image"].shape and b["strong_image"].dtype == np.float32
    for row in range(2):
      weak = pipeline.denormalize_image(b["image"][row])
      strong = pipeline.denormalize_image(b["strong_image"][row])
      assert not np.array_equal(weak, strong)
      np.testing.assert_array_equal(_edge_columns(strong), _edge_columns(weak))


def test_source_strong_view_is_normalised_like_the_image():
  split = data.SyntheticSplit(SMALL, synthetic.SOURCE_TRAIN)
  batch = next(iter(pipeline.source_train_loader(split, batch_size=2, image_size=(16, 24),
                                                 seed=1, strong_view=True)))
  assert batch["strong_image"].shape == (2, 16, 24, 3)
  # Undo the normalisation: values lie in [0, 1] like strong_augment's output.
  pixels = batch["strong_image"] * pipeline.IMAGENET_STD + pipeline.IMAGENET_MEAN
  assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_resume_with_subset_crop_and_strong_view_is_exact():
  split = data.SyntheticSplit(SMALL, synthetic.TARGET_TRAIN)
  masks = RandomMasks(len(split), (SMALL.height, SMALL.width))

  def loader(worker_count=0):
    return pipeline.target_train_loader(split, masks, batch_size=2, image_size=(32, 48),
                                        crop_size=(16, 24), strong_view=True, seed=6,
                                        indices=[1, 2, 6, 7, 9], worker_count=worker_count)

  iterator = iter(loader())
  next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(4)]
  _assert_batches_equal(_take(loader(), 4, state), expected)
  # Worker processes receive the subset source and the view operations intact.
  in_process = _take(loader(), 3)
  iterator = iter(loader(worker_count=1))
  try:
    _assert_batches_equal(list(itertools.islice(iterator, 3)), in_process)
  finally:
    del iterator  # Stops the worker process.
    gc.collect()
