"""LabOR's pixel selection (ICCV 2021), as plain functions: the acquirers only loop over them.

The selector's two heads C1, C2 disagree on the pixels the adaptation is unsure of:

  inconsistency(logits1, logits2, label_size) -> (mask, discrepancy)   traceable, on device
  spl_pixels(mask, discrepancy, excluded, quota) -> bool [H, W]         SPL, numpy, one image
  ppl_points(mask, probs, excluded, quota) -> int32 [N, 2]              PPL, numpy, one image
  prototype_points(flat, rows, width=..., quota=...)                    PPL on candidates only

The mask is taken at the label size (each query is one ground-truth pixel), from both heads
upsampled bilinearly with align_corners through the network's input size
(`image_ops.upsample_to_labels`), as RIPU's acquisition.
The discrepancy d = sum_c |p1 - p2| is not in the paper; it only ranks pixels when SPL runs
under a cap, so SPL can face RIPU-RA at an equal budget.

Every choice the paper leaves open is deterministic, so a round is reproducible and testable
against a brute-force oracle: ties in d go to the smallest flat index; PPL's point of class k
is the pixel of D(k) nearest (Euclidean, in float64) to the mean probability vector of D(k),
ties to the smallest flat index; when more classes qualify than the quota allows, the classes
with the most pixels in D(k) are kept (ties to the lower class id). That last rule is ours:
the paper never caps PPL below one point per class, and the largest uncertain classes are the
ones whose labels move the most pixels of the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ripu_jax import image_ops


def probabilities(logits: jax.Array, label_size: Sequence[int],
                  input_size: Sequence[int] | None = None) -> jax.Array:
  """float32 [B, H, W, C]: softmax of NHWC `logits` upsampled to `label_size` = (H, W)
  (through `input_size`, the network's input, when given: `image_ops.upsample_to_labels`)."""
  return jax.nn.softmax(image_ops.upsample_to_labels(logits, label_size, input_size), axis=-1)


def inconsistency(logits1: jax.Array, logits2: jax.Array, label_size: Sequence[int],
                  input_size: Sequence[int] | None = None) -> tuple[jax.Array, jax.Array]:
  """(mask bool [B, H, W], discrepancy float32 [B, H, W]) of two heads at the label size.

  mask: the heads' arg-max classes differ. discrepancy: sum_c |p1 - p2| (in [0, 2]).
  Raises ValueError unless both logits are NHWC of one shape.
  """
  shape1, shape2 = getattr(logits1, "shape", None), getattr(logits2, "shape", None)
  if shape1 is None or len(shape1) != 4 or shape1 != shape2:
    raise ValueError(f"the two heads' logits must be NHWC of one shape, got {shape1} and "
                     f"{shape2}")
  p1 = probabilities(logits1, label_size, input_size)
  p2 = probabilities(logits2, label_size, input_size)
  mask = jnp.argmax(p1, axis=-1) != jnp.argmax(p2, axis=-1)
  return mask, jnp.abs(p1 - p2).sum(axis=-1)


def _check_image(name: str, array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  array = np.asarray(array)
  if array.shape[:2] != shape:
    raise ValueError(f"{name} must cover the {shape[0]}x{shape[1]} label, got shape "
                     f"{array.shape}")
  return array


def _check_quota(quota, *, allow_none: bool) -> None:
  if quota is None and allow_none:
    return
  if isinstance(quota, bool) or not isinstance(quota, (int, np.integer)) or quota < 0:
    raise ValueError(f"quota must be a count >= 0{' or None' if allow_none else ''}, "
                     f"got {quota!r}")


def spl_pixels(mask: np.ndarray, discrepancy: np.ndarray, excluded: np.ndarray,
               quota: int | None) -> np.ndarray:
  """bool [H, W]: the pixels SPL labels on one image.

  The inconsistent pixels outside `excluded`; with `quota` None all of them (the paper),
  else the `quota` of them with the highest discrepancy, ties to the smallest flat index.
  """
  mask = np.asarray(mask, bool)
  if mask.ndim != 2:
    raise ValueError(f"mask must be one image's [H, W], got shape {mask.shape}")
  discrepancy = _check_image("discrepancy", discrepancy, mask.shape)
  excluded = _check_image("excluded", excluded, mask.shape).astype(bool)
  _check_quota(quota, allow_none=True)
  candidates = mask & ~excluded
  if quota is None:
    return candidates
  flat = np.flatnonzero(candidates)
  if len(flat) > quota:
    # A stable sort of -d over increasing flat indices sends ties to the smallest index.
    order = np.argsort(-discrepancy.reshape(-1)[flat], kind="stable")
    flat = flat[order[:quota]]
  chosen = np.zeros(mask.shape, bool)
  chosen.flat[flat] = True
  return chosen


def prototype_points(flat: np.ndarray, rows: np.ndarray, *, width: int,
                     quota: int) -> np.ndarray:
  """int32 [N, 2] (row, col): PPL's points from the candidate pixels alone.

  flat: increasing flat indices of the candidates (the mask minus the excluded pixels);
  rows: float [len(flat), C], their class probabilities. One point per predicted class,
  at most `quota` classes, in increasing class id (see the module docstring). Taking the
  candidates' rows only lets a caller gather them on device instead of copying the whole
  [H, W, C] map to the host.
  """
  flat = np.asarray(flat, np.int64).reshape(-1)
  rows = np.asarray(rows)
  if rows.ndim != 2 or len(rows) != len(flat):
    raise ValueError(f"rows must be [len(flat), C] = [{len(flat)}, C], got shape {rows.shape}")
  if len(flat) > 1 and not (np.diff(flat) > 0).all():
    raise ValueError("flat must hold increasing pixel indices (the tie rule reads their order)")
  _check_quota(quota, allow_none=False)
  if not len(flat) or quota == 0:
    return np.zeros((0, 2), np.int32)
  predicted = rows.argmax(axis=-1)
  sizes = np.bincount(predicted, minlength=rows.shape[1])
  classes = np.flatnonzero(sizes)
  if len(classes) > quota:
    keep = np.lexsort((classes, -sizes[classes]))[:quota]  # most pixels, then lower id
    classes = np.sort(classes[keep])
  points = []
  for k in classes:
    members = np.flatnonzero(predicted == k)
    values = rows[members].astype(np.float64)
    distance = ((values - values.mean(axis=0)) ** 2).sum(axis=-1)
    points.append(flat[members[np.argmin(distance)]])  # first minimum: smallest flat index
  points = np.asarray(points, np.int64)
  return np.stack([points // width, points % width], axis=1).astype(np.int32)


def ppl_points(mask: np.ndarray, probs: np.ndarray, excluded: np.ndarray,
               quota: int) -> np.ndarray:
  """int32 [N, 2] (row, col): the points PPL labels on one image.

  probs: float [H, W, C], the class probabilities P whose arg-max y^ splits the candidates
  (mask & ~excluded) into D(k). For each non-empty D(k), the pixel of D(k) closest to the
  mean of P over D(k); at most `quota` of them, by class id.
  """
  mask = np.asarray(mask, bool)
  if mask.ndim != 2:
    raise ValueError(f"mask must be one image's [H, W], got shape {mask.shape}")
  probs = _check_image("probs", probs, mask.shape)
  if probs.ndim != 3:
    raise ValueError(f"probs must be [H, W, C], got shape {probs.shape}")
  excluded = _check_image("excluded", excluded, mask.shape).astype(bool)
  flat = np.flatnonzero(mask & ~excluded)
  rows = probs.reshape(-1, probs.shape[-1])[flat]
  return prototype_points(flat, rows, width=mask.shape[1], quota=quota)
