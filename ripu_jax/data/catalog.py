"""The dataset catalogue: every dataset ripu_jax reads, described once, chosen by name.

A `DatasetSpec` holds what the rest of the package needs to know about a dataset: its splits;
which split serves each *role* of a run; the label space a run sourced from it trains in, and
the space its labels are stored in; how it is prepared (its TFDS builder and, for manual
downloads, the finder pairing images with labels, the label decoder and the download
instructions); how it is opened; and the extra per-example *features* it carries (depth, pose,
intrinsics, superpixels, ...), which the loaders of `ripu_jax.data.pipeline` move by role.

Why: the names used to live in seven parallel tables (reader, manual, builders, prepare,
labels, the config's source/target lists, the trainer's split opening) that had to agree;
now `reader`, `manual`, `builders` and `prepare` read this catalogue, and a dataset defined
outside the package (e.g. a multi-view RGB-D set for ViewAL) joins with one `register` call in
a plug-in module.

Roles the trainer uses: "source" (labelled source training), "target_train" (the pool whose
labels are bought) and "target_val" (evaluation). A run trains and evaluates in its source
dataset's label space (`run_label_space`; a source-free run still names its source), and each
dataset's stored ids reach that space through `label_map`, which the loaders apply.

Typical use (the trainer):

  space = catalog.run_label_space(source, target)          # num_classes, eval_sets, names
  splits = catalog.open_run_splits(source, target, data_dir=..., options={"synthetic": {...}})
  source_map = catalog.label_map(source, space)            # pass as the loaders' label_map
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ripu_jax.data import labels as labels_lib
from ripu_jax.data import manual
from ripu_jax.data import synthetic as synthetic_lib
from ripu_jax.errors import MissingFileError
from ripu_jax.registry import Registry

SOURCE = "source"
TARGET_TRAIN = "target_train"
TARGET_VAL = "target_val"
# The roles a run asks for; a dataset may declare others for methods that need them.
ROLES = (SOURCE, TARGET_TRAIN, TARGET_VAL)

# Keys every example or batch already uses; a feature may not take them.
RESERVED_KEYS = ("image", "label", "name", "index", "valid", "label_size")

LABEL_SPACES: Registry[labels_lib.LabelSpace] = Registry("label space")
DATASETS: Registry["DatasetSpec"] = Registry("dataset")

# Shown when a run's dataset is missing: the benchmark that needs no download (a dataset's
# `try_without_downloads` may name its own method's).
DEMO_ARGS = "--config configs/demo.py --workdir /tmp/ripu_demo"


class DatasetNotPreparedError(MissingFileError):
  """The requested dataset has not been prepared in the given data dir."""


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetSpec:
  """One dataset: splits, roles, label spaces, preparation, opening, features.

  Attributes:
    name: registry name; also the folder under the data dir and the TFDS builder's name.
    splits: the split names.
    roles: role -> split serving it, e.g. {"source": "train"}.
    label_space: name (in `LABEL_SPACES`) of the space a run sourced from this dataset trains
      and evaluates in.
    stored_space: the space its stored label ids belong to (default: `label_space`). SYNTHIA
      and the synthetic benchmark store Cityscapes train ids ("cityscapes19") but train in
      their own spaces.
    builder: its TFDS builder class, or "module:Class" to import it only when preparing (TFDS
      is heavy); None for a dataset opened only through `opener`.
    finder: manual downloads only: `finder(manual.FileTree) -> {split: [manual.Pair]}`
      (None for generated data).
    label_loader: with `finder`: `label_loader(tree, entry) -> uint8 [H, W]` stored ids.
    help: with `finder`: where to download the files and the folder layout expected.
    features: example keys beyond image and label, key -> role ("depth", "superpixels",
      "pose", "intrinsics"; see `ripu_jax.data.pipeline.FEATURE_ROLES`); a sequence of names
      means key == role. Empty for the built-in datasets.
    opener: `opener(spec, split, *, data_dir, **options) -> split`; None opens the prepared
      TFDS copy (whose options are the fields of `config_type`, if any).
    config_type: generator parameters of a generated dataset (a frozen dataclass with defaults
      and a `name` property naming its prepared folder), or None.
    sizes: split -> examples of the full dataset; `prepare` warns when a prepared split holds
      another count (a partial download). Empty: not checked.
    try_without_downloads: `ripu_jax.main` arguments of a run of the method this dataset
      serves on data that needs no download, suggested when the dataset is missing.
  """

  name: str
  splits: tuple[str, ...]
  roles: Mapping[str, str]
  label_space: str
  stored_space: str | None = None
  builder: type | str | None = None
  finder: Callable[[manual.FileTree], dict] | None = None
  label_loader: Callable[[manual.FileTree, manual.Entry], Any] | None = None
  help: str | None = None
  features: Mapping[str, str] | Sequence[str] = ()
  opener: Callable[..., Any] | None = None
  config_type: type | None = None
  sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)
  try_without_downloads: str = DEMO_ARGS

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"a dataset needs a non-empty string name, got {self.name!r}")
    splits = tuple(self.splits)
    if not splits or len(set(splits)) != len(splits):
      raise ValueError(f"dataset {self.name!r}: splits must be distinct names, got {splits}")
    roles = dict(self.roles)
    for role, split in roles.items():
      if split not in splits:
        raise ValueError(f"dataset {self.name!r}: role {role!r} names split {split!r}, which is "
                         f"not one of its splits {splits}")
    features = self.features
    if isinstance(features, str):
      features = (features,)
    features = (dict(features) if isinstance(features, Mapping)
                else {key: key for key in features})
    clash = sorted(set(features) & set(RESERVED_KEYS))
    if clash:
      raise ValueError(f"dataset {self.name!r}: feature keys {clash} are reserved "
                       f"({', '.join(RESERVED_KEYS)}); rename them")
    if self.finder is not None and (self.help is None or self.label_loader is None):
      raise ValueError(f"dataset {self.name!r}: a manual-download finder needs help (download "
                       "instructions) and a label_loader")
    if self.finder is not None and self.builder is None:
      raise ValueError(f"dataset {self.name!r}: a manual-download finder needs a TFDS builder")
    object.__setattr__(self, "splits", splits)
    object.__setattr__(self, "roles", types.MappingProxyType(roles))
    object.__setattr__(self, "features", types.MappingProxyType(features))
    sizes = dict(self.sizes)
    unknown = sorted(set(sizes) - set(splits))
    if unknown:
      raise ValueError(f"dataset {self.name!r}: sizes name splits {unknown}, which are not among "
                       f"its splits {splits}")
    object.__setattr__(self, "stored_space", self.stored_space or self.label_space)
    object.__setattr__(self, "sizes", types.MappingProxyType(sizes))

  @property
  def generated(self) -> bool:
    """True when the data is generated locally (no manual download)."""
    return self.finder is None

  def split_for(self, role: str) -> str:
    """The split serving `role`; the error names the datasets that can play it."""
    if role not in self.roles:
      able = ", ".join(names(role)) or "none"
      raise ValueError(f"dataset {self.name!r} cannot serve as {role!r} (it serves "
                       f"{', '.join(self.roles) or 'no role'}); datasets that can: {able}")
    return self.roles[role]

  def builder_class(self) -> type:
    """The TFDS builder class (imported now if given as "module:Class")."""
    if self.builder is None:
      raise ValueError(f"dataset {self.name!r} has no TFDS builder: it is not prepared but "
                       "opened directly (catalog.open_role)")
    if isinstance(self.builder, str):
      module, _, attribute = self.builder.partition(":")
      return getattr(importlib.import_module(module), attribute)
    return self.builder

  def check_config(self, config) -> Any:
    """`config` (default instance if None) after checking it is a `config_type`."""
    if self.config_type is None:
      if config is not None:
        raise ValueError(f"config applies only to a generated dataset with parameters (e.g. "
                         f"synthetic), not {self.name!r}")
      return None
    if config is None:
      return self.config_type()
    if not isinstance(config, self.config_type):
      raise TypeError(f"config must be a {self.config_type.__name__}, got "
                      f"{type(config).__name__}")
    return config

  def config_from_options(self, options: Mapping[str, Any]) -> Any:
    """A `config_type` from option values (its field names); errors list the valid ones."""
    if self.config_type is None:
      if options:
        raise ValueError(f"dataset {self.name!r} takes no options, got {sorted(options)}")
      return None
    fields = [f.name for f in dataclasses.fields(self.config_type)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
      raise ValueError(f"dataset {self.name!r} has no option(s) {unknown}; its options are "
                       f"{', '.join(fields)}")
    return self.config_type(**options)

  def open(self, split: str, *, data_dir: str | os.PathLike | None = None, **options) -> Any:
    """Opens one split; a prepared dataset that is missing raises DatasetNotPreparedError."""
    if split not in self.splits:
      raise ValueError(f"{self.name} has no split {split!r}; choose one of {self.splits}")
    if self.opener is not None:
      return self.opener(self, split, data_dir=data_dir, **options)
    return open_prepared(self, split, data_dir=data_dir, **options)


def open_prepared(spec: DatasetSpec, split: str, *, data_dir=None, **options) -> Any:
  """The default opener: the prepared TFDS copy (`reader.open_split`)."""
  from ripu_jax.data import reader  # pylint: disable=g-import-not-at-top  (reader reads us)
  return reader.open_split(spec.name, split, data_dir, config=spec.config_from_options(options))


def _open_synthetic(spec: DatasetSpec, split: str, *, data_dir=None, prepared: bool = False,
                    **fields) -> Any:
  """Synthetic options: the generator fields, and `prepared` (False: generate in memory;
  True: read the copy `python -m ripu_jax.data.prepare --dataset synthetic` wrote)."""
  if prepared:
    return open_prepared(spec, split, data_dir=data_dir, **fields)
  return synthetic_lib.SyntheticSplit(spec.config_from_options(fields), split)


# ----------------------------------------------------------------------------- registry


def register(spec: DatasetSpec) -> DatasetSpec:
  """Adds `spec` under its name (plug-in modules call this at import)."""
  if not isinstance(spec, DatasetSpec):
    raise TypeError(f"register a DatasetSpec, got {type(spec).__name__}")
  return DATASETS.register(spec.name, spec)


def get(name: str) -> DatasetSpec:
  """The spec registered as `name`; the error lists the known datasets."""
  spec = DATASETS.get(name)
  if spec.name != name:
    raise ValueError(f"dataset registered as {name!r} names itself {spec.name!r}; register a "
                     "DatasetSpec under its own name (catalog.register(spec))")
  return spec


def names(*roles: str) -> list[str]:
  """Sorted names of the datasets that can play every one of `roles` (all without roles)."""
  return [name for name in DATASETS.names() if all(r in DATASETS.get(name).roles for r in roles)]


def source_names() -> list[str]:
  """Datasets valid as a run's source (config.data.source)."""
  return names(SOURCE)


