"""Finding and decoding the manually downloaded GTAV, SYNTHIA and Cityscapes files.

Users keep these datasets however they downloaded them: the original .zip archives, extracted
folders, or a mix. `FileTree` lists files in folders and inside .zip archives alike, and the
`find_*` functions pair images with labels by the datasets' own naming rules, skipping stray
files (hidden files, images without labels and the reverse) with a warning; the `load_*_train_ids`
functions decode a label file into stored train ids. The dataset catalogue
(`ripu_jax.data.catalog`) names, per dataset, which finder, label loader and help text apply;
this module keeps no table of datasets.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile
from typing import Iterable

from absl import logging
import numpy as np
from PIL import Image

from ripu_jax.data import labels as labels_lib

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_UNSUPPORTED_ARCHIVES = (".rar", ".7z", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

GTAV_HELP = """\
GTAV ("Playing for Data", 24,966 images with Cityscapes label ids).
Download the 10 image parts and 10 label parts from
  https://download.visinf.tu-darmstadt.de/data/from_games/
(01_images.zip ... 10_images.zip, 01_labels.zip ... 10_labels.zip). Put the .zip files in
--manual_dir as they are, or extract them there, so that it holds:
  <manual_dir>/
    images/00001.png ... 24966.png
    labels/00001.png ... 24966.png     (palette PNGs whose indices are Cityscapes label ids)
"""

SYNTHIA_HELP = """\
SYNTHIA-RAND-CITYSCAPES (9,400 images, 16-bit label PNGs).
Download "SYNTHIA-RAND-CITYSCAPES (CVPR16)" from
  https://synthia-dataset.net/downloads/
and extract the .rar archive (e.g. `unrar x SYNTHIA_RAND_CITYSCAPES.rar`) into --manual_dir,
so that it holds:
  <manual_dir>/RAND_CITYSCAPES/
    RGB/0000000.png ...
    GT/LABELS/0000000.png ...         (16-bit PNG, class id in the first channel)
(GT/COLOR and Depth are not needed.)
"""

CITYSCAPES_HELP = """\
Cityscapes (fine annotations: 2,975 train / 500 val images).
Register and download from
  https://www.cityscapes-dataset.com/downloads/
the files leftImg8bit_trainvaltest.zip (11 GB) and gtFine_trainvaltest.zip (241 MB). Put the
.zip files in --manual_dir as they are, or extract them there, so that it holds:
  <manual_dir>/
    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
