"""Preparing miniature fakes of GTAV, SYNTHIA and Cityscapes in their original layouts."""

import io
import os
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
from PIL import Image
import pytest

from ripu_jax import data
from ripu_jax.data import labels
from ripu_jax.data import manual
from ripu_jax.data import prepare as prepare_lib
from ripu_jax.data import synthetic

RNG = np.random.default_rng(0)


def _rgb(height, width):
  return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png(array, palette=False) -> bytes:
  image = Image.fromarray(array)
  if palette:  # GTAV stores its label ids as palette indices.
    image.putpalette(list(RNG.integers(0, 256, 768, dtype=np.uint8)))
    assert image.mode == "P"
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


# PNG colour types by channel count: gray, gray+alpha, RGB, RGBA.
_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}


def _png16(array: np.ndarray) -> bytes:
  """A 16-bit PNG of an [H, W] or [H, W, C] array (SYNTHIA's labels are 16-bit RGB), written
  by hand so that no decoder under test also wrote it."""
  array = array[..., None] if array.ndim == 2 else array
  height, width, channels = array.shape
  rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

  def chunk(tag, payload):
    return (struct.pack(">I", len(payload)) + tag + payload +
            struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF))

  header = struct.pack(">IIBBBBB", width, height, 16, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) +
          chunk(b"IEND", b""))


