"""Finding and decoding the manually downloaded GTAV, SYNTHIA, Cityscapes and VOC files.

Users keep these datasets however they downloaded them: the original .zip or .tar archives,
extracted folders, or a mix. `FileTree` lists files in folders and inside .zip and .tar
(also gzip, bzip2, xz compressed) archives alike, and the `find_*` functions pair images with
labels by the datasets' own naming rules, skipping stray files (hidden files, images without
labels and the reverse) with a warning; the `load_*` functions decode a label file into stored
ids. The dataset catalogue (`ripu_jax.data.catalog`) names, per dataset, which finder, label
loader and help text apply; this module keeps no table of datasets.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import re
import tarfile
import zipfile
import zlib
from typing import Iterable

from absl import logging
import numpy as np
from PIL import Image

from ripu_jax.data import labels as labels_lib

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_TAR_ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_UNSUPPORTED_ARCHIVES = (".rar", ".7z")
# Files read out of order from one compressed tar are first read in a single pass and kept in
# memory (`FileTree.prefetch`); beyond this many bytes the archive must be extracted.
MAX_PREFETCH_BYTES = 4 << 30

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

VOC_TAR = "VOCtrainval_11-May-2012.tar"
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SBD_TGZ = "benchmark.tgz"
SBD_URL = ("http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
           "benchmark.tgz")

VOC_AUG_HELP = f"""\
PASCAL VOC 2012 with the SBD training labels ("VOC aug": 10,582 train / 1,449 val images,
21 classes, 255 = boundary/ignore).
Download
  {VOC_TAR} from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/
    ({VOC_URL})
  {SBD_TGZ} (the Semantic Boundaries Dataset) from
    {SBD_URL}
Put both files in --manual_dir as they are, or extract them there, so that it holds:
  <manual_dir>/VOCdevkit/VOC2012/
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png           (palette PNGs whose indices are class ids)
    ImageSets/Segmentation/{{train,val}}.txt
  <manual_dir>/benchmark_RELEASE/dataset/
    cls/<id>.mat                         (struct GTcls with the class-id map Segmentation)
    {{train,val}}.txt
    img/<id>.jpg                         (only read for ids JPEGImages lacks)
Instead of {SBD_TGZ}, the widely shared SegmentationClassAug/ folder (or
SegmentationClassAug.zip) of label PNGs converted from SBD may be put there:
  <manual_dir>/SegmentationClassAug/<id>.png
train = (SBD train + SBD val + VOC train) - VOC val; val = VOC 2012 val. An id with a VOC
SegmentationClass label keeps it; the others take SBD's.
"""

class ManualDataError(FileNotFoundError):
  """The manually downloaded data is missing or not laid out as expected."""


class CorruptFileError(ValueError):
  """A downloaded image or label cannot be decoded or has unexpected content."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """A file in a folder or inside a .zip or .tar archive.

  Attributes:
    parts: path components used for matching (relative to the manual dir, or the member
      path inside the archive).
    archive: path of the containing archive, or None for a plain file.
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


def _member_parts(name: str) -> tuple[str, ...]:
  return tuple(p for p in name.split("/") if p and p != ".")


# What reading an archive member can raise for a damaged or vanished archive.
_READ_ERRORS = (OSError, zipfile.BadZipFile, tarfile.TarError, KeyError, EOFError, zlib.error)


