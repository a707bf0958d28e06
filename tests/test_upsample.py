"""The forward-only upsample (two taps per axis) and the release's two-step path in rounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import acquisition_oracles as oracle
from ripu_jax import acquisition
from ripu_jax import image_ops


@pytest.mark.parametrize("size", [(7, 11), (16, 24), (3, 3), (1, 5), (3, 4), (2, 2)])
def test_taps_match_the_numpy_oracle_and_the_matrices(size):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  got = np.asarray(jax.jit(image_ops.resize_bilinear_taps, static_argnums=1)(x, size))
  assert got.shape == (2, *size, 5) and got.dtype == np.float32
  for b in range(2):
    np.testing.assert_allclose(got[b], oracle.bilinear_align_corners(x[b], *size), atol=1e-5)
  np.testing.assert_allclose(got, np.asarray(image_ops.resize_bilinear(x, size)),
                             rtol=1e-6, atol=1e-6)


def test_taps_are_the_matrix_rows():
  for out_size, in_size in [(2048, 160), (1024, 80), (640, 80), (5, 1), (1, 7), (9, 9)]:
    lo, hi, w_lo, w_hi = image_ops.bilinear_taps(out_size, in_size)
    matrix = image_ops.interpolation_matrix(out_size, in_size)
    rebuilt = np.zeros_like(matrix)
    np.add.at(rebuilt, (np.arange(out_size), lo), w_lo)
    np.add.at(rebuilt, (np.arange(out_size), hi), w_hi)
    np.testing.assert_array_equal(rebuilt, matrix)
    assert ((matrix != 0).sum(axis=1) <= 2).all()
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=1e-6)


def test_upsample_to_labels_goes_through_the_input_size():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 3, 5, 4)).astype(np.float32)
  got = np.asarray(image_ops.upsample_to_labels(x, (17, 23), input_size=(6, 9)))
  want = oracle.bilinear_align_corners(oracle.bilinear_align_corners(x[0], 6, 9), 17, 23)
  np.testing.assert_allclose(got[0], want, atol=1e-5)
  one_step = np.asarray(image_ops.upsample_to_labels(x, (17, 23)))
  assert np.abs(one_step - got).max() > 1e-3  # the two paths differ, as in the release
  for same in (None, (17, 23), (3, 5)):
    np.testing.assert_allclose(np.asarray(image_ops.upsample_to_labels(x, (17, 23), same)),
                               one_step, atol=1e-6)
  with pytest.raises(ValueError, match="input_size must be"):
    image_ops.upsample_to_labels(x, (17, 23), input_size=(0, 9))
  with pytest.raises(ValueError, match="label_size must be"):
    image_ops.upsample_to_labels(x, (17,))
  with pytest.raises(ValueError, match="NHWC"):
    image_ops.upsample_to_labels(x[0], (17, 23))


@pytest.mark.parametrize("kind, radius", [("ra", 1), ("pa", 3)])
def test_a_round_picks_what_the_release_loop_picks_on_the_release_path(kind, radius):
  """Logits at the network's resolution -> input size -> label size, then RIPU's score and
  the release's pick loop, all in plain numpy: the round makes the same picks."""
  rng = np.random.default_rng(2)
  logits = (rng.normal(size=(2, 5, 8, 6)) * 3).astype(np.float32)
  input_size, label_size = (10, 16), (19, 31)
  plan = acquisition.plan_round(kind, *label_size, radius=radius, rounds=2, ratio=0.2,
                                pixels=40)
  got = acquisition.select_round(logits, plan=plan, label_size=label_size,
                                 input_size=input_size)
  for b in range(2):
    upsampled = oracle.bilinear_align_corners(
        oracle.bilinear_align_corners(logits[b], *input_size), *label_size)
    score, _, _ = oracle.ripu(upsampled, plan.radius, plan.mode)
    picks, labeled, _ = oracle.greedy(score, plan.num_picks, plan.label_radius,
                                      plan.suppress_radius)
    got_picks = [tuple(p) for p in got.picks[b].tolist() if p[0] >= 0]
    assert got_picks == picks and len(picks) == plan.num_picks
    np.testing.assert_array_equal(got.labeled[b], labeled)


