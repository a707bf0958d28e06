"""ViewAL's datasets: SEEDS superpixels, catalogue entries, preparing the procedural rooms, and
the ScanNet / SceneNet RGB-D / Matterport3D finders on miniature fakes of their layouts."""

import contextlib
import io
import os
import shutil
import zipfile

import cv2
import numpy as np
from PIL import Image
import pytest

from ripu_jax.data import catalog
from ripu_jax.data import manual
from ripu_jax.data import pipeline
from ripu_jax.data import reader
from ripu_jax.methods.viewal import coverage
from ripu_jax.methods.viewal import datasets
from ripu_jax.methods.viewal import scenes
from ripu_jax.methods.viewal import scoring

RNG = np.random.default_rng(0)
TINY = dict(height=30, width=40, train_scenes=2, val_scenes=1, test_scenes=1,
            frames_per_scene=4)


@pytest.fixture(scope="module", autouse=True)
def registered():
  """The datasets in the catalogue for this module only (other tests list the built-ins)."""
  with contextlib.ExitStack() as stack:
    for space in datasets.LABEL_SPACES:
      if space.name not in catalog.LABEL_SPACES:
        stack.enter_context(catalog.LABEL_SPACES.temporary(space.name, space))
    for spec in datasets.dataset_specs():
      if spec.name not in catalog.DATASETS:
        stack.enter_context(catalog.DATASETS.temporary(spec.name, spec))
    yield


def _write(path, payload: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(payload)


def _png(array) -> bytes:
  ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
  assert ok
  return encoded.tobytes()


def _jpg(rgb) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(rgb).save(buffer, format="JPEG", quality=98)
  return buffer.getvalue()


def _matrix_text(matrix) -> bytes:
  return "\n".join(" ".join(f"{v:.9g}" for v in row) for row in matrix).encode()


def _smooth_rgb(height, width):
  v, u = np.mgrid[:height, :width]
  base = RNG.integers(40, 200, 3)
  return np.clip(base + np.stack([u * 3, v * 3, (u + v) * 2], -1), 0, 255).astype(np.uint8)


def _pose():
  angle = RNG.uniform(0, 2 * np.pi)
  pose = np.eye(4)
  pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0],
                  [-np.sin(angle), 0, np.cos(angle)]]
  pose[:3, 3] = RNG.uniform(-3, 3, 3)
  return pose


def _nearest(array, size):
  return np.asarray(Image.fromarray(array).resize((size[1], size[0]), Image.NEAREST))


def _copy(root, tmp_path, name):
  target = str(tmp_path / name)
  shutil.copytree(root, target)
  return target


# ----------------------------------------------------------------------------- SEEDS


def test_seeds_count_ids_determinism_and_edges():
  image = scenes.generate_frame(scenes.ViewalSyntheticConfig(), "train", 3,
                                superpixels=False)["image"]
  ids = datasets.seeds_superpixels(image)
  assert ids.dtype == np.int32 and ids.shape == (240, 320)
  count = len(np.unique(ids))
  assert np.unique(ids).tolist() == list(range(count))
  assert 30 <= count <= 50  # 40 asked; OpenCV's grid gives 48 at this size.
  np.testing.assert_array_equal(ids, datasets.seeds_superpixels(image))
  small = datasets.seeds_superpixels(image[::4, ::4].copy(), num_superpixels=10)
  assert 5 <= len(np.unique(small)) <= 15
  # A vertical edge 13 pixels into a column of 40-pixel blocks: the superpixels follow it.
  edge = 133
  two = np.zeros((240, 320, 3), np.uint8)
  two[:, :edge], two[:, edge:] = (200, 40, 40), (30, 60, 200)
  two = np.clip(two + RNG.normal(0, 4, two.shape), 0, 255).astype(np.uint8)
  ids = datasets.seeds_superpixels(two)
  left = np.zeros((240, 320), bool)
  left[:, :edge] = True
  sides = [((ids == s) & left).sum() for s in range(ids.max() + 1)]
  others = [((ids == s) & ~left).sum() for s in range(ids.max() + 1)]
  straddling = sum(a > 0 and b > 0 for a, b in zip(sides, others))
  misplaced = sum(min(a, b) for a, b in zip(sides, others))
  assert straddling <= 2 and misplaced < 0.01 * left.size  # A plain grid: 6 and 3120 pixels.
  with pytest.raises(ValueError, match="RGB uint8"):
    datasets.seeds_superpixels(image.astype(np.float32))