class FileTree:
  """All regular files under `root`, including the members of .zip and .tar archives there.

  Plain .tar and .zip members are read by random access. A compressed tar (.tgz, .tar.gz, ...)
  cannot seek backwards without decompressing again from its start, so members wanted out of
  order are read first in one forward pass with `prefetch`.
  """

  def __init__(self, root: str | os.PathLike):
    self.root = os.path.abspath(os.fspath(root))
    self.entries: list[Entry] = []
    self.unsupported_archives: list[str] = []
    self._archives: dict[str, zipfile.ZipFile | tarfile.TarFile] = {}
    self._tar_members: dict[tuple[str, str], tarfile.TarInfo] = {}
    self._compressed: set[str] = set()
    self._prefetched: dict[tuple[str, str], bytes] = {}
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
        elif lower.endswith(_TAR_ARCHIVES):
          self._add_tar(path)
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
      parts = _member_parts(member.filename)
      if parts and not _is_hidden(parts):
        self.entries.append(Entry(parts, path, member.filename))

  def _add_tar(self, path: str) -> None:
    """Lists a tar archive (a compressed one is decompressed once to list it)."""
    try:
      try:
        archive = tarfile.open(path, "r:")
      except tarfile.ReadError:  # Not a plain tar: a compressed one (whatever its name).
        archive = tarfile.open(path, "r:*")
        self._compressed.add(path)
      members = archive.getmembers()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
      raise CorruptFileError(
          f"Cannot open the archive {path}: {err}. Download it again, or extract it by hand "
          "and remove the archive file.") from err
    self._archives[path] = archive
    for member in members:
      if not member.isfile():
        continue
      parts = _member_parts(member.name)
      if parts and not _is_hidden(parts):
        self._tar_members[(path, member.name)] = member
        self.entries.append(Entry(parts, path, member.name))

  def _read_member(self, entry: Entry) -> bytes:
    archive = self._archives[entry.archive]
    if isinstance(archive, zipfile.ZipFile):
      return archive.read(entry.location)
    with archive.extractfile(self._tar_members[(entry.archive, entry.location)]) as f:
      return f.read()

  def read(self, entry: Entry) -> bytes:
    """The file's bytes; errors name the file."""
    try:
      if entry.archive is None:
        with open(entry.location, "rb") as f:
          return f.read()
      prefetched = self._prefetched.pop((entry.archive, entry.location), None)
      return prefetched if prefetched is not None else self._read_member(entry)
    except _READ_ERRORS as err:
      raise CorruptFileError(f"Cannot read {entry}: {err}") from err

  def prefetch(self, entries: Iterable[Entry]) -> None:
    """Reads those of `entries` that lie in compressed tars in one forward pass per archive
    and keeps their bytes until `read` takes them (other entries are read when asked for).

    Raises:
      ManualDataError: when that would hold more than MAX_PREFETCH_BYTES in memory; the
        message says which archive to extract.
    """
    wanted = collections.defaultdict(dict)
    for entry in entries:
      key = (entry.archive, entry.location)
      if entry.archive in self._compressed and key not in self._prefetched:
        wanted[entry.archive][entry.location] = self._tar_members[key]
    total = sum(m.size for members in wanted.values() for m in members.values())
    if total > MAX_PREFETCH_BYTES:
      largest = max(wanted, key=lambda a: sum(m.size for m in wanted[a].values()))
      raise ManualDataError(
          f"Reading {total / 2**30:.1f} GiB out of the compressed archive(s) "
          f"{', '.join(sorted(wanted))} would need that much memory. Extract them into "
          f"{self.root} first (e.g. tar xf {largest} -C {os.path.dirname(largest)}) and "
          "remove the archive files.")
    for archive, members in wanted.items():
      for member in sorted(members.values(), key=lambda m: m.offset_data):
        entry = Entry(_member_parts(member.name), archive, member.name)
        try:
          self._prefetched[(archive, member.name)] = self._read_member(entry)
        except _READ_ERRORS as err:
          raise CorruptFileError(f"Cannot read {entry}: {err}") from err

  def close(self) -> None:
    for archive in self._archives.values():
      archive.close()
    self._archives.clear()
    self._prefetched.clear()

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


# The VOC aug splits and their full sizes (the catalogue takes its splits from here).
VOC_AUG_SIZES = {"train": 10582, "val": 1449}
# Another year's devkit folder (VOC2007, ...), whose list files would clash with VOC2012's.
_OTHER_VOC_YEAR = re.compile(r"voc(?!2012$)\d{4}$")


@dataclasses.dataclass
class _VocFiles:
  """The VOC aug files found, by role; each file dict maps an id (or split) to its entry."""

  voc_images: dict = dataclasses.field(default_factory=dict)
  voc_labels: dict = dataclasses.field(default_factory=dict)
  voc_lists: dict = dataclasses.field(default_factory=dict)
  sbd_images: dict = dataclasses.field(default_factory=dict)
  sbd_labels: dict = dataclasses.field(default_factory=dict)
  sbd_lists: dict = dataclasses.field(default_factory=dict)
  aug_labels: dict = dataclasses.field(default_factory=dict)


