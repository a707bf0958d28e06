"""Image resizing shared by the models, the losses, the evaluation and the acquisition engine.

`upsample_logits` is the one way logits reach the label size (losses, evaluation,
acquisition): float32, bilinear, align_corners, as the reference release's
`F.interpolate(..., mode="bilinear", align_corners=True)`.

Bilinear resizing is written as two small matrix products (one per spatial axis) with
`align_corners=True` semantics: output pixel i samples input position i * (in - 1) / (out - 1).
Matrix products are exact for this sampling rule, differentiate cheaply and run fast on
every backend (XLA CPU's gather-based resize backward is slow).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def interpolation_matrix(out_size: int, in_size: int) -> np.ndarray:
  """[out_size, in_size] float32 matrix of bilinear weights, align_corners semantics."""
  if out_size < 1 or in_size < 1:
    raise ValueError(f"sizes must be >= 1, got out={out_size}, in={in_size}")
  matrix = np.zeros((out_size, in_size), np.float64)
  if in_size == 1:
    matrix[:, 0] = 1.0
    return matrix.astype(np.float32)
  scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
  src = np.arange(out_size) * scale
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 2)
  frac = src - lo
  rows = np.arange(out_size)
  matrix[rows, lo] += 1.0 - frac
  matrix[rows, lo + 1] += frac
  return matrix.astype(np.float32)


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Resizes NHWC `x` to spatial `size` = (height, width), bilinear, align_corners=True."""
  if x.ndim != 4:
    raise ValueError(f"expected NHWC input of rank 4, got shape {x.shape}")
  out_h, out_w = int(size[0]), int(size[1])
  in_h, in_w = x.shape[1], x.shape[2]
  if (out_h, out_w) == (in_h, in_w):
    return x
  dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
  mat_h = jnp.asarray(interpolation_matrix(out_h, in_h), dtype)
  mat_w = jnp.asarray(interpolation_matrix(out_w, in_w), dtype)
  precision = jax.lax.Precision.HIGHEST
  # Contract the axis that shrinks the intermediate most first.
  if out_w * in_h <= out_h * in_w:
    y = jnp.einsum("Ww,bhwc->bhWc", mat_w, x.astype(dtype), precision=precision)
    return jnp.einsum("Hh,bhWc->bHWc", mat_h, y, precision=precision)
  y = jnp.einsum("Hh,bhwc->bHwc", mat_h, x.astype(dtype), precision=precision)
  return jnp.einsum("Ww,bHwc->bHWc", mat_w, y, precision=precision)


def upsample_logits(logits: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear (align_corners) resize of NHWC logits to `size` = (height, width), in float32.

  Raises ValueError unless `logits` has rank 4 and `size` is two positive integers.
  """
  shape = getattr(logits, "shape", None)
  if shape is None or len(shape) != 4:
    raise ValueError(f"logits must be NHWC of rank 4, got shape {shape}")
  try:
    height, width = (int(s) for s in size)
  except (TypeError, ValueError):
    raise ValueError(f"size must be (height, width), got {size!r}") from None
  if height < 1 or width < 1:
    raise ValueError(f"size must be (height, width) with positive entries, got {size!r}")
  return resize_bilinear(jnp.asarray(logits, jnp.float32), (height, width))