def target_names() -> list[str]:
  """Datasets valid as a run's target (config.data.target): a pool and a validation split."""
  return names(TARGET_TRAIN, TARGET_VAL)


# ----------------------------------------------------------------------------- opening


def open_role(name: str, role: str, *, data_dir: str | os.PathLike | None = None,
              **options) -> Any:
  """Opens the split of dataset `name` that serves `role`.

  Args:
    name: a registered dataset (`DATASETS.names()`).
    role: "source", "target_train", "target_val" or another role the dataset declares.
    data_dir: where prepared datasets live (default ~/tensorflow_datasets).
    **options: the dataset's options; synthetic: the `SyntheticConfig` fields and `prepared`
      (False: generate in memory, True: read the prepared copy). Others take none.

  Returns:
    A split (sequence of examples with `label_shape`, `name`, `class_presence`, ...) whose
    `features` attribute is the dataset's declared features, read by the loaders.

  Raises:
    DatasetNotPreparedError: with the command that prepares the dataset.
    ValueError: unknown dataset (lists the known ones), role or option.
  """
  spec = get(name)
  split = spec.open(spec.split_for(role), data_dir=data_dir, **options)
  declared = dict(spec.features)
  carried = getattr(split, "features", None)
  if carried is None:
    try:
      split.features = types.MappingProxyType(declared)
    except AttributeError as error:
      raise TypeError(f"{name}'s opener returned {type(split).__name__}, which has no `features` "
                      "attribute and takes none; give it one (the declared features)") from error
  elif dict(carried) != declared:
    raise ValueError(f"{name}/{spec.split_for(role)} carries features {dict(carried)} but the "
                     f"catalogue declares {declared}")
  return split