# ----------------------------------------------------------------------------- catalogue


def test_catalogue_names_spaces_roles_and_features():
  spaces = {datasets.SYNTHETIC: ("viewal_synthetic", 9), datasets.SCANNET: ("nyu40", 40),
            datasets.SCENENET: ("nyu13", 13), datasets.MATTERPORT: ("nyu40", 40)}
  for name, (space_name, count) in spaces.items():
    spec = catalog.get(name)
    space = catalog.run_label_space(None, name)
    assert space.name == space_name and space.num_classes == count
    assert space.eval_sets["miou"] == tuple(range(count))
    table = catalog.label_map(name, space)
    assert table[:count].tolist() == list(range(count)) and (table[count:] == 255).all()
    assert spec.splits == ("train", "val", "test")
    assert spec.split_for("target_train") == "train" and spec.split_for("target_val") == "val"
    assert dict(spec.features) == {"depth": "depth", "superpixels": "superpixels",
                                   "pose": "pose", "intrinsics": "intrinsics", "scene": "scene"}
    assert spec.generated == (name == datasets.SYNTHETIC)
  assert catalog.label_space("nyu40").class_names[:3] == ("wall", "floor", "cabinet")
  assert catalog.label_space("nyu13").class_names[-1] == "window"
  assert "scannetv2-labels.combined.tsv" in catalog.get("scannet").help
  assert "label13/<frame>.png" in catalog.get("scenenet_rgbd").help
  assert "0.25 mm" in catalog.get("matterport3d").help
  datasets.register_datasets()  # Already registered: no error.
  assert datasets.shift_class_ids(np.array([0, 1, 40, 41, 255]), 40).tolist() == [
      255, 0, 39, 255, 255]


def test_generated_split_through_the_catalogue_and_pipeline():
  split = catalog.open_role("viewal_synthetic", "target_train", **TINY)
  assert isinstance(split, datasets.ViewalSyntheticSplit) and len(split) == 8
  assert split.scene_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
  assert split.scene_names == ("scene0000", "scene0001", "scene0002", "scene0003")
  assert len(split.seed_indices) == 3 and split.name(5) == "scene0001/frame001"
  assert {k: v.tolist() for k, v in datasets.scene_frames(split).items()} == {
      0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}
  val = catalog.open_role("viewal_synthetic", "target_val", **TINY)
  assert val.scene_ids.tolist() == [2] * 4 and len(val.seed_indices) == 0
  assert split.class_presence.shape == (8, 9)
  batch = next(iter(pipeline.eval_loader(split, batch_size=4, image_size=(30, 40),
                                         num_devices=1)))
  assert batch["scene"].dtype == np.int32 and batch["scene"].tolist() == [0, 0, 0, 0]
  assert batch["depth"].shape == (4, 30, 40) and batch["superpixels"].dtype == np.int32
  assert batch["pose"].shape == (4, 4, 4) and batch["intrinsics"].shape == (4, 3, 3)
  # Crops and flips move K and the dense maps, never the scene or the pose.
  masks = [np.ones((30, 40), bool)] * len(split)
  loader = pipeline.target_train_loader(split, masks, batch_size=4, image_size=(30, 40),
                                        crop_size=(20, 24), seed=1)
  batch = next(iter(loader))
  assert batch["scene"].tolist() == split.scene_ids[batch["index"]].tolist()
  assert batch["depth"].shape == (4, 20, 24)
  np.testing.assert_array_equal(batch["pose"], [split[i]["pose"] for i in batch["index"]])
  # Halving the label grid halves K; scene and pose pass unchanged.
  batch = next(iter(pipeline.eval_loader(split, batch_size=2, image_size=(30, 40),
                                         label_size=(15, 20), num_devices=1)))
  np.testing.assert_allclose(batch["intrinsics"][0, :2], split[0]["intrinsics"][:2] / 2)
  np.testing.assert_array_equal(batch["pose"][0], split[0]["pose"])


