"""Run metrics as JSON lines (`workdir/metrics.jsonl`) and TensorBoard event files.

A resumed run first drops the lines written after its checkpoint's step (they describe
training that is about to be redone), so the file always reads as one uninterrupted run.
TensorBoard gets the same treatment through `purge_step`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
  """All records of `workdir/metrics.jsonl` (a torn last line is skipped)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def _flat_scalars(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  scalars = {}
  for key, value in record.items():
    if key in ("step", "kind"):
      continue
    name = f"{prefix}{key}".replace(" ", "_")
    if isinstance(value, Mapping):
      scalars.update(_flat_scalars(value, name + "/"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      if math.isfinite(value):
        scalars[name] = float(value)
  return scalars


class MetricsLog:
  """Appends records {"step": ..., "kind": "train" | "eval" | "round", ...}."""

  def __init__(self, workdir: str, *, resume_step: int = 0, tensorboard: bool = True):
    self.path = os.path.join(workdir, METRICS_FILE)
    kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= resume_step]
    with open(self.path + ".tmp", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(self.path + ".tmp", self.path)
    self._writer = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                   purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, kind: str, record: Mapping[str, Any]) -> None:
    line = {"step": int(step), "kind": kind, **record}
    with open(self.path, "a") as f:
      f.write(json.dumps(line) + "\n")
      f.flush()
    if self._writer is not None:
      for name, value in _flat_scalars(record, kind + "/").items():
        self._writer.add_scalar(name, value, step)
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
