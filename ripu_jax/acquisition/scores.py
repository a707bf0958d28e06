"""RIPU acquisition scores: region impurity x prediction uncertainty, computed on device.

All maps are per pixel at the label's resolution. The release's formulas:

  p = softmax(logits), H = -sum_c p_c log(p_c + 1e-6)                   (pixel entropy)
  q_c = n_c / |N_k|, P = -sum_c q_c log(q_c + 1e-6) / log(C)           (region impurity)
  U = mean of H over N_k / log(C) (region mode) or H / log(C) (pixel mode)
  score = P * U

N_k is the (2k+1)^2 square around a pixel clipped at the border, and |N_k| counts only
in-image pixels. How the work is laid out (measured on XLA CPU, see README "Acquisition"):

* Class reductions are written as chains over the class axis: XLA CPU reduces a short
  innermost axis far slower than it adds C slices.
* Per-pixel maps (entropy, label) are materialised behind a loop boundary before window
  code reads them; otherwise XLA recomputes them from the logits at every read.
* The impurity uses -sum q log(q + eps) = log N - (1/N) sum n log(n + eps N) on integer
  window counts n, so its logs act on exact counts.
* Small windows are summed directly from shifted slices (one fused pass). Large windows use a
  running sum over rows (constant cost per row, whatever k) and, along each row, a
  power-of-two decomposition of the window, so a 65x65 window costs about as much as 3x3.
* Per-class window counts are laid out [B, rows, C, W], image columns innermost: every pass
  then reads contiguous memory, where a class-innermost layout reads each class with a
  stride of C (1.6x slower at 1024x2048, k=32).

A second implementation, impl="reduce_window", is shaped for accelerators (GPU, TPU), whose
compilers fuse and schedule plain array code well and have no use for the loop boundaries
and barriers above:

* Per-pixel maps are plain reductions over the class axis.
* Window class histograms are [B, C, H, W] int32 counts of the one-hot pseudo label (image
  columns innermost: coalesced on GPU, no padding of a 19-wide minor axis on TPU). Up to
  REDUCE_WINDOW_MAX_RADIUS they are one zero-padded `lax.reduce_window`; beyond it a
  cumulative-sum box filter per axis, whose cost does not grow with k and which is exact in
  integers.
* Entropy window sums are float32 `lax.reduce_window` at every k (separable beyond
  REDUCE_WINDOW_MAX_RADIUS), not prefix sums: a float32 prefix sum along a 2048-pixel row
  reaches ~6e3, where one rounding step is ~5e-4, so a 3x3 window's sum (~10) taken as a
  difference of two would keep only about four digits.
* The impurity applies the CPU count path's formula (k > DIRECT_MAX_RADIUS) term by term in
  the same class order. The counts are exact in both implementations, so the impurities
  differ only by the rounding of the logs and sums (XLA may evaluate one formula to 1 ulp
  apart in different fusions), as do the entropies and window means.

`impl="auto"` (the default everywhere) is "cpu" on a CPU backend and "reduce_window"
elsewhere; both give the same scores to float32 rounding.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np


EPS = 1e-6
# Windows up to this radius are summed from shifted slices; larger ones use running sums.
DIRECT_MAX_RADIUS = 2
# Image rows handled per step of the running-sum scan (fewer, larger steps: less loop overhead).
ROWS_PER_STEP = 8
MODES = ("region", "pixel")
IMPLS = ("auto", "reduce_window", "cpu")
# Largest radius whose window sums are one (2k+1)^2 reduce_window. XLA's GPU and TPU
# reduce_window read every tap of every window, so its cost grows as (2k+1)^2, while the
# cumulative-sum filter costs, whatever k, about ten passes over the counts in memory (per
# axis a scan, read and written, then one fused difference of two shifted reads). Taps mostly
# hit the cache and passes do not, so the switch is put where the taps outnumber the passes
# eightfold (81 taps at k=4): an estimate from memory traffic, exact on both sides.
REDUCE_WINDOW_MAX_RADIUS = 4


class Scores(NamedTuple):
  """Acquisition maps, each float32 [B, H, W], normalised by log(C)."""
  score: jax.Array
  impurity: jax.Array
  uncertainty: jax.Array


class PixelStats(NamedTuple):
  """Per-pixel statistics of the softmax, each [B, H, W]."""
  entropy: jax.Array  # nats, the release's formula (1e-6 inside the log)
  label: jax.Array  # int32 pseudo label (first maximum)
  max_prob: jax.Array  # float32


def validate_logits(logits) -> None:
  """Raises ValueError unless `logits` is a floating [B, H, W, C] array with C >= 2."""
  shape = getattr(logits, "shape", None)
  dtype = getattr(logits, "dtype", None)
  if shape is None or dtype is None:
    raise ValueError(f"logits must be an array [B, H, W, C], got {type(logits).__name__}")
  if len(shape) != 4:
    raise ValueError(f"logits must have rank 4 [B, H, W, C] (NHWC), got shape {tuple(shape)}")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"logits must have a floating dtype, got {dtype}")
  if min(shape[:3]) < 1 or shape[3] < 2:
    raise ValueError(f"logits need B, H, W >= 1 and at least 2 classes, got shape {tuple(shape)}")


def validate_radius(radius, name: str = "radius") -> int:
  if isinstance(radius, bool) or int(radius) != radius or radius < 0:
    raise ValueError(f"{name} must be a non-negative integer, got {radius!r}")
  return int(radius)


def validate_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  return mode


def resolve_impl(impl: str, platform: str | None = None) -> str:
  """The implementation `impl` names: "auto" is "cpu" on a CPU platform, else "reduce_window".

  platform: where the scores run (a jax platform name; default: jax's default backend).
  """
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if impl != "auto":
    return impl
  return "cpu" if (platform or jax.default_backend()) == "cpu" else "reduce_window"


def raise_if_not_finite(finite, names=None) -> None:
  """Raises ValueError naming the images whose per-image `finite` flag is False."""
  finite = np.asarray(finite)
  bad = np.flatnonzero(~finite)
  if bad.size:
    labels = [f"{names[i]!r} (batch index {i})" if names is not None else f"batch index {i}"
              for i in bad[:5]]
    more = f" and {bad.size - 5} more" if bad.size > 5 else ""
    raise ValueError(
        f"logits contain NaN or inf for image {', '.join(labels)}{more}; "
        "check the model output (a diverged model or a corrupt input image) before selecting")


def finite_per_image(logits: jax.Array) -> jax.Array:
  """bool [B]: every value of the image is finite.

  sum(x * 0) is 0 when all of x is finite and NaN otherwise (inf * 0 = NaN); it cannot
  overflow and reads the logits once, which XLA CPU does several times faster than
  all(isfinite(x)).
  """
  return jnp.isfinite(jnp.sum(logits * 0, axis=tuple(range(1, logits.ndim)),
                              dtype=jnp.float32))


def _class_slices(x: jax.Array) -> list[jax.Array]:
  return [x[..., c] for c in range(x.shape[-1])]


def materialized(fn, *args):
  """fn(*args), computed as its own loop so XLA cannot fuse it into the consumers.

  XLA CPU fuses cheap-looking producers into every consumer, recomputing them per read: a
  window sum reading a pixel's entropy 9 times would redo 19 exps 9 times. A while loop is a
  fusion boundary; its trip count (1, or 2 if the first input is NaN: same result) is data
  dependent so XLA cannot unroll it away.
  """
  first = jnp.ravel(args[0])[0]
  trips = 1 + (first != first).astype(jnp.int32)
  shapes = jax.eval_shape(fn, *args)
  init = (jnp.int32(0), jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes))
  return lax.while_loop(lambda state: state[0] < trips,
                        lambda state: (state[0] + 1, fn(*args)), init)[1]


def _top_and_label(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Largest logit and its class (the first maximum), as a chain over the classes."""
  z = _class_slices(x)
  top = z[0]
  label = jnp.zeros(top.shape, jnp.int32)
  for c, zc in enumerate(z[1:], start=1):
    label = jnp.where(zc > top, c, label)
    top = jnp.maximum(top, zc)
  return top, label


def _pixel_stats(logits: jax.Array) -> PixelStats:
  x = logits.astype(jnp.float32)
  top, label = _top_and_label(x)
  top, x = lax.optimization_barrier((top, x))
  total = sum(jnp.exp(zc - top) for zc in _class_slices(x))
  inv_total, x = lax.optimization_barrier((1.0 / total, x))
  entropy = jnp.zeros_like(top)
  for zc in _class_slices(x):
    p = jnp.exp(zc - top) * inv_total
    entropy = entropy - p * jnp.log(p + EPS)
  return PixelStats(entropy=entropy, label=label, max_prob=inv_total)


def _pixel_stats_reduce_window(logits: jax.Array) -> PixelStats:
  """pixel_stats as plain reductions over the class axis, for compilers that fuse them well."""
  x = logits.astype(jnp.float32)
  top = jnp.max(x, axis=-1, keepdims=True)
  unnormalised = jnp.exp(x - top)
  inv_total = 1.0 / jnp.sum(unnormalised, axis=-1, keepdims=True)
  p = unnormalised * inv_total
  entropy = -jnp.sum(p * jnp.log(p + EPS), axis=-1)
  label = jnp.argmax(x, axis=-1).astype(jnp.int32)
  return PixelStats(entropy=entropy, label=label, max_prob=inv_total[..., 0])


def pixel_stats(logits: jax.Array, impl: str = "auto") -> PixelStats:
  """Entropy (the release's formula), pseudo label and max probability per pixel.

  impl="cpu": three passes over the classes (maximum, softmax normaliser, entropy), each a
  fused loop over strided class slices; the maps are materialised for the window code that
  reads them. impl="reduce_window": reductions over the class axis, left to the compiler.
  """
  if resolve_impl(impl) == "reduce_window":
    return _pixel_stats_reduce_window(logits)
  return materialized(_pixel_stats, logits)


def pseudo_label(logits: jax.Array, impl: str = "auto") -> jax.Array:
  """int32 [B, H, W] pseudo label (first maximum) alone: no softmax needed."""
  if resolve_impl(impl) == "reduce_window":
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return materialized(lambda x: _top_and_label(x.astype(jnp.float32))[1], logits)


def window_counts(height: int, width: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
  """In-image pixels of each window, as row and column factors: |N_k| = rows[i] * cols[j]."""
  def one_axis(n):
    i = np.arange(n)
    return (np.minimum(i + radius, n - 1) - np.maximum(i - radius, 0) + 1).astype(np.float32)
  return one_axis(height), one_axis(width)


def _direct_window_sum(x: jax.Array, radius: int, axes: tuple[int, int]) -> jax.Array:
  """Zero-padded (2r+1)^2 box sum of x over two axes from shifted slices."""
  pad = [(0, 0)] * x.ndim
  for axis in axes:
    pad[axis] = (radius, radius)
  xp = jnp.pad(x, pad)
  for axis in axes:
    n = x.shape[axis]
    xp = sum(lax.slice_in_dim(xp, d, d + n, axis=axis) for d in range(2 * radius + 1))
  return xp


def _line_window_sum(x: jax.Array, radius: int, axis: int) -> jax.Array:
  """Zero-padded window sum of width 2r+1 along `axis`, by power-of-two partial sums.

  About log2(2r+1) passes; optimization barriers keep XLA from re-fusing the partial sums
  back into a direct (2r+1)-tap sum.
  """
  n = x.shape[axis]
  length = 2 * radius + 1
  pad = [(0, 0)] * x.ndim
  pad[axis] = (radius, radius + length)
  level = jnp.pad(x, pad)  # sums of 1 element starting at each position
  span = 1
  out = None
  offset = 0
  remaining = length
  while True:
    if remaining & span:
      part = lax.slice_in_dim(level, offset, offset + n, axis=axis)
      out = part if out is None else out + part
      offset += span
      remaining -= span
    if remaining == 0:
      return out
    size = level.shape[axis] - span
    level = (lax.slice_in_dim(level, 0, size, axis=axis)
             + lax.slice_in_dim(level, span, span + size, axis=axis))
    level, out = lax.optimization_barrier((level, out))
    span *= 2


def _running_window_rows(padded: jax.Array, radius: int, row_values, emit) -> jax.Array:
  """Slides a (2r+1)^2 window down the rows of an image batch, ROWS_PER_STEP rows a step.

  `padded` comes from _pad_rows (r + 1 rows above the image, r + extra below, padding rows
  give zero values); row_values(rows [B, R, W]) -> [B, R, K, W] values. The vertical window
  sum is a running sum (rows in minus rows out: constant cost whatever r);
  emit(first_row, sums [B, R, K, W]) -> [B, R, W] reduces each row of window sums.
  Returns [B, H, W], H the unpadded height.
  """
  steps = (padded.shape[1] - 2 * radius - 1) // ROWS_PER_STEP

  def rows(start, count):
    return row_values(lax.dynamic_slice_in_dim(padded, start, count, axis=1))

  init = jnp.sum(rows(radius + 1, radius), axis=1)

  def step(vertical, first):
    delta = rows(first + 2 * radius + 1, ROWS_PER_STEP) - rows(first, ROWS_PER_STEP)
    # Materialised, and summed with a cumsum: a chain of row additions fused into its
    # consumers recomputes the earlier rows (and their one-hot codes) for every row.
    delta = lax.optimization_barrier(delta)
    sums = vertical[:, None] + jnp.cumsum(delta, axis=1)
    sums, vertical = lax.optimization_barrier((sums, sums[:, -1]))
    return vertical, emit(first, _line_window_sum(sums, radius, axis=3))

  _, out = lax.scan(step, init, jnp.arange(steps) * ROWS_PER_STEP)
  out = jnp.moveaxis(out, 0, 1)  # [B, steps, R, W]
  return out.reshape(out.shape[0], steps * ROWS_PER_STEP, out.shape[-1])


def _extra_rows(height: int) -> int:
  """Bottom padding that rounds the rows up to whole scan steps."""
  return -height % ROWS_PER_STEP


def _pad_rows(x: jax.Array, radius: int, value) -> jax.Array:
  extra = _extra_rows(x.shape[1])
  return jnp.pad(x, ((0, 0), (radius + 1, radius + extra), (0, 0)), constant_values=value)


def _impurity_from_counts(counts: jax.Array, area: jax.Array) -> jax.Array:
  """-sum_c q_c log(q_c + eps) with q = n / area, in nats, from counts [B, R, C, W].

  The terms n log(n + eps A) are one elementwise pass over all classes, materialised, then
  summed over the class slices (7% faster than a chain of per-class logs).
  """
  terms = counts * jnp.log(counts + EPS * area[:, None])
  terms = lax.optimization_barrier(terms)
  acc = sum(terms[:, :, c] for c in range(counts.shape[2]))
  return jnp.log(area) - acc / area


def _direct_impurity(label: jax.Array, radius: int, area: jax.Array) -> jax.Array:
  """Impurity of small windows without per-class counts.

  sum_c n_c log(n_c + eps A) = sum over the window's pixels j of log(n_{y_j} + eps A), where
  n_{y_j} is the number of window pixels equal to y_j: pairwise comparisons per pixel instead
  of C box sums. The (2r+1)^2 factors n + eps A are multiplied before a single log (logs are
  XLA CPU's expensive part): for r <= 2 the product is at most ~25^25 ~ 1e35, inside
  float32's range, and its rounding (~6e-8 relative per factor) is below the formula's eps.
  """
  if radius > 2:
    raise ValueError(f"direct impurity is exact in float32 only for radius <= 2, got {radius}")
  _, height, width = label.shape
  side = 2 * radius + 1
  padded = jnp.pad(label, ((0, 0), (radius, radius), (radius, radius)), constant_values=-1)
  window = [padded[:, dy:dy + height, dx:dx + width] for dy in range(side) for dx in range(side)]
  same = [jnp.ones(label.shape, jnp.float32) for _ in window]
  for j in range(len(window)):
    for k in range(j + 1, len(window)):
      equal = (window[j] == window[k]).astype(jnp.float32)
      same[j] = same[j] + equal
      same[k] = same[k] + equal
  eps_area = EPS * area
  product = jnp.ones(label.shape, jnp.float32)
  for pixel, count in zip(window, same):
    product = product * jnp.where(pixel >= 0, count + eps_area, 1.0)
  return jnp.log(area) - jnp.log(product) / area


def _box_sum_reduce_window(x: jax.Array, radius: int) -> jax.Array:
  """Zero-padded (2r+1)^2 window sum over the last two axes: one reduce_window."""
  side = 2 * radius + 1
  lead = x.ndim - 2
  return lax.reduce_window(x, np.zeros((), x.dtype), lax.add, (1,) * lead + (side, side),
                           (1,) * x.ndim, ((0, 0),) * lead + ((radius, radius),) * 2)


def _line_sum_reduce_window(x: jax.Array, radius: int, axis: int) -> jax.Array:
  """Zero-padded window sum of width 2r+1 along one axis: one reduce_window."""
  window = [1] * x.ndim
  window[axis] = 2 * radius + 1
  padding = [(0, 0)] * x.ndim
  padding[axis] = (radius, radius)
  return lax.reduce_window(x, np.zeros((), x.dtype), lax.add, window, (1,) * x.ndim, padding)


def _line_sum_cumsum(x: jax.Array, radius: int, axis: int) -> jax.Array:
  """Window sum of width 2r+1 along one axis, clipped at the ends, as a difference of prefix
  sums: S[min(i + r, n - 1)] - S[i - r - 1] (0 before the start). Exact for integers."""
  n = x.shape[axis]
  prefix = jnp.cumsum(x, axis=axis)
  end_pad = [(0, 0)] * x.ndim
  end_pad[axis] = (0, radius)
  start_pad = [(0, 0)] * x.ndim
  start_pad[axis] = (radius + 1, 0)
  upper = lax.slice_in_dim(jnp.pad(prefix, end_pad, mode="edge"), radius, radius + n, axis=axis)
  lower = lax.slice_in_dim(jnp.pad(prefix, start_pad), 0, n, axis=axis)
  return upper - lower


def window_class_counts(label: jax.Array, num_classes: int, radius: int) -> jax.Array:
  """int32 [B, C, H, W]: pixels of each class in each clipped (2r+1)^2 window of [B, H, W]."""
  classes = jnp.arange(num_classes, dtype=label.dtype)[None, :, None, None]
  onehot = (label[:, None] == classes).astype(jnp.int32)
  if radius <= REDUCE_WINDOW_MAX_RADIUS:
    return _box_sum_reduce_window(onehot, radius)
  return _line_sum_cumsum(_line_sum_cumsum(onehot, radius, axis=2), radius, axis=3)


def _region_impurity_reduce_window(label: jax.Array, num_classes: int,
                                   radius: int) -> jax.Array:
  """Region impurity from window class histograms, with the CPU count path's formula and
  class order (log N - (1/N) sum_c n_c log(n_c + eps N), summed class 0 first)."""
  _, height, width = label.shape
  rows, cols = window_counts(height, width, radius)
  area = jnp.asarray(rows)[:, None] * jnp.asarray(cols)[None, :]
  counts = window_class_counts(label, num_classes, radius).astype(jnp.float32)
  eps_area = EPS * area
  acc = sum(counts[:, c] * jnp.log(counts[:, c] + eps_area) for c in range(num_classes))
  return jnp.log(area) - acc / area


def region_impurity(label: jax.Array, num_classes: int, radius: int,
                    impl: str = "auto") -> jax.Array:
  """Region impurity in nats (not normalised) of a pseudo-label map [B, H, W]."""
  if resolve_impl(impl) == "reduce_window":
    return _region_impurity_reduce_window(label, num_classes, radius)
  _, height, width = label.shape
  rows, cols = window_counts(height, width, radius)
  if radius <= DIRECT_MAX_RADIUS:
    area = jnp.asarray(rows)[:, None] * jnp.asarray(cols)[None, :]
    return _direct_impurity(label, radius, area)

  classes = jnp.arange(num_classes, dtype=label.dtype)
  rows_j = jnp.pad(jnp.asarray(rows), (0, _extra_rows(height)), constant_values=1.0)
  cols_j = jnp.asarray(cols)

  def row_values(block):
    return (block[:, :, None, :] == classes[:, None]).astype(jnp.float32)

  def emit(first, sums):
    area = lax.dynamic_slice_in_dim(rows_j, first, ROWS_PER_STEP)[:, None] * cols_j
    return _impurity_from_counts(sums, area)

  impurity = _running_window_rows(_pad_rows(label, radius, -1), radius, row_values, emit)
  return impurity[:, :height]


def _window_sum_reduce_window(x: jax.Array, radius: int) -> jax.Array:
  """Zero-padded float window sum of [B, H, W] by reduce_window: one 2-D window up to
  REDUCE_WINDOW_MAX_RADIUS, rows then columns beyond (2(2k+1) taps instead of (2k+1)^2)."""
  if radius <= REDUCE_WINDOW_MAX_RADIUS:
    return _box_sum_reduce_window(x, radius)
  return _line_sum_reduce_window(_line_sum_reduce_window(x, radius, axis=1), radius, axis=2)


def window_mean(x: jax.Array, radius: int, impl: str = "auto") -> jax.Array:
  """Mean of a [B, H, W] map over each clipped (2r+1)^2 window (in-image pixels only)."""
  _, height, width = x.shape
  if radius == 0:
    return x
  rows, cols = window_counts(height, width, radius)
  area = jnp.asarray(rows)[:, None] * jnp.asarray(cols)[None, :]
  if resolve_impl(impl) == "reduce_window":
    return _window_sum_reduce_window(x, radius) / area
  if radius <= DIRECT_MAX_RADIUS:
    return _direct_window_sum(x, radius, (1, 2)) / area
  sums = _running_window_rows(_pad_rows(x, radius, 0.0), radius,
                              lambda block: block[:, :, None],
                              lambda first, window: window[:, :, 0])
  return sums[:, :height] / area


def ripu_scores_traced(logits: jax.Array, radius: int, mode: str,
                       impl: str = "auto") -> tuple[Scores, PixelStats]:
  """ripu_scores for use inside jit: no validation, no host synchronisation."""
  impl = resolve_impl(impl)
  num_classes = logits.shape[-1]
  norm = 1.0 / math.log(num_classes)
  stats = pixel_stats(logits, impl)
  impurity = region_impurity(stats.label, num_classes, radius, impl) * norm
  if mode == "pixel":
    uncertainty = stats.entropy * norm
  else:
    uncertainty = window_mean(stats.entropy, radius, impl) * norm
  return Scores(impurity * uncertainty, impurity, uncertainty), stats


@functools.partial(jax.jit, static_argnames=("radius", "mode", "impl"))
def _ripu_scores_jit(logits, radius, mode, impl):
  scores, _ = ripu_scores_traced(logits, radius, mode, impl)
  return scores, finite_per_image(logits)


def ripu_scores(logits, *, radius: int, mode: str, image_names=None,
                impl: str = "auto") -> Scores:
  """RIPU scores of a batch of logits [B, H, W, C] (any float dtype), at their resolution.

  mode="region" (RA): uncertainty is the window mean of the pixel entropy;
  mode="pixel" (PA): uncertainty is the pixel's own entropy. Impurity always uses the
  (2 * radius + 1)^2 window. impl: "cpu", "reduce_window" (accelerators) or "auto" (the one
  for jax's default backend); see the module docstring. Raises ValueError for NaN/inf
  logits, naming the image (`image_names[i]` when given, else its batch index).
  """
  validate_logits(logits)
  radius = validate_radius(radius)
  mode = validate_mode(mode)
  impl = resolve_impl(impl)
  scores, finite = _ripu_scores_jit(jnp.asarray(logits), radius, mode, impl)
  raise_if_not_finite(finite, image_names)
  return scores
