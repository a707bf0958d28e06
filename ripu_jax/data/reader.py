"""Random access to prepared datasets: `open_split`.

Prepared datasets are TFDS ArrayRecord folders read through `tfds` data sources; images and
labels stay PNG-encoded on disk and are decoded here with PIL, so reading needs neither
TensorFlow nor OpenCV. Each split also carries, from preparation time, which classes every
image contains (for class-balanced sampling) and each label's size. Which datasets exist, their
splits and generator parameters come from the catalogue (`ripu_jax.data.catalog`).

A prepared folder whose metadata files (`METADATA_FILES`) are damaged, by a disk error, a
partial copy or a hand edit, raises `DatasetNotPreparedError` naming the file and giving the
command that prepares the dataset again (with --overwrite), rather than the JSON or protobuf
error deep inside TFDS: the only fix is to prepare it again.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import shlex
import types

import numpy as np
from PIL import Image

from ripu_jax.data import catalog

VERSION = "1.0.0"
DEFAULT_DATA_DIR = "~/tensorflow_datasets"
DatasetNotPreparedError = catalog.DatasetNotPreparedError
# The JSON files TFDS and the builders write into a prepared folder, all read on opening it.
METADATA_FILES = ("dataset_info.json", "features.json", "metadata.json")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
  return os.path.abspath(os.path.expanduser(os.fspath(data_dir or DEFAULT_DATA_DIR)))


def check_name(name: str) -> catalog.DatasetSpec:
  """The catalogue's spec of `name`; unknown names raise ValueError listing the known ones."""
  return catalog.get(name)


def dataset_dir(name: str, data_dir: str | os.PathLike | None = None, config=None) -> str:
  """Folder of a prepared dataset: <data_dir>/<name>[/<config name>]/<version>; datasets
  with generator parameters (synthetic) keep one folder per parameter set."""
  spec = check_name(name)
  root = resolve_data_dir(data_dir)
  config = spec.check_config(config)
  if config is not None:
    return os.path.join(root, name, config.name, VERSION)
  return os.path.join(root, name, VERSION)


def prepare_command(name: str, data_dir: str | os.PathLike | None, config=None, *,
                    overwrite: bool = False) -> str:
  """The shell command that prepares `name` into `data_dir` (replacing what is there, if
  `overwrite`)."""
  spec = check_name(name)
  parts = ["python", "-m", "ripu_jax.data.prepare", "--dataset", name]
  if not spec.generated:
    parts += ["--manual_dir", "/path/to/downloaded/" + name]
  parts += ["--data_dir", resolve_data_dir(data_dir)]
  config = spec.check_config(config)
  if config is not None:
    defaults = spec.config_type()
    for field in dataclasses.fields(config):
      if getattr(config, field.name) != getattr(defaults, field.name):
        parts += [f"--{field.name}", str(getattr(config, field.name))]
  if overwrite:
    parts.append("--overwrite")
  return " ".join(shlex.quote(p) for p in parts)


def damaged_metadata(directory: str) -> str | None:
  """Which metadata file of a prepared folder is damaged, and how ("<path> is not valid JSON
  (...)"); None if each one present parses as a JSON object (TFDS may still reject what one
  holds)."""
  for filename in METADATA_FILES:
    path = os.path.join(directory, filename)
    if not os.path.isfile(path):
      continue
    try:
      with open(path, "rb") as f:
        value = json.loads(f.read().decode("utf-8"))
    except ValueError as err:  # JSONDecodeError, and UnicodeDecodeError for binary garbage.
      return f"{path} is not valid JSON ({err})"
    except OSError as err:
      return f"{path} cannot be read ({err})"
    if not isinstance(value, dict):
      return f"{path} holds a JSON {type(value).__name__} instead of an object"
  return None


