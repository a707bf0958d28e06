"""A method of one's own, outside the package: a strategy, an objective term and a hook.

  PYTHONPATH=examples python -m ripu_jax.main --config configs/demo.py:smoke \
      --workdir /tmp/my_method --config.plugins='("my_method",)' \
      --config.active.strategy=margin --config.train.objective=ripu_entropy \
      --config.hooks='("round_log",)'

Importing this module registers three pieces under names a config chooses; ripu_jax imports
it first because `config.plugins` names it.
"""

import json
import os

import jax
import jax.numpy as jnp

from ripu_jax.acquisition import register_strategy
from ripu_jax.acquisition.scores import window_mean
from ripu_jax.hooks import HOOKS, Hook
from ripu_jax.image_ops import upsample_logits
from ripu_jax.methods.ripu.objectives import RipuObjective
from ripu_jax.objectives import OBJECTIVES

ENTROPY_WEIGHT = 0.01


@register_strategy("margin")
def margin(logits, *, radius, mode, keys):
  """1 - (top-1 - top-2 probability): small margins first (window mean in region mode)."""
  del keys
  top2 = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), 2)[0]
  score = 1.0 - (top2[..., 0] - top2[..., 1])
  return window_mean(score, radius) if mode == "region" else score


@OBJECTIVES.register("ripu_entropy")
class RipuWithEntropy(RipuObjective):
  """RIPU's objective plus entropy minimisation on the target predictions."""

  def loss(self, model, batch):
    total, terms = super().loss(model, batch)
    logits = upsample_logits(model(batch["target_images"]), batch["target_labels"].shape[1:3])
    log_p = jax.nn.log_softmax(logits, axis=-1)
    terms["target_entropy"] = -jnp.mean(jnp.sum(jnp.exp(log_p) * log_p, axis=-1))
    terms["total"] = total + ENTROPY_WEIGHT * terms["target_entropy"]
    return terms["total"], terms


@HOOKS.register("round_log")
class RoundLog(Hook):
  """Appends each round's purchase and each evaluation to workdir/round_log.jsonl."""

  def __init__(self, config):
    del config

  def _write(self, trainer, record):
    with open(os.path.join(trainer.workdir, "round_log.jsonl"), "a") as f:
      f.write(json.dumps({"step": trainer.step, **record}) + "\n")

  def after_round(self, trainer, result):
    self._write(trainer, {"bought": result.count, "unit": result.unit,
                          "labelled": trainer.ledger.labeled_fraction()})

  def after_eval(self, trainer, summary):
    self._write(trainer, {"miou": summary["miou"]})
