"""Tests for ripu_jax.losses against plain-numpy oracles written from the formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ripu_jax import losses


def _softmax(logits: np.ndarray) -> np.ndarray:
  z = logits.astype(np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def oracle_cross_entropy(logits, labels, ignore_index=255):
  probs = _softmax(logits)
  total, count = 0.0, 0
  for b, i, j in np.ndindex(labels.shape):
    label = labels[b, i, j]
    if label == ignore_index or not 0 <= label < logits.shape[-1]:
      continue
    total -= np.log(probs[b, i, j, label])
    count += 1
  return total / count if count else 0.0


def oracle_local_consistency(logits, labels, ignore_index=255):
  probs = _softmax(logits)
  batch, height, width, _ = probs.shape
  total, count = 0.0, 0
  for b, i, j in np.ndindex(batch, height, width):
    # 8-neighbour Laplacian of the raw label values, zero outside the image.
    neighbours = 0
    window = np.zeros_like(probs[b, i, j])
    for di in (-1, 0, 1):
      for dj in (-1, 0, 1):
        ii, jj = i + di, j + dj
        if (di, dj) != (0, 0) and 0 <= ii < height and 0 <= jj < width:
          neighbours += int(labels[b, ii, jj])
        # Replicate padding for the mean of the softmax.
        window += probs[b, min(max(ii, 0), height - 1), min(max(jj, 0), width - 1)]
    laplacian = 8 * int(labels[b, i, j]) - neighbours
    if laplacian == 0 or labels[b, i, j] == ignore_index:
      continue
    total += np.abs(probs[b, i, j] - window / 9.0).sum()
    count += 1
  return total / count if count else 0.0


def oracle_negative_learning(logits, threshold=0.05):
  probs = _softmax(logits)
  mask = probs < threshold
  if not mask.any():
    return 0.0
  return -np.log(1.0 - probs[mask] + 1e-6).sum() / mask.sum()


def _random_case(seed, shape=(2, 6, 7), num_classes=5, ignore_fraction=0.2, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.standard_normal(shape + (num_classes,))).astype(np.float32)
  labels = rng.integers(0, num_classes, shape)
  labels[rng.random(shape) < ignore_fraction] = 255
  return logits, labels.astype(np.int32)


def _blocky_labels(seed, shape=(2, 9, 11), num_classes=4):
  """Piecewise-constant labels (real label maps): edges only along region borders."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, num_classes, (shape[0], 3, 3))
  labels = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)[:, :shape[1], :shape[2]]
  labels[:, 0, :2] = 255
  return labels.astype(np.int32)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), ignore_fraction=st.sampled_from([0.0, 0.3, 0.9]))
def test_cross_entropy_matches_oracle(seed, ignore_fraction):
  logits, labels = _random_case(seed, ignore_fraction=ignore_fraction)
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, oracle_cross_entropy(logits, labels), rtol=1e-5, atol=1e-6)


def test_cross_entropy_no_valid_pixel_is_zero_with_finite_gradient():
  logits = jnp.ones((1, 4, 4, 3))
  labels = jnp.full((1, 4, 4), 255, jnp.int32)
  value, grad = jax.value_and_grad(losses.cross_entropy)(logits, labels)
  assert float(value) == 0.0
  assert bool(jnp.all(grad == 0.0))


def test_cross_entropy_out_of_range_labels_are_ignored():
  logits, labels = _random_case(1, ignore_fraction=0.0)
  bad = labels.copy()
  bad[0, 0, 0] = 7
  bad[1, 2, 3] = -1
  expected = oracle_cross_entropy(logits, bad)
  np.testing.assert_allclose(
      losses.cross_entropy(jnp.asarray(logits), jnp.asarray(bad)), expected, rtol=1e-5)


def test_cross_entropy_custom_ignore_index_and_uint8_labels():
  logits, labels = _random_case(2)
  labels[labels == 255] = 3
  expected = oracle_cross_entropy(logits, labels, ignore_index=3)
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels.astype(np.uint8)), 3)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_local_consistency_matches_oracle(seed):
  logits, _ = _random_case(seed, shape=(2, 9, 11), num_classes=4)
  labels = _blocky_labels(seed)
  got = losses.local_consistency(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, oracle_local_consistency(logits, labels), rtol=1e-5)


def test_local_consistency_random_labels_and_laplacian_cancellation():
  logits, labels = _random_case(5, shape=(1, 5, 6), num_classes=6)
  # Neighbours that differ but sum to 8x the centre make a zero Laplacian: not an edge.
  labels[0, 1:4, 1:4] = np.array([[1, 3, 1], [3, 2, 3], [1, 3, 1]])
  got = losses.local_consistency(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, oracle_local_consistency(logits, labels), rtol=1e-5)
  assert not bool(losses.label_edges(jnp.asarray(labels))[0, 2, 2])


