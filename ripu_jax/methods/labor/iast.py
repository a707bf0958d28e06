"""IAST's instance-adaptive pseudo-label selector, which makes model B's targets y~.

Per-class thresholds theta [C] start at 0.9 and follow the images, one at a time in batch
order. For an image and a class c, let S_c be the max-probabilities of the pixels predicted
c, plus theta_c itself. Then

  t_c     = percentile(S_c, 100 * (1 - alpha * theta_c ** gamma))   (numpy's "linear")
  theta_c <- min(beta * theta_c + (1 - beta) * t_c, 0.999)

and the image's pixels whose max-probability is below theta of their predicted class (the
thresholds just updated with this image) become 255 (ignored); the others keep the
prediction. A class no pixel predicts has S_c = {theta_c}, so it keeps its threshold (up to
the clip). Appending theta_c keeps t_c defined and pulls it towards the running value for
classes with few pixels. Human labels, where given, overwrite the result; they do not move
theta, which follows model A's own predictions.

The percentiles come from one sort per image, not one per class: sorting the pixels by
(class, max-probability) lays each class's values out as one sorted run, so the k-th
smallest of S_c is read from the run's start, with theta_c slotted in at its rank (the
number of the class's values below it). The sort does not depend on theta, so all images
are sorted at once; only the O(pixels) rank count and the O(C) update run in a `lax.scan`
over the batch carrying theta. Everything is traceable; math is float32.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from ripu_jax.data.labels import IGNORE_LABEL

INITIAL_THRESHOLD = 0.9
MAX_THRESHOLD = 0.999
ALPHA = 0.2
BETA = 0.9
GAMMA = 8.0


def initial_thresholds(num_classes: int, value: float = INITIAL_THRESHOLD) -> jax.Array:
  """theta before any image: `value` for every class, float32 [num_classes]."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) \
      or num_classes < 1:
    raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
  if not 0.0 <= float(value) <= MAX_THRESHOLD:
    raise ValueError(f"value must be in [0, {MAX_THRESHOLD}], got {value!r}")
  return jnp.asarray(np.full((int(num_classes),), value, np.float32))


def _check_fraction(name: str, value: float) -> None:
  if isinstance(value, numbers.Real) and not 0.0 <= float(value) <= 1.0:
    raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def _sorted_runs(max_probs: jax.Array, preds: jax.Array, num_classes: int):
  """Each image's max-probabilities sorted by (class, value), with the runs' starts and sizes.

  Args:
    max_probs: [B, N] float32 max-probabilities.
    preds: [B, N] int32 predicted classes.

  Returns:
    (values [B, N], starts [B, C], counts [B, C]): class c's values of image b, ascending,
    are values[b, starts[b, c]:starts[b, c] + counts[b, c]].
  """
  _, values = jax.lax.sort((preds, max_probs), dimension=1, num_keys=2)
  one_hot = preds[..., None] == jnp.arange(num_classes, dtype=jnp.int32)
  counts = jnp.sum(one_hot, axis=1, dtype=jnp.int32)
  return values, jnp.cumsum(counts, axis=1) - counts, counts


def _class_percentiles(
    values: jax.Array, starts: jax.Array, counts: jax.Array, below: jax.Array,
    thresholds: jax.Array, alpha: jax.Array, gamma: jax.Array,
) -> jax.Array:
  """t [C]: per class, numpy's linear percentile of the class's run with theta_c inserted.

  Args:
    values, starts, counts: one image's sorted runs (see `_sorted_runs`): [N], [C], [C].
    below: [C] how many of class c's values lie strictly below theta_c (theta_c's rank).
    thresholds: [C] current theta.
  """
  num_pixels = values.shape[0]
  # Position (n - 1) * q / 100 in the sorted set S_c of n = counts + 1 elements.
  size = counts.astype(jnp.float32)
  position = jnp.clip(size * (1.0 - alpha * thresholds**gamma), 0.0, size)
  lower = jnp.floor(position).astype(jnp.int32)
  upper = jnp.minimum(lower + 1, counts)
  weight = position - lower.astype(jnp.float32)

  def order_statistic(k: jax.Array) -> jax.Array:
    """The k-th smallest element (0-based) of S_c, per class."""
    run_index = jnp.where(k < below, k, k - 1)
    value = values[jnp.clip(starts + run_index, 0, num_pixels - 1)]
    return jnp.where(k == below, thresholds, value)

  low, high = order_statistic(lower), order_statistic(upper)
  return low + weight * (high - low)


