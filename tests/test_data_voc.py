"""PASCAL VOC 2012 + SBD ("VOC aug") from miniature fakes of the downloads, archived or
extracted: the train/val composition, label decoding, download errors and the catalogue."""

import io
import logging
import os
import tarfile
import zipfile

import numpy as np
from PIL import Image
import pytest
import scipy.io

from ripu_jax import data
from ripu_jax.data import catalog
from ripu_jax.data import labels
from ripu_jax.data import manual
from ripu_jax.data import pipeline
from ripu_jax.data import prepare as prepare_lib

RNG = np.random.default_rng(7)
VOC = "VOCdevkit/VOC2012"
SBD = "benchmark_RELEASE/dataset"

VOC_LISTS = {"train": ["2007_000032"], "val": ["2007_000033", "2007_000039", "2010_000005"]}
SBD_LISTS = {"train": ["2007_000032", "2008_000002", "2010_000005"],
             "val": ["2007_000039", "2008_000003"]}
# (SBD train + SBD val + VOC train) - VOC val, and VOC val; where each label comes from.
EXPECTED = {"train": {"2007_000032": "voc", "2008_000002": "sbd", "2008_000003": "sbd"},
            "val": {"2007_000033": "voc", "2007_000039": "voc", "2010_000005": "voc"}}
SIZES = {"2008_000002": (24, 18)}  # One portrait image; the others are 20 x 30.
VOC_IDS = (0, 1, 5, 15, 19, 20, 255)  # Class ids and the boundary label.


