"""RIPU's training objective.

All functions take NHWC logits already at label resolution (see
`ripu_jax.image_ops.upsample_logits`) and integer labels [B, H, W]; they compute in float32.
Every average over an empty set is 0 rather than NaN, so a batch without any labelled
target pixel simply contributes nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ripu_jax.data.labels import IGNORE_LABEL

IGNORE_INDEX = IGNORE_LABEL  # labels carrying no supervision


def _check_shapes(logits: jax.Array, labels: jax.Array | None = None) -> None:
  if logits.ndim != 4:
    raise ValueError(f"expected NHWC logits of rank 4, got shape {logits.shape}")
  if labels is None:
    return
  if labels.shape != logits.shape[:3]:
    raise ValueError(
        f"labels must be [B, H, W] = {logits.shape[:3]} to match the logits, got {labels.shape}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got {labels.dtype}")


def safe_mean(total: jax.Array, count: jax.Array) -> jax.Array:
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def label_log_likelihood(
    logits: jax.Array, labels: jax.Array,
    ignore_index: int = IGNORE_INDEX) -> tuple[jax.Array, jax.Array]:
  """(log softmax probability of each pixel's label, 0 where invalid; valid) [B, H, W].

  Labels equal to `ignore_index`, or outside [0, num_classes), are invalid.
  """
  _check_shapes(logits, labels)
  num_classes = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
  one_hot = jax.nn.one_hot(jnp.where(valid, labels, 0), num_classes, dtype=jnp.float32)
  picked = jnp.sum(log_probs * one_hot, axis=-1)
  return jnp.where(valid, picked, 0.0), valid


def cross_entropy(
    logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """Softmax cross-entropy averaged over valid pixels (0 when there are none).

  Labels equal to `ignore_index`, or outside [0, num_classes), count as ignored.
  """
  picked, valid = label_log_likelihood(logits, labels, ignore_index)
  return safe_mean(-jnp.sum(picked), jnp.sum(valid))


def _box3x3_mean_replicate(x: jax.Array) -> jax.Array:
  """3x3 mean of NHWC `x` with edge replication, as separable shifted sums."""
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
  return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]) / 9.0


def label_edges(labels: jax.Array, ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """Boolean [B, H, W]: 8-neighbour Laplacian of the label map != 0, label != ignore.

  The Laplacian (8 * centre - sum of the 8 neighbours) uses zero padding, so labelled
  pixels on the image border count as edges, as in the release. Integer arithmetic keeps
  it exact.
  """
  values = labels.astype(jnp.int32)
  padded = jnp.pad(values, ((0, 0), (1, 1), (1, 1)))
  rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
  box = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]
  laplacian = 9 * values - box
  return (laplacian != 0) & (labels != ignore_index)


def local_consistency(
    logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """L_cr: L1 distance between softmax and its 3x3 mean, averaged over label edges."""
  _check_shapes(logits, labels)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  distance = jnp.sum(jnp.abs(probs - _box3x3_mean_replicate(probs)), axis=-1)
  edges = label_edges(labels, ignore_index)
  return safe_mean(jnp.sum(jnp.where(edges, distance, 0.0)), jnp.sum(edges))


def negative_learning(logits: jax.Array, threshold: float = 0.05) -> jax.Array:
  """L_nl: pushes classes with probability below `threshold` further down.

  -sum(mask * log(1 - p + 1e-6)) / sum(mask) over all pixels and classes, where the mask
  (p < threshold) carries no gradient.
  """
  _check_shapes(logits)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  mask = jax.lax.stop_gradient(probs < threshold)
  total = -jnp.sum(jnp.where(mask, jnp.log(1.0 - probs + 1e-6), 0.0))
  return safe_mean(total, jnp.sum(mask))


def ripu_objective(
    source_logits: jax.Array,
    source_labels: jax.Array,
    target_logits: jax.Array,
    target_labels: jax.Array,
    *,
    consistency_weight: float = 0.1,
    negative_weight: float = 1.0,
    negative_threshold: float = 0.05,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CE(source) + CE(target, active labels) + w_cr * L_cr(source) + w_nl * L_nl(target).

  Returns:
    (total, terms): terms maps "source_ce", "target_ce", "local_consistency",
    "negative_learning" and "total" to scalars (unweighted terms), for logging.
  """
  terms = {
      "source_ce": cross_entropy(source_logits, source_labels, ignore_index),
      "target_ce": cross_entropy(target_logits, target_labels, ignore_index),
      "local_consistency": local_consistency(source_logits, source_labels, ignore_index),
      "negative_learning": negative_learning(target_logits, negative_threshold),
  }
  total = (terms["source_ce"] + terms["target_ce"]
           + consistency_weight * terms["local_consistency"]
           + negative_weight * terms["negative_learning"])
  terms["total"] = total
  return total, terms


def source_free_objective(
    target_logits: jax.Array,
    target_labels: jax.Array,
    *,
    negative_weight: float = 1.0,
    negative_threshold: float = 0.05,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Source-free variant: CE(target, active labels) + w_nl * L_nl(target).

  Returns:
    (total, terms) with "target_ce", "negative_learning" and "total".
  """
  terms = {
      "target_ce": cross_entropy(target_logits, target_labels, ignore_index),
      "negative_learning": negative_learning(target_logits, negative_threshold),
  }
  total = terms["target_ce"] + negative_weight * terms["negative_learning"]
  terms["total"] = total
  return total, terms


def source_only_objective(
    source_logits: jax.Array,
    source_labels: jax.Array,
    *,
    consistency_weight: float = 0.1,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Source-only baseline: CE(source) + w_cr * L_cr(source) (w_cr = 0: plain CE).

  Returns:
    (total, terms) with "source_ce", "local_consistency" and "total".
  """
  terms = {
      "source_ce": cross_entropy(source_logits, source_labels, ignore_index),
      "local_consistency": local_consistency(source_logits, source_labels, ignore_index),
  }
  total = terms["source_ce"] + consistency_weight * terms["local_consistency"]
  terms["total"] = total
  return total, terms