def pseudo_labels(
    probs: jax.Array,
    thresholds: jax.Array,
    human_labels: jax.Array | None = None,
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
) -> tuple[jax.Array, jax.Array]:
  """IAST pseudo-labels for a batch, updating theta image by image.

  Args:
    probs: [B, H, W, C] class probabilities (softmax of model A).
    thresholds: [C] theta before this batch (see `initial_thresholds`).
    human_labels: optional [B, H, W] integer labels, 255 where a pixel has none; they
      overwrite the pseudo-labels.
    alpha, beta, gamma: IAST's percentile scale, momentum and threshold exponent.

  Returns:
    (labels, new_thresholds): int32 [B, H, W] with 255 for ignored pixels, and float32 [C]
    theta after the batch's last image.
  """
  probs, thresholds = jnp.asarray(probs), jnp.asarray(thresholds)
  if probs.ndim != 4:
    raise ValueError(f"expected NHWC probabilities of rank 4, got shape {probs.shape}")
  batch, height, width, num_classes = probs.shape
  if thresholds.shape != (num_classes,):
    raise ValueError(
        f"thresholds must be [C] = ({num_classes},) to match the probabilities, "
        f"got {thresholds.shape}")
  if human_labels is not None:
    human_labels = jnp.asarray(human_labels)
    if human_labels.shape != (batch, height, width):
      raise ValueError(
          f"human_labels must be [B, H, W] = {(batch, height, width)}, got {human_labels.shape}")
    if not jnp.issubdtype(human_labels.dtype, jnp.integer):
      raise ValueError(f"human_labels must be integers, got {human_labels.dtype}")
  _check_fraction("alpha", alpha)
  _check_fraction("beta", beta)
  if isinstance(gamma, numbers.Real) and not float(gamma) >= 0.0:
    raise ValueError(f"gamma must be >= 0, got {gamma!r}")

  probs = probs.astype(jnp.float32).reshape(batch, height * width, num_classes)
  max_probs = jnp.max(probs, axis=-1)
  preds = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  alpha = jnp.asarray(alpha, jnp.float32)
  beta = jnp.asarray(beta, jnp.float32)
  gamma = jnp.asarray(gamma, jnp.float32)

  # The sort does not depend on theta, so every image is sorted at once, outside the scan.
  values, starts, counts = _sorted_runs(max_probs, preds, num_classes)

  def step(theta, image):
    image_values, image_starts, image_counts, image_max, image_pred = image
    below = jnp.zeros((num_classes,), jnp.int32).at[image_pred].add(
        (image_max < theta[image_pred]).astype(jnp.int32))
    percentiles = _class_percentiles(
        image_values, image_starts, image_counts, below, theta, alpha, gamma)
    # beta * theta + (1 - beta) * t, written so that t == theta leaves theta exactly.
    theta = jnp.minimum(theta + (1.0 - beta) * (percentiles - theta), MAX_THRESHOLD)
    return theta, theta

  new_thresholds, per_image = jax.lax.scan(
      step, thresholds.astype(jnp.float32), (values, starts, counts, max_probs, preds))
  # Each image is labelled with the thresholds updated by that image.
  pixel_thresholds = jnp.take_along_axis(per_image, preds, axis=1)
  labels = jnp.where(max_probs < pixel_thresholds, IGNORE_LABEL, preds)
  labels = labels.reshape(batch, height, width).astype(jnp.int32)
  if human_labels is not None:
    human_labels = human_labels.astype(jnp.int32)
    labels = jnp.where(human_labels != IGNORE_LABEL, human_labels, labels)
  return labels, new_thresholds