def damaged_error(name: str, directory: str, error: BaseException | None = None, *,
                  data_dir: str | os.PathLike | None = None, config=None,
                  reason: str | None = None) -> DatasetNotPreparedError:
  """The error for a prepared folder that cannot be read: names the damaged file (`reason`,
  else found by `damaged_metadata`, else `error`) and gives the command that prepares the
  dataset again over it."""
  reason = reason or damaged_metadata(directory)
  if reason is None:
    reason = (f"TFDS cannot read the metadata files of {directory} "
              f"({type(error).__name__}: {error})")
  command = prepare_command(name, data_dir, config, overwrite=True)
  return DatasetNotPreparedError(
      f"The prepared {name} dataset is damaged: {reason}. Prepare it again; --overwrite "
      f"replaces the damaged folder:\n  {command}")


def metadata_errors() -> tuple[type[BaseException], ...]:
  """What TFDS raises for damaged metadata: JSON, protobuf-JSON and value errors."""
  from google.protobuf import json_format  # pylint: disable=g-import-not-at-top
  return (ValueError, KeyError, TypeError, AttributeError, json_format.Error)


def decode_png(data: bytes | np.ndarray) -> np.ndarray:
  """PNG bytes -> uint8 array (arrays pass through unchanged)."""
  if isinstance(data, np.ndarray):
    return data
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image)


def decode_record(record: dict) -> dict:
  """Decodes an encoded record of `PreparedSplit.encoded` into an example (extra features
  pass through as stored)."""
  label = decode_png(record["label"])
  if label.ndim == 3:
    label = label[..., 0]
  return {**record, "image": decode_png(record["image"]), "label": label}


