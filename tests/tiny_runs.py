"""The tiny synthetic run that trainer-level tests share: demo:smoke, three rounds in 10 steps."""

import os

from ripu_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def with_overrides(config, overrides):
  """Sets {"group.field": value} (or "field") on a config; returns it."""
  for key, value in overrides.items():
    group, _, name = key.rpartition(".")
    (config[group] if group else config)[name] = value
  return config


def tiny_config(**overrides):
  """demo:smoke with three rounds in 10 steps, checkpoints every 3, no progress bars."""
  config = config_lib.load_config(os.path.join(ROOT, "configs", "demo.py"), "smoke")
  config.num_steps = 10
  config.checkpoint_every = 3
  config.active.round_steps = (2, 5, 8)
  config.progress_bars = False
  return with_overrides(config, overrides)
