"""TFDS builders for GTAV, SYNTHIA, Cityscapes, VOC aug and the synthetic benchmark.

All store the same features: "image" (RGB PNG at original resolution), "label" (ids of the
dataset's stored label space, 255 = ignore, PNG) and "name" (the original image file name;
VOC aug: the VOC id), written as ArrayRecord for random access. Records keep the sorted order
of the source files (shuffling belongs to the input pipeline), which lets the per-split
metadata (`metadata.json`) index images by position: for each image a bit mask of the classes
it contains and the label size, plus per-class pixel totals. The metadata is computed from
the decoded labels themselves.

TFDS writes into a temporary folder and renames it only after every split was written, so an
interrupted or failed preparation never leaves a readable dataset behind.

A manual label that holds no valid class id once mapped to train ids (all 255: wrong label
ids, a label of another dataset) does not stop preparation, since one odd file among thousands
should not cost a rebuild; it is warned about by file name (the first `MAX_LABEL_WARNINGS` per
split) and listed in the builder's `labels_without_classes`, which `prepare` sums up at the end.

The manual builders take their finder, label decoder and download instructions from the
dataset catalogue (`ripu_jax.data.catalog`), whose specs name these classes.
"""

from __future__ import annotations

import dataclasses

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
import tqdm

from ripu_jax.data import catalog
from ripu_jax.data import labels as labels_lib
from ripu_jax.data import manual
from ripu_jax.data import reader
from ripu_jax.data import synthetic as synthetic_lib

# Progress bars of example generation; `prepare` turns them on for interactive use.
SHOW_PROGRESS = {"enabled": False}
# Labels without any valid class id are warned about one by one up to this many per split
# (a whole folder of wrong labels would otherwise flood the log); all of them are counted.
MAX_LABEL_WARNINGS = 20


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
      "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
      "name": tfds.features.Text(),
  })


class _SplitStatistics:
  """Accumulates the per-image class index and label sizes of one split, over the classes of
  the stored label space (Cityscapes' 19 unless told otherwise)."""

  def __init__(self, space: labels_lib.LabelSpace = labels_lib.CITYSCAPES_19):
    self.space = space
    self.presence_bits: list[int] = []
    self.label_shapes: list[list[int]] = []
    self.pixel_counts = np.zeros(space.num_classes, np.int64)
    self._weights = 1 << np.arange(space.num_classes, dtype=np.int64)

  def add(self, train_ids: np.ndarray) -> np.ndarray:
    """Records one label; returns its [num_classes] pixel counts."""
    counts = np.bincount(np.asarray(train_ids, np.uint8).ravel(),
                         minlength=256)[:self.space.num_classes].astype(np.int64)
    self.pixel_counts += counts
    self.presence_bits.append(int(np.sum(self._weights[counts > 0])))
    self.label_shapes.append([int(train_ids.shape[0]), int(train_ids.shape[1])])
    return counts

  def as_metadata(self) -> dict:
    return {
        "num_examples": len(self.presence_bits),
        "class_presence": self.presence_bits,
        "label_shapes": self.label_shapes,
        "pixel_counts": self.pixel_counts.tolist(),
        "class_names": list(self.space.class_names),
    }