"""

class ManualDataError(FileNotFoundError):
  """The manually downloaded data is missing or not laid out as expected."""


class CorruptFileError(ValueError):
  """A downloaded image or label cannot be decoded or has unexpected content."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """A file in a folder or inside a .zip archive.

  Attributes:
    parts: path components used for matching (relative to the manual dir, or the member
      path inside the archive).
    archive: path of the containing .zip archive, or None for a plain file.
    location: the file's path on disk, or its member name in `archive`.
  """

  parts: tuple[str, ...]
  archive: str | None
  location: str

  @property
  def name(self) -> str:
    return self.parts[-1]

  @property
  def stem(self) -> str:
    return os.path.splitext(self.parts[-1])[0]

  def __str__(self) -> str:
    return f"{self.archive}:{self.location}" if self.archive else self.location


@dataclasses.dataclass(frozen=True)
class Pair:
  """An image, its label, and the name the example keeps."""

  name: str
  image: Entry
  label: Entry


def _is_hidden(parts: Iterable[str]) -> bool:
  return any(part.startswith(".") or part == "__MACOSX" for part in parts)


class FileTree:
  """All regular files under `root`, including the members of .zip archives found there."""

  def __init__(self, root: str | os.PathLike):
    self.root = os.path.abspath(os.fspath(root))
    self.entries: list[Entry] = []
    self.unsupported_archives: list[str] = []
    self._archives: dict[str, zipfile.ZipFile] = {}
    for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
      dirnames[:] = sorted(d for d in dirnames if not _is_hidden([d]))
      rel_dir = os.path.relpath(dirpath, self.root)
      rel_parts = () if rel_dir == "." else tuple(rel_dir.split(os.sep))
      for filename in sorted(filenames):
        if _is_hidden([filename]):
          continue
        path = os.path.join(dirpath, filename)
        lower = filename.lower()
        if lower.endswith(".zip"):
          self._add_archive(path)
        elif lower.endswith(_UNSUPPORTED_ARCHIVES):
          self.unsupported_archives.append(path)
        else:
          self.entries.append(Entry(rel_parts + (filename,), None, path))

  def _add_archive(self, path: str) -> None:
    try:
      archive = zipfile.ZipFile(path)
      members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as err:
      raise CorruptFileError(
          f"Cannot open the archive {path}: {err}. Download it again, or extract it by hand "
          "and remove the .zip file.") from err
    self._archives[path] = archive
    for member in members:
      if member.is_dir():
        continue
      parts = tuple(p for p in member.filename.split("/") if p)
      if parts and not _is_hidden(parts):
        self.entries.append(Entry(parts, path, member.filename))

  def read(self, entry: Entry) -> bytes:
    """The file's bytes; errors name the file."""
    try:
      if entry.archive is None:
        with open(entry.location, "rb") as f:
          return f.read()
      return self._archives[entry.archive].read(entry.location)
    except (OSError, zipfile.BadZipFile, KeyError, EOFError) as err:
      raise CorruptFileError(f"Cannot read {entry}: {err}") from err

  def close(self) -> None:
    for archive in self._archives.values():
      archive.close()
    self._archives.clear()

  def __getstate__(self):
    raise TypeError("FileTree holds open archives and is not picklable")


def check_manual_dir(dataset: str, manual_dir: str | os.PathLike | None,
                     help_text: str) -> str:
  """Returns the absolute manual dir, or raises ManualDataError with `help_text` (the
  dataset's download instructions)."""
  if manual_dir is None:
    raise ManualDataError(
        f"Preparing {dataset} needs --manual_dir pointing at the downloaded files.\n"
        f"{help_text}")
  path = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
  if not os.path.isdir(path):
    raise ManualDataError(f"The manual dir {path} does not exist.\n{help_text}")
  if not os.listdir(path):
    raise ManualDataError(f"The manual dir {path} is empty.\n{help_text}")
  return path


def _index_after(parts: tuple[str, ...], folder: str) -> int | None:
  """Position just after the last path component equal to `folder` (case-insensitive)."""
  lowered = [p.lower() for p in parts[:-1]]
  for i in range(len(lowered) - 1, -1, -1):
    if lowered[i] == folder.lower():
      return i + 1
  return None


def _prefer_plain_files(candidates: dict, key, entry: Entry, duplicates: list) -> None:
  """Keeps one entry per key; an extracted file wins over the same file in an archive."""
  previous = candidates.get(key)
  if previous is None:
    candidates[key] = entry
    return
  duplicates.append(key)
  if previous.archive is not None and entry.archive is None:
    candidates[key] = entry


def _pair(dataset: str, tree: FileTree, images: dict, labels: dict,
          name_of) -> list[Pair]:
  unlabelled = sorted(set(images) - set(labels))
  orphans = sorted(set(labels) - set(images))
  if unlabelled:
    logging.warning("%s: skipping %d image(s) without a label, e.g. %s", dataset,
                    len(unlabelled), images[unlabelled[0]])
  if orphans:
    logging.warning("%s: skipping %d label(s) without an image, e.g. %s", dataset, len(orphans),
                    labels[orphans[0]])
  keys = sorted(set(images) & set(labels))
  return [Pair(name_of(key, images[key]), images[key], labels[key]) for key in keys]


def _missing_error(help_text: str, tree: FileTree, what: str) -> ManualDataError:
  hint = ""
  if tree.unsupported_archives:
    hint = ("\nFound archives this tool cannot read directly; extract them first: " +
            ", ".join(tree.unsupported_archives[:5]))
  sample = ", ".join(str(e) for e in tree.entries[:3]) or "no files at all"
  return ManualDataError(
      f"No {what} found under {tree.root} (it contains: {sample}).{hint}\n{help_text}")


