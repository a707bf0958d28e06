"""ViewAL on the built-in synthetic multi-view RGB-D benchmark (no download, CPU-sized).

  python -m ripu_jax.main --config configs/viewal/synthetic.py --workdir /tmp/viewal
  python -m ripu_jax.main --config configs/viewal/synthetic.py:smoke --workdir /tmp/smoke
  python -m ripu_jax.main --config configs/viewal/synthetic.py:entropy --workdir /tmp/ent
      # variants: release (VD truncated, the release's walk), entropy, random, full (every
      # pixel labelled, trained as long as one round: the reference), smoke; combined with
      # commas (:smoke,random)

Procedural rooms (`ripu_jax.methods.viewal.scenes`) at 120x160: 12 training scenes of 15
frames, 3 val scenes. A 1/2-width DeepLab-v3+ on MobileNetV2 (random initialisation, channel
dropout for the Monte-Carlo passes) learns from 2 seed frames for 300 steps; then 6 rounds,
each buying 2 frames' worth of superpixels and training again from the initial weights for 300
steps. The best model on val of each stretch selects the next round's superpixels.
"""

import ml_collections

from ripu_jax import config_lib
from ripu_jax.methods.viewal import config as viewal_config

ROUND_STEPS = 300


def synthetic_config() -> ml_collections.ConfigDict:
  config = viewal_config.viewal_config(
      config_lib.base_config(), dataset="viewal_synthetic", budget_frames=2.0,
      round_steps=tuple(ROUND_STEPS * r for r in range(1, 7)), num_steps=7 * ROUND_STEPS,
      seed_fraction=0.015)
  config.data.viewal_synthetic = ml_collections.ConfigDict(dict(
      prepared=False, seed=0, height=120, width=160, train_scenes=12, val_scenes=3,
      test_scenes=1, frames_per_scene=15))
  config.data.target_size = config.eval.size = (120, 160)
  config.data.worker_count = 0
  config.model.pretrained = ""
  config.model.kwargs = ml_collections.ConfigDict(dict(width_multiplier=0.5, channels=64,
                                                       low_channels=16))
  # Random initialisation learns faster at a larger step than the release's fine-tuning.
  config.optim.base_lr = 1e-2
  config.log_every = 25
  config.checkpoint_every = ROUND_STEPS
  config.eval.every = 100
  config.eval.batch_size = 6
  config.active.batch_size = 6
  return config


def _full(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Every pixel labelled, trained as long as one round: the reference a round's model has."""
  config.active.kind = "all"
  config.active.round_steps = ()
  config.num_steps = ROUND_STEPS
  return config


def get_config(arg=None):
  return viewal_config.get_config_with_arg(synthetic_config, arg, variants={"full": _full})
