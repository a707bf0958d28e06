"""Prepares a dataset once, so training reads it by random access.

  python -m ripu_jax.data.prepare --dataset synthetic --data_dir ~/tensorflow_datasets
  python -m ripu_jax.data.prepare --dataset cityscapes --manual_dir ~/downloads/cityscapes \
      --data_dir ~/tensorflow_datasets

GTAV, SYNTHIA and Cityscapes must be downloaded by hand first (the error message for a missing
or mis-laid --manual_dir says from where, and which folder layout is expected). The synthetic
benchmark is generated locally from its parameters.
"""

from __future__ import annotations

import argparse
import os
import sys

from ripu_jax.data import manual
from ripu_jax.data import reader
from ripu_jax.data import synthetic as synthetic_lib


def prepare(name: str, *, manual_dir: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None,
            config: synthetic_lib.SyntheticConfig | None = None, overwrite: bool = False,
            progress: bool = False) -> str:
  """Builds dataset `name` into `data_dir` (ArrayRecord) and returns its folder.

  Args:
    name: "gtav", "synthia", "cityscapes" or "synthetic".
    manual_dir: folder with the downloaded archives or extracted files (not for synthetic).
    data_dir: output root (default ~/tensorflow_datasets).
    config: synthetic generator parameters (default config if None).
    overwrite: rebuild even if the dataset is already prepared.
    progress: show a progress bar per split.

  Raises:
    ManualDataError: manual files missing or not laid out as expected.
    CorruptFileError: an image, label or archive cannot be decoded (names the file).
  """
  reader.check_name(name)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from ripu_jax.data import builders  # pylint: disable=g-import-not-at-top

  data_dir = reader.resolve_data_dir(data_dir)
  if name == "synthetic":
    if manual_dir is not None:
      raise ValueError("the synthetic dataset is generated, it takes no --manual_dir")
    builder = make_synthetic_builder(data_dir, config)
    download_config = tfds.download.DownloadConfig()
  else:
    if config is not None:
      raise ValueError(f"config applies only to the synthetic dataset, not {name!r}")
    manual_dir = manual.check_manual_dir(name, manual_dir)
    tree = manual.FileTree(manual_dir)
    try:
      manual.FINDERS[name](tree)  # Fails fast, before TFDS starts, if the layout is wrong.
    finally:
      tree.close()
    builder = builders.BUILDERS[name](data_dir=data_dir, file_format="array_record")
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


def make_synthetic_builder(data_dir: str, config: synthetic_lib.SyntheticConfig | None):
  """The TFDS builder of the synthetic benchmark for `config` (default config if None)."""
  from ripu_jax.data import builders  # pylint: disable=g-import-not-at-top
  generator = reader.synthetic_config(config)
  registered = {c.name: c for c in builders.Synthetic.BUILDER_CONFIGS}
  if generator.name in registered:
    # TFDS accepts a registered config only by name, and a custom one only under a new name.
    builder_config = registered[generator.name]
  else:
    builder_config = builders.SyntheticBuilderConfig.from_generator(generator)
  return builders.Synthetic(data_dir=data_dir, file_format="array_record", config=builder_config)


def _parse_args(argv: list[str]) -> argparse.Namespace:
  defaults = synthetic_lib.SyntheticConfig()
  parser = argparse.ArgumentParser(
      prog="python -m ripu_jax.data.prepare",
      description="Prepare GTAV, SYNTHIA, Cityscapes or the synthetic benchmark (TFDS, "
      "ArrayRecord) for ripu_jax.")
  parser.add_argument("--dataset", required=True, choices=reader.DATASETS)
  parser.add_argument("--manual_dir", default=None,
                      help="downloaded archives or extracted files (gtav, synthia, cityscapes)")
  parser.add_argument("--data_dir", default=None,
                      help=f"output root (default {reader.DEFAULT_DATA_DIR})")
  parser.add_argument("--overwrite", action="store_true", help="rebuild if already prepared")
  parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
  group = parser.add_argument_group("synthetic generator")
  group.add_argument("--seed", type=int, default=defaults.seed)
  group.add_argument("--height", type=int, default=defaults.height)
  group.add_argument("--width", type=int, default=defaults.width)
  group.add_argument("--num_source_train", type=int, default=defaults.num_source_train)
  group.add_argument("--num_target_train", type=int, default=defaults.num_target_train)
  group.add_argument("--num_target_val", type=int, default=defaults.num_target_val)
  group.add_argument("--domain_shift", type=float, default=defaults.domain_shift)
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  config = None
  if args.dataset == "synthetic":
    try:
      config = synthetic_lib.SyntheticConfig(
          seed=args.seed, height=args.height, width=args.width,
          num_source_train=args.num_source_train, num_target_train=args.num_target_train,
          num_target_val=args.num_target_val, domain_shift=args.domain_shift)
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