def find_gtav(tree: FileTree) -> dict[str, list[Pair]]:
  """{"train": pairs}: images/<id>.png with labels/<id>.png."""
  images, labels, duplicates = {}, {}, []
  for entry in tree.entries:
    if len(entry.parts) < 2 or not entry.name.lower().endswith(IMAGE_EXTENSIONS):
      continue
    folder = entry.parts[-2].lower()
    if folder == "images":
      _prefer_plain_files(images, entry.stem, entry, duplicates)
    elif folder == "labels" and entry.name.lower().endswith(".png"):
      _prefer_plain_files(labels, entry.stem, entry, duplicates)
  if duplicates:
    logging.warning("gtav: %d file(s) found twice (archive and folder); using one copy each",
                    len(duplicates))
  if not images:
    raise _missing_error(GTAV_HELP, tree, "GTAV images (images/*.png)")
  if not labels:
    raise _missing_error(GTAV_HELP, tree, "GTAV labels (labels/*.png)")
  pairs = _pair("gtav", tree, images, labels, lambda key, image: image.name)
  if not pairs:
    raise _missing_error(GTAV_HELP, tree, "GTAV image/label pairs with matching file names")
  return {"train": pairs}


def find_synthia(tree: FileTree) -> dict[str, list[Pair]]:
  """{"train": pairs}: RGB/<id>.png with GT/LABELS/<id>.png."""
  images, labels, duplicates = {}, {}, []
  for entry in tree.entries:
    if len(entry.parts) < 2 or not entry.name.lower().endswith(".png"):
      continue
    if entry.parts[-2].lower() == "rgb":
      _prefer_plain_files(images, entry.stem, entry, duplicates)
    elif (len(entry.parts) >= 3 and entry.parts[-2].lower() == "labels" and
          entry.parts[-3].lower() == "gt"):
      _prefer_plain_files(labels, entry.stem, entry, duplicates)
  if duplicates:
    logging.warning("synthia: %d file(s) found twice; using one copy each", len(duplicates))
  if not images:
    raise _missing_error(SYNTHIA_HELP, tree, "SYNTHIA images (RGB/*.png)")
  if not labels:
    raise _missing_error(SYNTHIA_HELP, tree, "SYNTHIA labels (GT/LABELS/*.png)")
  pairs = _pair("synthia", tree, images, labels, lambda key, image: image.name)
  if not pairs:
    raise _missing_error(SYNTHIA_HELP, tree, "SYNTHIA image/label pairs with matching file names")
  return {"train": pairs}


# The labelled Cityscapes splits and their full sizes (the catalogue takes its splits from here).
CITYSCAPES_SIZES = {"train": 2975, "val": 500}
_LEFT_SUFFIX = "_leftImg8bit"
_LABEL_SUFFIX = "_gtFine_labelIds"


