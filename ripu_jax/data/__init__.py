"""Datasets and input pipelines.

* `open_split(name, split, data_dir)`: random access to a prepared dataset (gtav, synthia,
  cityscapes, synthetic); prepare one with `python -m ripu_jax.data.prepare` (or
  `ripu_jax.data.prepare.prepare(...)`).
* `SyntheticSplit` / `generate_example`: the synthetic benchmark straight from its generator.
* `ripu_jax.data.pipeline`: grain loaders for source training, target training with active
  labels, selection passes and evaluation (imported lazily: grain is heavy).
* `ripu_jax.data.labels`: the 19 Cityscapes train ids and every dataset's label map.
"""

from ripu_jax.data import labels
from ripu_jax.data.manual import CorruptFileError
from ripu_jax.data.manual import ManualDataError
from ripu_jax.data.reader import DATASETS
from ripu_jax.data.reader import DatasetNotPreparedError
from ripu_jax.data.reader import open_split
from ripu_jax.data.reader import PreparedSplit
from ripu_jax.data.reader import SPLITS
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
    "labels", "CorruptFileError", "ManualDataError", "DATASETS", "DatasetNotPreparedError",
    "open_split", "PreparedSplit", "SPLITS", "generate_example", "generate_split",
    "SYNTHETIC_CLASSES", "SyntheticConfig", "SyntheticSplit", *_PIPELINE_NAMES,
]