# ----------------------------------------------------------------------------- preparing


def test_prepare_synthetic_matches_the_generator_and_runs_the_hook(tmp_path, capsys):
  data_dir = str(tmp_path / "prepared")
  argv = ["--dataset", "viewal_synthetic", "--data_dir", data_dir, "--no_progress"]
  argv += [f"--{key}={value}" for key, value in TINY.items()]
  assert datasets.main(argv) == 0
  assert "viewal_synthetic is ready" in capsys.readouterr().out
  calls = []
  config = scenes.ViewalSyntheticConfig(**TINY)
  directory = datasets.prepare_dataset(
      "viewal_synthetic", data_dir=data_dir, config=config,
      post_prepare=lambda folder, splits: calls.append((folder, splits)))
  assert directory == os.path.join(data_dir, "viewal_synthetic", config.name, "1.0.0")
  assert len(calls) == 1 and calls[0][0] == directory
  assert {name: len(split) for name, split in calls[0][1].items()} == {
      "train": 8, "val": 4, "test": 4}
  prepared = catalog.open_role("viewal_synthetic", "target_train", data_dir=data_dir,
                               prepared=True, **TINY)
  generated = catalog.open_role("viewal_synthetic", "target_train", **TINY)
  assert isinstance(prepared, reader.PreparedSplit)
  for index in (0, 5):
    ours, theirs = prepared[index], generated[index]
    assert ours["name"] == theirs["name"]
    for key in ("image", "label", "depth", "superpixels", "pose", "intrinsics", "scene"):
      np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(theirs[key]), key)
  np.testing.assert_array_equal(prepared.scene_ids, generated.scene_ids)
  np.testing.assert_array_equal(prepared.seed_indices, generated.seed_indices)
  assert prepared.scene_names == generated.scene_names
  np.testing.assert_array_equal(prepared.class_presence, generated.class_presence)
  # The coverage tables were written at prepare time, one per scene, and read back as the
  # table of the scene's frames; the generated split computes the same ones.
  tables = sorted(os.listdir(os.path.join(directory, coverage.FOLDER)))
  assert tables == sorted(f"{name}.npz" for name in prepared.scene_names)
  for scene in np.unique(prepared.scene_ids):
    frames = [generated[int(i)] for i in np.flatnonzero(generated.scene_ids == scene)]
    superpixels = np.stack([f["superpixels"] for f in frames])
    want = scoring.coverage_table(
        *(np.stack([f[k] for f in frames]) for k in ("depth", "intrinsics", "pose")),
        superpixels, int(superpixels.max()) + 1)
    np.testing.assert_array_equal(prepared.scene_coverage(scene), np.asarray(want))
    np.testing.assert_array_equal(generated.scene_coverage(scene), np.asarray(want))
    assert generated.scene_coverage(scene) is generated.scene_coverage(scene)  # kept
  # Another visibility threshold: computed from the frames, not read.
  other = prepared.scene_coverage(0, distance_threshold=0.01)
  assert other.sum() < prepared.scene_coverage(0).sum()


def test_missing_or_foreign_coverage_tables_say_how_to_write_them(tmp_path):
  data_dir = str(tmp_path / "prepared")
  config = scenes.ViewalSyntheticConfig(**dict(TINY, seed=3))
  directory = datasets.prepare_dataset("viewal_synthetic", data_dir=data_dir, config=config)
  split = catalog.open_role("viewal_synthetic", "target_train", data_dir=data_dir,
                            prepared=True, **dict(TINY, seed=3))
  path = coverage.table_path(directory, split.scene_names[0])
  with np.load(path) as stored:
    kept = dict(stored)
  os.remove(path)
  with pytest.raises(coverage.CoverageMissingError) as error:
    split.scene_coverage(0)
  assert "python -m ripu_jax.methods.viewal.prepare --dataset viewal_synthetic" in str(
      error.value) and "--seed 3" in str(error.value)
  # An interrupted write leaves only a partial file, which does not count as a table.
  with open(path + ".partial.npz", "wb") as f:
    f.write(b"half")
  assert coverage.write_tables(directory, [split]) == 1  # only the missing one
  np.testing.assert_array_equal(split.scene_coverage(0), kept["cov"])
  np.savez(path, cov=kept["cov"], frames=np.asarray(["other"] * len(kept["frames"])),
           distance_threshold=kept["distance_threshold"])
  with pytest.raises(ValueError, match="other frames"):
    split.scene_coverage(0)


