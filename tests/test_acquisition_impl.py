"""The accelerator-shaped score code (impl="reduce_window") against the CPU code and the
numpy oracle: same scores to float32 rounding, exact window counts, identical picks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ripu_jax import acquisition
from ripu_jax import config_lib
from ripu_jax import sharding
from ripu_jax.acquisition import acquirers as acquirers_lib
from ripu_jax.acquisition import scores as scores_lib
from ripu_jax.acquisition import strategies as strategies_lib
from ripu_jax.errors import ConfigError
from ripu_jax.ledger import LabelLedger
import acquisition_oracles as oracle

# Scores of the two implementations differ by float32 rounding (a few 1e-7); the oracle
# computes in float64.
IMPL_ATOL = 1e-6
ORACLE_ATOL = 2e-6
BIG = scores_lib.REDUCE_WINDOW_MAX_RADIUS + 1  # first radius of the cumulative-sum filter


def smooth_logits(seed, batch, height, width, classes, scale=3.0):
  """Spatially coherent logits (blocky regions, like a segmentation net's) plus noise."""
  rng = np.random.default_rng(seed)
  coarse = rng.normal(size=(batch, height // 3 + 1, width // 3 + 1, classes)) * scale
  logits = np.repeat(np.repeat(coarse, 3, axis=1), 3, axis=2)[:, :height, :width]
  return (logits + rng.normal(size=logits.shape) * 0.5).astype(np.float32)


def picks_of(selection, b):
  return [tuple(p) for p in np.asarray(selection.picks[b]).tolist() if p[0] >= 0]


def window_picks(score, mode, radius, num_picks):
  """The greedy picks RA or PA makes on score maps [B, H, W]."""
  label_radius, suppress_radius = (radius, 2 * radius) if mode == "region" else (0, radius)
  return acquisition.greedy_select(jnp.asarray(score, jnp.float32), num_picks=num_picks,
                                   label_radius=label_radius, suppress_radius=suppress_radius)


# (mode, radius, height, width, classes): RA k=1 as the release runs it; PA from k=0 to a
# window larger than the image, on both sides of the reduce_window / cumulative-sum switch
# and of the CPU code's direct / running-sum switch; odd sizes; 19 classes and few.
CASES = [
    ("region", 1, 13, 21, 19),
    ("region", 1, 9, 7, 3),
    ("region", BIG, 11, 15, 19),
    ("pixel", 0, 9, 11, 19),
    ("pixel", 2, 7, 9, 2),
    ("pixel", 3, 13, 21, 19),
    ("pixel", BIG, 11, 13, 4),
    ("pixel", 12, 9, 11, 19),  # 25x25 windows on a 9x11 image
]


@pytest.mark.parametrize("mode, radius, height, width, classes", CASES)
def test_scores_and_picks_match_cpu_and_oracle(mode, radius, height, width, classes):
  logits = smooth_logits(radius * 7 + classes, 2, height, width, classes)
  fast = acquisition.ripu_scores(logits, radius=radius, mode=mode, impl="reduce_window")
  cpu = acquisition.ripu_scores(logits, radius=radius, mode=mode, impl="cpu")
  assert all(x.dtype == jnp.float32 and x.shape == (2, height, width) for x in fast)
  for got, want in zip(fast, cpu):
    np.testing.assert_allclose(got, want, rtol=0, atol=IMPL_ATOL)
  num_picks = 6
  fast_picks = window_picks(fast.score, mode, radius, num_picks)
  cpu_picks = window_picks(cpu.score, mode, radius, num_picks)
  np.testing.assert_array_equal(fast_picks.picks, cpu_picks.picks)
  np.testing.assert_array_equal(fast_picks.labeled, cpu_picks.labeled)
  for b in range(2):
    score, impurity, uncertainty = oracle.ripu(logits[b], radius, mode)
    np.testing.assert_allclose(fast.impurity[b], impurity, rtol=0, atol=ORACLE_ATOL)
    np.testing.assert_allclose(fast.uncertainty[b], uncertainty, rtol=0, atol=ORACLE_ATOL)
    np.testing.assert_allclose(fast.score[b], score, rtol=0, atol=ORACLE_ATOL)
    label_radius, suppress_radius = (radius, 2 * radius) if mode == "region" else (0, radius)
    want, _, _ = oracle.greedy(score, num_picks, label_radius, suppress_radius)
    assert picks_of(fast_picks, b) == want


@pytest.mark.parametrize("radius", [0, 1, scores_lib.REDUCE_WINDOW_MAX_RADIUS, BIG, 9])
def test_window_class_counts_are_exact(radius):
  height, width, classes = 9, 13, 5
  label = np.random.default_rng(radius).integers(0, classes, size=(2, height, width))
  counts = scores_lib.window_class_counts(jnp.asarray(label, jnp.int32), classes, radius)
  assert counts.dtype == jnp.int32 and counts.shape == (2, classes, height, width)
  want = np.zeros((2, classes, height, width), np.int64)
  for b in range(2):
    for i in range(height):
      for j in range(width):
        region = label[b][oracle.window(i, j, radius, height, width)].ravel()
        want[b, :, i, j] = np.bincount(region, minlength=classes)
  np.testing.assert_array_equal(counts, want)


def test_single_class_regions_score_alike():
  """Where every window holds one class, both give the count formula's value exactly."""
  logits = np.zeros((1, 5, 7, 4), np.float32)
  logits[..., 1] = 3.0
  for radius in (1, BIG):
    fast = acquisition.ripu_scores(logits, radius=radius, mode="region", impl="reduce_window")
    cpu = acquisition.ripu_scores(logits, radius=radius, mode="region", impl="cpu")
    np.testing.assert_allclose(fast.impurity, cpu.impurity, rtol=0, atol=1e-7)
    np.testing.assert_allclose(fast.impurity, 0.0, atol=2e-6)


def test_builtin_baselines_match_across_impls():
  logits = jnp.asarray(smooth_logits(5, 2, 10, 13, 7))
  keys = jax.vmap(jax.random.key)(jnp.arange(2))
  for name in ("impurity", "uncertainty", "entropy", "confidence"):
    strategy = acquisition.get_strategy(name)
    assert strategies_lib.takes_impl(strategy), name

    def run(impl, strategy=strategy):
      return jax.jit(lambda x: strategies_lib.call_strategy(
          strategy, x, radius=2, mode="region", keys=keys, impl=impl))(logits)

    np.testing.assert_allclose(run("reduce_window"), run("cpu"), rtol=0, atol=IMPL_ATOL,
                               err_msg=name)


def test_strategy_without_impl_keyword_still_runs():
  @acquisition.register_strategy("test_impl_free")
  def impl_free(logits, *, radius, mode, keys):
    del radius, mode, keys
    return -jnp.arange(logits.shape[1] * logits.shape[2], dtype=jnp.float32).reshape(
        (1,) + logits.shape[1:3]).repeat(logits.shape[0], axis=0)

  assert not strategies_lib.takes_impl(impl_free)
  logits = np.zeros((2, 5, 6, 3), np.float32)
  plan = acquisition.RoundPlan(2, 1, "region", 0, 1)
  selection = acquisition.select_round(logits, plan=plan, strategy="test_impl_free",
                                       impl="reduce_window")
  assert picks_of(selection, 0) == [(0, 0), (0, 2)]


@pytest.mark.parametrize("kind, radius", [("ra", 1), ("pa", BIG)])
def test_select_round_picks_the_same_with_either_impl(kind, radius):
  logits = smooth_logits(11, 2, 6, 8, 19)  # the network's output, upsampled to 23x31
  budget = {"ratio": 0.1} if kind == "ra" else {"pixels": 12}
  plan = acquisition.plan_round(kind, 23, 31, radius=radius, rounds=2, **budget)
  excluded = np.zeros((2, 23, 31), bool)
  excluded[1, 5:9, 10:20] = True
  results = {impl: acquisition.select_round(logits, plan=plan, label_size=(23, 31),
                                            input_size=(12, 16), excluded=excluded,
                                            impl=impl)
             for impl in ("cpu", "reduce_window")}
  for got, want in zip(results["reduce_window"], results["cpu"]):
    np.testing.assert_array_equal(got, want)
  assert (np.asarray(results["cpu"].picks)[..., 0] >= 0).sum() == 2 * plan.num_picks


def test_auto_and_unknown_impls():
  assert scores_lib.resolve_impl("auto", "cpu") == "cpu"
  assert scores_lib.resolve_impl("auto", "gpu") == "reduce_window"
  assert scores_lib.resolve_impl("auto", "tpu") == "reduce_window"
  assert scores_lib.resolve_impl("auto") == (
      "cpu" if jax.default_backend() == "cpu" else "reduce_window")
  assert scores_lib.resolve_impl("cpu", "gpu") == "cpu"
  choices = r"impl must be one of \('auto', 'reduce_window', 'cpu'\), got 'gpu'"
  with pytest.raises(ValueError, match=choices):
    scores_lib.resolve_impl("gpu")
  logits = np.zeros((2, 4, 4, 3), np.float32)
  with pytest.raises(ValueError, match=choices):
    acquisition.ripu_scores(logits, radius=1, mode="region", impl="gpu")
  with pytest.raises(ValueError, match=choices):
    acquisition.select_round(logits, plan=acquisition.RoundPlan(1, 1, "region", 1, 2),
                             impl="gpu")


def test_config_names_the_impl_choices():
  config = config_lib.base_config()
  assert config.acquisition.impl == "auto"
  for impl in scores_lib.IMPLS:
    config.acquisition.impl = impl
    config_lib.validate(config)
  config.acquisition.impl = "fastest"
  with pytest.raises(ConfigError, match=r"acquisition.impl must be one of \('auto', "
                                        r"'reduce_window', 'cpu'\), got 'fastest'"):
    config_lib.validate(config)


def test_greedy_rounds_pass_the_configured_impl(monkeypatch):
  seen = []
  real_select_round = acquirers_lib.select_round

  def spy(*args, **kwargs):
    seen.append(kwargs["impl"])
    return real_select_round(*args, **kwargs)

  monkeypatch.setattr(acquirers_lib, "select_round", spy)
  logits = smooth_logits(3, 2, 4, 5, 6)

  def batches():
    yield {"image": np.zeros((2, 8, 10, 3), np.float32), "index": np.arange(2),
           "label_size": np.tile((12, 15), (2, 1)), "valid": np.ones(2, bool)}

  labelled = {}
  for impl in ("cpu", "reduce_window"):
    config = config_lib.base_config()
    config.num_steps, config.active.round_steps = 10, (0,)
    config.acquisition.impl = impl
    acquirer = acquirers_lib.ACQUIRERS.get("ra")(config)
    label_radius, suppress_radius = acquirer.ledger_radii((12, 15))
    ledger = LabelLedger([(12, 15)] * 2, label_radius=label_radius,
                         suppress_radius=suppress_radius)
    pool = acquirers_lib.RoundPool(
        round_number=1, seed=0, batches=batches, num_batches=1, name=str,
        predict=lambda images, outputs, network="model": {"logits": jnp.asarray(logits)},
        mesh=sharding.default_mesh(), num_overlays=1)
    result = acquirer.run_round(pool, ledger)
    labelled[impl] = [ledger.labeled_mask(i) for i in range(2)]
    assert result.overlays[0].score.shape == (12, 15)
  assert seen == ["cpu", "reduce_window"]
  np.testing.assert_array_equal(labelled["cpu"], labelled["reduce_window"])
