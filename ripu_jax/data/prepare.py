"""Prepares a dataset once, so training reads it by random access.

  python -m ripu_jax.data.prepare --dataset synthetic --data_dir ~/tensorflow_datasets
  python -m ripu_jax.data.prepare --dataset cityscapes --manual_dir ~/downloads/cityscapes \
      --data_dir ~/tensorflow_datasets
  python -m ripu_jax.data.prepare --dataset voc_aug --manual_dir ~/downloads/voc \
      --data_dir ~/tensorflow_datasets

GTAV, SYNTHIA, Cityscapes and VOC aug (PASCAL VOC 2012 + SBD) must be downloaded by hand first
(the error message for a missing or mis-laid --manual_dir says from where, and which folder
layout is expected). A dataset whose full split sizes the catalogue knows (VOC aug) is checked
after preparing: a split of another size is warned about, as a sign of a partial download.
The synthetic benchmark is generated locally from its parameters. Every dataset of the
catalogue (`ripu_jax.data.catalog`) with a TFDS builder can be prepared, including one a
plug-in module registered; the generator options of the command line are the fields of the
generated datasets' parameter classes.

Preparation never stops for a label without any valid class id once mapped to train ids (all
255 = ignore: wrong label ids, a label of another dataset): it warns, naming the file, and at
the end counts such labels, since the image stays in the dataset but teaches nothing. A folder
left damaged by an earlier preparation (unreadable metadata) is replaced with --overwrite and
otherwise reported with that advice.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import dataclasses
import os
import shutil
import sys
from typing import Any

from absl import logging

from ripu_jax.data import catalog
from ripu_jax.data import manual
from ripu_jax.data import reader
from ripu_jax.data import synthetic as synthetic_lib


def prepare(name: str, *, manual_dir: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None,
            config: synthetic_lib.SyntheticConfig | None = None, overwrite: bool = False,
            progress: bool = False) -> str:
  """Builds dataset `name` into `data_dir` (ArrayRecord) and returns its folder.

  Args:
    name: "gtav", "synthia", "cityscapes", "voc_aug", "synthetic" (or another catalogued
      dataset with a TFDS builder).
    manual_dir: folder with the downloaded archives or extracted files (not for generated
      datasets such as synthetic).
    data_dir: output root (default ~/tensorflow_datasets).
    config: generator parameters of a generated dataset (synthetic: a SyntheticConfig;
      default parameters if None).
    overwrite: rebuild even if the dataset is already prepared.
    progress: show a progress bar per split.

  Raises:
    ManualDataError: manual files missing or not laid out as expected.
    CorruptFileError: an image, label or archive cannot be decoded (names the file).
    DatasetNotPreparedError: an earlier preparation in `data_dir` is damaged and `overwrite`
      is False (the message gives the command with --overwrite).
  """
  spec = reader.check_name(name)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from ripu_jax.data import builders  # pylint: disable=g-import-not-at-top

  data_dir = reader.resolve_data_dir(data_dir)
  if spec.generated:
    if manual_dir is not None:
      raise ValueError(f"the {name} dataset is generated, it takes no --manual_dir")
    download_config = tfds.download.DownloadConfig()
  else:
    config = spec.check_config(config)
    manual_dir = manual.check_manual_dir(name, manual_dir, spec.help)
    tree = manual.FileTree(manual_dir)
    try:
      spec.finder(tree)  # Fails fast, before TFDS starts, if the layout is wrong.
    finally:
      tree.close()
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  if overwrite:
    download_config.download_mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS

  expected_dir = reader.dataset_dir(name, data_dir, config)
  builder = _builder_over_existing(name, data_dir, config, expected_dir, overwrite)
  if os.fspath(builder.data_path) != expected_dir:
    raise RuntimeError(f"TFDS would write to {builder.data_path}, expected {expected_dir}")
  if not overwrite and os.path.isfile(os.path.join(expected_dir, "dataset_info.json")):
    # TFDS would reuse the folder as it is: report it as ready only if it can be read.
    for split in spec.splits:
      reader.PreparedSplit(name, split, expected_dir, data_dir=data_dir, config=config)
  previous = builders.SHOW_PROGRESS["enabled"]
  builders.SHOW_PROGRESS["enabled"] = progress
  tfds.disable_progress_bar()
  try:
    builder.download_and_prepare(download_config=download_config)
  finally:
    builders.SHOW_PROGRESS["enabled"] = previous
  _report_labels_without_classes(name, getattr(builder, "labels_without_classes", None))
  _check_sizes(spec, prepared_sizes(expected_dir))
  return expected_dir


def prepared_sizes(directory: str) -> dict[str, int]:
  """split -> number of examples of the prepared dataset in `directory`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  splits = tfds.builder_from_directory(directory).info.splits
  return {name: int(splits[name].num_examples) for name in splits.keys()}


def _check_sizes(spec, sizes: dict[str, int]) -> None:
  """Warns about a split whose size differs from the full dataset's (`spec.sizes`)."""
  for split, expected in spec.sizes.items():
    found = sizes.get(split)
    if found is not None and found != expected:
      logging.warning(
          "%s %s: prepared %d examples, the full split has %d. If you meant the full dataset, "
          "files are missing from the download (see the warnings about skipped files above); "
          "complete it and prepare again with --overwrite.", spec.name, split, found, expected)


