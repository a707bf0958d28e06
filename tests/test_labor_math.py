"""Tests for LabOR's pure building blocks (discriminator, losses, IAST pseudo-labels).

Every function is checked against a plain-numpy oracle written from the spec
(shared/docs/labor-method.md): torch's conv arithmetic for D, the loss formulas, and a
loop over images and classes with np.percentile for IAST.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ripu_jax.methods.labor import iast, losses, networks

# --- discriminator -----------------------------------------------------------------------


def _torch_conv_size(size: int) -> int:
  for _ in range(5):
    size = (size + 2 * 1 - 4) // 2 + 1
  return size


@pytest.mark.parametrize("height, width", [(64, 128), (32, 32), (65, 97), (100, 50)])
def test_discriminator_output_shape_follows_torch_arithmetic(height, width):
  model = networks.OutputDiscriminator(3, channels=2, rngs=nnx.Rngs(0))
  logits = model(jnp.full((2, height, width, 3), 1 / 3, jnp.float32))
  expected = (2, _torch_conv_size(height), _torch_conv_size(width), 1)
  assert logits.shape == expected
  assert networks.output_size(height) == expected[1]
  assert logits.dtype == jnp.float32


def test_discriminator_widths_and_torch_default_init():
  model = networks.OutputDiscriminator(19, rngs=nnx.Rngs(0))
  shapes = [conv.kernel[...].shape for conv in model.convs]
  assert shapes == [(4, 4, 19, 64), (4, 4, 64, 128), (4, 4, 128, 256), (4, 4, 256, 512),
                    (4, 4, 512, 1)]
  for conv in model.convs:
    kernel = np.asarray(conv.kernel[...])
    bias = np.asarray(conv.bias[...])
    bound = 1 / np.sqrt(kernel.shape[0] * kernel.shape[1] * kernel.shape[2])
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    if kernel.size > 10_000:  # U(-b, b) has std b / sqrt(3)
      assert np.std(kernel) == pytest.approx(bound / np.sqrt(3), rel=0.05)


def _oracle_conv(x, kernel, bias):
  """torch's Conv2d(k=4, s=2, p=1) on NHWC x with an HWIO kernel, in float64."""
  x = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  out_h = (x.shape[1] - 4) // 2 + 1
  out_w = (x.shape[2] - 4) // 2 + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
  for i in range(out_h):
    for j in range(out_w):
      patch = x[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4, :]
      out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, kernel) + bias
  return out


def test_discriminator_matches_torch_conv_oracle_and_jits():
  model = networks.OutputDiscriminator(3, channels=2, rngs=nnx.Rngs(1))
  probs = np.asarray(jax.nn.softmax(jax.random.normal(jax.random.key(0), (2, 34, 40, 3)), -1))
  x = probs
  for index, conv in enumerate(model.convs):
    x = _oracle_conv(x, np.asarray(conv.kernel[...]), np.asarray(conv.bias[...]))
    if index < 4:
      x = np.where(x > 0, x, 0.2 * x)
  logits = nnx.jit(lambda m, p: m(p))(model, jnp.asarray(probs))
  assert logits.shape == x.shape == (2, 1, 1, 1)
  np.testing.assert_allclose(np.asarray(logits), x, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(probs))), np.asarray(logits),
                             rtol=1e-5, atol=1e-6)


def test_discriminator_bfloat16_compute_returns_float32():
  model = networks.OutputDiscriminator(3, channels=2, dtype="bfloat16", rngs=nnx.Rngs(0))
  assert model(jnp.full((1, 32, 64, 3), 1 / 3)).dtype == jnp.float32


def test_discriminator_rejects_bad_inputs():
  model = networks.OutputDiscriminator(3, channels=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="NHWC"):
    model(jnp.zeros((1, 32, 32, 4)))
  with pytest.raises(ValueError, match=">= 32"):
    model(jnp.zeros((1, 31, 64, 3)))
  with pytest.raises(ValueError, match="channels"):
    networks.OutputDiscriminator(3, channels=0, rngs=nnx.Rngs(0))


# --- losses ------------------------------------------------------------------------------


def _oracle_bce(logits, label):
  x = np.asarray(logits, np.float64)
  # -y log sigmoid(x) - (1 - y) log(1 - sigmoid(x)), each log in log-sum-exp form.
  return np.mean(label * np.logaddexp(0.0, -x) + (1 - label) * np.logaddexp(0.0, x))


