"""Segmentation evaluation: a confusion matrix summed over devices, then IoU per class.

Logits are upsampled to the label's full size before the arg-max (optionally averaged with
the prediction on the horizontally flipped image), so scores are comparable with the
published ones. Padded examples (valid=False) and ignore pixels (255) do not count. mIoU is
the mean IoU over a class subset: SYNTHIA reports 16 classes (mIoU) and 13 (mIoU*).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ripu_jax.data import labels as labels_lib
from ripu_jax.image_ops import upsample_to_labels


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     weights: jax.Array | None = None) -> jax.Array:
  """[C, C] int32 counts, rows = ground truth, columns = prediction; labels >= C ignored."""
  labels = labels.astype(jnp.int32)
  valid = (labels >= 0) & (labels < num_classes)
  if weights is not None:
    valid &= weights.astype(bool)
  flat = jnp.where(valid, labels * num_classes + predictions.astype(jnp.int32), 0)
  counts = jnp.bincount(flat.reshape(-1), weights=valid.reshape(-1).astype(jnp.int32),
                        length=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def class_iou(confusion: np.ndarray) -> np.ndarray:
  """IoU per class from a confusion matrix; NaN where a class never occurs nor is predicted."""
  confusion = np.asarray(confusion, np.float64)
  intersection = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - intersection
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(union > 0, intersection / union, np.nan)


def mean_iou(iou: np.ndarray, classes: Sequence[int]) -> float:
  """Mean IoU over `classes` (classes absent from both labels and predictions are skipped)."""
  values = np.asarray(iou)[list(classes)]
  values = values[~np.isnan(values)]
  return float(values.mean()) if values.size else float("nan")


def predict_probabilities(model: nnx.Module, images: jax.Array, label_size: Sequence[int],
                          flip: bool) -> jax.Array:
  """Softmax at label size; with `flip`, averaged with the flipped image's (flipped back)."""
  probabilities = jax.nn.softmax(upsample_to_labels(model(images), label_size), axis=-1)
  if flip:
    flipped = jax.nn.softmax(upsample_to_labels(model(images[:, :, ::-1]), label_size), axis=-1)
    probabilities = 0.5 * (probabilities + flipped[:, :, ::-1])
  return probabilities


def make_eval_step(num_classes: int, *, flip: bool = False):
  """`step(model, batch) -> [C, C] confusion` for a batch {"image", "label", "valid"}.

  Jitted; under a data-sharded batch the sum over the batch is the sum over devices.
  """

  @nnx.jit
  def step(model: nnx.Module, images: jax.Array, labels: jax.Array, valid: jax.Array):
    probabilities = predict_probabilities(model, images, labels.shape[1:3], flip)
    predictions = jnp.argmax(probabilities, axis=-1)
    weights = jnp.broadcast_to(valid[:, None, None], labels.shape)
    return confusion_matrix(labels, predictions, num_classes, weights)

  return step


def summarize(confusion: np.ndarray, class_sets: Mapping[str, Sequence[int]],
              class_names: Sequence[str] = labels_lib.CLASS_NAMES) -> dict:
  """{"miou": ..., other class sets' means, "iou": {class name: IoU}} (IoU in percent).

  class_names: the label space's names, one per class index (Cityscapes' 19 by default).
  """
  iou = class_iou(confusion) * 100.0
  result = {name: mean_iou(iou, classes) for name, classes in class_sets.items()}
  reported = sorted({c for classes in class_sets.values() for c in classes})
  result["iou"] = {class_names[c]: (None if np.isnan(iou[c]) else float(iou[c]))
                   for c in reported}
  return result

