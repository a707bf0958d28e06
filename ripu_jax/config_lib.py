"""Configuration defaults and validation for the trainer.

Config files in `configs/` start from `base_config()` (the release's hyper-parameters on
real data) and change what their setting needs; `validate(config)` turns an impossible
config into one clear error before anything runs. Sizes are (height, width).
"""

from __future__ import annotations

import ml_collections

from ripu_jax.acquisition import available_strategies
from ripu_jax.data import labels as labels_lib
from ripu_jax.data import synthetic

# active.kind: "ra" / "pa" (rounds of region / pixel queries), "none" (no target labels,
# e.g. source-only), "full" (every target pixel labelled: the supervised upper bound).
ACTIVE_KINDS = ("ra", "pa", "none", "full")
# train.objective: RIPU's (source + target terms), "source_only" (source CE + L_cr),
# "source_free" (target CE + L_nl).
OBJECTIVES = ("ripu", "source_only", "source_free")
SOURCES = ("gtav", "synthia", "synthetic")
TARGETS = ("cityscapes", "synthetic")

# mIoU class sets per source dataset: SYNTHIA reports 16 classes (miou) and 13 (miou_13).
CLASS_SETS = {
    "gtav": {"miou": labels_lib.ALL_CLASSES},
    "synthia": {"miou": labels_lib.SYNTHIA_CLASSES, "miou_13": labels_lib.SYNTHIA_13_CLASSES},
    "synthetic": {"miou": synthetic.SYNTHETIC_CLASSES},
}


def base_config() -> ml_collections.ConfigDict:
  """The release's RIPU setting (GTAV -> Cityscapes, RA 2.2%, DeepLab-v2); configs edit it."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_steps = 40_000  # training stops here; the poly schedule runs to optim.max_iter
  config.log_every = 50
  config.checkpoint_every = 2_000
  config.keep_checkpoints = 2
  config.progress_bars = True

  config.data = ml_collections.ConfigDict()
  config.data.source = "gtav"  # ignored by the source-free objective
  config.data.target = "cityscapes"
  config.data.data_dir = "~/tensorflow_datasets"
  config.data.source_size = (720, 1280)
  config.data.target_size = (640, 1280)
  config.data.sampling = "class_balanced"
  config.data.flip = True
  config.data.worker_count = 4
  config.data.synthetic = ml_collections.ConfigDict(dict(
      prepared=False,  # False: generate in memory; True: read the prepared TFDS copy
      seed=0, height=128, width=256, num_source_train=400, num_target_train=300,
      num_target_val=100, domain_shift=0.6))

  config.model = ml_collections.ConfigDict()
  config.model.name = "deeplabv2"
  config.model.num_classes = labels_lib.NUM_CLASSES
  config.model.pretrained = "weights/resnet101.npz"  # converted torchvision ImageNet weights
  config.model.init_from = ""  # workdir of an earlier run whose final model starts this one
  config.model.dtype = "float32"
  config.model.kwargs = ml_collections.ConfigDict(dict(depth=101))

  config.optim = ml_collections.ConfigDict()
  config.optim.base_lr = 2.5e-4
  config.optim.max_iter = 62_500
  config.optim.head_lr_multiplier = 10.0
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.power = 0.9

  config.train = ml_collections.ConfigDict()
  config.train.objective = "ripu"
  config.train.batch_size = 2  # source and target images per step, each
  config.train.consistency_weight = 0.1
  config.train.negative_weight = 1.0
  config.train.negative_threshold = 0.05

  config.active = ml_collections.ConfigDict()
  config.active.kind = "ra"
  config.active.strategy = "ripu"
  config.active.ratio = 0.022
  config.active.pixels = 40
  config.active.radius = 1
  config.active.round_steps = (10_000, 12_000, 14_000, 16_000, 18_000)
  config.active.batch_size = 2  # target images scored per selection batch
  config.active.num_overlays = 4  # pictures per round under workdir/rounds/<r>/overlays

  config.eval = ml_collections.ConfigDict()
  config.eval.every = 2_000
  config.eval.size = (640, 1280)
  config.eval.batch_size = 2
  config.eval.flip = False
  return config


def real_config(source: str, *, kind: str = "ra", objective: str = "ripu",
                model: str = "deeplabv2", ratio: float = 0.022) -> ml_collections.ConfigDict:
  """A release setting: `source` -> Cityscapes with the given acquisition and network."""
  config = base_config()
  config.data.source = source
  config.model.name = model
  config.train.objective = objective
  config.active.kind = kind
  config.active.ratio = ratio
  if kind == "pa":
    config.active.radius = 32  # the released PA config (the paper states 25)
  if objective == "source_only":
    config.train.consistency_weight = 0.0  # plain cross-entropy baseline
  if objective == "source_free":
    config.active.radius = 9
    config.active.round_steps = (0, 2_000, 4_000, 6_000, 8_000)
  return config


def get_config_with_arg(make, arg: str | None) -> ml_collections.ConfigDict:
  """`get_config` for config files: `make()` plus the optional ':smoke' argument."""
  config = make()
  if arg == "smoke":
    return smoke(config)
  if arg:
    raise ValueError(f"unknown config argument {arg!r}; the only one is 'smoke'")
  return config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any config to a seconds-long run on the synthetic benchmark (same method)."""
  config.num_steps = 6
  config.log_every = 2
  config.checkpoint_every = 4
  config.data.source = "synthetic" if config.data.source else config.data.source
  config.data.target = "synthetic"
  config.data.source_size = config.data.target_size = config.eval.size = (64, 128)
  config.data.worker_count = 0
  config.data.synthetic.update(height=64, width=128, num_source_train=8, num_target_train=4,
                               num_target_val=4)
  config.model.pretrained = ""
  config.model.kwargs = ml_collections.ConfigDict(dict(blocks=(1, 1, 1, 1),
                                                       width_multiplier=0.125))
  if config.model.name == "deeplabv3plus":
    config.model.kwargs.channels = 16
    config.model.kwargs.low_channels = 8
  config.active.round_steps = (2,)
  config.active.num_overlays = 1
  config.eval.every = 1_000
  return config


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(f"invalid config: {message}")


