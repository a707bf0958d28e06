"""Plain numpy versions of RIPU's acquisition formulas and pick loop, written for clarity.

They follow the method description literally (explicit window loops, one full-map arg-max
per pick) and share no code with ripu_jax, so the tests compare two independent versions.
"""

import math

import numpy as np

EPS = 1e-6


def softmax(logits):
  z = logits.astype(np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def pixel_entropy(logits):
  p = softmax(logits)
  return -(p * np.log(p + EPS)).sum(axis=-1)


def window(i, j, radius, height, width):
  return (slice(max(i - radius, 0), min(i + radius, height - 1) + 1),
          slice(max(j - radius, 0), min(j + radius, width - 1) + 1))


def ripu(logits, radius, mode):
  """(score, impurity, uncertainty) for one image [H, W, C], each normalised by log(C)."""
  height, width, num_classes = logits.shape
  entropy = pixel_entropy(logits)
  label = softmax(logits).argmax(axis=-1)
  impurity = np.zeros((height, width))
  uncertainty = np.zeros((height, width))
  for i in range(height):
    for j in range(width):
      region = window(i, j, radius, height, width)
      labels = label[region].ravel()
      q = np.bincount(labels, minlength=num_classes) / labels.size
      impurity[i, j] = -(q * np.log(q + EPS)).sum()
      uncertainty[i, j] = entropy[region].mean() if mode == "region" else entropy[i, j]
  norm = math.log(num_classes)
  impurity, uncertainty = impurity / norm, uncertainty / norm
  return impurity * uncertainty, impurity, uncertainty


def window_mean(values, radius):
  height, width = values.shape
  out = np.zeros((height, width))
  for i in range(height):
    for j in range(width):
      out[i, j] = values[window(i, j, radius, height, width)].mean()
  return out


def greedy(score, num_picks, label_radius, suppress_radius, excluded=None):
  """The release's loop: arg-max (first max per column, then first column), label, suppress."""
  height, width = score.shape
  work = score.astype(np.float64).copy()
  if excluded is not None:
    work[excluded] = -np.inf
  labeled = np.zeros((height, width), bool)
  excluded_out = np.zeros((height, width), bool) if excluded is None else excluded.copy()
  picks = []
  for _ in range(num_picks):
    if np.all(work == -np.inf):
      break
    best_row_per_col = work.argmax(axis=0)
    col = int(work[best_row_per_col, np.arange(width)].argmax())
    row = int(best_row_per_col[col])
    picks.append((row, col))
    labeled[window(row, col, label_radius, height, width)] = True
    suppressed = window(row, col, suppress_radius, height, width)
    work[suppressed] = -np.inf
    excluded_out[suppressed] = True
  return picks, labeled, excluded_out


def bilinear_align_corners(x, out_h, out_w):
  """Resize [H, W, C] with align_corners=True, one output pixel at a time."""
  in_h, in_w, _ = x.shape
  out = np.zeros((out_h, out_w, x.shape[2]))
  for i in range(out_h):
    for j in range(out_w):
      y = i * (in_h - 1) / (out_h - 1) if out_h > 1 else 0.0
      xx = j * (in_w - 1) / (out_w - 1) if out_w > 1 else 0.0
      y0, x0 = int(math.floor(y)), int(math.floor(xx))
      y1, x1 = min(y0 + 1, in_h - 1), min(x0 + 1, in_w - 1)
      dy, dx = y - y0, xx - x0
      out[i, j] = ((1 - dy) * (1 - dx) * x[y0, x0] + (1 - dy) * dx * x[y0, x1]
                   + dy * (1 - dx) * x[y1, x0] + dy * dx * x[y1, x1])
  return out
