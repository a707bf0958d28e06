"""RIPU scores, baselines, budgets and upsampling against the numpy oracles."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ripu_jax import acquisition
from ripu_jax.acquisition import scores as scores_lib
import acquisition_oracles as oracle


def smooth_logits(rng, batch, height, width, classes, scale=3.0):
  """Spatially coherent logits (blocky regions, like a segmentation net's) plus noise."""
  coarse = rng.normal(size=(batch, height // 3 + 1, width // 3 + 1, classes)) * scale
  logits = np.repeat(np.repeat(coarse, 3, axis=1), 3, axis=2)[:, :height, :width]
  return (logits + rng.normal(size=logits.shape) * 0.5).astype(np.float32)


# Radii on both sides of the direct/running-sum switch, odd sizes, windows larger than the image.
@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5, 12])
@pytest.mark.parametrize("mode", ["region", "pixel"])
def test_ripu_scores_match_oracle(radius, mode):
  rng = np.random.default_rng(radius)
  logits = smooth_logits(rng, 2, 13, 21, 19)
  got = acquisition.ripu_scores(logits, radius=radius, mode=mode)
  for b in range(2):
    score, impurity, uncertainty = oracle.ripu(logits[b], radius, mode)
    np.testing.assert_allclose(got.impurity[b], impurity, atol=1e-5)
    np.testing.assert_allclose(got.uncertainty[b], uncertainty, atol=1e-5)
    np.testing.assert_allclose(got.score[b], score, atol=1e-5)
  assert all(x.dtype == jnp.float32 and x.shape == (2, 13, 21) for x in got)


def test_scan_path_handles_heights_not_multiple_of_step():
  rng = np.random.default_rng(7)
  radius = scores_lib.DIRECT_MAX_RADIUS + 2
  for height in (1, 5, scores_lib.ROWS_PER_STEP + 3):
    logits = smooth_logits(rng, 1, height, 11, 4)
    got = acquisition.ripu_scores(logits, radius=radius, mode="region")
    score, _, _ = oracle.ripu(logits[0], radius, "region")
    np.testing.assert_allclose(got.score[0], score, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_logits(dtype):
  rng = np.random.default_rng(1)
  logits = jnp.asarray(smooth_logits(rng, 1, 9, 10, 6), dtype)
  got = acquisition.ripu_scores(logits, radius=1, mode="region")
  score, _, _ = oracle.ripu(np.asarray(logits.astype(jnp.float32))[0], 1, "region")
  np.testing.assert_allclose(got.score[0], score, atol=1e-5)


def test_uniform_prediction_scores_zero_impurity():
  logits = np.zeros((1, 6, 7, 5), np.float32)
  logits[..., 2] = 4.0
  got = acquisition.ripu_scores(logits, radius=1, mode="region")
  np.testing.assert_allclose(got.impurity, 0.0, atol=1e-5)
  np.testing.assert_allclose(got.score, 0.0, atol=1e-6)


def test_pixel_stats_label_is_first_maximum():
  logits = np.zeros((1, 1, 2, 4), np.float32)
  logits[0, 0, 0, [1, 3]] = 2.0
  logits[0, 0, 1, [0, 2]] = 1.0
  assert np.asarray(acquisition.pixel_stats(jnp.asarray(logits)).label).tolist() == [[[1, 0]]]


@pytest.mark.parametrize("mode", ["region", "pixel"])
def test_baselines_match_oracle(mode):
  rng = np.random.default_rng(3)
  logits = smooth_logits(rng, 2, 10, 12, 7)
  radius = 2
  keys = jax.vmap(jax.random.key)(jnp.arange(2))
  norm = math.log(7)

  def run(name):
    fn = acquisition.get_strategy(name)
    return np.asarray(jax.jit(lambda x: fn(x, radius=radius, mode=mode, keys=keys))(logits))

  def maybe_window(values):
    return oracle.window_mean(values, radius) if mode == "region" else values

  for b in range(2):
    entropy = oracle.pixel_entropy(logits[b])
    confidence = 1 - oracle.softmax(logits[b]).max(axis=-1)
    score, impurity, uncertainty = oracle.ripu(logits[b], radius, mode)
    np.testing.assert_allclose(run("ripu")[b], score, atol=1e-5)
    np.testing.assert_allclose(run("impurity")[b], impurity, atol=1e-5)
    np.testing.assert_allclose(run("uncertainty")[b], uncertainty, atol=1e-5)
    np.testing.assert_allclose(run("entropy")[b], maybe_window(entropy) / norm, atol=1e-5)
    np.testing.assert_allclose(run("confidence")[b], maybe_window(confidence), atol=1e-5)
  random_scores = run("random")
  assert random_scores.shape == (2, 10, 12)
  np.testing.assert_array_equal(random_scores, run("random"))  # seeded
  assert not np.array_equal(random_scores[0], random_scores[1])  # one key per image


def test_registry():
  assert {"ripu", "random", "entropy", "confidence", "impurity", "uncertainty"} <= set(
      acquisition.available_strategies())
  with pytest.raises(ValueError, match="unknown acquisition strategy 'labor'.*ripu"):
    acquisition.get_strategy("labor")

  @acquisition.register_strategy("test_constant")
  def constant(logits, *, radius, mode, keys):
    return jnp.ones(logits.shape[:3])

  assert acquisition.get_strategy("test_constant") is constant
  with pytest.raises(ValueError, match="already registered"):
    acquisition.register_strategy("test_constant")(constant)


def test_budgets_match_the_method():
  assert acquisition.regions_per_round(1024, 2048, 0.022, 5, 1) == 1026
  assert acquisition.regions_per_round(1024, 2048, 0.05, 5, 1) == 2331
  assert acquisition.pixels_per_round(1024, 2048, 40, 5) == 21
  assert acquisition.pixels_per_round(640, 1280, 40, 5) == 8
  # An exact product must not round up through float error: 100 * 100 * 0.09 / 9 = 100.
  assert acquisition.regions_per_round(100, 100, 0.09, 1, 1) == 100
  for h, w, ratio, rounds, radius in [(64, 96, 0.022, 5, 1), (37, 53, 0.3, 3, 2)]:
    expected = math.ceil(h * w * ratio / rounds / (2 * radius + 1) ** 2 - 1e-9)
    assert acquisition.regions_per_round(h, w, ratio, rounds, radius) == expected


@pytest.mark.parametrize("call, message", [
    (lambda: acquisition.regions_per_round(10, 10, 0.0, 5, 1), "ratio must be in"),
    (lambda: acquisition.regions_per_round(10, 10, 1.5, 5, 1), "ratio must be in"),
    (lambda: acquisition.regions_per_round(10, 10, 0.1, 5, -1), "radius"),
    (lambda: acquisition.regions_per_round(10, 10, 0.1, 0, 1), "rounds"),
    (lambda: acquisition.pixels_per_round(10, 10, -3, 5), "pixels"),
    (lambda: acquisition.pixels_per_round(0, 10, 3, 5), "image size"),
])
def test_budget_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()


@pytest.mark.parametrize("logits, message", [
    (np.zeros((4, 4, 3), np.float32), "rank 4"),
    (np.zeros((1, 4, 4, 3), np.int32), "floating dtype"),
    (np.zeros((1, 4, 4, 1), np.float32), "at least 2 classes"),
    ([[1.0]], "must be an array"),
])
def test_score_input_errors(logits, message):
  with pytest.raises(ValueError, match=message):
    acquisition.ripu_scores(logits, radius=1, mode="region")


def test_score_argument_errors():
  logits = np.zeros((1, 4, 4, 3), np.float32)
  with pytest.raises(ValueError, match="radius must be a non-negative integer"):
    acquisition.ripu_scores(logits, radius=-1, mode="region")
  with pytest.raises(ValueError, match="mode must be one of"):
    acquisition.ripu_scores(logits, radius=1, mode="regions")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_name_the_image(bad):
  logits = np.zeros((3, 4, 5, 3), np.float32)
  logits[2, 1, 1, 0] = bad
  with pytest.raises(ValueError, match="NaN or inf for image 'c.png' \\(batch index 2\\)"):
    acquisition.ripu_scores(logits, radius=1, mode="region", image_names=["a", "b", "c.png"])
  with pytest.raises(ValueError, match="batch index 2"):
    acquisition.ripu_scores(logits, radius=1, mode="pixel")


def test_huge_finite_logits_are_not_reported_as_non_finite():
  logits = np.zeros((2, 4, 5, 3), np.float32)
  logits[0, ..., 0] = 3e38  # a sum of these overflows; a finiteness check must not
  logits[1, ..., 1] = -3e38
  got = acquisition.ripu_scores(logits, radius=1, mode="region")
  assert np.all(np.isfinite(got.score))
  np.testing.assert_array_equal(scores_lib.finite_per_image(jnp.asarray(logits)), [True, True])


@pytest.mark.parametrize("size", [(7, 11), (16, 24), (3, 3), (1, 5)])
def test_upsample_logits_align_corners(size):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  got = np.asarray(acquisition.upsample_logits(x, size))
  for b in range(2):
    np.testing.assert_allclose(got[b], oracle.bilinear_align_corners(x[b], *size), atol=1e-5)


def test_upsample_logits_errors():
  with pytest.raises(ValueError, match="size must be"):
    acquisition.upsample_logits(np.zeros((1, 2, 2, 3), np.float32), (0, 4))
