"""Trainer hooks: code a method runs at three points of the schedule.

  after_step(trainer, metrics)    after every training step (metrics stay on device)
  after_round(trainer, result)    after a selection round is recorded in the ledger, before
                                  its checkpoint (e.g. restart training, run a stage)
  after_eval(trainer, summary)    after an evaluation has been logged

A hook is an object with any of these methods (subclass `Hook` for no-op defaults). Hooks
come from the objective (`Objective.hooks()`) and from `config.hooks`, a tuple of names
registered in `HOOKS` as factories `factory(config) -> Hook`. A hook may change the train
state (`trainer.state`); that state is checkpointed after it, so a resumed run continues
from what the hook left. The trainer passed in exposes `config`, `workdir`, `step`,
`state`, `ledger` and `log`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ripu_jax.registry import Registry

POINTS = ("after_step", "after_round", "after_eval")


class Hook:
  """No-op base: override the points a method needs."""

  def after_step(self, trainer: Any, metrics: dict) -> None:
    pass

  def after_round(self, trainer: Any, result: Any) -> None:
    pass

  def after_eval(self, trainer: Any, summary: dict) -> None:
    pass


HOOKS: Registry[Callable[[Any], Hook]] = Registry("hook")


def call(hooks, point: str, *args) -> None:
  """Calls `point` on every hook that defines it, in order."""
  if point not in POINTS:
    raise ValueError(f"unknown hook point {point!r}; one of {POINTS}")
  for hook in hooks:
    method = getattr(hook, point, None)
    if method is not None:
      method(*args)
