"""Configuration defaults and validation for the trainer.

Config files in `configs/` start from `base_config()` (the release's hyper-parameters on
real data) and change what their setting needs; `validate(config)` turns an impossible
config into one clear error before anything runs. Sizes are (height, width).
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections
from ml_collections import config_dict

from ripu_jax import hooks as hooks_lib
from ripu_jax import methods  # noqa: F401  (registers the built-in methods)
from ripu_jax import models
from ripu_jax import optim
from ripu_jax import workdir
from ripu_jax.acquisition import scores as acquisition_scores
from ripu_jax.acquisition.acquirers import ACQUIRERS
from ripu_jax.annotations import ORACLES
from ripu_jax.data import catalog
from ripu_jax.data import labels as labels_lib
from ripu_jax.errors import ConfigError
from ripu_jax.objectives import OBJECTIVES


def base_config() -> ml_collections.ConfigDict:
  """The release's RIPU setting (GTAV -> Cityscapes, RA 2.2%, DeepLab-v2); configs edit it."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_steps = 40_000  # training stops here; the poly schedule runs to optim.max_iter
  config.log_every = 50
  config.checkpoint_every = 2_000
  config.keep_checkpoints = 2
  config.progress_bars = True
  # Modules imported before validation: they register a method's pieces (objectives,
  # acquirers, strategies, models, hooks, datasets) that this config then names.
  config.plugins = ()
  config.hooks = ()  # names of registered hooks (ripu_jax.hooks.HOOKS)

  config.data = ml_collections.ConfigDict()
  config.data.source = "gtav"  # ignored by the source-free objective
  config.data.target = "cityscapes"
  config.data.data_dir = "~/tensorflow_datasets"
  config.data.source_size = (720, 1280)
  config.data.target_size = (640, 1280)
  config.data.sampling = "class_balanced"
  config.data.flip = True
  # Random training crop (height, width) after the resize to source/target_size; None: none.
  config.data.crop_size = config_dict.placeholder(tuple)
  config.data.worker_count = 4
  config.data.synthetic = ml_collections.ConfigDict(dict(
      prepared=False,  # False: generate in memory; True: read the prepared TFDS copy
      seed=0, height=128, width=256, num_source_train=400, num_target_train=300,
      num_target_val=100, domain_shift=0.6))

  config.model = ml_collections.ConfigDict()
  config.model.name = "deeplabv2"
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
  config.optim.name = "sgd"  # or "adam", "adamw" (optim.betas; momentum unused)
  # or "cosine_restarts" (period optim.restart_every), "constant"
  config.optim.schedule = "poly"
  config.optim.restart_every = config_dict.placeholder(int)  # None: optim.max_iter
  config.optim.betas = (0.9, 0.999)

  config.train = ml_collections.ConfigDict()
  config.train.objective = "ripu"  # a registered objective (ripu_jax.objectives.OBJECTIVES)
  # Workdir of a finished run whose whole state (model, optimizer, ledger, step, data
  # position) this one continues from its last step, e.g. with an ELN stage.
  config.train.continue_from = ""
  config.train.batch_size = 2  # source and target images per step, each
  config.train.consistency_weight = 0.1
  config.train.negative_weight = 1.0
  config.train.negative_threshold = 0.05

  config.active = ml_collections.ConfigDict()
  # The acquirer (ripu_jax.acquisition.acquirers.ACQUIRERS): "ra" / "pa" (rounds of region /
  # pixel queries), "none" (no target labels), "all" (every target pixel labelled).
  config.active.kind = "ra"
  config.active.strategy = "ripu"
  config.active.ratio = 0.022
  config.active.pixels = 40
  config.active.radius = 1
  config.active.round_steps = (10_000, 12_000, 14_000, 16_000, 18_000)
  config.active.batch_size = 2  # target images scored per selection batch
  config.active.num_overlays = 4  # pictures per round under workdir/rounds/<r>/overlays
  # Mean superpixel size in pixels of the "ra_superpixels" acquirer's SEEDS superpixels.
  config.active.superpixel_area = 64
  # Who answers the queries: "ground_truth" (the dataset's labels) or "annotators" (after each
  # round the run writes labelling tasks and stops; see ripu_jax.annotations).
  config.active.oracle = "ground_truth"
  # "split" (semi-supervised): whole images labelled before training, those a list file
  # names (one per line) or a seeded fraction of the pool.
  config.active.labelled_list = ""
  config.active.labelled_fraction = config_dict.placeholder(float)

  config.acquisition = ml_collections.ConfigDict()
  # Score code of the rounds: "cpu" (tuned for XLA on CPU), "reduce_window" (for GPU/TPU) or
  # "auto" (the one for the platform the rounds run on). Same scores to float32 rounding.
  config.acquisition.impl = "auto"

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
  # The release's frozen batch norm divides by sqrt(running_var) with no epsilon.
  config.model.kwargs.bn_epsilon = 0.0
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


