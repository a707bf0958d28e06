"""Label ledger and evaluation metrics against plain-numpy oracles."""

import numpy as np
import pytest

from ripu_jax import evaluation
from ripu_jax.ledger import LabelLedger, square_union


def _naive_squares(shape, points, radius):
  mask = np.zeros(shape, bool)
  for row, col in points:
    mask[max(row - radius, 0):row + radius + 1, max(col - radius, 0):col + radius + 1] = True
  return mask


@pytest.mark.parametrize("radius", [0, 1, 2, 5])
def test_square_union_matches_loops(radius):
  rng = np.random.default_rng(radius)
  points = np.stack([rng.integers(0, 13, 20), rng.integers(0, 17, 20)], axis=1)
  np.testing.assert_array_equal(square_union((13, 17), points, radius),
                                _naive_squares((13, 17), points, radius))


def test_ledger_masks_fraction_and_state_round_trip():
  ledger = LabelLedger([(10, 12), (10, 12), (6, 6)], label_radius=1, suppress_radius=2)
  ledger.record(1, 0, [[0, 0], [5, 5], [-1, -1]])  # -1 rows (no candidate left) are dropped
  ledger.record(1, 2, [[5, 5]])
  ledger.record(2, 0, [[9, 11]])
  ledger.record(1, 1, np.zeros((0, 2)))  # a round may pick nothing; it still counts as done
  expected = _naive_squares((10, 12), [(0, 0), (5, 5), (9, 11)], 1)
  np.testing.assert_array_equal(ledger.labeled_mask(0), expected)
  np.testing.assert_array_equal(ledger.excluded_mask(0),
                                _naive_squares((10, 12), [(0, 0), (5, 5), (9, 11)], 2))
  masks = ledger.labeled_masks
  assert len(masks) == 3 and not masks[1].any()
  labelled = sum(ledger.labeled_mask(i).sum() for i in range(3))
  assert ledger.labeled_pixels() == labelled == 4 + 9 + 4 + 4
  assert ledger.labeled_fraction() == pytest.approx(labelled / (120 + 120 + 36))
  assert ledger.rounds_recorded == (1, 2)
  restored = LabelLedger.from_state(ledger.state())
  assert restored == ledger
  assert restored.rounds_of(1) == (1,)
  np.testing.assert_array_equal(restored.image_picks(0), [[0, 0], [5, 5], [9, 11]])


def test_ledger_refuses_spending_twice():
  ledger = LabelLedger([(10, 10)], label_radius=1, suppress_radius=2)
  ledger.record(1, 0, [[4, 4]])
  with pytest.raises(ValueError, match="already recorded"):
    ledger.record(1, 0, [[8, 8]])
  with pytest.raises(ValueError, match="excluded"):
    ledger.record(2, 0, [[6, 6]])  # inside the suppression square of (4, 4)
  with pytest.raises(ValueError, match="outside"):
    ledger.record(2, 0, [[10, 0]])
  with pytest.raises(ValueError, match="different from|differ"):
    ledger.check_matches([(10, 11)])


def test_confusion_matrix_and_iou_match_numpy():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, (3, 8, 9))
  labels[0, :2] = 255
  predictions = rng.integers(0, 5, (3, 8, 9))
  weights = np.ones_like(labels, bool)
  weights[2] = False  # a padded example
  confusion = np.asarray(evaluation.confusion_matrix(labels, predictions, 5, weights))
  keep = (labels < 5) & weights
  expected = np.bincount(labels[keep] * 5 + predictions[keep], minlength=25).reshape(5, 5)
  np.testing.assert_array_equal(confusion, expected)
  iou = evaluation.class_iou(expected)
  for c in range(5):
    tp = np.sum((labels == c) & (predictions == c) & keep)
    union = np.sum(((labels == c) | (predictions == c)) & keep)
    assert iou[c] == pytest.approx(tp / union)
  assert evaluation.mean_iou(iou, [0, 2]) == pytest.approx((iou[0] + iou[2]) / 2)


