"""Random access to prepared datasets: `open_split`.

Prepared datasets are TFDS ArrayRecord folders read through `tfds` data sources; images and
labels stay PNG-encoded on disk and are decoded here with PIL, so reading needs neither
TensorFlow nor OpenCV. Each split also carries, from preparation time, which classes every
image contains (for class-balanced sampling) and each label's size. Which datasets exist, their
splits and generator parameters come from the catalogue (`ripu_jax.data.catalog`).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import shlex
import types

import numpy as np
from PIL import Image

from ripu_jax.data import catalog
from ripu_jax.data import labels as labels_lib

VERSION = "1.0.0"
DEFAULT_DATA_DIR = "~/tensorflow_datasets"
DatasetNotPreparedError = catalog.DatasetNotPreparedError


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


def prepare_command(name: str, data_dir: str | os.PathLike | None, config=None) -> str:
  """The shell command that prepares `name` into `data_dir`."""
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
  return " ".join(shlex.quote(p) for p in parts)


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

  def __init__(self, name: str, split: str, directory: str):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self.dataset_name = name
    self.features = types.MappingProxyType(dict(catalog.get(name).features))
    self.split = split
    self.directory = directory
    builder = tfds.builder_from_directory(directory)
    if split not in builder.info.splits:
      raise ValueError(f"{name} has no split {split!r}; it has {sorted(builder.info.splits)}")
    skip = tfds.decode.SkipDecoding()
    self._source = builder.as_data_source(split, decoders={"image": skip, "label": skip})
    metadata = builder.info.metadata or {}
    if split not in metadata:
      raise DatasetNotPreparedError(
          f"{directory} lacks the per-class image index of split {split!r}; prepare it again "
          f"with --overwrite: {prepare_command(name, os.path.dirname(os.path.dirname(directory)))}")
    split_meta = metadata[split]
    self._presence_bits = np.asarray(split_meta["class_presence"], np.int64)
    self._label_shapes = np.asarray(split_meta["label_shapes"], np.int64).reshape(-1, 2)
    self._pixel_counts = np.asarray(split_meta["pixel_counts"], np.int64)
    if len(self._presence_bits) != len(self._source):
      raise DatasetNotPreparedError(
          f"{directory}: metadata lists {len(self._presence_bits)} examples but the split has "
          f"{len(self._source)}; the folder is inconsistent, prepare it again with --overwrite")

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
    """[N, NUM_CLASSES] bool: which train ids occur in each image."""
    bits = np.arange(labels_lib.NUM_CLASSES, dtype=np.int64)
    return ((self._presence_bits[:, None] >> bits[None, :]) & 1).astype(bool)

  @property
  def class_index(self) -> tuple[np.ndarray, ...]:
    """Per train id, the sorted indices of the images that contain it."""
    return tuple(np.flatnonzero(self.class_presence[:, c]) for c in range(labels_lib.NUM_CLASSES))

  @property
  def pixel_counts(self) -> np.ndarray:
    """[NUM_CLASSES] total labelled pixels per train id over the split."""
    return self._pixel_counts.copy()

  def __repr__(self) -> str:
    return f"PreparedSplit({self.dataset_name!r}, {self.split!r}, {self.directory!r})"


def open_split(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
               config=None) -> PreparedSplit:
  """Opens a prepared split for random access (to open a split by role, and generated data
  without preparing it, use `catalog.open_role`).

  Args:
    name: a dataset of the catalogue with a TFDS builder: "gtav", "synthia", "cityscapes",
      "synthetic", or one a plug-in registered.
    split: one of the dataset's splits: "train" (gtav, synthia), "train"/"val"
      (cityscapes), or "source_train", "target_train", "target_val" (synthetic).
    data_dir: the --data_dir given to `python -m ripu_jax.data.prepare`
      (default ~/tensorflow_datasets).
    config: generated datasets only (synthetic: a SyntheticConfig): the generator parameters
      it was prepared with (default parameters if None).

  Returns:
    A `PreparedSplit`.

  Raises:
    DatasetNotPreparedError: with the command that prepares the dataset.
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
  return PreparedSplit(name, split, directory)