class RunSplits(NamedTuple):
  """The splits of one run; `source` is None for a run without source data."""

  source: Any
  target_train: Any
  target_val: Any


def open_run_splits(source: str | None, target: str, *,
                    data_dir: str | os.PathLike | None = None,
                    options: Mapping[str, Mapping[str, Any]] | None = None) -> RunSplits:
  """Opens a run's source, target_train and target_val splits.

  Args:
    source: source dataset, or None/"" when the run reads no source data (source-free).
    target: target dataset.
    data_dir: where prepared datasets live.
    options: per dataset name, its options (see `open_role`), e.g.
      {"synthetic": {"prepared": False, "seed": 0, "height": 128, ...}}; datasets missing
      here get none.

  Raises:
    DatasetNotPreparedError: with how to prepare the missing dataset, and the demo that needs
      no download.
  """
  options = options or {}

  def open_(name, role):
    return open_role(name, role, data_dir=data_dir, **dict(options.get(name) or {}))

  try:
    return RunSplits(open_(source, SOURCE) if source else None, open_(target, TARGET_TRAIN),
                     open_(target, TARGET_VAL))
  except DatasetNotPreparedError as error:
    demo = DATASETS.get(target).try_without_downloads if target in DATASETS else DEMO_ARGS
    raise DatasetNotPreparedError(f"{error}\nOr try the method without downloads: "
                                  f"python -m ripu_jax.main {demo}") from None