@pytest.mark.parametrize("domain", [losses.SOURCE_DOMAIN, losses.TARGET_DOMAIN])
def test_discriminator_bce_matches_oracle_with_large_logits(domain):
  logits = np.array([[-1e4, -100.0, -30.0, -1.0], [0.0, 0.5, 40.0, 1e4]], np.float32)
  logits = logits.reshape(2, 1, 4, 1)
  value = losses.discriminator_bce(jnp.asarray(logits), domain)
  assert np.isfinite(float(value))
  np.testing.assert_allclose(float(value), _oracle_bce(logits, domain), rtol=1e-6)
  optax_value = jnp.mean(optax.sigmoid_binary_cross_entropy(
      jnp.asarray(logits), jnp.full(logits.shape, domain)))
  np.testing.assert_allclose(float(value), float(optax_value), rtol=1e-6)
  grads = jax.grad(losses.discriminator_bce)(jnp.asarray(logits), domain)
  assert np.all(np.isfinite(np.asarray(grads)))


def test_discriminator_bce_random_and_jit():
  logits = np.random.default_rng(0).normal(0, 3, (3, 2, 4, 1)).astype(np.float32)
  jitted = jax.jit(losses.discriminator_bce, static_argnums=1)
  for domain in (0.0, 1.0):
    np.testing.assert_allclose(float(jitted(jnp.asarray(logits), domain)),
                               _oracle_bce(logits, domain), rtol=1e-6)
  with pytest.raises(ValueError, match="domain"):
    losses.discriminator_bce(jnp.asarray(logits), 2.0)


def test_discriminator_lsgan_matches_oracle():
  outputs = np.random.default_rng(1).normal(0, 3, (2, 3, 4, 1)).astype(np.float32)
  for domain in (0.0, 1.0):
    want = np.mean((outputs.astype(np.float64) - domain) ** 2)
    np.testing.assert_allclose(float(losses.discriminator_mse(jnp.asarray(outputs), domain)),
                               want, rtol=1e-6)
    grads = jax.grad(losses.discriminator_mse)(jnp.asarray(outputs), domain)
    np.testing.assert_allclose(np.asarray(grads), 2 * (outputs - domain) / outputs.size,
                               rtol=1e-5)
  assert losses.GAN_LOSSES == {"bce": losses.discriminator_bce,
                               "lsgan": losses.discriminator_mse}
  with pytest.raises(ValueError, match="domain"):
    losses.discriminator_mse(jnp.asarray(outputs), -1.0)


def _random_probs(rng, shape):
  logits = rng.normal(0, 2, shape)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def test_discrepancy_and_pixel_discrepancy_match_oracle():
  rng = np.random.default_rng(0)
  p1, p2 = _random_probs(rng, (2, 3, 5, 4)), _random_probs(rng, (2, 3, 5, 4))
  diff = np.abs(p1.astype(np.float64) - p2)
  np.testing.assert_allclose(float(losses.discrepancy(p1, p2)), diff.mean(), rtol=1e-6)
  pixel = losses.pixel_discrepancy(jnp.asarray(p1), jnp.asarray(p2))
  assert pixel.shape == (2, 3, 5) and pixel.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(pixel), diff.sum(-1), rtol=1e-6)
  assert float(losses.discrepancy(p1, p1)) == 0.0
  with pytest.raises(ValueError, match="same shape"):
    losses.discrepancy(jnp.asarray(p1), jnp.asarray(p2[:1]))


# --- IAST --------------------------------------------------------------------------------


def oracle_pseudo_labels(probs, thresholds, human_labels=None, alpha=0.2, beta=0.9,
                         gamma=8.0):
  """The spec, literally: per image, per class, np.percentile with theta appended."""
  theta = np.asarray(thresholds, np.float64).copy()
  labels = np.zeros(probs.shape[:3], np.int64)
  used = []  # the thresholds each image was labelled with
  for b in range(probs.shape[0]):
    max_probs, preds = probs[b].max(-1), probs[b].argmax(-1)
    t = np.empty_like(theta)
    for c in range(probs.shape[-1]):
      values = np.append(max_probs[preds == c].astype(np.float64), theta[c])
      t[c] = np.percentile(values, 100 * (1 - alpha * theta[c]**gamma))
    theta = np.minimum(beta * theta + (1 - beta) * t, 0.999)
    labels[b] = np.where(max_probs < theta[preds], 255, preds)
    used.append(theta.copy())
  if human_labels is not None:
    labels = np.where(human_labels != 255, human_labels, labels)
  return labels, theta, np.stack(used)


