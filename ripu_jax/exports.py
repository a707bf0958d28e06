"""What a selection round leaves for people: masks and picks for annotators, overlays.

Layout of `workdir/rounds/<r>/` (r counts from 1):
  masks/<image name>.png   uint8, 255 on the pixels queried in this round, 0 elsewhere
  picks.json               the round's picks per image, with the plan that produced them
  overlays/<image name>.png  image | prediction | score heat map | picked regions
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ripu_jax.data import labels as labels_lib

PICK_COLOUR = np.array([255, 0, 255], np.float32)


def round_dir(workdir: str, round_number: int) -> str:
  return os.path.join(workdir, "rounds", str(round_number))


def safe_name(name: str) -> str:
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def save_mask(directory: str, name: str, mask: np.ndarray) -> None:
  os.makedirs(directory, exist_ok=True)
  Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(
      os.path.join(directory, safe_name(name) + ".png"))


def save_overlay(path: str, image: np.ndarray, prediction: np.ndarray, score: np.ndarray,
                 labeled: np.ndarray, score_name: str = "score",
                 colorize=labels_lib.colorize) -> None:
  """Four panels side by side: image, colourised prediction, score, picked regions."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  height, width = prediction.shape
  if image.shape[:2] != (height, width):
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
  picked = image.astype(np.float32)
  picked[labeled] = 0.4 * picked[labeled] + 0.6 * PICK_COLOUR
  panels = [(image, "image"), (colorize(prediction), "prediction"),
            (score, score_name), (picked.astype(np.uint8), "picked regions (magenta)")]
  aspect = height / width
  fig, axes = plt.subplots(1, 4, figsize=(16, 4 * aspect + 0.6))
  for ax, (data, title) in zip(axes, panels):
    ax.imshow(data, cmap="inferno" if data.ndim == 2 else None)
    ax.set_title(title)
    ax.axis("off")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def write_picks(directory: str, *, round_number: int, step: int, strategy: str, kind: str,
                label_radius: int, images: Sequence[dict]) -> None:
  """picks.json: {"round", "step", "strategy", "kind", "label_radius", "images": [...]}.

  Each image entry is {"index", "name", "picks": [[row, col], ...]}; a pick labels the
  (2 * label_radius + 1)^2 square centred on it, clipped at the border.
  """
  os.makedirs(directory, exist_ok=True)
  write_json(os.path.join(directory, "picks.json"),
             {"round": round_number, "step": step, "strategy": strategy, "kind": kind,
              "label_radius": label_radius, "images": list(images)})


def write_json(path: str, value, **dump_options) -> None:
  """Writes JSON atomically (a temporary file, then a rename): never a half-written file."""
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, **dump_options)
  os.replace(path + ".tmp", path)