# Defaults of fields that plug-in groups gained after runs were recorded (the base config's
# own come from `base_config()`): a run recorded without one ran as with this value.
GROUP_FIELD_DEFAULTS = {"labor.gan_loss": "bce"}


def field_defaults() -> dict[str, Any]:
  """{dotted field: default}, as config.json writes them (tuples as lists).

  A field added to the config keeps the earlier behaviour at its default, so a recorded
  config without the field and a config with it at this value describe the same run.
  """
  defaults = workdir.flatten(json.loads(base_config().to_json_best_effort()))
  defaults.update(json.loads(json.dumps(GROUP_FIELD_DEFAULTS)))
  return defaults


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file given by path (e.g. "configs/demo.py", "smoke")."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} does not exist; configs live in configs/*.py")
  name = "ripu_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} defines no get_config(arg=None)")
  return module.get_config(arg) if arg is not None else module.get_config()


def get_config_with_arg(make, arg: str | None, variants=None) -> ml_collections.ConfigDict:
  """`get_config` for config files: `make()`, changed by the config argument.

  The argument (after ':' on the command line) is a comma-separated list of the file's
  `variants` ({name: function(config) -> config}, e.g. 'iast') and 'smoke'; variants apply
  in the order given, 'smoke' last.
  """
  variants = dict(variants or {})
  parts = [part.strip() for part in (arg or "").split(",") if part.strip()]
  unknown = [part for part in parts if part != "smoke" and part not in variants]
  if unknown:
    raise ValueError(f"unknown config argument(s) {unknown}; choose from "
                     f"{sorted(variants) + ['smoke']}, comma-separated")
  config = make()
  for part in parts:
    if part != "smoke":
      config = variants[part](config)
  return smoke(config) if "smoke" in parts else config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any config to a seconds-long run on the synthetic benchmark (same method)."""
  config.num_steps = 6
  config.log_every = 2
  config.checkpoint_every = 4
  config.data.source = "synthetic" if config.data.source else config.data.source
  config.data.target = "synthetic"
  config.data.source_size = config.data.target_size = config.eval.size = (64, 128)
  config.data.crop_size = None
  config.data.worker_count = 0
  config.data.synthetic.update(height=64, width=128, num_source_train=8, num_target_train=4,
                               num_target_val=4)
  config.model.pretrained = ""
  kept = {k: v for k, v in config.model.kwargs.items() if k in ("bn_epsilon", "norm")}
  config.model.kwargs = ml_collections.ConfigDict(dict(blocks=(1, 1, 1, 1),
                                                       width_multiplier=0.125, **kept))
  if config.model.name == "deeplabv3plus":
    config.model.kwargs.channels = 16
    config.model.kwargs.low_channels = 8
  config.active.round_steps = (2,)
  config.active.num_overlays = 1
  config.eval.every = 1_000
  return config


PLUGIN_HINT = "; a piece defined outside ripu_jax needs its module in --config.plugins"


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(f"invalid config: {message}")


def _check_size(value, name: str) -> None:
  ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
      isinstance(v, int) and v > 0 for v in value)
  _check(ok, f"{name} must be (height, width) of positive ints, got {value!r}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when a config cannot run.

  Plug-in modules (`config.plugins`) must have been imported first
  (`registry.import_plugins`): the objective, acquirer and hooks are looked up by name.
  """
  _check(config.num_steps >= 1, f"num_steps must be >= 1, got {config.num_steps}")
  for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
    _check(config[name] >= 1, f"{name} must be >= 1, got {config[name]}")
  _check(not isinstance(config.plugins, str) and all(isinstance(p, str) for p in config.plugins),
         f"plugins must be a tuple of module names, got {config.plugins!r}")
  objective_name = config.train.objective
  _check(objective_name in OBJECTIVES, f"train.objective must be one of "
         f"{OBJECTIVES.names()}, got {objective_name!r}{PLUGIN_HINT}")
  objective = OBJECTIVES.get(objective_name)
  kind = config.active.kind
  _check(kind in ACQUIRERS,
         f"active.kind must be one of {ACQUIRERS.names()}, got {kind!r}{PLUGIN_HINT}")
  for name in config.hooks:
    _check(name in hooks_lib.HOOKS,
           f"hooks: {name!r} is not one of {hooks_lib.HOOKS.names()}{PLUGIN_HINT}")
  sources, targets = catalog.source_names(), catalog.target_names()
  if "source" in objective.domains or config.data.source:
    _check(config.data.source in sources, f"data.source must be one of {sources}, got "
           f"{config.data.source!r}")
  _check(config.data.target in targets, f"data.target must be one of {targets}, got "
         f"{config.data.target!r}")
  for name in {config.data.source, config.data.target} & set(config.data.keys()):
    if catalog.get(name).config_type is None:
      continue  # options of a plug-in dataset's opener: it checks them itself
    options = {k: v for k, v in config.data[name].items() if k != "prepared"}
    try:  # a generated dataset's parameters (data.synthetic.*)
      catalog.get(name).config_from_options(options)
    except (TypeError, ValueError) as error:
      raise ConfigError(f"invalid config: data.{name}: {error}") from None
  for name in ("source_size", "target_size"):
    _check_size(tuple(config.data[name]), f"data.{name}")
  crop = config.data.get("crop_size")
  if crop is not None:
    _check_size(tuple(crop), "data.crop_size")
    for name in ("source_size", "target_size") if config.data.source else ("target_size",):
      _check(all(c <= s for c, s in zip(crop, config.data[name])),
             f"data.crop_size {tuple(crop)} must fit in data.{name} "
             f"{tuple(config.data[name])}")
  _check_size(tuple(config.eval.size), "eval.size")
  _check(config.data.worker_count >= 0, "data.worker_count must be >= 0")
  _check(config.optim.base_lr > 0, f"optim.base_lr must be > 0, got {config.optim.base_lr}")
  _check(config.optim.max_iter >= 1, "optim.max_iter must be >= 1")
  _check(config.train.batch_size >= 1, "train.batch_size must be >= 1")
  _check(config.eval.every >= 1, f"eval.every must be >= 1, got {config.eval.every}")
  _check(config.acquisition.impl in acquisition_scores.IMPLS,
         f"acquisition.impl must be one of {acquisition_scores.IMPLS}, got "
         f"{config.acquisition.impl!r}")
  _check(config.active.oracle in ORACLES,
         f"active.oracle must be one of {ORACLES}, got {config.active.oracle!r}")
  _check(config.active.num_overlays >= 0,
         f"active.num_overlays must be >= 0, got {config.active.num_overlays}")
  optim_config = config.optim
  _check(0 <= optim_config.momentum < 1,
         f"optim.momentum must lie in [0, 1), got {optim_config.momentum}")
  for name in ("weight_decay", "head_lr_multiplier", "power"):
    _check(optim_config[name] >= 0, f"optim.{name} must be >= 0, got {optim_config[name]}")
  _check(optim_config.name in optim.OPTIMIZERS,
         f"optim.name must be one of {optim.OPTIMIZERS}, got {optim_config.name!r}")
  _check(optim_config.schedule in optim.SCHEDULES,
         f"optim.schedule must be one of {optim.SCHEDULES}, got {optim_config.schedule!r}")
  _check(optim_config.restart_every is None or optim_config.restart_every >= 1,
         f"optim.restart_every must be >= 1 or None, got {optim_config.restart_every}")
  betas = tuple(optim_config.betas)
  _check(len(betas) == 2 and all(0 <= b < 1 for b in betas),
         f"optim.betas must be two values in [0, 1), got {betas}")
  _check(config.model.name in models.MODELS, f"model.name must be one of "
         f"{models.MODELS.names()}, got {config.model.name!r}{PLUGIN_HINT}")
  _check(config.model.dtype in ("float32", "bfloat16"),
         f"model.dtype must be 'float32' or 'bfloat16', got {config.model.dtype!r}")
  _check(config.data.sampling in ("class_balanced", "uniform"),
         f"data.sampling must be 'class_balanced' or 'uniform', got {config.data.sampling!r}")
  _check(config.active.batch_size >= 1 and config.eval.batch_size >= 1,
         "active.batch_size and eval.batch_size must be >= 1")
  acquirer = ACQUIRERS.get(kind)
  acquirer.validate(config)
  if not {"target", "labelled"} & set(objective.domains):
    _check(not acquirer(config).buys_target_labels,
           f"train.objective {objective_name!r} never uses target labels; set "
           "active.kind='none'")
  objective.validate(config)


def label_space(config: ml_collections.ConfigDict) -> labels_lib.LabelSpace:
  """The run's label space: its source dataset's (a source-free run still names its source).

  It fixes the network's outputs, the losses' classes, the acquisition's normalisation and
  the evaluated class sets; each dataset's labels are mapped into it by the input pipeline.
  """
  return catalog.run_label_space(config.data.source or None, config.data.target)


def num_classes(config: ml_collections.ConfigDict) -> int:
  """Network outputs of this config's label space (16 for SYNTHIA runs, else 19)."""
  return label_space(config).num_classes


def class_sets(config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
  """The mIoU class sets reported for this config (indices in its label space)."""
  return {name: tuple(classes) for name, classes in label_space(config).eval_sets.items()}