def _sort_voc_entry(files: _VocFiles, entry: Entry, duplicates: list) -> None:
  """Files `entry` under its role in the VOC 2012 or SBD layout, if it has one."""
  parts = [p.lower() for p in entry.parts]
  if len(parts) < 2:
    return
  name, folder = parts[-1], parts[-2]
  parent = parts[-3] if len(parts) >= 3 else ""
  if folder in ("jpegimages", "segmentationclass", "segmentation") and any(
      _OTHER_VOC_YEAR.match(p) for p in parts[:-1]):
    return
  if folder == "jpegimages" and name.endswith(IMAGE_EXTENSIONS):
    _prefer_plain_files(files.voc_images, entry.stem, entry, duplicates)
  elif folder == "segmentationclass" and name.endswith(".png"):
    _prefer_plain_files(files.voc_labels, entry.stem, entry, duplicates)
  elif (folder, parent) == ("segmentation", "imagesets") and name in ("train.txt", "val.txt"):
    _prefer_plain_files(files.voc_lists, entry.stem, entry, duplicates)
  elif folder == "segmentationclassaug" and name.endswith(".png"):
    _prefer_plain_files(files.aug_labels, entry.stem, entry, duplicates)
  elif folder == "cls" and name.endswith(".mat"):
    _prefer_plain_files(files.sbd_labels, entry.stem, entry, duplicates)
  elif (folder, parent) == ("img", "dataset") and name.endswith(IMAGE_EXTENSIONS):
    _prefer_plain_files(files.sbd_images, entry.stem, entry, duplicates)
  elif folder == "dataset" and name in ("train.txt", "val.txt"):
    _prefer_plain_files(files.sbd_lists, entry.stem, entry, duplicates)


def _voc_missing_error(tree: FileTree, missing: list[str]) -> ManualDataError:
  hint = ""
  if tree.unsupported_archives:
    hint = ("\nFound archives this tool cannot read directly; extract them first: " +
            ", ".join(tree.unsupported_archives[:5]))
  sample = ", ".join(str(e) for e in tree.entries[:3]) or "no files at all"
  lines = "".join(f"\n  - {line}" for line in missing)
  return ManualDataError(
      f"No complete VOC aug download found under {tree.root} (it contains: {sample}). "
      f"Missing:{lines}\nPut the downloaded files in {tree.root} as they are, or extract them "
      f"there.{hint}\n{VOC_AUG_HELP}")


def _check_voc_files(tree: FileTree, files: _VocFiles) -> None:
  """Raises naming each missing file, the download holding it and where it comes from."""
  in_voc = f"in {VOC_TAR}, from {VOC_URL}"
  in_sbd = f"in {SBD_TGZ}, from {SBD_URL}"
  missing = []
  voc_parts = {"VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": "train" in files.voc_lists,
               "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": "val" in files.voc_lists,
               "VOCdevkit/VOC2012/JPEGImages/<id>.jpg": bool(files.voc_images),
               "VOCdevkit/VOC2012/SegmentationClass/<id>.png": bool(files.voc_labels)}
  if not any(voc_parts.values()):
    missing.append(f"{VOC_TAR} (or its extracted VOCdevkit/VOC2012/ folder), from {VOC_URL}")
  else:
    missing += [f"{path} ({in_voc})" for path, found in voc_parts.items() if not found]
  sbd_parts = {"benchmark_RELEASE/dataset/train.txt": "train" in files.sbd_lists,
               "benchmark_RELEASE/dataset/val.txt": "val" in files.sbd_lists,
               "benchmark_RELEASE/dataset/cls/<id>.mat": bool(files.sbd_labels)}
  # SegmentationClassAug, when present, stands in for SBD's lists and labels.
  if not files.aug_labels and not any(sbd_parts.values()):
    missing.append(f"{SBD_TGZ} (or its extracted benchmark_RELEASE/dataset/ folder), from "
                   f"{SBD_URL}; or instead a SegmentationClassAug/ folder of label PNGs")
  elif not files.aug_labels:
    missing += [f"{path} ({in_sbd})" for path, found in sbd_parts.items() if not found]
  if missing:
    raise _voc_missing_error(tree, missing)