class _LocalCode:
  """Mixin: these builders ship no checksum files next to their code.

  TFDS looks for them through `code_path`, whose lookup for builders inside a package needs
  the `importlib_resources` backport on Python >= 3.9; declaring no code path skips it.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None


def _progress(iterable, total: int, description: str):
  return tqdm.tqdm(iterable, total=total, desc=description, unit=" img",
                   disable=not SHOW_PROGRESS["enabled"], dynamic_ncols=True)


class _ManualSegmentationBuilder(_LocalCode, tfds.core.GeneratorBasedBuilder,
                                 skip_registration=True):
  """Shared logic: find image/label pairs in the manual dir, validate, write."""

  VERSION = tfds.core.Version(reader.VERSION)
  RELEASE_NOTES = {reader.VERSION: "Train ids (255 = ignore), original resolution, class index."}
  HOMEPAGE = ""
  DESCRIPTION = ""
  # Source datasets tolerate image/label size mismatches (a few GTAV pairs have them; the
  # pipeline resizes both to the training size); target datasets must be aligned.
  ALLOW_SIZE_MISMATCH = True

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=_features(),
        homepage=self.HOMEPAGE,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    spec = catalog.get(self.name)
    root = manual.check_manual_dir(self.name, dl_manager.manual_dir, spec.help)
    tree = manual.FileTree(root)
    splits = spec.finder(tree)
    # (split, label file) of every label without a valid class id, over all splits.
    self.labels_without_classes: list[tuple[str, str]] = []
    space = catalog.label_space(spec.stored_space)
    return {split: self._generate_examples(tree, pairs, split, spec.label_loader, space)
            for split, pairs in splits.items()}

  def _generate_examples(self, tree: manual.FileTree, pairs: list[manual.Pair], split: str,
                         label_loader, space: labels_lib.LabelSpace):
    stats = _SplitStatistics(space)
    # Files inside compressed tars are read in one pass first (they cannot be read out of order).
    tree.prefetch([entry for pair in pairs for entry in (pair.image, pair.label)])
    mismatched = []
    without_classes = 0
    for index, pair in enumerate(_progress(pairs, len(pairs), f"{self.name} {split}")):
      image = manual.load_image(tree, pair.image)
      train_ids = label_loader(tree, pair.label)
      if (image.height, image.width) != train_ids.shape:
        if not self.ALLOW_SIZE_MISMATCH:
          raise manual.CorruptFileError(
              f"The image {pair.image} is {image.height}x{image.width} but its label "
              f"{pair.label} is {train_ids.shape[0]}x{train_ids.shape[1]}; one of them is "
              "wrong, download or extract them again.")
        mismatched.append(pair.name)
      if not stats.add(train_ids).any():
        without_classes += 1
        self.labels_without_classes.append((split, str(pair.label)))
        if without_classes <= MAX_LABEL_WARNINGS:
          logging.warning(
              "%s %s: the label %s holds no valid class id once mapped to train ids (every "
              "pixel is 255 = ignore); its image is kept but teaches nothing. Is it a %s "
              "label-id file?%s", self.name, split, pair.label, self.name,
              " (Further such labels of this split are only counted.)"
              if without_classes == MAX_LABEL_WARNINGS else "")
      yield index, {
          "image": image.encoded,
          "label": Image.fromarray(train_ids),
          "name": pair.name,
      }
    if mismatched:
      logging.warning("%s %s: %d image(s) differ in size from their label, e.g. %s",
                             self.name, split, len(mismatched), mismatched[0])
    self.info.metadata[split] = stats.as_metadata()


class Gtav(_ManualSegmentationBuilder):
  """GTAV: 24,966 game frames, Cityscapes label ids mapped to 19 train ids."""

  name = "gtav"
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual.GTAV_HELP
  HOMEPAGE = "https://download.visinf.tu-darmstadt.de/data/from_games/"
  DESCRIPTION = "GTAV (Playing for Data) with Cityscapes train ids."


class Synthia(_ManualSegmentationBuilder):
  """SYNTHIA-RAND-CITYSCAPES: 9,400 renders, 16 of the 19 Cityscapes classes."""

  name = "synthia"
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual.SYNTHIA_HELP
  HOMEPAGE = "https://synthia-dataset.net/"
  DESCRIPTION = "SYNTHIA-RAND-CITYSCAPES with Cityscapes train ids (16 classes)."


class Cityscapes(_ManualSegmentationBuilder):
  """Cityscapes fine annotations: train 2,975 / val 500, 19 train ids."""

  name = "cityscapes"
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual.CITYSCAPES_HELP
  HOMEPAGE = "https://www.cityscapes-dataset.com/"
  DESCRIPTION = "Cityscapes gtFine with the official 19 train ids."
  ALLOW_SIZE_MISMATCH = False


class VocAug(_ManualSegmentationBuilder):
  """PASCAL VOC 2012 with SBD labels: train 10,582 / val 1,449, 21 VOC class ids."""

  name = "voc_aug"
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual.VOC_AUG_HELP
  HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
  DESCRIPTION = ("PASCAL VOC 2012 segmentation with the SBD-augmented training set (21 classes, "
                 "255 = boundary/ignore).")
  ALLOW_SIZE_MISMATCH = False


@dataclasses.dataclass(eq=False)
class SyntheticBuilderConfig(tfds.core.BuilderConfig):
  """TFDS config of the synthetic benchmark: the generator parameters."""

  generator: synthetic_lib.SyntheticConfig = dataclasses.field(
      default_factory=synthetic_lib.SyntheticConfig)

  @classmethod
  def from_generator(cls, generator: synthetic_lib.SyntheticConfig) -> "SyntheticBuilderConfig":
    return cls(name=generator.name, generator=generator,
               description=f"Synthetic street scenes: {generator}")


class Synthetic(_LocalCode, tfds.core.GeneratorBasedBuilder):
  """Procedural source/target street scenes (see `ripu_jax.data.synthetic`)."""

  name = "synthetic"
  VERSION = tfds.core.Version(reader.VERSION)
  RELEASE_NOTES = {reader.VERSION: "Source train, target train and target val splits."}
  BUILDER_CONFIGS = [SyntheticBuilderConfig.from_generator(synthetic_lib.SyntheticConfig())]

  @classmethod
  def from_config(cls, data_dir: str, generator: synthetic_lib.SyntheticConfig,
                  **kwargs) -> "Synthetic":
    """The builder of `generator`'s dataset (the catalogue's generated-data hook)."""
    registered = {c.name: c for c in cls.BUILDER_CONFIGS}
    if generator.name in registered:
      # TFDS accepts a registered config only by name, and a custom one only under a new name.
      builder_config = registered[generator.name]
    else:
      builder_config = SyntheticBuilderConfig.from_generator(generator)
    return cls(data_dir=data_dir, config=builder_config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Procedurally generated street scenes with a synthetic-to-real gap.",
        features=_features(),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in synthetic_lib.SPLITS}

  def _generate_examples(self, split: str):
    generator = self.builder_config.generator
    stats = _SplitStatistics()
    count = generator.num_examples(split)
    for index in _progress(range(count), count, f"synthetic {split}"):
      example = synthetic_lib.generate_example(generator, split, index)
      stats.add(example["label"])
      yield index, {
          "image": Image.fromarray(example["image"]),
          "label": Image.fromarray(example["label"]),
          "name": example["name"],
      }
    self.info.metadata[split] = stats.as_metadata()
    self.info.metadata["generator"] = dataclasses.asdict(generator)