class PreparedSplit:
  """One split of a prepared dataset: a sequence of examples.

  `split[i]` is {"image": uint8 [H, W, 3], "label": uint8 [H, W] stored ids (255 = ignore),
  "name": str} plus the dataset's declared features (`features`: key -> role). `encoded(i)`
  returns the same with image and label as PNG bytes, for pipelines that decode in worker
  processes. `class_index[c]` lists the images containing stored id c.
  """

  def __init__(self, name: str, split: str, directory: str, *,
               data_dir: str | os.PathLike | None = None, config=None):
    """`data_dir` and `config` (as given to `open_split`) only make the prepare command in
    error messages exact; by default data_dir is read off `directory`."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    spec = catalog.get(name)
    self.dataset_name = name
    # Class indices of the metadata: the stored label space's (19 Cityscapes train ids, 21 VOC
    # classes, ...).
    self.num_classes = catalog.label_space(spec.stored_space).num_classes
    self.features = types.MappingProxyType(dict(spec.features))
    self.split = split
    self.directory = directory
    if data_dir is None:  # <data_dir>/<name>[/<config name>]/<version>
      levels = 3 if spec.check_config(config) is not None else 2
      data_dir = directory
      for _ in range(levels):
        data_dir = os.path.dirname(data_dir)

    def damaged(error=None, reason=None):
      return damaged_error(name, directory, error, data_dir=data_dir, config=config,
                           reason=reason)

    try:
      builder = tfds.builder_from_directory(directory)
      splits = builder.info.splits
      metadata = builder.info.metadata or {}
    except metadata_errors() as err:
      raise damaged(err) from err
    if split not in splits:
      raise ValueError(f"{name} has no split {split!r}; it has {sorted(splits)}")
    skip = tfds.decode.SkipDecoding()
    self._source = builder.as_data_source(split, decoders={"image": skip, "label": skip})
    metadata_file = os.path.join(directory, "metadata.json")
    if split not in metadata:
      raise damaged(reason=f"{metadata_file} lacks the per-class image index of split "
                           f"{split!r}")
    try:
      split_meta = metadata[split]
      self._presence_bits = np.asarray(split_meta["class_presence"], np.int64)
      self._label_shapes = np.asarray(split_meta["label_shapes"], np.int64).reshape(-1, 2)
      self._pixel_counts = np.asarray(split_meta["pixel_counts"], np.int64)
    except (KeyError, TypeError, ValueError) as err:
      raise damaged(reason=f"{metadata_file} holds a malformed index of split {split!r} "
                           f"({type(err).__name__}: {err})") from err
    indexed = (len(self._presence_bits) if self._presence_bits.ndim == 1 else -1,
               len(self._label_shapes))
    if indexed != (len(self._source),) * 2:
      raise damaged(reason=f"{metadata_file} indexes {indexed[0]} examples of split {split!r} "
                           f"but the split has {len(self._source)}")

  def __len__(self) -> int:
    return len(self._source)

  def _check_index(self, index) -> int:
    index = int(index)
    n = len(self)
    if index < 0:
      index += n
    if not 0 <= index < n:
      raise IndexError(f"index {index} out of range for {self.dataset_name}/{self.split} "
                       f"with {n} examples")
    return index

  def encoded(self, index: int) -> dict:
    """{"image": PNG bytes, "label": PNG bytes, "name": str, <features>}."""
    record = dict(self._source[self._check_index(index)])
    name = record["name"]
    record["name"] = name.decode("utf-8") if isinstance(name, bytes) else str(name)
    return record

  def __getitem__(self, index: int) -> dict:
    return decode_record(self.encoded(index))

  def label(self, index: int) -> np.ndarray:
    """[H, W] uint8 train ids of one example, without decoding its image."""
    label = decode_png(self.encoded(index)["label"])
    return label[..., 0] if label.ndim == 3 else label

  def name(self, index: int) -> str:
    """The example's name (its source file's stem), without decoding the image."""
    return self.encoded(index)["name"]

  def label_shape(self, index: int) -> tuple[int, int]:
    """(height, width) of the label at full resolution, from preparation-time metadata."""
    h, w = self._label_shapes[self._check_index(index)]
    return int(h), int(w)

  @functools.cached_property
  def class_presence(self) -> np.ndarray:
    """[N, num_classes] bool: which stored ids occur in each image."""
    bits = np.arange(self.num_classes, dtype=np.int64)
    return ((self._presence_bits[:, None] >> bits[None, :]) & 1).astype(bool)

  @property
  def class_index(self) -> tuple[np.ndarray, ...]:
    """Per stored id, the sorted indices of the images that contain it."""
    return tuple(np.flatnonzero(self.class_presence[:, c]) for c in range(self.num_classes))

  @property
  def pixel_counts(self) -> np.ndarray:
    """[num_classes] total labelled pixels per stored id over the split."""
    return self._pixel_counts.copy()

  def __repr__(self) -> str:
    return f"PreparedSplit({self.dataset_name!r}, {self.split!r}, {self.directory!r})"


def open_split(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
               config=None) -> PreparedSplit:
  """Opens a prepared split for random access (to open a split by role, and generated data
  without preparing it, use `catalog.open_role`).

  Args:
    name: a dataset of the catalogue with a TFDS builder: "gtav", "synthia", "cityscapes",
      "voc_aug", "synthetic", or one a plug-in registered.
    split: one of the dataset's splits: "train" (gtav, synthia), "train"/"val"
      (cityscapes, voc_aug), or "source_train", "target_train", "target_val" (synthetic).
    data_dir: the --data_dir given to `python -m ripu_jax.data.prepare`
      (default ~/tensorflow_datasets).
    config: generated datasets only (synthetic: a SyntheticConfig): the generator parameters
      it was prepared with (default parameters if None).

  Returns:
    A `PreparedSplit`.

  Raises:
    DatasetNotPreparedError: with the command that prepares the dataset; for a prepared
      folder that is damaged, it names the damaged file and the command has --overwrite.
  """
  spec = check_name(name)
  if split not in spec.splits:
    raise ValueError(f"{name} has no split {split!r}; choose one of {spec.splits}")
  if spec.builder is None:
    raise ValueError(f"{name} is not a prepared dataset (it has no TFDS builder); open it with "
                     f"ripu_jax.data.catalog.open_role({name!r}, role)")
  directory = dataset_dir(name, data_dir, config)
  if not os.path.isfile(os.path.join(directory, "dataset_info.json")):
    command = prepare_command(name, data_dir, config)
    if spec.generated:
      how = (f"The {name} dataset needs no download; generate it with:\n"
             f"  {command}")
    else:
      how = (f"Download {name} by hand (the command prints where from and the expected folder "
             f"layout if the files are missing), then run:\n  {command}")
    raise DatasetNotPreparedError(f"{name} is not prepared in {resolve_data_dir(data_dir)} "
                                  f"(no {directory}).\n{how}")
  return PreparedSplit(name, split, directory, data_dir=data_dir, config=config)