def _read_id_list(tree: FileTree, entry: Entry) -> list[str]:
  try:
    text = tree.read(entry).decode("utf-8")
  except UnicodeDecodeError as err:
    raise CorruptFileError(f"The id list {entry} is not text ({err}); download or extract it "
                           "again.") from err
  # VOC lists hold one id a line; tolerate a second column (such as "<id> -1").
  return [line.split()[0] for line in text.splitlines() if line.strip()]


def find_voc_aug(tree: FileTree) -> dict[str, list[Pair]]:
  """{"train": pairs, "val": pairs} of PASCAL VOC 2012 with the SBD labels, named by VOC id.

  train = (SBD train + SBD val + VOC train) - VOC val, val = VOC val (without SBD's lists, the
  ids of SegmentationClassAug stand for SBD's). Images: VOC's JPEGImages, else SBD's img.
  Labels: VOC's SegmentationClass, else SBD's cls .mat, else SegmentationClassAug; val ids take
  VOC's labels only, so the evaluation never silently changes to SBD's.
  """
  files, duplicates = _VocFiles(), []
  for entry in tree.entries:
    _sort_voc_entry(files, entry, duplicates)
  if duplicates:
    logging.warning("voc_aug: %d file(s) found twice (e.g. %s); using one copy each",
                    len(duplicates), duplicates[0])
  _check_voc_files(tree, files)
  use_sbd_lists = len(files.sbd_lists) == 2
  tree.prefetch(list(files.voc_lists.values()) +
                (list(files.sbd_lists.values()) if use_sbd_lists else []))
  voc = {split: _read_id_list(tree, entry) for split, entry in files.voc_lists.items()}
  if use_sbd_lists:
    sbd_ids = set(_read_id_list(tree, files.sbd_lists["train"]))
    sbd_ids |= set(_read_id_list(tree, files.sbd_lists["val"]))
  else:
    sbd_ids = set(files.aug_labels)
  val_ids = set(voc["val"])
  ids = {"train": sorted((sbd_ids | set(voc["train"])) - val_ids), "val": sorted(val_ids)}
  label_sources = {"train": (files.voc_labels, files.sbd_labels, files.aug_labels),
                   "val": (files.voc_labels,)}
  result = {}
  for split, split_ids in ids.items():
    pairs, without_image, without_label = [], [], []
    for voc_id in split_ids:
      image = files.voc_images.get(voc_id) or files.sbd_images.get(voc_id)
      label = next((found[voc_id] for found in label_sources[split] if voc_id in found), None)
      if image is None:
        without_image.append(voc_id)
      elif label is None:
        without_label.append(voc_id)
      else:
        pairs.append(Pair(voc_id, image, label))
    if without_image:
      logging.warning("voc_aug %s: skipping %d listed id(s) without an image "
                      "(JPEGImages/<id>.jpg or SBD's img/<id>.jpg), e.g. %s", split,
                      len(without_image), without_image[0])
    if without_label:
      where = ("SegmentationClass/<id>.png" if split == "val" else
               "SegmentationClass/<id>.png, SBD's cls/<id>.mat or SegmentationClassAug/<id>.png")
      logging.warning("voc_aug %s: skipping %d listed id(s) without a label (%s), e.g. %s",
                      split, len(without_label), where, without_label[0])
    if not pairs:
      raise _voc_missing_error(tree, [f"the images and labels of the {len(split_ids)} VOC aug "
                                      f"{split} ids listed (none has both)"])
    result[split] = pairs  # prepare compares the counts with VOC_AUG_SIZES.
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
  """SYNTHIA labels are 16-bit multi-channel PNGs, which PIL reduces to 8 bits; OpenCV reads
  them exactly (in BGR order, so the PNG's first channel is OpenCV's channel 2)."""
  import cv2  # pylint: disable=g-import-not-at-top  (only SYNTHIA needs it)
  try:
    # None for bytes OpenCV cannot decode; cv2.error for some (an empty file).
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  except cv2.error as err:
    raise CorruptFileError(f"Cannot decode the label {entry}: {err}. The file is damaged; "
                           "download or extract it again.") from err
  if decoded is None:
    raise CorruptFileError(f"Cannot decode the label {entry}. The file is damaged; download or "
                           "extract it again.")
  if decoded.dtype != np.uint16:
    raise CorruptFileError(
        f"The label {entry} holds {decoded.dtype} values; expected a 16-bit PNG with the class "
        "id in its first channel (SYNTHIA's GT/LABELS, not GT/COLOR).")
  if decoded.ndim == 2:  # Grayscale.
    return decoded
  if decoded.ndim != 3 or decoded.shape[-1] < 3:
    raise CorruptFileError(f"The label {entry} decodes to shape {decoded.shape}; expected "
                           "[H, W] or [H, W, 3 or 4] ids")
  return decoded[..., 2]  # OpenCV's BGR(A) order; gray+alpha also comes as BGRA.