def find_cityscapes(tree: FileTree) -> dict[str, list[Pair]]:
  """{"train": pairs, "val": pairs}: leftImg8bit/<split>/<city>/* with gtFine label ids."""
  found = {split: ({}, {}) for split in CITYSCAPES_SIZES}
  duplicates = []
  for entry in tree.entries:
    stem = entry.stem
    for folder, suffix, slot in (("leftImg8bit", _LEFT_SUFFIX, 0), ("gtFine", _LABEL_SUFFIX, 1)):
      if not stem.endswith(suffix):
        continue
      start = _index_after(entry.parts, folder)
      if start is None or len(entry.parts) - start != 3:
        continue
      split, city = entry.parts[start], entry.parts[start + 1]
      if split in found:
        key = (city, stem[:-len(suffix)])
        _prefer_plain_files(found[split][slot], key, entry, duplicates)
  if duplicates:
    logging.warning("cityscapes: %d file(s) found twice; using one copy each", len(duplicates))
  if not any(images for images, _ in found.values()):
    raise _missing_error(CITYSCAPES_HELP, tree, "Cityscapes images (leftImg8bit/{train,val}/...)")
  if not any(labels for _, labels in found.values()):
    raise _missing_error(CITYSCAPES_HELP, tree,
                         "Cityscapes labels (gtFine/{train,val}/.../*_gtFine_labelIds.png)")
  result = {}
  for split, (images, labels) in found.items():
    pairs = _pair(f"cityscapes {split}", tree, images, labels, lambda key, image: image.name)
    if not pairs:
      raise _missing_error(CITYSCAPES_HELP, tree, f"Cityscapes {split} image/label pairs")
    if len(pairs) != CITYSCAPES_SIZES[split]:
      logging.warning("cityscapes %s: found %d pairs, the full split has %d", split, len(pairs),
                      CITYSCAPES_SIZES[split])
    result[split] = pairs
  return result


# ----------------------------------------------------------------------------- decoding


@dataclasses.dataclass(frozen=True)
class LoadedImage:
  """A validated RGB image: what to store (original PNG bytes when possible) and its size."""

  encoded: bytes | Image.Image
  height: int
  width: int


def load_image(tree: FileTree, entry: Entry) -> LoadedImage:
  """Decodes fully (so truncated files are caught) and keeps original PNG bytes if RGB."""
  data = tree.read(entry)
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      width, height = image.size
      if image.format == "PNG" and image.mode == "RGB":
        return LoadedImage(data, height, width)
      return LoadedImage(image.convert("RGB"), height, width)
  except Exception as err:  # PIL raises many types for broken files.
    raise CorruptFileError(f"Cannot decode the image {entry}: {err}. The file is damaged; "
                           "download or extract it again.") from err


def _decode_label_ids_pil(entry: Entry, data: bytes) -> np.ndarray:
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      mode = image.mode
      if mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
        raise CorruptFileError(
            f"The label {entry} is a {mode} colour image; expected label ids (a palette or "
            "grayscale PNG). Point --manual_dir at the label-id files, not the colour "
            "visualisations.")
      return np.array(image)
  except CorruptFileError:
    raise
  except Exception as err:
    raise CorruptFileError(f"Cannot decode the label {entry}: {err}. The file is damaged; "
                           "download or extract it again.") from err


def _decode_png16_first_channel(entry: Entry, data: bytes) -> np.ndarray:
  """SYNTHIA labels are 16-bit multi-channel PNGs, which PIL reduces to 8 bits."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise ImportError("Decoding SYNTHIA's 16-bit labels needs TensorFlow: "
                      "pip install tensorflow-cpu") from err
  try:
    decoded = tf.io.decode_png(data, channels=0, dtype=tf.uint16).numpy()
  except Exception as err:  # TensorFlow raises InvalidArgumentError and others.
    raise CorruptFileError(f"Cannot decode the label {entry}: {err}. The file is damaged; "
                           "download or extract it again.") from err
  return decoded[..., 0]


def load_cityscapes_train_ids(tree: FileTree, entry: Entry) -> np.ndarray:
  """[H, W] uint8 train ids (255 = ignore) of a label file of Cityscapes label ids (GTAV,
  Cityscapes)."""
  data = tree.read(entry)
  raw = _decode_label_ids_pil(entry, data)
  if raw.ndim != 2:
    raise CorruptFileError(f"The label {entry} has shape {raw.shape}; expected [H, W] ids")
  return labels_lib.to_train_ids(raw, labels_lib.CITYSCAPES_LOOKUP)


def load_synthia_train_ids(tree: FileTree, entry: Entry) -> np.ndarray:
  """[H, W] uint8 train ids (255 = ignore) of a SYNTHIA label file (16-bit, first channel)."""
  data = tree.read(entry)
  return labels_lib.to_train_ids(_decode_png16_first_channel(entry, data),
                                 labels_lib.SYNTHIA_LOOKUP)
