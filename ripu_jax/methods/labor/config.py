"""LabOR's config group and the changes a LabOR config makes to a RIPU one."""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from ripu_jax import config_lib

PLUGIN = "ripu_jax.methods.labor"
MODES = ("spl", "ppl")


def labor_config(config: ml_collections.ConfigDict, mode: str) -> ml_collections.ConfigDict:
  """Turns a RIPU config into LabOR's: objective "labor", acquirer "labor_<mode>".

  Rounds stay RIPU's (active.round_steps; one round is the "ask once" reading); PPL's budget
  is active.pixels (40 points per image at 1280x640, scaled with the image area).
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  config.plugins = tuple(config.plugins) + (PLUGIN,)
  config.train.objective = "labor"
  config.active.kind = f"labor_{mode}"
  config.active.pixels = 40
  config.labor = ml_collections.ConfigDict(dict(
      # False: B is a second DeepLab started from A; True: C1, C2 are heads on A's
      # (stop-gradient) features, added to A by the objective: less memory and time.
      share_backbone=False,
      # SPL: None labels every inconsistent pixel (the paper); a fraction caps each image
      # cumulatively, keeping the most discrepant pixels (e.g. 0.022 to meet RIPU-RA 2.2%).
      spl_cap=config_dict.placeholder(float),
      prototype_probs="model",  # PPL prototypes from A's softmax ("heads": (p1 + p2) / 2)
      adversarial_weight=0.001,  # AdaptSeg's single-level weight
      gan_loss="bce",  # AdaptSeg's; "lsgan": least squares (IAST's release)
      discrepancy_weight=1.0,  # MCD's classifier step
      discriminator_lr=1e-4,  # Adam, betas (0.9, 0.99)
      discriminator_channels=64,
      iast_alpha=0.2, iast_beta=0.9, iast_gamma=8.0, iast_init=0.9))
  return config


# IAST's released output-alignment weight per source dataset (its `:iast` variant).
IAST_ADVERSARIAL_WEIGHT = {"gtav": 0.05, "synthia": 0.001}


def real_data_config(source: str, mode: str, arg: str | None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of configs/labor/<source>_<mode>.py: RIPU's real-data config of
  `source` made LabOR's; the argument takes 'smoke' and 'iast' (`iast_release` with the
  source's weight)."""
  weight = IAST_ADVERSARIAL_WEIGHT[source]
  return config_lib.get_config_with_arg(
      lambda: labor_config(config_lib.real_config(source), mode), arg,
      variants={"iast": lambda config: iast_release(config, adversarial_weight=weight)})


def iast_release(config: ml_collections.ConfigDict,
                 adversarial_weight: float) -> ml_collections.ConfigDict:
  """The alternative schedule of LabOR's UDA baseline, IAST's release (its warm-up stage):
  Adam at 2e-5 with cosine annealing (one period over config.num_steps, restarting after it),
  least-squares output alignment weighted `adversarial_weight` (0.05 GTAV, 0.001 SYNTHIA)
  and D at 2e-5. Unstated there, ours: one learning rate for every layer, torch's Adam
  defaults (betas 0.9/0.999, no weight decay); D keeps its Adam betas (0.9, 0.99).
  """
  config.optim.update(name="adam", schedule="cosine_restarts", base_lr=2e-5,
                      head_lr_multiplier=1.0, weight_decay=0.0, betas=(0.9, 0.999))
  config.optim.restart_every = config.num_steps  # one cosine over the training, as released
  config.labor.update(gan_loss="lsgan", adversarial_weight=adversarial_weight,
                      discriminator_lr=2e-5)
  return config