def _assert_matches_oracle(probs, thresholds, human_labels=None, **kwargs):
  labels, new = iast.pseudo_labels(
      jnp.asarray(probs), jnp.asarray(thresholds, jnp.float32),
      None if human_labels is None else jnp.asarray(human_labels), **kwargs)
  want_labels, want_theta, used = oracle_pseudo_labels(probs, thresholds, human_labels,
                                                       **kwargs)
  assert labels.dtype == jnp.int32 and new.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(new), want_theta, rtol=0, atol=2e-6)
  # float32 vs float64 thresholds may only disagree on pixels within rounding of theta.
  preds = probs.argmax(-1)
  borderline = np.abs(probs.max(-1) - np.take_along_axis(
      used[:, None, None, :], preds[..., None], -1)[..., 0]) < 1e-5
  assert borderline.mean() < 0.05
  agree = (np.asarray(labels) == want_labels) | borderline
  assert agree.all(), np.argwhere(~agree)
  return np.asarray(labels), np.asarray(new)


def _structured_probs(seed, batch=3, height=6, width=7, num_classes=6):
  """Peaked probabilities with absent classes, tied max-probs and a one-pixel class."""
  rng = np.random.default_rng(seed)
  logits = np.zeros((batch, height, width, num_classes))
  preds = rng.choice([0, 1, 2], size=(batch, height, width), p=[0.5, 0.3, 0.2])
  # Quantised confidences give ties within a class; classes 3..5 are predicted nowhere
  # except one pixel of class 4 in image 1.
  confidence = rng.choice([2.0, 3.5, 4.0, 5.0, 6.0, 8.0], size=(batch, height, width))
  confidence[0, :2] = rng.uniform(1.0, 9.0, size=(2, width))  # and some distinct values
  preds[1, 2, 3] = 4
  np.put_along_axis(logits, preds[..., None], confidence[..., None], -1)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iast_matches_oracle_with_absent_classes_ties_and_single_pixel(seed):
  probs = _structured_probs(seed)
  assert len(np.unique(probs.max(-1))) < probs[..., 0].size  # ties present
  thresholds = np.array([0.9, 0.95, 0.6, 0.9, 0.99, 0.5], np.float32)
  labels, new = _assert_matches_oracle(probs, thresholds)
  # Absent classes keep their threshold exactly; a kept pixel is labelled its prediction.
  np.testing.assert_array_equal(new[[3, 5]], thresholds[[3, 5]])
  kept = labels != 255
  np.testing.assert_array_equal(labels[kept], probs.argmax(-1)[kept])
  assert kept.any() and (~kept).any()


def test_iast_matches_oracle_on_random_maps_and_other_hyperparameters():
  rng = np.random.default_rng(3)
  probs = _random_probs(rng, (2, 9, 11, 5))
  probs[..., 4] = 0.0  # class 4 never wins
  probs /= probs.sum(-1, keepdims=True)
  thresholds = rng.uniform(0.3, 0.99, 5).astype(np.float32)
  _assert_matches_oracle(probs, thresholds)
  _assert_matches_oracle(probs, thresholds, alpha=0.5, beta=0.5, gamma=2.0)
  _assert_matches_oracle(probs, thresholds, alpha=1.0, beta=0.0, gamma=1.0)


def test_iast_percentile_helper_on_edge_cases():
  # Class 0: values with ties around theta; class 1: one pixel; class 2: none;
  # class 3: every value equal to theta.
  max_probs = np.array([0.5, 0.9, 0.9, 0.95, 0.7, 0.8, 0.8], np.float32)
  preds = np.array([0, 0, 0, 0, 1, 3, 3], np.int32)
  thresholds = np.array([0.9, 0.6, 0.85, 0.8], np.float32)
  for alpha, gamma in [(0.2, 8.0), (1.0, 1.0), (0.0, 1.0), (0.7, 0.5)]:
    values, starts, counts = iast._sorted_runs(jnp.asarray(max_probs[None]),
                                               jnp.asarray(preds[None]), 4)
    below = np.array([np.sum((preds == c) & (max_probs < thresholds[c])) for c in range(4)])
    got = iast._class_percentiles(values[0], starts[0], counts[0], jnp.asarray(below),
                                  jnp.asarray(thresholds), alpha, gamma)
    want = [np.percentile(np.append(max_probs[preds == c], thresholds[c]).astype(np.float64),
                          100 * (1 - alpha * np.float64(thresholds[c])**gamma))
            for c in range(4)]
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6)