def test_ripu_rounds_in_the_trainer_go_through_the_pool_images_size():
  from ripu_jax import config_lib  # pylint: disable=g-import-not-at-top
  from ripu_jax import sharding  # pylint: disable=g-import-not-at-top
  from ripu_jax.acquisition.acquirers import ACQUIRERS, RoundPool  # pylint: disable=g-import-not-at-top
  from ripu_jax.ledger import LabelLedger  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  logits = (rng.normal(size=(2, 5, 8, 6)) * 3).astype(np.float32)
  input_size, label_size = (10, 16), (19, 31)
  config = config_lib.base_config()
  config.num_steps, config.active.round_steps = 10, (0,)
  config.active.update(kind="ra", strategy="ripu", ratio=0.1, radius=1, batch_size=2)
  acquirer = ACQUIRERS.get("ra")(config)
  ledger = LabelLedger([label_size] * 2, label_radius=1, suppress_radius=2)

  def batches():
    yield {"image": np.zeros((2, *input_size, 3), np.float32), "index": np.arange(2),
           "label_size": np.tile(label_size, (2, 1)), "valid": np.ones(2, bool)}

  pool = RoundPool(round_number=1, seed=0, batches=batches, num_batches=1,
                   name=lambda i: f"img{i}",
                   predict=lambda images, outputs, network="model": {"logits": logits},
                   mesh=sharding.default_mesh())
  result = acquirer.run_round(pool, ledger)
  want = acquisition.select_round(logits, plan=acquirer.plan(label_size),
                                  label_size=label_size, input_size=input_size)
  for record in result.images:
    np.testing.assert_array_equal(record.labeled, want.labeled[record.index])


def test_a_round_writing_into_its_previous_label_size_logits_picks_as_a_fresh_one():
  """On CPU the round donates one call's label-size logits to the next call's upsample; the
  picks of every call match a round compiled afresh, also when the batch size changes."""
  from ripu_jax import sharding  # pylint: disable=g-import-not-at-top
  from ripu_jax.acquisition import selection_round  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  input_size, label_size = (10, 16), (19, 31)
  plan = acquisition.plan_round("ra", *label_size, radius=1, rounds=2, ratio=0.2)
  mesh = sharding.default_mesh()
  run = selection_round._compile_round(mesh, "ripu", label_size, plan, input_size, "cpu")
  assert run._recycle
  for batch in (2, 2, 1, 1):
    logits = jnp.asarray((rng.normal(size=(batch, 5, 8, 6)) * 3).astype(np.float32))
    excluded = jnp.zeros((batch, *label_size), bool)
    ids = jnp.arange(batch, dtype=jnp.int32)
    scratch = run._scratch
    got, finite = run((logits,), excluded, ids, np.int32(0))
    assert bool(np.all(finite))
    if scratch is not None and scratch[0].shape[0] == batch:
      assert scratch[0].is_deleted()  # donated: the upsample wrote into it
    assert run._scratch is not None and run._scratch[0].shape == (batch, *label_size, 6)
    selection_round._compile_round.cache_clear()  # select_round compiles a fresh round
    want = acquisition.select_round(np.asarray(logits), plan=plan, label_size=label_size,
                                    input_size=input_size)
    np.testing.assert_array_equal(np.asarray(got.picks), want.picks)
    np.testing.assert_array_equal(np.asarray(got.labeled), want.labeled)


@pytest.mark.parametrize("out_size, mid_size, in_size", [
    (1024, 640, 80), (2048, 1280, 160), (17, 6, 3), (23, 9, 5), (9, 9, 4), (9, 4, 4),
    (5, 1, 3), (1, 4, 3), (6, 3, 1)])
def test_two_step_taps_are_the_product_of_the_two_steps(out_size, mid_size, in_size):
  index, weight = image_ops.two_step_taps(out_size, mid_size, in_size)
  assert index.shape == weight.shape and index.shape[0] == out_size and index.shape[1] <= 3
  assert index.min() >= 0 and index.max() < in_size
  rebuilt = np.zeros((out_size, in_size))
  np.add.at(rebuilt, (np.arange(out_size)[:, None], index), weight)
  product = (image_ops.interpolation_matrix(out_size, mid_size).astype(np.float64)
             @ image_ops.interpolation_matrix(mid_size, in_size).astype(np.float64))
  np.testing.assert_allclose(rebuilt, product, atol=1e-6)


def test_the_two_steps_at_release_scale_match_two_separate_resizes():
  rng = np.random.default_rng(5)
  x = jnp.asarray((rng.normal(size=(1, 20, 40, 3)) * 4).astype(np.float32))
  got = np.asarray(image_ops.upsample_to_labels(x, (256, 512), input_size=(160, 320)))
  want = np.asarray(image_ops.resize_bilinear_taps(
      image_ops.resize_bilinear_taps(x, (160, 320)), (256, 512)))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=2e-6)
