"""ViewAL's config group and the setting built on a base config."""

from __future__ import annotations

import ml_collections

PLUGIN = "ripu_jax.methods.viewal"


def viewal_group(*, budget_frames: float) -> ml_collections.ConfigDict:
  """`config.viewal`: the release's choices (spec sections 1-6)."""
  return ml_collections.ConfigDict(dict(
      strategy="viewal",  # or "entropy" / "random" superpixels (the baselines)
      mode="paper",  # VD compared as a float; "release": truncated to an int (spec 10)
      passes=20,  # Monte-Carlo dropout passes
      distance_threshold=1.0,  # metres: a projected point is visible within this distance
      overlap_threshold=0.25,  # superpixels overlap when cov > this, either way
      budget_frames=float(budget_frames),  # per round, in frames' worth of pixels
      select_with="best",  # the round's best-val model scores the pool ("last": the latest)
      restart_each_round=True,  # training starts again from the initial weights each round
      loss_per_batch=True,  # release: the pixel-mean CE divided again by the batch size
  ))


def viewal_config(config: ml_collections.ConfigDict, *, dataset: str, budget_frames: float,
                  round_steps: tuple[int, ...], num_steps: int,
                  seed_fraction: float = 0.015) -> ml_collections.ConfigDict:
  """Turns a base config into ViewAL's setting on `dataset` (no source): the seed frames
  (`seed_fraction`, or active.labelled_list), superpixel rounds at `round_steps`, training
  restarted after each, DeepLab-v3+ on MobileNetV2 with channel dropout, SGD (momentum 0.9,
  weight decay 5e-4, 4e-4 backbone / 4e-3 head), constant learning rate."""
  config.plugins = tuple(config.plugins) + (PLUGIN,)
  config.num_steps = num_steps
  config.data.source = ""
  config.data.target = dataset
  config.data.sampling = "uniform"
  config.data.target_size = config.eval.size = (240, 320)
  config.train.objective = "viewal"
  config.active.kind = "viewal"
  config.active.labelled_fraction = seed_fraction
  config.active.round_steps = tuple(round_steps)
  config.active.num_overlays = 2
  config.model.name = "deeplabv3plus_mobilenet"
  config.model.pretrained = "weights/mobilenet_v2.npz"
  config.model.kwargs = ml_collections.ConfigDict()
  config.optim.update(name="sgd", schedule="constant", base_lr=4e-4, head_lr_multiplier=10.0,
                      momentum=0.9, weight_decay=5e-4)
  config.train.batch_size = 6
  config.viewal = viewal_group(budget_frames=budget_frames)
  return config


# Training frames of each dataset's ViewAL split (spec section 8) and the budget per round
# in the release's README commands (active-selection-size, frames' worth of pixels).
TRAIN_FRAMES = {"scannet": 23_750, "scenenet_rgbd": 72_990, "matterport3d": 25_761}
BUDGET_FRAMES = 1_500
EPOCHS_PER_ROUND = 50
ROUNDS = 7
BATCH_SIZE = 6


def real_data_config(dataset: str) -> ml_collections.ConfigDict:
  """configs/viewal/<dataset>.py: the release's loop on a prepared multi-view dataset. Rounds
  every 50 epochs (the seed round, then 6 rounds bought and trained; the release's 7th
  selection is never trained on), val every 5 epochs, batch 6, ImageNet MobileNetV2
  (weights/mobilenet_v2.npz). The seed frames: the release's seedset list when given
  (--config.active.labelled_list=.../seedset_0_frames.txt), else a seeded 1.5%."""
  from ripu_jax import config_lib  # pylint: disable=g-import-not-at-top
  epoch = -(-TRAIN_FRAMES[dataset] // BATCH_SIZE)
  round_steps = tuple(EPOCHS_PER_ROUND * epoch * r for r in range(1, ROUNDS))
  config = viewal_config(config_lib.base_config(), dataset=dataset,
                         budget_frames=BUDGET_FRAMES, round_steps=round_steps,
                         num_steps=EPOCHS_PER_ROUND * epoch * ROUNDS)
  config.data.data_dir = "~/tensorflow_datasets"
  config.eval.every = 5 * epoch
  config.checkpoint_every = epoch
  config.log_every = 100
  return config


def strategy_variants() -> dict:
  """Config-file arguments: 'release' (VD truncated), 'entropy' and 'random' superpixels,
  'full' (every pixel labelled: the reference), 'resnet101' (DeepLab-v3+ on ResNet-101 with
  channel dropout 0.25 on layer4 and layer1, weights/resnet101.npz)."""

  def setting(**fields):
    def apply(config):
      config.viewal.update(fields)
      return config
    return apply

  def full(config):
    config.active.kind = "all"
    config.active.round_steps = ()
    return config

  def resnet101(config):
    config.model.name = "deeplabv3plus"
    config.model.pretrained = "weights/resnet101.npz"
    config.model.kwargs = ml_collections.ConfigDict(dict(depth=101, channel_dropout=0.25))
    return config

  return {"release": setting(mode="release"), "entropy": setting(strategy="entropy"),
          "random": setting(strategy="random"), "full": full, "resnet101": resnet101}


def shrink_for_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A seconds-long run of the same method on tiny synthetic rooms (32x40, 2 training scenes
  of 4 frames): 6 steps, rounds before steps 2 and 4, 2 Monte-Carlo passes."""
  config.num_steps = 6
  config.log_every = 2
  config.checkpoint_every = 4
  config.eval.every = 3
  config.eval.batch_size = config.active.batch_size = config.train.batch_size = 2
  config.data.target = "viewal_synthetic"
  config.data.worker_count = 0
  config.data.viewal_synthetic = ml_collections.ConfigDict(dict(
      prepared=False, seed=0, height=32, width=40, train_scenes=2, val_scenes=1,
      test_scenes=1, frames_per_scene=4))
  config.data.target_size = config.eval.size = (32, 40)
  config.model.pretrained = ""
  if config.model.name == "deeplabv3plus":  # the ResNet variant, its channel dropout kept
    config.model.kwargs = ml_collections.ConfigDict(dict(
        blocks=(1, 1, 1, 1), width_multiplier=0.125, channels=16, low_channels=8,
        channel_dropout=config.model.kwargs.get("channel_dropout", 0.25)))
  else:
    config.model.kwargs = ml_collections.ConfigDict(dict(width_multiplier=0.25, channels=16,
                                                         low_channels=8))
  if config.active.kind == "viewal":
    config.active.round_steps = (2, 4)
    config.active.labelled_fraction = 0.2
    config.active.labelled_list = ""
  config.viewal.update(passes=2, budget_frames=0.5)
  return config


def get_config_with_arg(make, arg: str | None, variants=None) -> ml_collections.ConfigDict:
  """`config_lib.get_config_with_arg` for ViewAL's config files: the variants of
  `strategy_variants` (and the file's own), 'smoke' shrinking to tiny synthetic rooms."""
  from ripu_jax import config_lib  # pylint: disable=g-import-not-at-top
  variants = {**strategy_variants(), **dict(variants or {})}
  parts = [part.strip() for part in (arg or "").split(",") if part.strip()]
  config = config_lib.get_config_with_arg(
      make, ",".join(part for part in parts if part != "smoke"), variants)
  return shrink_for_smoke(config) if "smoke" in parts else config