def load_cityscapes_train_ids(tree: FileTree, entry: Entry) -> np.ndarray:
  """[H, W] uint8 train ids (255 = ignore) of a label file of Cityscapes label ids (GTAV,
  Cityscapes)."""
  data = tree.read(entry)
  raw = _decode_label_ids_pil(entry, data)
  if raw.ndim != 2:
    raise CorruptFileError(f"The label {entry} has shape {raw.shape}; expected [H, W] ids")
  return labels_lib.to_train_ids(raw, labels_lib.CITYSCAPES_LOOKUP)


def load_synthia_train_ids(tree: FileTree, entry: Entry) -> np.ndarray:
  """[H, W] uint8 train ids (255 = ignore) of a SYNTHIA label file (16-bit PNG, class id in
  the first channel)."""
  data = tree.read(entry)
  return labels_lib.to_train_ids(_decode_png16_first_channel(entry, data),
                                 labels_lib.SYNTHIA_LOOKUP)


def _decode_sbd_mat(entry: Entry, data: bytes) -> np.ndarray:
  """The class-id map of an SBD cls/*.mat file (MATLAB v5: struct GTcls, field Segmentation)."""
  import scipy.io  # pylint: disable=g-import-not-at-top  (slow to import, only needed here)
  try:
    contents = scipy.io.loadmat(io.BytesIO(data), variable_names=["GTcls"])
  except Exception as err:  # scipy raises several types for damaged files.
    raise CorruptFileError(f"Cannot decode the label {entry}: {err}. The file is damaged; "
                           "download or extract it again.") from err
  gt = contents.get("GTcls")
  if gt is None or gt.dtype.names is None or "Segmentation" not in gt.dtype.names or (
      gt.size != 1):
    raise CorruptFileError(
        f"The label {entry} holds no struct GTcls with a field Segmentation; expected an SBD "
        "class label (benchmark_RELEASE/dataset/cls/<id>.mat, not inst/).")
  segmentation = np.asarray(gt["Segmentation"].flat[0])
  if segmentation.dtype.kind not in "iu":
    raise CorruptFileError(f"The label {entry} holds a {segmentation.dtype} Segmentation; "
                           "expected integer class ids")
  return segmentation


def load_voc_ids(tree: FileTree, entry: Entry) -> np.ndarray:
  """[H, W] uint8 VOC class ids (0..20; 255 = boundary/ignore) of a VOC SegmentationClass or
  SegmentationClassAug PNG (palette indices or grey values are the ids) or an SBD .mat file."""
  data = tree.read(entry)
  if entry.name.lower().endswith(".mat"):
    raw = _decode_sbd_mat(entry, data)
  else:
    raw = _decode_label_ids_pil(entry, data)
  if raw.ndim != 2:
    raise CorruptFileError(f"The label {entry} has shape {raw.shape}; expected [H, W] ids")
  return labels_lib.to_train_ids(raw, labels_lib.VOC_LOOKUP)
