"""ELN semi-supervised on the built-in synthetic benchmark: 1/8 of target train labelled.

  python -m ripu_jax.main --config configs/eln/demo_semi.py --workdir /tmp/eln_demo
  python -m ripu_jax.main --config configs/eln/demo_semi.py:smoke --workdir /tmp/smoke   # seconds

The synthetic target domain only (no source): 37 of its 300 training images labelled (a
seeded split, exported as rounds/0), the rest unlabelled. A small output-stride-16
DeepLab-v3+ student (batch-statistics BN, random initialisation) learns the labelled images
(steps 0-400), then its two auxiliary decoders and a small ELN join (400-600), then it
self-trains on the EMA teacher's pseudo labels the ELN keeps (600-1000). The student's mIoU
on target val is printed at every evaluation, with the teacher's and the ELN's report.
"""

import ml_collections

from ripu_jax import config_lib
from ripu_jax.methods.eln import config as eln_config


def demo_config() -> ml_collections.ConfigDict:
  config = eln_config.semi_supervised_config(
      config_lib.base_config(), fraction=0.125, aux_from=400, self_training_from=600)
  config.num_steps = 1_000
  config.log_every = 25
  config.checkpoint_every = 100
  config.data.target = "synthetic"
  config.data.target_size = config.eval.size = (128, 256)
  config.data.worker_count = 0
  config.model.pretrained = ""
  config.model.kwargs.update(depth=50, blocks=(2, 2, 2, 2), width_multiplier=0.25,
                             channels=64, low_channels=16, projection_channels=32)
  # Random initialisation learns faster at a larger step than the release's fine-tuning.
  config.optim.base_lr = 1e-4
  config.train.batch_size = 4  # labelled and unlabelled images per step, each
  config.eln.epoch_steps = 100
  config.eln.contrastive_window = 16
  config.eln.network = eln_config.network_config()
  config.eval.every = 200
  config.eval.batch_size = 4
  return config


def get_config(arg=None):
  return eln_config.get_config_with_arg(demo_config, arg)