# ----------------------------------------------------------------------------- label spaces


def label_space(name: str) -> labels_lib.LabelSpace:
  """The registered label space `name`; the error lists the known ones."""
  return LABEL_SPACES.get(name)


def _space(space: labels_lib.LabelSpace | str) -> labels_lib.LabelSpace:
  return space if isinstance(space, labels_lib.LabelSpace) else label_space(space)


def run_label_space(source: str | None, target: str | None = None) -> labels_lib.LabelSpace:
  """The space a run trains and evaluates in: its source dataset's.

  A run without source data (source-free) still names the source its model came from; with
  no source at all (None or "") the target's space is used. When `target` is given, checks
  that its labels reach the space.
  """
  if not source and not target:
    raise ValueError("run_label_space needs a source or a target dataset")
  space = label_space(get(source or target).label_space)
  if target:
    label_map(target, space)
  return space


def label_map(dataset: str, space: labels_lib.LabelSpace | str) -> np.ndarray:
  """[256] uint8 read-only table: `dataset`'s stored ids -> `space`'s class indices.

  Ids the space does not train or evaluate, and IGNORE_LABEL, map to IGNORE_LABEL. Pass it
  as `label_map` to the loaders of `ripu_jax.data.pipeline`.
  """
  return _space(space).table_from(label_space(get(dataset).stored_space))


# ----------------------------------------------------------------------------- built-ins

for _space_entry in (labels_lib.CITYSCAPES_19, labels_lib.SYNTHIA_16, labels_lib.VOC_21,
                     synthetic_lib.LABEL_SPACE):
  LABEL_SPACES.register(_space_entry.name, _space_entry)

register(DatasetSpec(
    name="gtav", splits=("train",), roles={SOURCE: "train"}, label_space="cityscapes19",
    builder="ripu_jax.data.builders:Gtav", finder=manual.find_gtav,
    label_loader=manual.load_cityscapes_train_ids, help=manual.GTAV_HELP))
register(DatasetSpec(
    name="synthia", splits=("train",), roles={SOURCE: "train"}, label_space="synthia16",
    stored_space="cityscapes19", builder="ripu_jax.data.builders:Synthia",
    finder=manual.find_synthia, label_loader=manual.load_synthia_train_ids,
    help=manual.SYNTHIA_HELP))
register(DatasetSpec(
    name="cityscapes", splits=tuple(manual.CITYSCAPES_SIZES),
    roles={TARGET_TRAIN: "train", TARGET_VAL: "val"}, label_space="cityscapes19",
    builder="ripu_jax.data.builders:Cityscapes", finder=manual.find_cityscapes,
    label_loader=manual.load_cityscapes_train_ids, help=manual.CITYSCAPES_HELP))
# PASCAL VOC 2012 + SBD ("VOC aug"), the semi-supervised benchmark: a target dataset only, in
# its own 21-class space.
register(DatasetSpec(
    name="voc_aug", splits=tuple(manual.VOC_AUG_SIZES),
    roles={TARGET_TRAIN: "train", TARGET_VAL: "val"}, label_space="voc",
    builder="ripu_jax.data.builders:VocAug", finder=manual.find_voc_aug,
    label_loader=manual.load_voc_ids, help=manual.VOC_AUG_HELP, sizes=manual.VOC_AUG_SIZES,
    try_without_downloads="--config configs/eln/demo_semi.py --workdir /tmp/eln_demo"))
register(DatasetSpec(
    name="synthetic", splits=synthetic_lib.SPLITS,
    roles={SOURCE: synthetic_lib.SOURCE_TRAIN, TARGET_TRAIN: synthetic_lib.TARGET_TRAIN,
           TARGET_VAL: synthetic_lib.TARGET_VAL},
    label_space=synthetic_lib.LABEL_SPACE.name, stored_space="cityscapes19",
    builder="ripu_jax.data.builders:Synthetic", opener=_open_synthetic,
    config_type=synthetic_lib.SyntheticConfig))

# The datasets ripu_jax itself defines; plug-ins (e.g. ViewAL's multi-view sets) add more.
BUILT_IN = tuple(DATASETS.names())
