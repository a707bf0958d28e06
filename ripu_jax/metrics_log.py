"""Run metrics as JSON lines (`workdir/metrics.jsonl`) and TensorBoard event files.

A resumed run first drops the lines written after its checkpoint's step (they describe
training that is about to be redone), so the file always reads as one uninterrupted run.
TensorBoard gets the same treatment through `purge_step`.

That rewrite keeps nothing it cannot parse, so it never deletes such a line either: a
malformed line (not a JSON object) is copied verbatim into `metrics.jsonl.malformed`, after a
header line with its line number, and one warning names that file. The exception is a torn
last line without its newline, which is what a process killed in the middle of a write
leaves behind; it holds nothing worth keeping and is dropped silently. `read_metrics` never
raises on a damaged file: it skips what it cannot parse.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from absl import logging

METRICS_FILE = "metrics.jsonl"
# Lines of METRICS_FILE that did not parse when a resumed run rewrote it, appended verbatim.
MALFORMED_SUFFIX = ".malformed"


def _parse(path: str) -> tuple[list[dict], list[tuple[int, bytes]]]:
  """(records, malformed) of a metrics file; malformed holds (1-based line number, raw line
  with its newline) of each line that is not a JSON object, except a torn last line (no
  newline at the end of the file), which is dropped. Blank lines are skipped."""
  with open(path, "rb") as f:
    lines = f.read().splitlines(keepends=True)
  records, malformed = [], []
  for number, raw in enumerate(lines, start=1):
    if not raw.strip():
      continue
    try:
      record = json.loads(raw.decode("utf-8"))
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for binary garbage.
      record = None
    if isinstance(record, dict):
      records.append(record)
    elif number < len(lines) or raw.endswith(b"\n"):
      malformed.append((number, raw))
  return records, malformed


def read_metrics(workdir: str) -> list[dict]:
  """All records of `workdir/metrics.jsonl`; lines that are not JSON objects (a torn last
  line, garbage) are skipped."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  return _parse(path)[0]


def _set_aside(path: str, malformed: list[tuple[int, bytes]], resume_step: int) -> str:
  """Appends `malformed` lines verbatim to `path` + MALFORMED_SUFFIX; returns that path."""
  aside = path + MALFORMED_SUFFIX
  when = datetime.datetime.now().isoformat(timespec="seconds")
  with open(aside, "ab") as f:
    for number, raw in malformed:
      header = (f"# {os.path.basename(path)} line {number}, set aside {when} by a run "
                f"starting at step {resume_step}:\n")
      f.write(header.encode("utf-8"))
      f.write(raw if raw.endswith(b"\n") else raw + b"\n")
  return aside


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
    records, malformed = _parse(self.path) if os.path.exists(self.path) else ([], [])
    if malformed:
      aside = _set_aside(self.path, malformed, resume_step)
      numbers = ", ".join(str(number) for number, _ in malformed[:10])
      numbers += ", ..." if len(malformed) > 10 else ""
      logging.warning("%s: %d malformed line(s) that are not JSON records (%s %s) were "
                      "moved, verbatim, to %s; the valid records stay", self.path,
                      len(malformed), "line" if len(malformed) == 1 else "lines", numbers, aside)
    kept = [r for r in records if r.get("step", 0) <= resume_step]
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