def test_interrupted_prepare_leaves_nothing_prepared(tmp_path, monkeypatch):
  real = scenes.generate_frame
  calls = []

  def failing(config, split, index, superpixels=True):
    calls.append(index)
    if len(calls) > 3:
      raise KeyboardInterrupt
    return real(config, split, index, superpixels)

  monkeypatch.setattr(scenes, "generate_frame", failing)
  data_dir = str(tmp_path / "prepared")
  config = scenes.ViewalSyntheticConfig(**dict(TINY, seed=5))
  with pytest.raises(KeyboardInterrupt):
    datasets.prepare_dataset("viewal_synthetic", data_dir=data_dir, config=config)
  finished = [root for root, _, files in os.walk(data_dir) if "dataset_info.json" in files]
  assert not finished
  with pytest.raises(catalog.DatasetNotPreparedError) as error:
    catalog.open_role("viewal_synthetic", "target_train", data_dir=data_dir, prepared=True,
                      **dict(TINY, seed=5))
  assert "needs no download" in str(error.value)
  assert "python -m ripu_jax.methods.viewal.prepare --dataset viewal_synthetic" in str(
      error.value) and "--seed 5" in str(error.value)


# ----------------------------------------------------------------------------- ScanNet

SCANS = ("scene0000_00", "scene0001_00", "scene0002_01")
# Raw ScanNet ids -> NYU40 ids, as the tsv maps them (7 has no NYU40 class: 0).
TSV_ROWS = {1: 1, 2: 5, 40: 40, 300: 7, 1163: 22, 7: 0}
SCANNET_K = np.array([[14.0, 0, 7.5, 0], [0, 14.0, 5.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def scannet_fake(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("scannet"))
  rows = ["id\traw_category\tcategory\tcount\tnyu40id\teigen13id"]
  rows += [f"{raw}\tthing{raw}\tthing\t3\t{nyu if nyu else ''}\t1"
           for raw, nyu in TSV_ROWS.items()]
  _write(os.path.join(root, datasets.SCANNET_TSV), "\n".join(rows).encode())
  truth = {}
  raw_ids = np.array(list(TSV_ROWS) + [555], np.uint16)  # 555: not in the tsv.
  for scan in SCANS:
    base = os.path.join(root, "scans", scan)
    _write(os.path.join(base, "intrinsic", "intrinsic_depth.txt"), _matrix_text(SCANNET_K))
    _write(os.path.join(base, "intrinsic", "intrinsic_color.txt"), _matrix_text(SCANNET_K * 2))
    archive = zipfile.ZipFile(os.path.join(base, f"{scan}_2d-label-filt.zip"), "w") if (
        scan == SCANS[2]) else None
    for frame in (0, 10, 35):
      image, pose = _smooth_rgb(24, 32), _pose()
      depth = RNG.integers(0, 5000, (12, 16)).astype(np.uint16)
      raw = RNG.choice(raw_ids, (24, 32)).astype(np.uint16)
      _write(os.path.join(base, "color", f"{frame}.jpg"), _jpg(image))
      if frame == 10:
        continue  # Not a multiple of 35: never read, so its other files may be missing.
      _write(os.path.join(base, "depth", f"{frame}.png"), _png(depth))
      _write(os.path.join(base, "pose", f"{frame}.txt"), _matrix_text(pose))
      if archive is not None:
        archive.writestr(f"label-filt/{frame}.png", _png(raw))
      else:
        _write(os.path.join(base, "label-filt", f"{frame}.png"), _png(raw))
      truth[f"{scan}_{frame:06d}"] = (image, depth, raw, pose)
    if archive is not None:
      archive.close()
  return root, truth


def _expected_nyu(raw):
  table = np.zeros(1 << 16, np.int64)
  for key, value in TSV_ROWS.items():
    table[key] = value
  return datasets.shift_class_ids(table[raw], 40)


def test_scannet_finder_pairs_splits_and_decodes(scannet_fake):
  root, truth = scannet_fake
  tree = manual.FileTree(root)
  found = datasets.find_scannet(tree)
  names = {split: [f.name for f in frames] for split, frames in found.items()}
  assert sorted(sum(names.values(), [])) == sorted(truth)
  by_scene = {split: {f.scene for f in frames} for split, frames in found.items()}
  assert all(len(scenes_) == 1 for scenes_ in by_scene.values())  # Scene-level: 1/1/1.
  assert set().union(*by_scene.values()) == set(SCANS)
  assert found.seed_names is None
  frame = next(f for frames in found.values() for f in frames if f.scene == SCANS[2])
  assert frame.label.archive is not None  # Read from the label zip.
  for frames in found.values():
    for frame in frames:
      image, depth, raw, pose = truth[frame.name]
      example = datasets.load_frame("scannet", tree, frame, size=(12, 16))
      np.testing.assert_array_equal(example["depth"], depth.astype(np.float32) / 1000)
      assert example["depth"].dtype == np.float32
      np.testing.assert_array_equal(example["label"], _nearest(_expected_nyu(raw), (12, 16)))
      np.testing.assert_allclose(example["pose"], pose, atol=1e-6)
      np.testing.assert_allclose(example["intrinsics"], SCANNET_K[:3, :3])  # Depth grid.
      full = datasets.load_frame("scannet", tree, frame)
      assert full["image"].shape == (240, 320, 3) and full["label"].shape == (240, 320)
      # The depth K (of 12x16 depth images here; 640x480 in ScanNet) rescaled to 320x240.
      np.testing.assert_allclose(full["intrinsics"], SCANNET_K[:3, :3] * [[20], [20], [1]],
                                 rtol=1e-6)
      assert np.abs(_nearest(image, (12, 16)).astype(int) -
                    datasets.load_frame("scannet", tree, frame, size=(24, 32))["image"][
                        ::2, ::2]).mean() < 12
  tree.close()


def test_scannet_missing_folder_file_and_table(scannet_fake, tmp_path):
  root, _ = scannet_fake
  no_depth = _copy(root, tmp_path, "no_depth")
  for scan in SCANS:
    shutil.rmtree(os.path.join(no_depth, "scans", scan, "depth"))
  with pytest.raises(manual.ManualDataError, match=r"No ScanNet depth frames.*\n.*ScanNet v2"):
    datasets.find_scannet(manual.FileTree(no_depth))
  no_pose = _copy(root, tmp_path, "no_pose")
  os.remove(os.path.join(no_pose, "scans", SCANS[1], "pose", "35.txt"))
  with pytest.raises(manual.ManualDataError, match=f"{SCANS[1]}_000035: no pose"):
    datasets.find_scannet(manual.FileTree(no_pose))
  lost = _copy(root, tmp_path, "lost_tracking")  # ScanNet marks lost tracking with -inf.
  _write(os.path.join(lost, "scans", SCANS[0], "pose", "35.txt"),
         _matrix_text(np.full((4, 4), -np.inf)))
  tree = manual.FileTree(lost)
  frame = next(f for frames in datasets.find_scannet(tree).values() for f in frames
               if f.name == f"{SCANS[0]}_000035")
  assert datasets.load_frame("scannet", tree, frame) is None
  no_tsv = _copy(root, tmp_path, "no_tsv")
  os.remove(os.path.join(no_tsv, datasets.SCANNET_TSV))
  with pytest.raises(manual.ManualDataError, match="scannetv2-labels.combined.tsv"):
    datasets.find_scannet(manual.FileTree(no_tsv))
  (tmp_path / "empty").mkdir()
  with pytest.raises(manual.ManualDataError, match=r"is empty.\n(.|\n)*color/<frame>.jpg"):
    datasets.prepare_dataset("scannet", manual_dir=str(tmp_path / "empty"),
                             data_dir=str(tmp_path / "prepared"))


def test_scannet_lists_choose_frames_and_the_seed_set(scannet_fake, tmp_path, caplog):
  root = _copy(scannet_fake[0], tmp_path, "listed")
  lists = {"train_frames.txt": [f"{SCANS[0]}_000000", f"{SCANS[0]}_000035",
                                f"{SCANS[1]}_000000", f"{SCANS[1]}_000070"],
           "val_frames.txt": [f"{SCANS[2]}_000000"], "test_frames.txt": [f"{SCANS[2]}_000035"],
           "seedset_0_frames.txt": [f"{SCANS[1]}_000000"]}
  for name, lines in lists.items():
    _write(os.path.join(root, "selections", name), "\n".join(lines).encode())
  found = datasets.find_scannet(manual.FileTree(root))
  assert [f.name for f in found["train"]] == lists["train_frames.txt"][:3]
  assert "not in the download" in caplog.text  # scene0001_00_000070 has no files.
  assert [f.name for f in found["test"]] == lists["test_frames.txt"]
  assert found.seed_names == lists["seedset_0_frames.txt"]
  names = [f.name for f in found["train"]]
  assert datasets.seed_set(names, found.seed_names).tolist() == [2]
  assert len(datasets.seed_set([f"f{i}" for i in range(1000)])) == 15
  os.remove(os.path.join(root, "selections", "val_frames.txt"))
  with pytest.raises(manual.ManualDataError, match="val_frames.txt missing"):
    datasets.find_scannet(manual.FileTree(root))


def test_prepare_scannet_at_the_working_size(scannet_fake, tmp_path):
  root, truth = scannet_fake
  data_dir = str(tmp_path / "prepared")
  datasets.prepare_dataset("scannet", manual_dir=root, data_dir=data_dir)
  split = catalog.open_role("scannet", "target_train", data_dir=data_dir)
  assert len(split) == 2 and split.seed_indices.tolist() == [0, 1]  # At least 3: all of 2.
  assert split.scene_names == SCANS and len(set(split.scene_ids.tolist())) == 1
  example = split[1]
  _, depth, raw, pose = truth[example["name"]]
  assert example["image"].shape == (240, 320, 3) and example["superpixels"].shape == (240, 320)
  np.testing.assert_array_equal(example["depth"],
                                _nearest(depth.astype(np.float32) / 1000, (240, 320)))
  np.testing.assert_array_equal(example["label"], _nearest(_expected_nyu(raw), (240, 320)))
  np.testing.assert_allclose(example["pose"], pose, atol=1e-6)
  assert int(example["scene"]) == split.scene_ids[1]
  ids = np.unique(example["superpixels"])
  assert ids.tolist() == list(range(len(ids)))
  table = split.scene_coverage(int(split.scene_ids[0]))
  num_superpixels = max(int(split[i]["superpixels"].max()) for i in range(2)) + 1
  assert table.shape == (2, num_superpixels, 2, num_superpixels)


# ----------------------------------------------------------------------------- SceneNet RGB-D


@pytest.fixture(scope="module")
def scenenet_fake(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("scenenet"))
  truth = {}
  for source, part, trajectory in (("train", 0, 7), ("train", 1, 1003), ("val", 0, 12)):
    base = os.path.join(root, source, str(part), str(trajectory))
    for frame in (0, 25, 250):
      image, pose = _smooth_rgb(24, 32), _pose()
      depth = RNG.integers(0, 9000, (24, 32)).astype(np.uint16)
      raw = RNG.integers(0, 16, (24, 32)).astype(np.uint8)
      _write(os.path.join(base, "photo", f"{frame}.jpg"), _jpg(image))
      _write(os.path.join(base, "depth", f"{frame}.png"), _png(depth))
      _write(os.path.join(base, "instance", f"{frame}.png"), _png(raw))
      _write(os.path.join(base, "label13", f"{frame}.png"), _png(raw))
      _write(os.path.join(base, "pose", f"{frame}.txt"), _matrix_text(pose))
      truth[(source, f"{part:02d}_{trajectory:05d}_{frame:04d}")] = (depth, raw, pose)
  return root, truth


def test_scenenet_finder_splits_and_decodes(scenenet_fake, tmp_path):
  root, truth = scenenet_fake
  tree = manual.FileTree(root)
  found = datasets.find_scenenet_rgbd(tree)
  assert [f.name for f in found["train"]] == ["00_00007_0000", "00_00007_0250",
                                              "01_01003_0000", "01_01003_0250"]
  assert [f.name for f in found["val"]] == [f.name for f in found["test"]] == [
      "00_00012_0000", "00_00012_0250"]
  assert {f.scene for f in found["train"]} == {"train/00_00007", "train/01_01003"}
  for split, frames in found.items():
    for frame in frames:
      depth, raw, pose = truth[("train" if split == "train" else "val", frame.name)]
      example = datasets.load_frame("scenenet_rgbd", tree, frame, size=(24, 32))
      np.testing.assert_array_equal(example["depth"], depth.astype(np.float32) / 1000)
      np.testing.assert_array_equal(example["label"], datasets.shift_class_ids(raw, 13))
      assert example["label"].max() == 255 and example["label"][raw == 13].tolist() == [12] * (
          raw == 13).sum()
      np.testing.assert_allclose(example["pose"], pose, atol=1e-6)
      np.testing.assert_allclose(example["intrinsics"],
                                 datasets.SCENENET_INTRINSICS * [[0.1], [0.1], [1]], rtol=1e-6)
  full = datasets.load_frame("scenenet_rgbd", tree, found["train"][0])
  np.testing.assert_allclose(full["intrinsics"], [[277.13, 0, 160], [0, 289.71, 120], [0, 0, 1]],
                             atol=0.01)
  tree.close()
  no_labels = _copy(root, tmp_path, "no_labels")
  for folder, _, _ in list(os.walk(no_labels)):
    if os.path.basename(folder) == "label13":
      shutil.rmtree(folder)
  with pytest.raises(manual.ManualDataError, match=r"exported labels.*label13"):
    datasets.find_scenenet_rgbd(manual.FileTree(no_labels))
  missing = _copy(root, tmp_path, "missing_depth")
  os.remove(os.path.join(missing, "val", "0", "12", "depth", "250.png"))
  with pytest.raises(manual.ManualDataError, match="00_00012_0250: no depth"):
    datasets.find_scenenet_rgbd(manual.FileTree(missing))


# ----------------------------------------------------------------------------- Matterport3D

HOUSES = ("17DRP5sb8fy", "1LXtFkjw3qL")
MATTERPORT_K = np.array([[18.0, 0, 9.5], [0, 18.0, 8.0], [0, 0, 1]])


@pytest.fixture(scope="module")
def matterport_fake(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("matterport"))
  truth = {}
  for house in HOUSES:
    base = os.path.join(root, "v1", "scans", house)
    os.makedirs(base)
    archive = zipfile.ZipFile(os.path.join(base, "undistorted_color_images.zip"), "w") if (
        house == HOUSES[1]) else None
    lines = ["dataset matterport", "n_images 2", "depth_directory undistorted_depth_images",
             "color_directory undistorted_color_images",
             "intrinsics_matrix " + " ".join(f"{v:g}" for v in MATTERPORT_K.ravel())]
    for pano, camera, yaw in (("a1b2", 0, 0), ("a1b2", 1, 2)):
      stem, depth_name = f"{pano}_i{camera}_{yaw}", f"{pano}_d{camera}_{yaw}.png"
      image, pose = _smooth_rgb(16, 20), _pose()
      depth = RNG.integers(0, 40000, (16, 20)).astype(np.uint16)
      raw = RNG.integers(0, 42, (16, 20)).astype(np.uint8)
      if archive is not None:
        archive.writestr(f"{house}/undistorted_color_images/{stem}.jpg", _jpg(image))
      else:
        _write(os.path.join(base, "undistorted_color_images", f"{stem}.jpg"), _jpg(image))
      _write(os.path.join(base, "undistorted_depth_images", depth_name), _png(depth))
      _write(os.path.join(base, "nyu40_labels", f"{stem}.png"), _png(raw))
      lines.append(f"scan {depth_name} {stem}.jpg " + " ".join(f"{v:.9g}" for v in pose.ravel()))
      truth[f"{house}_{stem}"] = (depth, raw, pose)
    if archive is not None:
      archive.close()
    _write(os.path.join(base, "undistorted_camera_parameters", f"{house}.conf"),
           "\n".join(lines).encode())
  names = sorted(truth)
  lists = {"train_frames.txt": names[:2], "val_frames.txt": names[2:3],
           "test_frames.txt": names[3:], "seedset_0_frames.txt": names[1:2]}
  for name, entries in lists.items():
    _write(os.path.join(root, "selections", name), "\n".join(entries).encode())
  return root, truth, lists


def test_matterport_finder_cameras_units_and_lists(matterport_fake, tmp_path):
  root, truth, lists = matterport_fake
  tree = manual.FileTree(root)
  found = datasets.find_matterport3d(tree)
  assert {split: [f.name for f in frames] for split, frames in found.items()} == {
      "train": lists["train_frames.txt"], "val": lists["val_frames.txt"],
      "test": lists["test_frames.txt"]}
  assert found.seed_names == lists["seedset_0_frames.txt"]
  assert found["train"][0].scene == HOUSES[0] and found["test"][0].image.archive is not None
  flip = np.diag([1.0, -1.0, -1.0, 1.0])
  for frames in found.values():
    for frame in frames:
      depth, raw, pose = truth[frame.name]
      example = datasets.load_frame("matterport3d", tree, frame, size=(16, 20))
      np.testing.assert_allclose(example["depth"], depth.astype(np.float32) / 4000, rtol=1e-6)
      np.testing.assert_array_equal(example["label"], datasets.shift_class_ids(raw, 40))
      np.testing.assert_allclose(example["pose"], pose @ flip, atol=1e-6)
      np.testing.assert_allclose(example["intrinsics"], MATTERPORT_K)
      full = datasets.load_frame("matterport3d", tree, frame)
      np.testing.assert_allclose(full["intrinsics"], MATTERPORT_K * [[16], [15], [1]],
                                 rtol=1e-6)  # 20 -> 320 wide, 16 -> 240 high.
  tree.close()
  unlisted = _copy(root, tmp_path, "unlisted")
  shutil.rmtree(os.path.join(unlisted, "selections"))
  with pytest.raises(manual.ManualDataError, match="at least 3 scenes"):
    datasets.find_matterport3d(manual.FileTree(unlisted))
  no_label = _copy(root, tmp_path, "no_label")
  os.remove(os.path.join(no_label, "v1", "scans", HOUSES[0], "nyu40_labels", "a1b2_i1_2.png"))
  with pytest.raises(manual.ManualDataError, match=f"{HOUSES[0]}_a1b2_i1_2: no label"):
    datasets.find_matterport3d(manual.FileTree(no_label))
  no_conf = _copy(root, tmp_path, "no_conf")
  shutil.rmtree(os.path.join(no_conf, "v1", "scans", HOUSES[1], "undistorted_camera_parameters"))
  with pytest.raises(manual.ManualDataError, match=f"camera parameters of 1 house.*{HOUSES[1]}"):
    datasets.find_matterport3d(manual.FileTree(no_conf))


def test_a_run_on_a_missing_scannet_suggests_viewals_synthetic_rooms(tmp_path):
  with pytest.raises(catalog.DatasetNotPreparedError) as error:
    catalog.open_run_splits(None, "scannet", data_dir=str(tmp_path))
  text = str(error.value)
  assert "python -m ripu_jax.methods.viewal.prepare --dataset scannet" in text
  assert text.endswith("Or try the method without downloads: python -m ripu_jax.main "
                       "--config configs/viewal/synthetic.py --workdir /tmp/viewal")
