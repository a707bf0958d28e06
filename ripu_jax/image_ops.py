"""Image resizing shared by the models, the losses, the evaluation and the acquisition engine.

Bilinear, align_corners semantics throughout, as the reference release's
`F.interpolate(..., mode="bilinear", align_corners=True)`: output pixel i samples input
position i * (in - 1) / (out - 1). Two implementations of that one sampling rule:

* `resize_bilinear` / `upsample_logits` (training: losses, and the models' decoders): two small
  matrix products, one per spatial axis. Exact for this rule, cheap to differentiate, fast on
  every backend (XLA CPU's gather-based resize backward is slow). They cost O(in) per output
  value, which is fine at the network's sizes.
* `resize_bilinear_taps` / `upsample_to_labels` (forward only: evaluation and acquisition,
  where logits grow 8x-13x per axis to the label size): the two non-zero weights per output
  row and column, gathered. The same weights as the matrices; about 13 GFLOP less per
  1024x2048 image. Values agree with the matrix path to float32 rounding (the sums run in
  another order).

`upsample_to_labels(logits, label_size, input_size)` is the acquisition's path, as the
release's rounds take it: network output -> the network's input size -> the label size. The
two steps are one linear map per axis, applied as such (`two_step_taps`: at most three
non-zero weights per output row, from the product of the two steps' matrices in float64):
one pass over the label-size output instead of two, and one float32 rounding instead of two.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def bilinear_taps(out_size: int, in_size: int) -> tuple[np.ndarray, ...]:
  """(lo, hi, w_lo, w_hi), each [out_size]: output i = w_lo[i] * in[lo[i]] + w_hi[i] * in[hi[i]].

  align_corners sampling, weights computed in float64 and stored as float32; indices int32.
  """
  if out_size < 1 or in_size < 1:
    raise ValueError(f"sizes must be >= 1, got out={out_size}, in={in_size}")
  if in_size == 1:
    zeros = np.zeros(out_size, np.int32)
    return zeros, zeros, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
  scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
  src = np.arange(out_size) * scale
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 2)
  frac = src - lo
  return (lo.astype(np.int32), (lo + 1).astype(np.int32), (1.0 - frac).astype(np.float32),
          frac.astype(np.float32))


@functools.lru_cache(maxsize=64)
def interpolation_matrix(out_size: int, in_size: int) -> np.ndarray:
  """[out_size, in_size] float32 matrix of bilinear weights, align_corners semantics."""
  lo, hi, w_lo, w_hi = bilinear_taps(out_size, in_size)
  matrix = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  matrix[rows, lo] += w_lo
  matrix[rows, hi] += w_hi
  return matrix


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
  _check_nhwc(logits, "logits")
  return resize_bilinear(jnp.asarray(logits, jnp.float32), _size(size))


def _check_nhwc(x, what: str) -> None:
  shape = getattr(x, "shape", None)
  if shape is None or len(shape) != 4:
    raise ValueError(f"{what} must be NHWC of rank 4, got shape {shape}")


def _size(size: Sequence[int], name: str = "size") -> tuple[int, int]:
  try:
    height, width = (int(s) for s in size)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be (height, width), got {size!r}") from None
  if height < 1 or width < 1:
    raise ValueError(f"{name} must be (height, width) with positive entries, got {size!r}")
  return height, width


def _resize_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
  lo, hi, w_lo, w_hi = bilinear_taps(out_size, x.shape[axis])
  shape = [1] * x.ndim
  shape[axis] = out_size
  weights = lambda w: jnp.asarray(w, x.dtype).reshape(shape)  # noqa: E731
  return (jnp.take(x, jnp.asarray(lo), axis=axis) * weights(w_lo)
          + jnp.take(x, jnp.asarray(hi), axis=axis) * weights(w_hi))


@functools.lru_cache(maxsize=64)
def two_step_taps(out_size: int, mid_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(index, weight), each [out_size, T]: align_corners bilinear in_size -> mid_size ->
  out_size as one step, output i = sum_t weight[i, t] * in[index[i, t]].

  The product of the two steps' weight matrices, in float64 (weights stored as float32);
  T = the most non-zero weights of any row (3 at most), each row's taps consecutive.
  """
  def matrix(out, n):
    lo, hi, _, _ = bilinear_taps(out, n)
    scale = (n - 1) / (out - 1) if out > 1 and n > 1 else 0.0
    frac = np.arange(out) * scale - lo
    m = np.zeros((out, n))
    np.add.at(m, (np.arange(out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(out), hi), frac)
    return m

  product = matrix(out_size, mid_size) @ matrix(mid_size, in_size)
  nonzero = product != 0
  first = nonzero.argmax(axis=1)
  last = in_size - 1 - nonzero[:, ::-1].argmax(axis=1)
  taps = int((last - first).max()) + 1
  index = np.minimum(first, in_size - taps)[:, None] + np.arange(taps)
  weight = np.take_along_axis(product, index, axis=1)
  return index.astype(np.int32), weight.astype(np.float32)


def _apply_taps(x: jax.Array, axis: int, index: np.ndarray, weight: np.ndarray) -> jax.Array:
  shape = [1] * x.ndim
  shape[axis] = index.shape[0]
  out = None
  for t in range(index.shape[1]):
    term = (jnp.take(x, jnp.asarray(index[:, t]), axis=axis, mode="clip")
            * jnp.asarray(weight[:, t], x.dtype).reshape(shape))
    out = term if out is None else out + term
  return out


def resize_bilinear_taps(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """`resize_bilinear` for forward passes: two gathered taps per axis instead of matrices.

  NHWC `x` (floating) to spatial `size` = (height, width), align_corners=True.
  """
  _check_nhwc(x, "x")
  out_h, out_w = _size(size)
  in_h, in_w = x.shape[1], x.shape[2]
  if (out_h, out_w) == (in_h, in_w):
    return x
  # Resize the axis that leaves the smaller intermediate first.
  if out_w * in_h <= out_h * in_w:
    return _resize_axis(_resize_axis(x, 2, out_w), 1, out_h)
  return _resize_axis(_resize_axis(x, 1, out_h), 2, out_w)


def upsample_to_labels(logits: jax.Array, label_size: Sequence[int],
                       input_size: Sequence[int] | None = None) -> jax.Array:
  """float32 NHWC logits at `label_size`, forward only (evaluation, acquisition).

  With `input_size` (the network's input, H x W): as the release's rounds, logits -> input
  size -> label size, each step bilinear with align_corners, applied as one map per axis
  (`two_step_taps`); without it, or when it equals either end, one step.
  """
  _check_nhwc(logits, "logits")
  label_size = _size(label_size, "label_size")
  x = jnp.asarray(logits, jnp.float32)
  if input_size is None:
    return resize_bilinear_taps(x, label_size)
  input_size = _size(input_size, "input_size")
  if input_size in (label_size, tuple(x.shape[1:3])):
    return resize_bilinear_taps(x, label_size)
  (out_h, out_w), (in_h, in_w) = label_size, x.shape[1:3]
  rows = two_step_taps(out_h, input_size[0], in_h)
  columns = two_step_taps(out_w, input_size[1], in_w)
  if out_w * in_h <= out_h * in_w:  # the axis that leaves the smaller intermediate first
    return _apply_taps(_apply_taps(x, 2, *columns), 1, *rows)
  return _apply_taps(_apply_taps(x, 1, *rows), 2, *columns)
