"""Datasets and input pipelines.

* `ripu_jax.data.catalog`: every dataset by name (`DATASETS`), its splits, roles, label space
  and features; `open_role(name, role, ...)` / `open_run_splits(source, target, ...)` open a
  run's splits, `run_label_space` and `label_map` give the run's classes and each dataset's
  table into them.
* `open_split(name, split, data_dir)`: random access to a prepared dataset (gtav, synthia,
  cityscapes, voc_aug, synthetic); prepare one with `python -m ripu_jax.data.prepare` (or
  `ripu_jax.data.prepare.prepare(...)`).
* `SyntheticSplit` / `generate_example`: the synthetic benchmark straight from its generator.
* `ripu_jax.data.pipeline`: grain loaders for source training, target training with active
  labels, selection passes and evaluation (imported lazily: grain is heavy).
* `ripu_jax.data.labels`: stored label ids, the ignore value and `LabelSpace`.
"""

from ripu_jax.data import catalog
from ripu_jax.data import labels
from ripu_jax.data.catalog import DATASETS
from ripu_jax.data.catalog import DatasetNotPreparedError
from ripu_jax.data.catalog import DatasetSpec
from ripu_jax.data.catalog import label_map
from ripu_jax.data.catalog import LABEL_SPACES
from ripu_jax.data.catalog import open_role
from ripu_jax.data.catalog import open_run_splits
from ripu_jax.data.catalog import run_label_space
from ripu_jax.data.labels import IGNORE_LABEL
from ripu_jax.data.labels import LabelSpace
from ripu_jax.data.manual import CorruptFileError
from ripu_jax.data.manual import ManualDataError
from ripu_jax.data.reader import open_split
from ripu_jax.data.reader import PreparedSplit
from ripu_jax.data.synthetic import generate_example
from ripu_jax.data.synthetic import generate_split
from ripu_jax.data.synthetic import SYNTHETIC_CLASSES
from ripu_jax.data.synthetic import SyntheticConfig
from ripu_jax.data.synthetic import SyntheticSplit

_PIPELINE_NAMES = (
    "ClassBalancedSampler", "source_train_loader", "target_train_loader", "selection_loader",
    "eval_loader", "restore_iterator", "normalize_image", "denormalize_image", "pass_batches",
)


def __getattr__(name):
  if name in _PIPELINE_NAMES:
    from ripu_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    return getattr(pipeline, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "catalog", "labels", "DATASETS", "DatasetNotPreparedError", "DatasetSpec", "label_map",
    "LABEL_SPACES", "open_role", "open_run_splits", "run_label_space", "IGNORE_LABEL",
    "LabelSpace", "CorruptFileError", "ManualDataError", "open_split", "PreparedSplit",
    "generate_example", "generate_split", "SYNTHETIC_CLASSES", "SyntheticConfig",
    "SyntheticSplit", *_PIPELINE_NAMES,
]
