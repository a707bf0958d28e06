"""The procedural multi-view rooms: determinism, conventions, geometry that reprojects."""

import dataclasses

import numpy as np
import pytest

from ripu_jax.methods.viewal import scenes

# 3 train scenes of 6 frames at 60x80: enough views for overlap statistics, fast.
CONFIG = scenes.ViewalSyntheticConfig(height=60, width=80, train_scenes=3, val_scenes=1,
                                      test_scenes=1, frames_per_scene=6)
# Visibility tolerance of the reprojection checks. The geometry is exact, so it only has to
# absorb rounding to the nearest pixel (a few centimetres at this size).
TOLERANCE = 0.05


@pytest.fixture(scope="module")
def frames():
  return [scenes.generate_frame(CONFIG, "train", i) for i in range(CONFIG.num_frames("train"))]


def _by_scene(frames):
  return [frames[s * CONFIG.frames_per_scene:(s + 1) * CONFIG.frames_per_scene]
          for s in range(CONFIG.train_scenes)]


def _lift(depth, k, pose):
  """[H, W, 3] world points of every pixel (integer pixel coordinates, no half-pixel shift)."""
  height, width = depth.shape
  v, u = np.mgrid[:height, :width]
  d = depth.astype(np.float64)
  camera = np.stack([u * d, v * d, d], -1) @ np.linalg.inv(k.astype(np.float64)).T
  pose = pose.astype(np.float64)
  return camera @ pose[:3, :3].T + pose[:3, 3]


def _reproject(source, target, tolerance=TOLERANCE):
  """Labels of `source`'s valid pixels that land visibly in `target`, and the labels of the
  target pixels they land on; also the number of valid source pixels."""
  valid = source["depth"] > 0
  points = _lift(source["depth"], source["intrinsics"], source["pose"])[valid]
  labels = source["label"][valid]
  pose = target["pose"].astype(np.float64)
  projected = ((points - pose[:3, 3]) @ pose[:3, :3]) @ target["intrinsics"].astype(
      np.float64).T
  front = projected[:, 2] > 1e-6
  z = np.where(front, projected[:, 2], 1.0)
  u, v = np.rint(projected[:, 0] / z).astype(int), np.rint(projected[:, 1] / z).astype(int)
  height, width = target["depth"].shape
  inside = front & (u >= 0) & (u < width) & (v >= 0) & (v < height)
  u, v, points, labels = u[inside], v[inside], points[inside], labels[inside]
  own = _lift(target["depth"], target["intrinsics"], pose)[v, u]
  visible = (target["depth"][v, u] > 0) & (np.linalg.norm(own - points, axis=1) < tolerance)
  return labels[visible], target["label"][v[visible], u[visible]], int(valid.sum())


def test_same_seed_same_bytes_and_seed_matters():
  first = scenes.generate_frame(CONFIG, "train", 4)
  again = scenes.generate_frame(dataclasses.replace(CONFIG), "train", 4)
  for key in ("image", "label", "depth", "pose", "intrinsics", "superpixels"):
    assert np.asarray(first[key]).tobytes() == np.asarray(again[key]).tobytes(), key
  other = scenes.generate_frame(dataclasses.replace(CONFIG, seed=1), "train", 4)
  assert other["image"].tobytes() != first["image"].tobytes()
  assert not np.allclose(other["pose"], first["pose"])


def test_shapes_dtypes_names_and_camera_conventions(frames):
  h, w = CONFIG.height, CONFIG.width
  example = frames[7]
  assert example["image"].shape == (h, w, 3) and example["image"].dtype == np.uint8
  assert example["label"].shape == (h, w) and example["label"].dtype == np.uint8
  assert example["depth"].shape == (h, w) and example["depth"].dtype == np.float32
  assert example["superpixels"].shape == (h, w) and example["superpixels"].dtype == np.int32
  assert example["pose"].shape == (4, 4) and example["pose"].dtype == np.float32
  assert example["intrinsics"].shape == (3, 3) and example["intrinsics"].dtype == np.float32
  assert example["scene"].dtype == np.int32 and int(example["scene"]) == 1
  assert example["name"] == "scene0001/frame001"
  np.testing.assert_allclose(example["intrinsics"], scenes.intrinsics(h, w))
  assert example["intrinsics"][0, 2] == (w - 1) / 2 and example["intrinsics"][1, 2] == (h - 1) / 2
  for frame in frames:
    pose = frame["pose"].astype(np.float64)
    np.testing.assert_allclose(pose[:3, :3].T @ pose[:3, :3], np.eye(3), atol=1e-5)
    assert np.linalg.det(pose[:3, :3]) == pytest.approx(1.0, abs=1e-5)
    assert pose[3].tolist() == [0, 0, 0, 1]
    # OpenCV axes in a z-up world: the camera's y axis (down in the image) points downwards.
    assert pose[2, 1] < 0
  assert set(np.unique(np.concatenate([f["label"].ravel() for f in frames]))) <= (
      set(range(scenes.NUM_CLASSES)) | {scenes.IGNORE})


def test_depth_holes_ignore_labels_and_imbalanced_classes(frames):
  invalid = np.mean([(f["depth"] == 0).mean() for f in frames])
  assert 0.001 < invalid < 0.2
  assert all(f["depth"].max() <= scenes.MAX_DEPTH for f in frames)
  labels = np.stack([f["label"] for f in frames])
  assert 0 < (labels == scenes.IGNORE).mean() < 0.05
  counts = np.bincount(labels.ravel(), minlength=256)[:scenes.NUM_CLASSES]
  share = counts / counts.sum()
  assert share.max() > 0.3  # Walls dominate ...
  assert (share[share > 0] < 0.02).sum() >= 2  # ... and a few classes are small.
  assert (share > 0).sum() >= 6


