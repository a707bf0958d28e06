"""RIPU end to end on the built-in synthetic benchmark: no download, minutes on a CPU.

  python -m ripu_jax.main --config configs/demo.py --workdir /tmp/ripu_demo
  python -m ripu_jax.main --config configs/demo.py:smoke --workdir /tmp/smoke   # seconds

The whole method at toy scale: a small DeepLab-v2 (bottleneck ResNet with 2 blocks per stage
at 1/4 width, random initialisation) learns the synthetic source domain (game-like street
scenes, 128x256) and, in 5 RIPU selection rounds, buys 2.2% of the target domain's pixels as
3x3 regions. The mIoU on target val is printed before every round and at the end, with the
labelled fraction. Schedule scaled from the release's (rounds at 25-45% of training).
"""

import ml_collections

from ripu_jax import config_lib


def demo_config() -> ml_collections.ConfigDict:
  config = config_lib.base_config()
  config.num_steps = 1_000
  config.log_every = 25
  config.checkpoint_every = 100
  config.data.source = "synthetic"
  config.data.target = "synthetic"
  config.data.source_size = config.data.target_size = config.eval.size = (128, 256)
  config.data.worker_count = 0
  config.model.pretrained = ""
  config.model.kwargs = ml_collections.ConfigDict(dict(blocks=(2, 2, 2, 2),
                                                       width_multiplier=0.25))
  config.optim.base_lr = 0.01  # random initialisation needs a larger step than fine-tuning
  config.optim.max_iter = 1_000
  config.active.round_steps = (400, 500, 600, 700, 800)
  config.active.batch_size = 4
  config.eval.every = 1_000
  config.eval.batch_size = 4
  return config


def get_config(arg=None):
  return config_lib.get_config_with_arg(demo_config, arg)