def _check_size(value, name: str) -> None:
  ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
      isinstance(v, int) and v > 0 for v in value)
  _check(ok, f"{name} must be (height, width) of positive ints, got {value!r}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when a config cannot run."""
  _check(config.num_steps >= 1, f"num_steps must be >= 1, got {config.num_steps}")
  for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
    _check(config[name] >= 1, f"{name} must be >= 1, got {config[name]}")
  objective = config.train.objective
  _check(objective in OBJECTIVES, f"train.objective must be one of {OBJECTIVES}, got "
         f"{objective!r}")
  if objective != "source_free":
    _check(config.data.source in SOURCES, f"data.source must be one of {SOURCES}, got "
           f"{config.data.source!r}")
  _check(config.data.target in TARGETS, f"data.target must be one of {TARGETS}, got "
         f"{config.data.target!r}")
  for name in ("source_size", "target_size"):
    _check_size(tuple(config.data[name]), f"data.{name}")
  _check_size(tuple(config.eval.size), "eval.size")
  _check(config.data.worker_count >= 0, "data.worker_count must be >= 0")
  _check(config.optim.base_lr > 0, f"optim.base_lr must be > 0, got {config.optim.base_lr}")
  _check(config.optim.max_iter >= 1, "optim.max_iter must be >= 1")
  for name in ("batch_size",):
    _check(config.train[name] >= 1, f"train.{name} must be >= 1")
  _check(config.active.batch_size >= 1 and config.eval.batch_size >= 1,
         "active.batch_size and eval.batch_size must be >= 1")
  active = config.active
  _check(active.kind in ACTIVE_KINDS, f"active.kind must be one of {ACTIVE_KINDS}, got "
         f"{active.kind!r}")
  if active.kind in ("ra", "pa"):
    _check(active.strategy in available_strategies(),
           f"active.strategy must be one of {available_strategies()}, got {active.strategy!r}")
    _check(active.radius >= 0, f"active.radius must be >= 0, got {active.radius}")
    steps = tuple(active.round_steps)
    _check(len(steps) >= 1, "active.round_steps must list at least one step")
    _check(list(steps) == sorted(set(steps)) and steps[0] >= 0,
           f"active.round_steps must be distinct, increasing and >= 0, got {steps}")
    _check(steps[-1] < config.num_steps,
           f"active.round_steps {steps} must come before num_steps ({config.num_steps})")
    if active.kind == "ra":
      _check(0 < active.ratio <= 1, f"active.ratio must lie in (0, 1], got {active.ratio}")
    else:
      _check(active.pixels >= 1, f"active.pixels must be >= 1, got {active.pixels}")
    _check(objective != "source_only",
           "train.objective 'source_only' never uses target labels; set active.kind='none'")
  if objective == "source_free":
    _check(active.kind != "none", "the source-free objective needs target labels "
           "(active.kind 'ra', 'pa' or 'full')")


def label_lookup(config: ml_collections.ConfigDict) -> "np.ndarray":
  """uint8 -> int32 table keeping the evaluated classes and mapping every other id to 255.

  SYNTHIA lacks terrain, truck and train: like the release's 16-class label mapping, target
  pixels of those classes are ignored in training and evaluation.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  table = np.full(256, labels_lib.IGNORE_LABEL, np.int32)
  keep = sorted({c for classes in class_sets(config).values() for c in classes})
  table[keep] = keep
  return table


def class_sets(config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
  """The mIoU class sets reported for this config's source (source-free: its source)."""
  return CLASS_SETS[config.data.source if config.data.source in CLASS_SETS else "gtav"]
