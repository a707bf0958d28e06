"""Prepares a dataset once, so training reads it by random access.

  python -m ripu_jax.data.prepare --dataset synthetic --data_dir ~/tensorflow_datasets
  python -m ripu_jax.data.prepare --dataset cityscapes --manual_dir ~/downloads/cityscapes \
      --data_dir ~/tensorflow_datasets

GTAV, SYNTHIA and Cityscapes must be downloaded by hand first (the error message for a missing
or mis-laid --manual_dir says from where, and which folder layout is expected). The synthetic
benchmark is generated locally from its parameters. Every dataset of the catalogue
(`ripu_jax.data.catalog`) with a TFDS builder can be prepared, including one a plug-in module
registered; the generator options of the command line are the fields of the generated datasets'
parameter classes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

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
    name: "gtav", "synthia", "cityscapes", "synthetic" (or another catalogued dataset with a
      TFDS builder).
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
  """
  spec = reader.check_name(name)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from ripu_jax.data import builders  # pylint: disable=g-import-not-at-top

  data_dir = reader.resolve_data_dir(data_dir)
  if spec.generated:
    if manual_dir is not None:
      raise ValueError(f"the {name} dataset is generated, it takes no --manual_dir")
    builder = make_builder(name, data_dir, config)
    download_config = tfds.download.DownloadConfig()
  else:
    spec.check_config(config)
    manual_dir = manual.check_manual_dir(name, manual_dir, spec.help)
    tree = manual.FileTree(manual_dir)
    try:
      spec.finder(tree)  # Fails fast, before TFDS starts, if the layout is wrong.
    finally:
      tree.close()
    builder = make_builder(name, data_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  if overwrite:
    download_config.download_mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS

  expected_dir = reader.dataset_dir(name, data_dir, config)
  if os.fspath(builder.data_path) != expected_dir:
    raise RuntimeError(f"TFDS would write to {builder.data_path}, expected {expected_dir}")
  previous = builders.SHOW_PROGRESS["enabled"]
  builders.SHOW_PROGRESS["enabled"] = progress
  tfds.disable_progress_bar()
  try:
    builder.download_and_prepare(download_config=download_config)
  finally:
    builders.SHOW_PROGRESS["enabled"] = previous
  return expected_dir


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


def _parse_args(argv: list[str]) -> argparse.Namespace:
  names = _preparable()
  parser = argparse.ArgumentParser(
      prog="python -m ripu_jax.data.prepare",
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


def main(argv: list[str] | None = None) -> int:
  args = _parse_args(sys.argv[1:] if argv is None else argv)
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
  except (manual.ManualDataError, manual.CorruptFileError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  print(f"{args.dataset} is ready in {directory}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