def test_iast_updates_sequentially_in_batch_order():
  probs = _structured_probs(4, batch=3)
  thresholds = iast.initial_thresholds(6)
  labels, new = _assert_matches_oracle(probs, np.asarray(thresholds))
  # One batch of three equals three batches of one, chaining theta ...
  theta = thresholds
  for b in range(3):
    image_labels, theta = iast.pseudo_labels(jnp.asarray(probs[b:b + 1]), theta)
    np.testing.assert_array_equal(np.asarray(image_labels)[0], labels[b])
  np.testing.assert_array_equal(np.asarray(theta), new)
  # ... and the order matters: reversing the images changes the final thresholds.
  _, reversed_new = iast.pseudo_labels(jnp.asarray(probs[::-1].copy()), thresholds)
  assert not np.allclose(np.asarray(reversed_new), new)


def test_iast_labels_with_the_thresholds_updated_by_the_same_image():
  # Class 0: five pixels at 0.99 and one at 0.85, theta 0.8. The image raises theta to
  # 0.5 * 0.8 + 0.5 * 0.99 = 0.895, so the 0.85 pixel is ignored though it was above the
  # threshold before the update.
  probs = np.zeros((1, 2, 3, 2), np.float32)
  probs[..., 0] = 0.99
  probs[0, 1, 2, 0] = 0.85
  probs[..., 1] = 1 - probs[..., 0]
  labels, new = iast.pseudo_labels(jnp.asarray(probs), jnp.asarray([0.8, 0.9]), beta=0.5)
  assert float(new[0]) == pytest.approx(0.895, abs=1e-6)
  expected = np.zeros((1, 2, 3), np.int32)
  expected[0, 1, 2] = 255
  np.testing.assert_array_equal(np.asarray(labels), expected)


def test_iast_clips_thresholds_at_0999():
  probs = np.zeros((2, 4, 4, 3), np.float32)
  probs[..., 0] = 1.0  # certain everywhere: t = 1, so theta would pass 0.999
  thresholds = np.array([0.999, 0.7, 0.95], np.float32)
  labels, new = _assert_matches_oracle(probs, thresholds)
  assert float(new[0]) == np.float32(0.999)
  np.testing.assert_array_equal(new[1:], thresholds[1:])  # absent: unchanged
  np.testing.assert_array_equal(labels, 0)
  _, clipped = iast.pseudo_labels(jnp.asarray(probs[:, :, :, [1, 0, 2]]),
                                  jnp.asarray([0.7, 0.9999, 0.5]))
  assert float(clipped[1]) == np.float32(0.999)


def test_iast_human_labels_overwrite_but_do_not_move_thresholds():
  probs = _structured_probs(5, batch=2)
  thresholds = np.full(6, 0.9, np.float32)
  human = np.full(probs.shape[:3], 255, np.int64)
  human[0, 0, :3] = [5, 0, 3]
  human[1, 4, 4] = 2
  labels, new = _assert_matches_oracle(probs, thresholds, human)
  plain_labels, plain_new = iast.pseudo_labels(jnp.asarray(probs), jnp.asarray(thresholds))
  np.testing.assert_array_equal(new, np.asarray(plain_new))
  given = human != 255
  np.testing.assert_array_equal(labels[given], human[given])
  np.testing.assert_array_equal(labels[~given], np.asarray(plain_labels)[~given])


def test_iast_is_jittable():
  probs = jnp.asarray(_structured_probs(6, batch=2))
  thresholds = iast.initial_thresholds(6)
  human = jnp.full(probs.shape[:3], 255, jnp.int32).at[0, 0, 0].set(1)
  eager = iast.pseudo_labels(probs, thresholds, human)
  jitted = jax.jit(iast.pseudo_labels)(probs, thresholds, human)
  for a, b in zip(eager, jitted):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  traced = jax.jit(lambda p, t, a: iast.pseudo_labels(p, t, alpha=a))(probs, thresholds, 0.2)
  np.testing.assert_array_equal(np.asarray(traced[1]), np.asarray(eager[1]))


def test_iast_rejects_bad_inputs():
  probs = jnp.full((1, 2, 2, 3), 1 / 3)
  with pytest.raises(ValueError, match="thresholds"):
    iast.pseudo_labels(probs, iast.initial_thresholds(4))
  with pytest.raises(ValueError, match="human_labels"):
    iast.pseudo_labels(probs, iast.initial_thresholds(3), jnp.zeros((1, 2, 3), jnp.int32))
  with pytest.raises(ValueError, match="alpha"):
    iast.pseudo_labels(probs, iast.initial_thresholds(3), alpha=1.5)
  with pytest.raises(ValueError, match="num_classes"):
    iast.initial_thresholds(0)
  np.testing.assert_array_equal(np.asarray(iast.initial_thresholds(2)),
                                np.float32([0.9, 0.9]))