def _jpeg(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def _decoded_jpeg(payload: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(payload)) as image:
    return np.asarray(image.convert("RGB"))


def _palette_png(ids: np.ndarray) -> bytes:
  """A VOC SegmentationClass file: palette indices are the class ids."""
  image = Image.fromarray(ids)
  image.putpalette(labels.voc_palette().ravel().tolist())
  assert image.mode == "P"
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def _grey_png(ids: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(ids).save(buffer, format="PNG")  # Mode "L": grey values are the ids.
  return buffer.getvalue()


def _sbd_mat(segmentation: np.ndarray, variable: str = "GTcls") -> bytes:
  """An SBD label file: struct GTcls {Boundaries, Segmentation, CategoriesPresent}."""
  boundaries = np.empty((20, 1), object)
  for index in range(20):
    boundaries[index, 0] = np.zeros((1, 1), np.uint8)
  present = np.unique(segmentation[segmentation > 0]).astype(np.uint8).reshape(-1, 1)
  buffer = io.BytesIO()
  scipy.io.savemat(buffer, {variable: {"Boundaries": boundaries, "Segmentation": segmentation,
                                       "CategoriesPresent": present}}, do_compression=True)
  return buffer.getvalue()


def _ids(shape, values) -> np.ndarray:
  ids = RNG.choice(np.array(values, np.uint8), size=shape)
  ids[0, :len(values)] = values[:shape[1]]  # Every value occurs (as far as the width allows).
  return ids


def _fake_downloads():
  """(files: relative path -> bytes, truth: split -> id -> (image, label))."""
  all_ids = sorted({i for lists in (VOC_LISTS, SBD_LISTS) for ids in lists.values() for i in ids})
  files, images, voc_labels, sbd_labels = {}, {}, {}, {}
  for voc_id in all_ids:
    shape = SIZES.get(voc_id, (20, 30))
    images[voc_id] = _jpeg(RNG.integers(0, 256, shape + (3,), dtype=np.uint8))
    voc_labels[voc_id] = _ids(shape, VOC_IDS)
    sbd = _ids(shape, tuple(range(21)))
    sbd[-1, -1] = 40  # Outside the 21 classes: becomes ignore.
    sbd_labels[voc_id] = sbd
  for split, ids in VOC_LISTS.items():
    files[f"{VOC}/ImageSets/Segmentation/{split}.txt"] = "".join(f"{i}\n" for i in ids).encode()
    for voc_id in ids:
      files[f"{VOC}/SegmentationClass/{voc_id}.png"] = _palette_png(voc_labels[voc_id])
      files[f"{VOC}/SegmentationObject/{voc_id}.png"] = _palette_png(voc_labels[voc_id] % 3)
  files[f"{VOC}/ImageSets/Main/train.txt"] = b"2011_000001  1\n"
  for voc_id in all_ids + ["2011_000001"]:  # The devkit holds more images than are listed.
    if voc_id != "2008_000003":  # An SBD image that only SBD's img folder holds.
      files[f"{VOC}/JPEGImages/{voc_id}.jpg"] = images.get(voc_id) or _jpeg(
          np.zeros((20, 30, 3), np.uint8))
  for split, ids in SBD_LISTS.items():
    files[f"{SBD}/{split}.txt"] = "".join(f"{i}\n" for i in ids).encode()
    for voc_id in ids:
      files[f"{SBD}/cls/{voc_id}.mat"] = _sbd_mat(sbd_labels[voc_id])
      files[f"{SBD}/inst/{voc_id}.mat"] = _sbd_mat(sbd_labels[voc_id] % 2, "GTinst")
      # SBD's copy of a VOC image differs here, to show which one is read.
      image = images[voc_id] if voc_id == "2008_000003" else _jpeg(
          255 - _decoded_jpeg(images[voc_id]))
      files[f"{SBD}/img/{voc_id}.jpg"] = image
  truth = {}
  for split, sources in EXPECTED.items():
    truth[split] = {}
    for voc_id, source in sources.items():
      label = voc_labels[voc_id] if source == "voc" else sbd_labels[voc_id]
      truth[split][voc_id] = (_decoded_jpeg(images[voc_id]), labels.VOC_LOOKUP[label])
  return files, truth


def _write_tar(path: str, files: dict, mode: str):
  with tarfile.open(path, mode) as archive:
    for name, payload in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(payload)
      archive.addfile(info, io.BytesIO(payload))


def _write_folder(root: str, files: dict):
  for name, payload in files.items():
    path = os.path.join(root, *name.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(payload)


def _of(files: dict, prefix: str) -> dict:
  return {name: payload for name, payload in files.items() if name.startswith(prefix)}


@pytest.fixture(scope="module")
def fake():
  return _fake_downloads()


@pytest.fixture(scope="module")
def archives(fake, tmp_path_factory):
  """The downloads as they come: a plain .tar (VOC) and a gzip tar, in shuffled order (SBD)."""
  files, _ = fake
  root = str(tmp_path_factory.mktemp("voc_archives"))
  _write_tar(os.path.join(root, manual.VOC_TAR), _of(files, "VOCdevkit"), "w")
  sbd = _of(files, "benchmark_RELEASE")
  _write_tar(os.path.join(root, manual.SBD_TGZ), dict(reversed(list(sbd.items()))), "w:gz")
  return root


@pytest.fixture(scope="module")
def prepared(archives, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("voc_prepared"))
  prepare_lib.prepare("voc_aug", manual_dir=archives, data_dir=data_dir)
  return data_dir


def _check_split(split, truth: dict):
  assert [split.name(i) for i in range(len(split))] == sorted(truth)
  for index, voc_id in enumerate(sorted(truth)):
    image, label = truth[voc_id]
    example = split[index]
    assert example["name"] == voc_id
    np.testing.assert_array_equal(example["image"], image)
    assert example["label"].dtype == np.uint8
    np.testing.assert_array_equal(example["label"], label)
    assert split.label_shape(index) == label.shape
    expected_presence = [(label == c).any() for c in range(21)]
    assert split.class_presence[index].tolist() == expected_presence


def test_prepared_from_archives_composes_splits_and_labels(prepared, fake):
  _, truth = fake
  for split_name in ("train", "val"):
    split = data.open_split("voc_aug", split_name, prepared)
    _check_split(split, truth[split_name])
  val = data.open_split("voc_aug", "val", prepared)
  assert val.class_presence.shape == (3, 21)
  assert (val.label(0) == 255).any()  # VOC's boundary label is kept as ignore.
  assert val.pixel_counts.sum() == sum(int((l < 21).sum()) for _, l in truth["val"].values())


def test_extracted_folders_through_the_command_line(fake, tmp_path, capsys, caplog):
  files, truth = fake
  root, out = str(tmp_path / "voc"), str(tmp_path / "out")
  _write_folder(root, files)
  with caplog.at_level(logging.WARNING):
    assert prepare_lib.main(["--dataset", "voc_aug", "--manual_dir", root, "--data_dir", out,
                             "--no_progress"]) == 0
  printed = capsys.readouterr().out
  assert "voc_aug is ready" in printed and "(train: 3, val: 3 examples)" in printed
  warnings = caplog.text
  assert "voc_aug train: prepared 3 examples, the full split has 10582" in warnings
  assert "voc_aug val: prepared 3 examples, the full split has 1449" in warnings
  for split_name in ("train", "val"):
    _check_split(data.open_split("voc_aug", split_name, out), truth[split_name])


def test_segmentation_class_aug_replaces_sbd(fake, tmp_path):
  files, truth = fake
  root = str(tmp_path / "voc")
  _write_folder(root, _of(files, "VOCdevkit"))
  aug = {}
  with zipfile.ZipFile(os.path.join(root, "SegmentationClassAug.zip"), "w") as archive:
    for voc_id in sorted(set(EXPECTED["train"]) | set(EXPECTED["val"])):
      shape = SIZES.get(voc_id, (20, 30))
      aug[voc_id] = _ids(shape, (0, 3, 20, 255))
      archive.writestr(f"SegmentationClassAug/{voc_id}.png", _grey_png(aug[voc_id]))
    archive.writestr("__MACOSX/SegmentationClassAug/._2008_000002.png", b"junk")
  # SBD's images stand in for the one JPEGImages lacks; no SBD lists or labels. Another
  # year's devkit next to VOC2012 is ignored.
  _write_folder(root, {f"{SBD}/img/2008_000003.jpg": files[f"{SBD}/img/2008_000003.jpg"],
                       "VOCdevkit/VOC2007/ImageSets/Segmentation/val.txt": b"000001\n"})
  tree = manual.FileTree(root)
  try:
    pairs = manual.find_voc_aug(tree)
    assert {s: [p.name for p in pairs[s]] for s in pairs} == {
        s: sorted(ids) for s, ids in EXPECTED.items()}
    by_id = {p.name: p for s in pairs for p in pairs[s]}
    assert by_id["2007_000032"].label.parts[-2] == "SegmentationClass"
    assert by_id["2008_000002"].label.parts[-2] == "SegmentationClassAug"
    assert by_id["2008_000003"].image.parts[-2] == "img"
    np.testing.assert_array_equal(manual.load_voc_ids(tree, by_id["2008_000002"].label),
                                  aug["2008_000002"])
    np.testing.assert_array_equal(manual.load_voc_ids(tree, by_id["2007_000032"].label),
                                  truth["train"]["2007_000032"][1])
  finally:
    tree.close()


def test_compressed_archive_too_large_to_read_out_of_order(archives, monkeypatch):
  monkeypatch.setattr(manual, "MAX_PREFETCH_BYTES", 10)
  tree = manual.FileTree(archives)
  try:
    with pytest.raises(data.ManualDataError, match=f"Extract.*tar xf .*{manual.SBD_TGZ}"):
      manual.find_voc_aug(tree)  # Even the two SBD id lists exceed 10 bytes.
  finally:
    tree.close()


def test_missing_downloads_name_files_and_urls(fake, tmp_path):
  files, _ = fake
  empty = tmp_path / "empty"
  _write_folder(str(empty), {"readme.txt": b"VOC"})
  with pytest.raises(data.ManualDataError) as error:
    prepare_lib.prepare("voc_aug", manual_dir=str(empty), data_dir=str(tmp_path / "out"))
  message = str(error.value)
  for expected in (manual.VOC_TAR, manual.VOC_URL, manual.SBD_TGZ, manual.SBD_URL,
                   "SegmentationClassAug", str(empty)):
    assert expected in message
  # A VOC tar without the val list, next to a complete SBD: only the list is named.
  partial = tmp_path / "partial"
  os.makedirs(partial)
  voc = {k: v for k, v in _of(files, "VOCdevkit").items() if not k.endswith("/val.txt")}
  _write_tar(str(partial / manual.VOC_TAR), voc, "w")
  _write_folder(str(partial), _of(files, "benchmark_RELEASE"))
  with pytest.raises(data.ManualDataError) as error:
    prepare_lib.prepare("voc_aug", manual_dir=str(partial), data_dir=str(tmp_path / "out"))
  message = str(error.value)
  assert f"{VOC}/ImageSets/Segmentation/val.txt (in {manual.VOC_TAR}, from {manual.VOC_URL})" \
      in message
  missing = message.split("Missing:")[1].split("Put the downloaded")[0]
  assert manual.SBD_TGZ not in missing and "train.txt" not in missing
  assert not os.path.exists(tmp_path / "out" / "voc_aug" / "1.0.0")


def test_damaged_sbd_label_is_named(fake, tmp_path):
  files, _ = fake
  root = str(tmp_path / "voc")
  _write_folder(root, files)
  path = f"{SBD}/cls/2008_000002.mat"
  _write_folder(root, {path: _sbd_mat(np.zeros((20, 30), np.uint8), "GTinst")})
  tree = manual.FileTree(root)
  try:
    entry = next(p.label for p in manual.find_voc_aug(tree)["train"] if p.name == "2008_000002")
    with pytest.raises(data.CorruptFileError, match="no struct GTcls"):
      manual.load_voc_ids(tree, entry)
  finally:
    tree.close()


def test_voc_label_space():
  space = catalog.label_space("voc")
  assert space.num_classes == 21
  assert space.class_names[0] == "background" and space.class_names[15] == "person"
  assert space.class_names[-1] == "tvmonitor"
  assert tuple(space.palette[1]) == (128, 0, 0)
  assert tuple(space.palette[15]) == (192, 128, 128)
  assert dict(space.eval_sets) == {"miou": tuple(range(21))}
  table = catalog.label_map("voc_aug", space)
  assert table[:21].tolist() == list(range(21)) and (table[21:] == 255).all()
  spec = catalog.get("voc_aug")
  assert dict(spec.roles) == {"target_train": "train", "target_val": "val"}
  assert "voc_aug" in catalog.target_names() and "voc_aug" not in catalog.source_names()
  assert catalog.run_label_space(None, "voc_aug") is space


def test_prepared_split_opens_through_catalogue_into_a_loader(prepared, fake):
  _, truth = fake
  space = catalog.run_label_space(None, "voc_aug")
  splits = catalog.open_run_splits(None, "voc_aug", data_dir=prepared)
  assert splits.source is None and len(splits.target_train) == len(splits.target_val) == 3
  val = catalog.open_role("voc_aug", "target_val", data_dir=prepared)
  loader = pipeline.eval_loader(val, batch_size=2, image_size=(16, 24), num_devices=1,
                                label_map=catalog.label_map("voc_aug", space))
  batches = list(loader)
  assert len(batches) == 2 and int(sum(b["valid"].sum() for b in batches)) == 3
  first = batches[0]
  assert first["image"].shape == (2, 16, 24, 3) and first["label"].shape == (2, 20, 30)
  expected = truth["val"][sorted(truth["val"])[0]][1]
  np.testing.assert_array_equal(first["label"][0], expected)


def test_missing_prepared_voc_says_how_to_prepare(tmp_path):
  with pytest.raises(data.DatasetNotPreparedError, match="--dataset voc_aug --manual_dir"):
    catalog.open_role("voc_aug", "target_train", data_dir=str(tmp_path))
