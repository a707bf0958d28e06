"""Tests for ELN's losses against plain-numpy oracles written from the spec.

Spec: shared/docs/eln-method.md. The oracles loop over pixels, images, classes and pairs in
float64; the hand-made contrastive case has cosines of exactly -1, 0 and 1.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ripu_jax.methods.eln import losses

IGNORE = 255


def _softmax(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _bce(x, y):
  p = 1.0 / (1.0 + np.exp(-x))
  return -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))


def oracle_target(logits, labels, ignore_as_error):
  num_classes = logits.shape[-1]
  target = np.zeros(labels.shape)
  valid = np.zeros(labels.shape, bool)
  for idx in np.ndindex(labels.shape):
    label = labels[idx]
    target[idx] = float(np.argmax(logits[idx]) == label)
    valid[idx] = ignore_as_error or 0 <= label < num_classes
  return target, valid


def oracle_balanced_bce(x, target, valid, skip_empty_scaling):
  n1 = sum(1 for idx in np.ndindex(x.shape) if valid[idx] and target[idx] == 1)
  n0 = sum(1 for idx in np.ndindex(x.shape) if valid[idx] and target[idx] == 0)
  if n0 == 0:
    scale = 1.0  # nothing to scale
  elif n1 == 0:
    scale = 1.0 if skip_empty_scaling else 0.0
  else:
    scale = n1 / n0
  total, count = 0.0, 0
  for idx in np.ndindex(x.shape):
    if not valid[idx]:
      continue
    loss = _bce(float(x[idx]), target[idx])
    total += loss * (scale if target[idx] == 0 else 1.0)
    count += 1
  return total / count if count else 0.0


def _random_case(seed, batch=2, height=4, width=5, classes=3, ignore_fraction=0.3):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(batch, height, width, classes)).astype(np.float32)
  labels = rng.integers(0, classes, size=(batch, height, width))
  labels[rng.random(labels.shape) < ignore_fraction] = IGNORE
  eln = (2.0 * rng.normal(size=(batch, height, width))).astype(np.float32)
  return logits, labels.astype(np.int32), eln


def _bce_value_and_grad(eln, logits, labels, ignore_as_error, skip):
  def loss(x):
    target, valid = losses.correctness_target(
        jnp.asarray(logits), jnp.asarray(labels), ignore_as_error=ignore_as_error)
    return losses.class_balanced_bce(x, target, valid, skip_empty_scaling=skip)
  return jax.value_and_grad(loss)(jnp.asarray(eln))


# --- correctness target and class-balanced BCE -------------------------------------------------


@pytest.mark.parametrize("ignore_as_error", [True, False])
@pytest.mark.parametrize("skip", [True, False])
def test_balanced_bce_random_matches_oracle(ignore_as_error, skip):
  logits, labels, eln = _random_case(0)
  value, grad = _bce_value_and_grad(eln, logits, labels, ignore_as_error, skip)
  target, valid = oracle_target(logits, labels, ignore_as_error)
  assert 0 < target[valid].sum() < valid.sum()  # both counts positive: the release's formula
  np.testing.assert_allclose(
      value, oracle_balanced_bce(eln, target, valid, skip), rtol=1e-5, atol=1e-6)
  assert value.dtype == jnp.float32
  assert np.all(np.isfinite(grad))


def test_ignore_as_error_changes_targets_and_counts():
  logits, labels, _ = _random_case(1, ignore_fraction=0.4)
  ignored = labels == IGNORE
  assert ignored.any()
  target_r, valid_r = losses.correctness_target(
      jnp.asarray(logits), jnp.asarray(labels), ignore_as_error=True)
  target_a, valid_a = losses.correctness_target(
      jnp.asarray(logits), jnp.asarray(labels), ignore_as_error=False)
  np.testing.assert_array_equal(target_r, target_a)  # 255 never matches an argmax
  assert np.all(np.asarray(target_r)[ignored] == 0)
  assert np.all(valid_r)
  np.testing.assert_array_equal(valid_a, ~ignored)
  n0_release = int(np.sum(np.asarray(valid_r) & (np.asarray(target_r) == 0)))
  n0_active = int(np.sum(np.asarray(valid_a) & (np.asarray(target_a) == 0)))
  assert n0_release == n0_active + int(ignored.sum())  # every 255 is one more error
  assert int(np.sum(valid_r & (target_r == 1))) == int(np.sum(valid_a & (target_a == 1)))


@pytest.mark.parametrize("skip", [True, False])
def test_balanced_bce_without_wrong_pixels(skip):
  logits, _, eln = _random_case(2, ignore_fraction=0.0)
  labels = np.argmax(logits, axis=-1).astype(np.int32)  # n0 = 0
  value, grad = _bce_value_and_grad(eln, logits, labels, False, skip)
  np.testing.assert_allclose(value, np.mean(_bce(eln.astype(np.float64), 1.0)), rtol=1e-5)
  assert np.all(np.isfinite(grad))


def test_balanced_bce_without_right_pixels():
  logits, _, eln = _random_case(3, ignore_fraction=0.0)
  labels = ((np.argmax(logits, axis=-1) + 1) % logits.shape[-1]).astype(np.int32)  # n1 = 0
  plain, grad_plain = _bce_value_and_grad(eln, logits, labels, False, True)
  np.testing.assert_allclose(plain, np.mean(_bce(eln.astype(np.float64), 0.0)), rtol=1e-5)
  release, grad_release = _bce_value_and_grad(eln, logits, labels, False, False)
  assert float(release) == 0.0  # n1 / n0 = 0 scales every pixel away
  assert np.all(np.isfinite(grad_plain)) and np.all(np.asarray(grad_release) == 0)


@pytest.mark.parametrize("skip", [True, False])
def test_balanced_bce_without_valid_pixels_is_zero(skip):
  logits, _, eln = _random_case(4)
  labels = np.full(eln.shape, IGNORE, np.int32)
  value, grad = _bce_value_and_grad(eln, logits, labels, False, skip)
  assert float(value) == 0.0
  assert np.all(np.asarray(grad) == 0)


def test_balanced_bce_is_stable_for_large_logits():
  x = jnp.array([[[80.0, -80.0, 0.0]]])
  target = jnp.array([[[0.0, 1.0, 1.0]]])
  value = losses.class_balanced_bce(x, target, jnp.ones(x.shape, bool))
  # n1 = 2, n0 = 1: the wrong pixel weighs 2.
  np.testing.assert_allclose(value, (2 * 80.0 + 80.0 + np.log(2.0)) / 3, rtol=1e-6)


def test_balanced_bce_shape_errors():
  x = jnp.zeros((2, 3, 4))
  with pytest.raises(ValueError, match="eln_logits"):
    losses.class_balanced_bce(x[..., None], x[..., None], x[..., None] > 0)
  with pytest.raises(ValueError, match="valid"):
    losses.class_balanced_bce(x, x, jnp.ones((2, 3, 5), bool))
  with pytest.raises(ValueError, match="labels"):
    losses.correctness_target(jnp.zeros((2, 3, 4, 5)), jnp.zeros((2, 3, 5), jnp.int32),
                              ignore_as_error=True)


@pytest.mark.parametrize("ignore_as_error", [True, False])
def test_eln_loss_sum_and_mean(ignore_as_error):
  rng = np.random.default_rng(5)
  _, labels, eln = _random_case(5)
  predictions = [rng.normal(size=labels.shape + (3,)).astype(np.float32) for _ in range(3)]
  terms = []
  for logits in predictions:
    target, valid = oracle_target(logits, labels, ignore_as_error)
    terms.append(oracle_balanced_bce(eln, target, valid, True))
  args = (jnp.asarray(eln), [jnp.asarray(p) for p in predictions], jnp.asarray(labels))
  total = losses.eln_loss(*args, ignore_as_error=ignore_as_error)
  mean = losses.eln_loss(*args, ignore_as_error=ignore_as_error, reduce="mean")
  np.testing.assert_allclose(total, sum(terms), rtol=1e-5)
  np.testing.assert_allclose(mean, sum(terms) / 3, rtol=1e-5)
  with pytest.raises(ValueError, match="reduce"):
    losses.eln_loss(*args, ignore_as_error=ignore_as_error, reduce="max")


def test_eln_loss_with_one_eln_logit_per_prediction():
  rng = np.random.default_rng(19)
  _, labels, _ = _random_case(19)
  predictions = [rng.normal(size=labels.shape + (3,)).astype(np.float32) for _ in range(3)]
  eln = [rng.normal(size=labels.shape).astype(np.float32) for _ in range(3)]
  expected = 0.0
  for logit, logits in zip(eln, predictions):
    target, valid = oracle_target(logits, labels, False)
    expected += oracle_balanced_bce(logit, target, valid, True)
  value = losses.eln_loss([jnp.asarray(e) for e in eln], [jnp.asarray(p) for p in predictions],
                          jnp.asarray(labels), ignore_as_error=False)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  with pytest.raises(ValueError, match="one ELN logit per prediction"):
    losses.eln_loss([jnp.asarray(e) for e in eln[:2]], [jnp.asarray(p) for p in predictions],
                    jnp.asarray(labels), ignore_as_error=False)


def test_eln_loss_gives_no_gradient_to_predictions():
  logits, labels, eln = _random_case(6)
  grad = jax.grad(lambda p: losses.eln_loss(
      jnp.asarray(eln), [p], jnp.asarray(labels), ignore_as_error=True))(jnp.asarray(logits))
  assert np.all(np.asarray(grad) == 0)


# --- auxiliary gate ----------------------------------------------------------------------------


def oracle_per_image_ce(logits, labels):
  probs = _softmax(logits)
  out = []
  for b in range(labels.shape[0]):
    values = [-np.log(probs[b, i, j, labels[b, i, j]])
              for i, j in np.ndindex(labels.shape[1:]) if 0 <= labels[b, i, j] < logits.shape[-1]]
    out.append(np.mean(values) if values else 0.0)
  return np.array(out)


def oracle_batch_ce(logits, labels):
  probs = _softmax(logits)
  values = [-np.log(probs[idx][labels[idx]]) for idx in np.ndindex(labels.shape)
            if 0 <= labels[idx] < logits.shape[-1]]
  return np.mean(values) if values else 0.0


def test_per_image_cross_entropy_with_an_unlabelled_image():
  logits, labels, _ = _random_case(7, batch=3)
  labels[1] = IGNORE
  ce = losses.per_image_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  assert ce.shape == (3,) and ce.dtype == jnp.float32
  assert float(ce[1]) == 0.0
  np.testing.assert_allclose(ce, oracle_per_image_ce(logits, labels), rtol=1e-5)


def test_aux_gate_boundary_is_inclusive_per_batch_and_strict_per_image():
  # 2.0, 0.125 and 16 are exact in float32, so aux == alpha * sup holds exactly.
  assert float(losses.aux_gate(2.0, 0.125, 16.0)) == 1.0
  assert float(losses.aux_gate(1.99, 0.125, 16.0)) == 0.0
  gates = losses.aux_gate(jnp.array([2.0, 2.5, 1.0]), jnp.full(3, 0.125), 16.0, per_image=True)
  np.testing.assert_array_equal(gates, [0.0, 1.0, 0.0])
  assert gates.dtype == jnp.float32
  with pytest.raises(ValueError, match="scalars"):
    losses.aux_gate(jnp.ones(3), jnp.ones(3), 2.0)
  with pytest.raises(ValueError, match="per-image"):
    losses.aux_gate(jnp.ones(3), jnp.ones(2), 2.0, per_image=True)


def _aux_case(seed):
  logits, labels, _ = _random_case(seed, batch=3)
  rng = np.random.default_rng(seed + 100)
  aux = [(3.0 * rng.normal(size=logits.shape)).astype(np.float32) for _ in range(2)]
  return logits, labels, aux


def test_gated_aux_loss_batch_mode_matches_oracle():
  logits, labels, aux = _aux_case(8)
  sup = oracle_batch_ce(logits, labels)
  aux_ce = [oracle_batch_ce(a, labels) for a in aux]
  alphas = (aux_ce[0] / sup - 0.01, aux_ce[1] / sup + 0.01)  # first head on, second off
  loss, gates = losses.gated_aux_loss(
      [jnp.asarray(a) for a in aux], jnp.asarray(labels), jnp.float32(sup), alphas)
  np.testing.assert_array_equal(gates, [1.0, 0.0])
  np.testing.assert_allclose(loss, aux_ce[0], rtol=1e-5)


def test_gated_aux_loss_per_image_mode_matches_oracle():
  logits, labels, aux = _aux_case(9)
  sup = oracle_per_image_ce(logits, labels)
  aux_ce = [oracle_per_image_ce(a, labels) for a in aux]
  alphas = (float(np.median(aux_ce[0] / sup)), 0.5)
  loss, gates = losses.gated_aux_loss(
      [jnp.asarray(a) for a in aux], jnp.asarray(labels), jnp.asarray(sup, jnp.float32), alphas,
      per_image=True)
  expected_gates = np.stack([ce > alpha * sup for ce, alpha in zip(aux_ce, alphas)]).astype(float)
  assert gates.shape == (2, 3)
  np.testing.assert_array_equal(gates, expected_gates)
  assert 0 < expected_gates[0].sum() < 3
  expected = sum(np.mean(g * ce) for g, ce in zip(expected_gates, aux_ce))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("per_image", [False, True])
def test_no_gradient_flows_through_the_gate(per_image):
  logits, labels, aux = _aux_case(10)
  sup = (oracle_per_image_ce(logits, labels) if per_image
         else np.float64(oracle_batch_ce(logits, labels)))
  sup = jnp.asarray(sup, jnp.float32)
  aux = [jnp.asarray(a) for a in aux]
  labels = jnp.asarray(labels)

  def loss(sup_ce, aux_logits):
    return losses.gated_aux_loss(aux_logits, labels, sup_ce, (0.0, 0.0), per_image=per_image)[0]

  grad_sup, grad_aux = jax.grad(loss, argnums=(0, 1))(sup, aux)
  assert np.all(np.asarray(grad_sup) == 0)
  assert all(np.any(np.asarray(g) != 0) for g in grad_aux)  # gates open: CE trains the heads


# --- keep mask and pseudo labels ---------------------------------------------------------------


def test_keep_mask_and_pseudo_labels_with_exclude():
  rng = np.random.default_rng(11)
  teacher = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  eln = rng.normal(size=(2, 3, 4)).astype(np.float32)
  eln[0, 0, 0] = 0.0  # sigmoid = 0.5 exactly: not kept (strict >)
  exclude = rng.random((2, 3, 4)) < 0.3
  keep = losses.keep_mask(jnp.asarray(eln))
  np.testing.assert_array_equal(keep, 1.0 / (1.0 + np.exp(-eln.astype(np.float64))) > 0.5)
  assert not bool(keep[0, 0, 0])
  expected = np.where(np.asarray(keep) & ~exclude, np.argmax(teacher, axis=-1), IGNORE)
  labels = losses.pseudo_labels(jnp.asarray(teacher), keep, jnp.asarray(exclude))
  assert labels.dtype == jnp.int32
  np.testing.assert_array_equal(labels, expected)
  no_exclude = losses.pseudo_labels(jnp.asarray(teacher), keep)
  np.testing.assert_array_equal(
      no_exclude, np.where(np.asarray(keep), np.argmax(teacher, axis=-1), IGNORE))
  with pytest.raises(ValueError, match="exclude"):
    losses.pseudo_labels(jnp.asarray(teacher), keep, jnp.zeros((2, 3, 5), bool))


# --- windowed contrastive loss -----------------------------------------------------------------


def oracle_contrastive(student, teacher, labels, corners, window, num_classes, tau=0.5,
                       skip_empty=False):
  batch, height, width, _ = student.shape
  rows, cols = min(window, height), min(window, width)

  def unit(v):
    return v / max(np.linalg.norm(v), 1e-8)

  window_losses = []
  for row, col in corners:
    pixels = [(b, i, j) for b in range(batch) for i in range(row, row + rows)
              for j in range(col, col + cols)]
    kept = [p for p in pixels if 0 <= labels[p] < num_classes]
    class_losses = []
    for c in sorted({int(labels[p]) for p in kept}):
      anchors = [p for p in kept if labels[p] == c]
      others = [p for p in kept if labels[p] != c]
      s_pos = sum(np.exp(unit(student[a]) @ unit(teacher[k]) / tau)
                  for a in anchors for k in anchors)
      s_neg = sum(np.exp(unit(student[a]) @ unit(teacher[k]) / tau)
                  for a in anchors for k in others)
      class_losses.append(-np.log(s_pos / (s_pos + s_neg)) / len(anchors))
    if class_losses:
      window_losses.append(np.mean(class_losses))
    elif not skip_empty:
      window_losses.append(0.0)
  return np.mean(window_losses) if window_losses else 0.0


def test_contrastive_hand_made_case():
  # Pixels (row, col): (0, 0), (0, 1) class 0; (1, 0) class 1; (1, 1) not kept. Student vectors
  # are scaled to check the normalisation.
  student = np.array([[[[3.0, 0.0], [0.0, 0.5]], [[2.0, 0.0], [5.0, 5.0]]]], np.float32)
  teacher = np.array([[[[1.0, 0.0], [4.0, 0.0]], [[-1.0, 0.0], [0.0, 1.0]]]], np.float32)
  labels = np.array([[[0, 0], [1, IGNORE]]], np.int32)
  e = np.e
  # Class 0: anchors (1, 0), (0, 1); positives (1, 0), (1, 0); negative (-1, 0).
  loss0 = np.log((2 * e**2 + 2 + e**-2 + 1) / (2 * e**2 + 2)) / 2
  # Class 1: anchor (1, 0); positive (-1, 0); negatives (1, 0), (1, 0).
  loss1 = np.log((e**-2 + 2 * e**2) / e**-2)
  value = losses.window_contrastive_loss(
      jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels), jnp.array([[0, 0]]),
      window=2, num_classes=2)
  np.testing.assert_allclose(value, (loss0 + loss1) / 2, rtol=1e-6)
  assert value.dtype == jnp.float32


def _contrastive_case(seed):
  rng = np.random.default_rng(seed)
  student = rng.normal(size=(2, 6, 6, 5)).astype(np.float32)
  teacher = rng.normal(size=(2, 6, 6, 5)).astype(np.float32)
  labels = rng.integers(0, 3, size=(2, 6, 6)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.3] = IGNORE
  return student, teacher, labels


def test_contrastive_random_matches_loop_oracle_and_jits():
  student, teacher, labels = _contrastive_case(12)
  corners = np.array([[0, 0], [2, 1], [1, 2]], np.int32)
  expected = oracle_contrastive(student, teacher, labels, corners, 4, 3)
  args = (jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels), jnp.asarray(corners))
  value = losses.window_contrastive_loss(*args, window=4, num_classes=3)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  jitted = jax.jit(functools.partial(losses.window_contrastive_loss, window=4, num_classes=3))
  np.testing.assert_allclose(jitted(*args), expected, rtol=1e-5)


def test_contrastive_window_larger_than_map_is_the_whole_map():
  student, teacher, labels = _contrastive_case(13)
  expected = oracle_contrastive(student, teacher, labels, [(0, 0)], 6, 3)
  value = losses.window_contrastive_loss(
      jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels), jnp.zeros((2, 2), int),
      window=32, num_classes=3)
  np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_contrastive_empty_windows():
  student, teacher, labels = _contrastive_case(14)
  labels[:, :3, :3] = IGNORE  # the window at (0, 0) holds no kept pixel
  corners = np.array([[0, 0], [2, 2], [0, 0]], np.int32)
  args = (jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels), jnp.asarray(corners))
  release = losses.window_contrastive_loss(*args, window=3, num_classes=3)
  skipped = losses.window_contrastive_loss(*args, window=3, num_classes=3,
                                           skip_empty_windows=True)
  single = oracle_contrastive(student, teacher, labels, [(2, 2)], 3, 3)
  assert single > 0
  np.testing.assert_allclose(release, single / 3, rtol=1e-5)
  np.testing.assert_allclose(skipped, single, rtol=1e-5)
  np.testing.assert_allclose(
      release, oracle_contrastive(student, teacher, labels, corners, 3, 3), rtol=1e-5)
  nothing = jnp.full(labels.shape, IGNORE, jnp.int32)
  for skip in (False, True):
    assert float(losses.window_contrastive_loss(
        args[0], args[1], nothing, args[3], window=3, num_classes=3,
        skip_empty_windows=skip)) == 0.0


def test_contrastive_gradient_is_finite_and_skips_the_teacher():
  student, teacher, labels = _contrastive_case(15)
  student[0, 0, 0] = 0.0  # a zero feature vector must not produce NaN

  def loss(s, t):
    return losses.window_contrastive_loss(
        s, t, jnp.asarray(labels), jnp.array([[0, 0], [2, 2]]), window=4, num_classes=3)

  grad_s, grad_t = jax.grad(loss, argnums=(0, 1))(jnp.asarray(student), jnp.asarray(teacher))
  assert np.all(np.isfinite(grad_s)) and np.any(np.asarray(grad_s) != 0)
  assert np.all(np.asarray(grad_t) == 0)


def test_random_window_corners_stay_inside_the_map():
  corners = losses.random_window_corners(jax.random.key(0), 50, 10, 7, 4)
  assert corners.shape == (50, 2) and corners.dtype == jnp.int32
  assert corners[:, 0].min() >= 0 and corners[:, 0].max() <= 6
  assert corners[:, 1].min() >= 0 and corners[:, 1].max() <= 3
  small = losses.random_window_corners(jax.random.key(1), 5, 3, 40, 32)
  np.testing.assert_array_equal(small[:, 0], 0)
  assert small[:, 1].max() <= 8
  with pytest.raises(ValueError, match="positive"):
    losses.random_window_corners(jax.random.key(0), 0, 10, 10, 4)


def test_contrastive_shape_errors():
  student, teacher, labels = _contrastive_case(16)
  with pytest.raises(ValueError, match="teacher_features"):
    losses.window_contrastive_loss(jnp.asarray(student), jnp.asarray(teacher[:1]),
                                   jnp.asarray(labels), jnp.zeros((1, 2), int), num_classes=3)
  with pytest.raises(ValueError, match="window_corners"):
    losses.window_contrastive_loss(jnp.asarray(student), jnp.asarray(teacher),
                                   jnp.asarray(labels), jnp.zeros((1, 3), int), num_classes=3)


# --- EMA and entropy ---------------------------------------------------------------------------


def test_ema_update_matches_numpy_on_nested_dict():
  rng = np.random.default_rng(17)
  shapes = {"a": (3,), "b": {"c": (2, 2), "d": ()}}
  teacher = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes,
                         is_leaf=lambda x: isinstance(x, tuple))
  student = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes,
                         is_leaf=lambda x: isinstance(x, tuple))
  updated = losses.ema_update(teacher, student, 0.995)
  for new, old, cur in zip(jax.tree.leaves(updated), jax.tree.leaves(teacher),
                           jax.tree.leaves(student)):
    assert new.dtype == jnp.float32
    np.testing.assert_allclose(new, 0.995 * old.astype(np.float64) + 0.005 * cur, rtol=1e-6)
  assert jax.tree.structure(updated) == jax.tree.structure(teacher)
  jitted = jax.jit(losses.ema_update)(teacher, student, jnp.float32(0.995))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), jitted, updated)


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.1])
def test_ema_update_rejects_bad_decay(decay):
  params = {"w": np.ones(2, np.float32)}
  with pytest.raises(ValueError, match="decay"):
    losses.ema_update(params, params, decay)


def test_ema_update_rejects_mismatched_trees():
  with pytest.raises(ValueError, match="trees differ"):
    losses.ema_update({"w": np.ones(2)}, {"v": np.ones(2)}, 0.9)
  with pytest.raises(ValueError, match="shapes differ"):
    losses.ema_update({"w": np.ones(2)}, {"w": np.ones(3)}, 0.9)


def test_entropy_map_matches_numpy():
  rng = np.random.default_rng(18)
  logits = (3.0 * rng.normal(size=(2, 3, 4, 5))).astype(np.float32)
  logits[0, 0, 0] = [200.0, -200.0, 0.0, 0.0, 0.0]  # near one-hot: finite, close to 0
  probs = _softmax(logits)
  expected = -np.sum(probs * np.log(np.maximum(probs, 1e-300)), axis=-1)
  entropy = losses.entropy_map(jnp.asarray(logits))
  assert entropy.shape == (2, 3, 4) and entropy.dtype == jnp.float32
  np.testing.assert_allclose(entropy, expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="rank 4"):
    losses.entropy_map(jnp.zeros((2, 3, 4)))
