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
      budget_frames=budget_frames,  # per round, in frames' worth of pixels
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