def test_summary_skips_absent_classes_and_reports_subsets():
  confusion = np.zeros((19, 19), np.int64)
  confusion[0, 0], confusion[1, 1], confusion[1, 0] = 30, 10, 10
  summary = evaluation.summarize(confusion, {"miou": (0, 1, 2), "miou_13": (0,)})
  assert summary["iou"]["road"] == pytest.approx(75.0)
  assert summary["iou"]["sidewalk"] == pytest.approx(50.0)
  assert summary["iou"]["building"] is None  # neither labelled nor predicted
  assert summary["miou"] == pytest.approx(62.5)
  assert summary["miou_13"] == pytest.approx(75.0)


def test_flip_averaging_is_flip_equivariant():
  import jax.numpy as jnp
  from flax import nnx
  from ripu_jax import models
  model = models.DeepLabV2(4, blocks=(1, 1, 1, 1), width_multiplier=0.125, rngs=nnx.Rngs(0))
  images = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 48, 3)), jnp.float32)
  plain = evaluation.predict_probabilities(model, images, (32, 48), flip=False)
  flipped_input = evaluation.predict_probabilities(model, images[:, :, ::-1], (32, 48),
                                                   flip=True)
  averaged = evaluation.predict_probabilities(model, images, (32, 48), flip=True)
  np.testing.assert_allclose(averaged, flipped_input[:, :, ::-1], atol=1e-6)
  np.testing.assert_allclose(averaged.sum(-1), 1.0, atol=1e-5)
  assert not np.allclose(plain, averaged)


def test_ledger_masks_and_frames_labels_exclusion_and_round_trip():
  ledger = LabelLedger([(8, 10), (8, 10), (8, 10)], label_radius=1, suppress_radius=2)
  segment = np.zeros((8, 10), bool)
  segment[2:4, 3:7] = True
  ledger.record_mask(1, 0, segment)
  ledger.record_frame(1, 1)
  ledger.record(2, 0, [[7, 0]])
  expected = segment | _naive_squares((8, 10), [(7, 0)], 1)
  np.testing.assert_array_equal(ledger.labeled_mask(0), expected)
  assert ledger.labeled_mask(1).all() and not ledger.labeled_mask(2).any()
  # A mask excludes its pixels grown by label_radius: no later square can reach them.
  rows, cols = np.nonzero(segment)
  grown = _naive_squares((8, 10), list(zip(rows, cols)), 1)
  np.testing.assert_array_equal(ledger.excluded_mask(0),
                                grown | _naive_squares((8, 10), [(7, 0)], 2))
  assert ledger.labeled_pixels() == expected.sum() + 80
  assert ledger.labeled_fraction() == pytest.approx((expected.sum() + 80) / 240)
  assert ledger.rounds_of(0) == (1, 2) and ledger.rounds_recorded == (1, 2)
  restored = LabelLedger.from_state(ledger.state())
  assert restored == ledger
  np.testing.assert_array_equal(restored.labeled_mask(0), expected)
  assert restored.labeled_mask(1).all()


def test_ledger_masks_and_frames_refuse_spending_twice():
  ledger = LabelLedger([(8, 10), (8, 10)], label_radius=1, suppress_radius=2)
  ledger.record(1, 0, [[4, 4]])
  overlapping = np.zeros((8, 10), bool)
  overlapping[5, 5] = True  # inside the labelled square of (4, 4)
  with pytest.raises(ValueError, match="spent twice"):
    ledger.record_mask(2, 0, overlapping)
  with pytest.raises(ValueError, match="already recorded"):
    ledger.record_mask(1, 0, np.zeros((8, 10), bool))
  with pytest.raises(ValueError, match="must be bool"):
    ledger.record_mask(2, 0, np.zeros((8, 9), bool))
  with pytest.raises(ValueError, match="already has labels"):
    ledger.record_frame(2, 0)
  ledger.record_frame(1, 1)
  with pytest.raises(ValueError, match="excluded"):
    ledger.record(2, 1, [[0, 0]])
  with pytest.raises(ValueError, match="spent twice"):
    ledger.record_mask(2, 1, overlapping)


def test_ledger_state_without_masks_still_restores():
  """Ledgers saved before masks and frames existed (no such keys) keep their picks."""
  ledger = LabelLedger([(10, 12)], label_radius=1, suppress_radius=2)
  ledger.record(1, 0, [[3, 3]])
  old = {k: v for k, v in ledger.state().items() if k in ("picks", "records", "label_shapes")}
  assert LabelLedger.from_state(old) == ledger