def _builder_over_existing(name: str, data_dir: str, config, directory: str, overwrite: bool):
  """`make_builder`, which reads the metadata of an earlier preparation in `directory`: if
  that is damaged, the folder is removed first with `overwrite`, else the error says so.

  A folder is removed only if it is unreadable on its own (a metadata file that is not JSON,
  or one TFDS rejects when opening the folder by itself), never for another builder error.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  errors = reader.metadata_errors()
  try:
    return make_builder(name, data_dir, config)
  except errors + (AssertionError,) as err:  # TFDS asserts the version it reads back.
    if not os.path.isdir(directory):
      raise
    reason = reader.damaged_metadata(directory)
    if reason is None:
      try:
        tfds.builder_from_directory(directory)
      except errors as own_err:
        reason = (f"TFDS cannot read the metadata files of {directory} "
                  f"({type(own_err).__name__}: {own_err})")
    if reason is None:
      raise  # The folder reads fine on its own: the error is not about it.
    if not overwrite:
      raise reader.damaged_error(name, directory, data_dir=data_dir, config=config,
                                 reason=reason) from err
    logging.warning("removing the damaged %s before preparing %s again: %s", directory, name,
                    reason)
    shutil.rmtree(directory)
  return make_builder(name, data_dir, config)


def _report_labels_without_classes(name: str, found: list[tuple[str, str]] | None) -> None:
  """The end-of-preparation count of labels holding no valid class id (see builders)."""
  if not found:
    return
  shown = ", ".join(label for _, label in found[:5])
  more = f" and {len(found) - 5} more" if len(found) > 5 else ""
  logging.warning(
      "%s: %d label(s) hold no valid class id once mapped to train ids (every pixel is 255 = "
      "ignore): %s%s. Their images were kept but teach nothing; check that these are %s label-id "
      "files (not colour images, not labels of another dataset).", name, len(found), shown,
      more, name)


def make_builder(name: str, data_dir: str, config=None):
  """The TFDS builder of dataset `name`; a generated one for `config` (default parameters if
  None), through its builder class's `from_config(data_dir, config, file_format=...)`."""
  spec = reader.check_name(name)
  builder_class = spec.builder_class()
  config = spec.check_config(config)
  if config is None:
    return builder_class(data_dir=data_dir, file_format="array_record")
  return builder_class.from_config(data_dir, config, file_format="array_record")


def make_synthetic_builder(data_dir: str, config: synthetic_lib.SyntheticConfig | None):
  """The TFDS builder of the synthetic benchmark for `config` (default config if None)."""
  return make_builder("synthetic", data_dir, config)


def _preparable() -> list[str]:
  return [name for name in catalog.names() if catalog.get(name).builder is not None]


def _generator_fields() -> dict[str, dataclasses.Field]:
  """Command-line generator options: the fields of every generated dataset's parameters."""
  fields = {}
  for name in _preparable():
    config_type = catalog.get(name).config_type
    for field in dataclasses.fields(config_type) if config_type is not None else ():
      fields.setdefault(field.name, field)
  return fields


def _parse_args(argv: list[str], prog: str = "python -m ripu_jax.data.prepare"
                ) -> argparse.Namespace:
  names = _preparable()
  parser = argparse.ArgumentParser(
      prog=prog,
      description=f"Prepare a dataset ({', '.join(names)}) as TFDS ArrayRecord for ripu_jax.")
  parser.add_argument("--dataset", required=True, choices=names)
  manual_names = ", ".join(n for n in names if not catalog.get(n).generated)
  parser.add_argument("--manual_dir", default=None,
                      help=f"downloaded archives or extracted files ({manual_names})")
  parser.add_argument("--data_dir", default=None,
                      help=f"output root (default {reader.DEFAULT_DATA_DIR})")
  parser.add_argument("--overwrite", action="store_true", help="rebuild if already prepared")
  parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
  group = parser.add_argument_group("generator parameters (generated datasets; unset: default)")
  for field in _generator_fields().values():
    group.add_argument(f"--{field.name}", type=type(field.default), default=None)
  return parser.parse_args(argv)


def main(argv: list[str] | None = None, *, prog: str = "python -m ripu_jax.data.prepare",
         after: Callable[[str, str, str | None, Any], None] | None = None) -> int:
  """The command line. `after(dataset name, its folder, --data_dir, generator config or None)`
  runs once the dataset is prepared (the hook of plug-ins that derive tables from it); its
  ValueError and OSError are reported like the preparation's."""
  args = _parse_args(sys.argv[1:] if argv is None else argv, prog)
  spec = catalog.get(args.dataset)
  config = None
  given = {name: getattr(args, name) for name in _generator_fields()
           if getattr(args, name) is not None}
  try:
    if spec.config_type is not None:
      config = spec.config_from_options(given)
    elif given:
      raise ValueError(f"{args.dataset} takes no generator parameters, got "
                       f"{', '.join('--' + name for name in sorted(given))}")
  except ValueError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  try:
    directory = prepare(args.dataset, manual_dir=args.manual_dir, data_dir=args.data_dir,
                        config=config, overwrite=args.overwrite, progress=not args.no_progress)
    if after is not None:
      after(args.dataset, directory, args.data_dir, config)
  except (manual.ManualDataError, manual.CorruptFileError, reader.DatasetNotPreparedError,
          ValueError, OSError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  sizes = ", ".join(f"{split}: {count:,}" for split, count in prepared_sizes(directory).items())
  print(f"{args.dataset} is ready in {directory} ({sizes} examples)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