def test_local_consistency_without_edges_is_zero():
  logits = jax.random.normal(jax.random.key(0), (1, 5, 5, 3))
  labels = jnp.zeros((1, 5, 5), jnp.int32)  # class 0 everywhere: Laplacian 0 even at borders
  assert float(losses.local_consistency(logits, labels)) == 0.0
  all_ignored = jnp.full((1, 5, 5), 255, jnp.int32)
  assert float(losses.local_consistency(logits, all_ignored)) == 0.0


@pytest.mark.parametrize("seed,threshold", [(0, 0.05), (1, 0.05), (2, 0.2)])
def test_negative_learning_matches_oracle(seed, threshold):
  logits, _ = _random_case(seed, num_classes=8)
  got = losses.negative_learning(jnp.asarray(logits), threshold)
  np.testing.assert_allclose(got, oracle_negative_learning(logits, threshold), rtol=1e-5)


def test_negative_learning_mask_carries_no_gradient():
  logits = jnp.asarray(_random_case(3, num_classes=8)[0])
  probs = jax.nn.softmax(logits)
  mask = probs < 0.05  # a constant

  def fixed_mask_loss(z):
    p = jax.nn.softmax(z)
    return -jnp.sum(jnp.where(mask, jnp.log(1.0 - p + 1e-6), 0.0)) / jnp.sum(mask)

  np.testing.assert_allclose(
      jax.grad(losses.negative_learning)(logits), jax.grad(fixed_mask_loss)(logits),
      rtol=1e-5, atol=1e-7)


def test_negative_learning_empty_mask_is_zero():
  logits = jnp.zeros((1, 2, 2, 4))  # p = 0.25 everywhere, nothing below 0.05
  assert float(losses.negative_learning(logits)) == 0.0


def test_ripu_objective_combines_terms():
  source_logits, _ = _random_case(10, shape=(2, 9, 11), num_classes=4)
  source_labels = _blocky_labels(10)
  target_logits, target_labels = _random_case(11, shape=(2, 9, 11), num_classes=4,
                                              ignore_fraction=0.95)
  total, terms = losses.ripu_objective(
      jnp.asarray(source_logits), jnp.asarray(source_labels),
      jnp.asarray(target_logits), jnp.asarray(target_labels),
      consistency_weight=0.3, negative_weight=2.0)
  expected_terms = {
      "source_ce": oracle_cross_entropy(source_logits, source_labels),
      "target_ce": oracle_cross_entropy(target_logits, target_labels),
      "local_consistency": oracle_local_consistency(source_logits, source_labels),
      "negative_learning": oracle_negative_learning(target_logits),
  }
  for name, value in expected_terms.items():
    np.testing.assert_allclose(terms[name], value, rtol=1e-5, err_msg=name)
  expected_total = (expected_terms["source_ce"] + expected_terms["target_ce"]
                    + 0.3 * expected_terms["local_consistency"]
                    + 2.0 * expected_terms["negative_learning"])
  np.testing.assert_allclose(total, expected_total, rtol=1e-5)
  np.testing.assert_allclose(terms["total"], total)


def test_ripu_objective_default_weights_and_unlabelled_target():
  source_logits, source_labels = _random_case(12)
  target_logits, _ = _random_case(13)
  no_labels = np.full(source_labels.shape, 255, np.int32)
  total, terms = losses.ripu_objective(
      jnp.asarray(source_logits), jnp.asarray(source_labels),
      jnp.asarray(target_logits), jnp.asarray(no_labels))
  assert float(terms["target_ce"]) == 0.0
  expected = terms["source_ce"] + 0.1 * terms["local_consistency"] + terms["negative_learning"]
  np.testing.assert_allclose(total, expected, rtol=1e-6)


def test_source_free_objective():
  target_logits, target_labels = _random_case(14, ignore_fraction=0.8)
  total, terms = losses.source_free_objective(
      jnp.asarray(target_logits), jnp.asarray(target_labels), negative_weight=0.5)
  assert set(terms) == {"target_ce", "negative_learning", "total"}
  expected = (oracle_cross_entropy(target_logits, target_labels)
              + 0.5 * oracle_negative_learning(target_logits))
  np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_bad_shapes_raise_value_errors():
  logits = jnp.zeros((1, 4, 4, 3))
  with pytest.raises(ValueError, match="labels must be"):
    losses.cross_entropy(logits, jnp.zeros((1, 4, 5), jnp.int32))
  with pytest.raises(ValueError, match="integers"):
    losses.local_consistency(logits, jnp.zeros((1, 4, 4), jnp.float32))
  with pytest.raises(ValueError, match="rank 4"):
    losses.negative_learning(jnp.zeros((4, 4, 3)))