def _write(path, payload: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(payload)


def _expected(raw_ids, table):
  return table[np.asarray(raw_ids)].astype(np.uint8)


# Label ids used in the fakes: mapped classes plus ids that must become 255.
GTAV_IDS = np.array([[7, 7, 8, 11, 26, 26, 33, 0, 34, 9],
                     [21, 23, 24, 17, 19, 20, 4, 14, 31, 32]], np.uint8)


def _id_map(height, width, ids):
  tiled = np.resize(ids.ravel(), height * width).reshape(height, width)
  return np.ascontiguousarray(np.roll(tiled, RNG.integers(0, 5), axis=1))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def gtav_fake(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("gtav_manual"))
  truth = {}
  archive_images = zipfile.ZipFile(os.path.join(root, "01_images.zip"), "w")
  archive_labels = zipfile.ZipFile(os.path.join(root, "01_labels.zip"), "w")
  for number, (image_shape, label_shape) in enumerate(
      [((6, 10), (6, 10)), ((8, 12), (6, 10)), ((6, 10), (6, 10))], start=1):
    name = f"{number:05d}.png"
    image, ids = _rgb(*image_shape), _id_map(*label_shape, GTAV_IDS)
    truth[name] = (image, _expected(ids, labels.CITYSCAPES_LOOKUP))
    if number < 3:  # Two pairs stay in the downloaded archives, one is extracted.
      archive_images.writestr(f"images/{name}", _png(image))
      archive_labels.writestr(f"labels/{name}", _png(ids, palette=True))
    else:
      _write(os.path.join(root, "images", name), _png(image))
      _write(os.path.join(root, "labels", name), _png(ids, palette=True))
  archive_images.close()
  archive_labels.close()
  # Stray files a real download folder may hold.
  _write(os.path.join(root, "labels", "00099.png"), _png(_id_map(6, 10, GTAV_IDS), True))
  _write(os.path.join(root, "images", "._00003.png"), b"\x00\x05\x16\x07junk")
  _write(os.path.join(root, ".DS_Store"), b"junk")
  _write(os.path.join(root, "readme.txt"), b"GTAV")
  return root, truth


# SYNTHIA class ids, and ids that must become 255: 0 and 22 (unmapped), 0x0103 and 0x0F09
# (whose low bytes alone read as the class ids 3 and 9), 0xFFFF. Keeping the high byte instead
# (PIL, OpenCV's 8-bit modes) turns every id below 256 into 0 = ignore.
SYNTHIA_IDS = np.array([[3, 4, 2, 21, 5, 7, 15, 9], [6, 1, 10, 17, 8, 19, 12, 11],
                        [0, 16, 18, 20, 22, 0x0103, 0x0F09, 0xFFFF]], np.uint16)


@pytest.fixture(scope="module")
def synthia_fake(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synthia_manual"))
  base = os.path.join(root, "RAND_CITYSCAPES")
  truth = {}
  for number in range(2):
    name = f"{number:07d}.png"
    image = _rgb(6, 8)
    ids = _id_map(6, 8, SYNTHIA_IDS)
    # The other channels hold other plausible ids, so reading the wrong channel (OpenCV's
    # BGR order) gives wrong train ids rather than an all-ignore label.
    instances = RNG.integers(0, 1000, (6, 8), dtype=np.uint16)
    label = np.stack([ids, instances, _id_map(6, 8, SYNTHIA_IDS[::-1])], axis=-1)
    _write(os.path.join(base, "RGB", name), _png(image))
    _write(os.path.join(base, "GT", "LABELS", name), _png16(label))
    _write(os.path.join(base, "GT", "COLOR", name), _png(_rgb(6, 8)))
    truth[name] = (image, _expected(ids, labels.SYNTHIA_LOOKUP))
  return root, truth


CITYSCAPES_IDS = np.array([[7, 8, 11, 12, 13, 17, 19, 20, 21, 22],
                           [23, 24, 25, 26, 27, 28, 31, 32, 33, 0],
                           [1, 2, 3, 4, 5, 6, 9, 10, 14, 15],
                           [16, 18, 29, 30, 7, 7, 26, 26, 24, 23]], np.uint8)


@pytest.fixture(scope="module")
def cityscapes_fake(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("cityscapes_manual"))
  truth = {"train": {}, "val": {}}
  left = zipfile.ZipFile(os.path.join(root, "leftImg8bit_trainvaltest.zip"), "w")
  fine = zipfile.ZipFile(os.path.join(root, "gtFine_trainvaltest.zip"), "w")
  left.writestr("README", "Cityscapes")
  fine.writestr("license.txt", "license")
  for split, city, frame in (("train", "aachen", "000000_000019"),
                             ("train", "bochum", "000000_000313"),
                             ("val", "frankfurt", "000000_000294"),
                             ("test", "berlin", "000000_000019")):
    stem = f"{city}_{frame}"
    image, ids = _rgb(8, 16), _id_map(8, 16, CITYSCAPES_IDS)
    left.writestr(f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", _png(image))
    prefix = f"gtFine/{split}/{city}/{stem}_gtFine"
    fine.writestr(f"{prefix}_labelIds.png", _png(ids))
    fine.writestr(f"{prefix}_color.png", _png(_rgb(8, 16)))
    fine.writestr(f"{prefix}_instanceIds.png", _png(ids))
    fine.writestr(f"{prefix}_polygons.json", "{}")
    if split in truth:
      truth[split][f"{stem}_leftImg8bit.png"] = (image, _expected(ids, labels.CITYSCAPES_LOOKUP))
  left.close()
  fine.close()
  return root, truth


def _check_split(split, truth: dict):
  assert len(split) == len(truth)
  assert [split[i]["name"] for i in range(len(split))] == sorted(truth)
  presence = split.class_presence
  for index, name in enumerate(sorted(truth)):
    image, train_ids = truth[name]
    example = split[index]
    assert example["image"].dtype == np.uint8 and example["label"].dtype == np.uint8
    np.testing.assert_array_equal(example["image"], image)
    np.testing.assert_array_equal(example["label"], train_ids)
    np.testing.assert_array_equal(split.label(index), train_ids)
    assert split.label_shape(index) == train_ids.shape
    np.testing.assert_array_equal(presence[index], labels.class_presence(train_ids))
  for class_id, images in enumerate(split.class_index):
    assert images.tolist() == np.flatnonzero(presence[:, class_id]).tolist()


def test_gtav_from_archives_and_folders(gtav_fake, data_dir):
  root, truth = gtav_fake
  directory = prepare_lib.prepare("gtav", manual_dir=root, data_dir=data_dir)
  assert directory == os.path.join(data_dir, "gtav", "1.0.0")
  split = data.open_split("gtav", "train", data_dir)
  _check_split(split, truth)  # The orphan label and the junk files were skipped.
  assert split[1]["image"].shape == (8, 12, 3) and split[1]["label"].shape == (6, 10)
  assert split.pixel_counts.sum() == sum(int((t[1] != 255).sum()) for t in truth.values())


def test_synthia_16bit_labels_first_channel(synthia_fake, data_dir):
  root, truth = synthia_fake
  prepare_lib.prepare("synthia", manual_dir=root, data_dir=data_dir)
  split = data.open_split("synthia", "train", data_dir)
  _check_split(split, truth)
  stored = np.unique(np.concatenate([split.label(i).ravel() for i in range(len(split))]))
  assert set(stored) - {255} == set(labels.SYNTHIA_CLASSES)


def _synthia_label_tree(root, payloads: dict) -> manual.FileTree:
  for name, payload in payloads.items():
    _write(os.path.join(root, "RAND_CITYSCAPES", "GT", "LABELS", name), payload)
  return manual.FileTree(root)


def test_synthia_label_decoding_is_exact_for_every_png_layout(tmp_path):
  ids = _id_map(6, 8, SYNTHIA_IDS)
  other = RNG.integers(0, 1 << 16, (6, 8, 3), dtype=np.uint16)
  layouts = {"gray.png": ids, "gray_alpha.png": np.dstack([ids, other[..., 0]]),
             "rgb.png": np.dstack([ids, other[..., :2]]), "rgba.png": np.dstack([ids, other])}
  tree = _synthia_label_tree(str(tmp_path), {n: _png16(a) for n, a in layouts.items()})
  for entry in tree.entries:
    np.testing.assert_array_equal(manual.load_synthia_train_ids(tree, entry),
                                  _expected(ids, labels.SYNTHIA_LOOKUP), err_msg=entry.name)


def test_synthia_label_that_is_not_16_bit_or_damaged_is_named(tmp_path):
  good = _png16(np.dstack([_id_map(6, 8, SYNTHIA_IDS)] * 3))
  tree = _synthia_label_tree(str(tmp_path), {
      "colour.png": _png(_rgb(6, 8)), "truncated.png": good[:60], "empty.png": b""})
  by_name = {entry.name: entry for entry in tree.entries}
  with pytest.raises(data.CorruptFileError, match=r"colour\.png holds uint8 .* expected a 16-bit"):
    manual.load_synthia_train_ids(tree, by_name["colour.png"])
  for name in ("truncated.png", "empty.png"):
    with pytest.raises(data.CorruptFileError, match=rf"Cannot decode the label .*{name}"):
      manual.load_synthia_train_ids(tree, by_name[name])


# Runs in a fresh interpreter where TensorFlow is not installed as far as anything can tell
# (imports fail and importlib.util.find_spec finds nothing, as TFDS and etils check).
_WITHOUT_TENSORFLOW = """
import sys

class HideTensorflow:
  def __init__(self, finder):
    self.finder = finder

  def find_spec(self, name, path=None, target=None):
    find = getattr(self.finder, "find_spec", None)
    if name.split(".")[0] == "tensorflow" or find is None:
      return None
    return find(name, path, target)

  def __getattr__(self, name):
    return getattr(self.finder, name)

sys.meta_path[:] = [HideTensorflow(finder) for finder in sys.meta_path]
from ripu_jax.data import prepare
prepare.prepare("synthia", manual_dir=sys.argv[1], data_dir=sys.argv[2])
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
assert not loaded, loaded
"""


def test_synthia_prepares_without_tensorflow(synthia_fake, tmp_path):
  """`pip install -e .` alone (no TensorFlow) prepares SYNTHIA, 16-bit labels and all."""
  root, truth = synthia_fake
  out = str(tmp_path / "out")
  result = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, root, out],
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  _check_split(data.open_split("synthia", "train", out), truth)


def test_cityscapes_splits_from_zips(cityscapes_fake, data_dir):
  root, truth = cityscapes_fake
  prepare_lib.prepare("cityscapes", manual_dir=root, data_dir=data_dir)
  for split_name in ("train", "val"):
    _check_split(data.open_split("cityscapes", split_name, data_dir), truth[split_name])
  with pytest.raises(ValueError, match="no split 'test'"):
    data.open_split("cityscapes", "test", data_dir)


def test_corrupt_image_names_file_and_leaves_nothing(gtav_fake, tmp_path):
  root, _ = gtav_fake
  broken = str(tmp_path / "broken")
  good = _png(_rgb(6, 10))
  _write(os.path.join(broken, "images", "00001.png"), good)
  _write(os.path.join(broken, "images", "00002.png"), good[:40])  # Truncated download.
  for name in ("00001.png", "00002.png"):
    _write(os.path.join(broken, "labels", name), _png(_id_map(6, 10, GTAV_IDS), True))
  out = str(tmp_path / "out")
  with pytest.raises(data.CorruptFileError, match=r"images[/\\]00002\.png"):
    prepare_lib.prepare("gtav", manual_dir=broken, data_dir=out)
  dataset_root = os.path.join(out, "gtav")
  leftovers = os.listdir(dataset_root) if os.path.isdir(dataset_root) else []
  assert leftovers == [], leftovers  # Neither the dataset nor a temporary folder remains.
  with pytest.raises(data.DatasetNotPreparedError, match="--dataset gtav --manual_dir"):
    data.open_split("gtav", "train", out)


def test_colour_label_is_rejected_with_hint(tmp_path):
  root = str(tmp_path / "gtav")
  _write(os.path.join(root, "images", "00001.png"), _png(_rgb(4, 4)))
  _write(os.path.join(root, "labels", "00001.png"), _png(_rgb(4, 4)))
  with pytest.raises(data.CorruptFileError, match="colour image"):
    prepare_lib.prepare("gtav", manual_dir=root, data_dir=str(tmp_path / "out"))


def test_corrupt_archive_is_named(tmp_path):
  root = str(tmp_path / "cityscapes")
  _write(os.path.join(root, "gtFine_trainvaltest.zip"), b"PK\x03\x04 not really a zip")
  with pytest.raises(data.CorruptFileError, match="gtFine_trainvaltest.zip"):
    prepare_lib.prepare("cityscapes", manual_dir=root, data_dir=str(tmp_path / "out"))


def test_missing_or_mislaid_manual_dir_explains_download(tmp_path, capsys):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(data.ManualDataError) as error:
    prepare_lib.prepare("gtav", manual_dir=missing, data_dir=str(tmp_path / "out"))
  message = str(error.value)
  assert "does not exist" in message and "download.visinf.tu-darmstadt.de" in message
  assert "images/00001.png" in message and "labels/00001.png" in message
  assert prepare_lib.main(["--dataset", "cityscapes", "--data_dir", str(tmp_path)]) == 1
  assert "cityscapes-dataset.com" in capsys.readouterr().err
  wrong = tmp_path / "synthia"
  _write(str(wrong / "SYNTHIA_RAND_CITYSCAPES.rar"), b"Rar!")
  with pytest.raises(data.ManualDataError, match="extract them first") as error:
    prepare_lib.prepare("synthia", manual_dir=str(wrong), data_dir=str(tmp_path / "out"))
  assert "GT/LABELS" in str(error.value)
  assert not os.path.exists(os.path.join(tmp_path, "out", "synthia", "1.0.0"))


def test_synthetic_prepare_cli_matches_generator(tmp_path, capsys):
  config = synthetic.SyntheticConfig(seed=5, height=40, width=64, num_source_train=6,
                                     num_target_train=4, num_target_val=3)
  out = str(tmp_path / "data")
  with pytest.raises(data.DatasetNotPreparedError) as error:
    data.open_split("synthetic", "target_val", out, config=config)
  message = str(error.value)
  assert "needs no download" in message
  assert "--dataset synthetic" in message and "--seed 5" in message and "--width 64" in message
  args = message.split("python -m ripu_jax.data.prepare ")[1].split()
  assert prepare_lib.main(args + ["--no_progress"]) == 0
  assert "synthetic is ready" in capsys.readouterr().out
  for split_name in synthetic.SPLITS:
    split = data.open_split("synthetic", split_name, out, config=config)
    assert len(split) == config.num_examples(split_name)
    for index in range(len(split)):
      expected = synthetic.generate_example(config, split_name, index)
      example = split[index]
      assert example["image"].tobytes() == expected["image"].tobytes()
      assert example["label"].tobytes() == expected["label"].tobytes()
      assert example["name"] == expected["name"]
    reference = synthetic.SyntheticSplit(config, split_name)
    np.testing.assert_array_equal(split.class_presence, reference.class_presence)
  # A different config is a different dataset; rebuilding in place works.
  with pytest.raises(data.DatasetNotPreparedError):
    data.open_split("synthetic", "target_val", out)
  prepare_lib.prepare("synthetic", data_dir=out, config=config, overwrite=True)
  assert len(data.open_split("synthetic", "source_train", out, config=config)) == 6


def test_bad_arguments_are_explained(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset"):
    data.open_split("kitti", "train", str(tmp_path))
  with pytest.raises(ValueError, match="choose one of"):
    data.open_split("gtav", "val", str(tmp_path))
  with pytest.raises(ValueError, match="takes no --manual_dir"):
    prepare_lib.prepare("synthetic", manual_dir=str(tmp_path), data_dir=str(tmp_path))
  with pytest.raises(manual.ManualDataError, match="needs --manual_dir"):
    prepare_lib.prepare("gtav", data_dir=str(tmp_path))


def test_default_synthetic_config_maps_to_its_registered_folder(tmp_path):
  out = str(tmp_path)
  default = prepare_lib.make_synthetic_builder(out, None)
  assert os.fspath(default.data_path) == os.path.join(out, "synthetic", "default", "1.0.0")
  assert os.fspath(default.data_path) == data.reader.dataset_dir("synthetic", out)
  custom = synthetic.SyntheticConfig(seed=9)
  assert os.fspath(prepare_lib.make_synthetic_builder(out, custom).data_path) == (
      data.reader.dataset_dir("synthetic", out, custom))