def test_table_and_cabinet_share_their_colour():
  assert scenes.MATERIAL_OF_CLASS[scenes.TABLE] == scenes.MATERIAL_OF_CLASS[scenes.CABINET]
  config = dataclasses.replace(CONFIG, train_scenes=12)
  compared = 0
  for scene in _scenes_with_both(config):
    views = [scenes.generate_frame(config, "train", scene * config.frames_per_scene + f,
                                   superpixels=False) for f in range(config.frames_per_scene)]
    means = [np.concatenate([v["image"][v["label"] == c] for v in views]).mean(0)
             for c in (scenes.TABLE, scenes.CABINET, scenes.WALL)]
    assert np.abs(means[0] - means[1]).max() < 20, means
    compared += 1
  assert compared >= 2


def _scenes_with_both(config, classes=(scenes.TABLE, scenes.CABINET), minimum=30):
  """Scenes whose frames show at least `minimum` pixels of each class."""
  found = []
  for scene in range(config.train_scenes):
    counts = np.zeros(2, int)
    for f in range(config.frames_per_scene):
      label = scenes.generate_frame(config, "train", scene * config.frames_per_scene + f,
                                    superpixels=False)["label"]
      counts += [(label == c).sum() for c in classes]
    if (counts >= minimum).all():
      found.append(scene)
  return found


def test_shading_depends_on_the_viewpoint():
  # One point of the glossy floor, seen in the mirror direction of the lamp (a highlight) and
  # from the side: the same surface point takes another colour.
  scene = scenes.build_scene(0, 0, 4)
  light = scene.light
  point = np.array([[light[0] + 1.0, light[1] + 0.5, 0.0]])
  mirrored = point[0] + np.array([1.0, 0.5, light[2]]) * (1.5 / light[2])
  aside = point[0] + np.array([-1.2, 1.2, 1.5])
  colours = [scenes._shade(scene, origin, point, np.array([[0.0, 0.0, 1.0]]), np.array([-2]),
                           np.random.default_rng(0)) for origin in (mirrored, aside)]
  assert (colours[0] - colours[1]).min() > 0.1


def test_reprojected_labels_match_on_covisible_pixels(frames):
  # Frame j's labels, lifted with its depth and K, moved by the poses and projected into
  # frame i, must equal frame i's labels wherever i sees the same point. Rounding to the
  # nearest pixel can move a point across an outline where two surfaces touch (a picture on
  # its wall, a leg on the floor) and still pass the distance test; those few edge pixels are
  # the only mismatches allowed.
  matched = mismatched = 0
  for views in _by_scene(frames):
    for i, target in enumerate(views):
      for j, source in enumerate(views):
        if i != j:
          ours, theirs, _ = _reproject(source, target)
          matched += len(ours)
          mismatched += int((ours != theirs).sum())
  assert matched > 10000
  assert mismatched / matched < 0.01


def test_occluded_points_fail_the_visibility_test(frames):
  # With an unbounded tolerance, points hidden behind nearer surfaces land on pixels of other
  # surfaces and many labels disagree: the depth test is what rejects them.
  views = _by_scene(frames)[0]
  strict = loose = 0
  for i, j in ((0, 1), (1, 2), (2, 3)):
    ours, theirs, _ = _reproject(views[j], views[i], tolerance=np.inf)
    loose += (ours != theirs).mean()
    ours, theirs, _ = _reproject(views[j], views[i])
    strict += (ours != theirs).mean()
  assert loose > 3 * strict


def test_neighbours_share_pixels_and_distant_frames_none(frames):
  shares, disjoint = [], 0
  for views in _by_scene(frames):
    for i in range(len(views)):
      for j in range(len(views)):
        if i == j:
          continue
        ours, _, valid = _reproject(views[j], views[i], tolerance=0.15)
        if abs(i - j) == 1:
          shares.append(len(ours) / valid)
        disjoint += len(ours) == 0
  assert 0.3 <= np.mean(shares) <= 0.8, shares
  assert disjoint >= 3


def test_scene_level_splits_and_seed_set():
  config = scenes.ViewalSyntheticConfig()
  ranges = [set(config.scenes(split)) for split in scenes.SPLITS]
  assert ranges[0].isdisjoint(ranges[1]) and ranges[0].isdisjoint(ranges[2])
  assert ranges[1].isdisjoint(ranges[2])
  assert set().union(*ranges) == set(range(config.num_scenes))
  assert scenes.frame_of(config, "val", config.frames_per_scene + 2) == (
      config.train_scenes + 1, 2)
  seeds = scenes.seed_indices(config)
  count = config.num_frames("train")
  assert len(seeds) == round(0.015 * count) and seeds.tolist() == sorted(set(seeds.tolist()))
  assert seeds.max() < count
  np.testing.assert_array_equal(seeds, scenes.seed_indices(scenes.ViewalSyntheticConfig()))
  assert seeds.tolist() != scenes.seed_indices(dataclasses.replace(config, seed=2)).tolist()
  assert len(scenes.seed_indices(CONFIG)) == scenes.MIN_SEED_FRAMES
  with pytest.raises(ValueError, match="frames_per_scene"):
    scenes.ViewalSyntheticConfig(frames_per_scene=1)
  with pytest.raises(ValueError, match="unknown split"):
    config.scenes("dev")
  assert config.name == "default" and CONFIG.name == "s0_60x80_n3-1-1_f6"


def test_frames_carry_superpixels(frames):
  wanted = scenes.default_superpixel_count(CONFIG.height, CONFIG.width)
  for frame in frames[:4]:
    ids = np.unique(frame["superpixels"])
    assert ids.tolist() == list(range(len(ids)))
    assert wanted // 2 <= len(ids) <= 2 * wanted
  assert scenes.default_superpixel_count(240, 320) == 40
