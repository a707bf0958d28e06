"""Greedy selection: identical picks to the release's loop, and its invariants."""

from hypothesis import HealthCheck, given, settings, strategies as st
import hypothesis.extra.numpy as hnp
import jax.numpy as jnp
import numpy as np
import pytest

from ripu_jax import acquisition
from ripu_jax.acquisition import greedy as greedy_lib
import acquisition_oracles as oracle

# Shapes, budgets and radii are compile-time constants: drawing them from small sets keeps the
# number of compilations (and the test's run time) bounded.
SHAPES = [(1, 1), (1, 9), (6, 9), (17, 23)]
RADII = [(0, 0), (0, 3), (1, 2), (2, 2)]
SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# "auto" is the backend's own ranking (top_k on the CPU); "sort" is the one other backends
# use, so the CPU suite checks it too.
ORDERINGS = pytest.mark.parametrize("ordering", ["auto", "sort"])


def picks_of(selection, b=0):
  return [tuple(p) for p in np.asarray(selection.picks[b]).tolist() if p[0] >= 0]


@st.composite
def problems(draw):
  height, width = draw(st.sampled_from(SHAPES))
  # Few distinct values: many exact ties, which is where the tie rule shows.
  score = draw(hnp.arrays(np.float32, (height, width), elements=st.sampled_from(
      [0.0, 0.25, 0.5, 1.0, -np.inf])))
  excluded = draw(hnp.arrays(bool, (height, width)))
  label_radius, suppress_radius = draw(st.sampled_from(RADII))
  num_picks = draw(st.sampled_from([0, 1, 7, 300]))
  return score, excluded, num_picks, label_radius, suppress_radius


@ORDERINGS
@SETTINGS
@given(problem=problems())
def test_picks_and_masks_identical_to_release_loop(ordering, problem):
  score, excluded, num_picks, label_radius, suppress_radius = problem
  got = acquisition.greedy_select(score[None], num_picks=num_picks, label_radius=label_radius,
                                  suppress_radius=suppress_radius, excluded=excluded[None],
                                  ordering=ordering)
  picks, labeled, excluded_out = oracle.greedy(score, num_picks, label_radius, suppress_radius,
                                               excluded)
  assert picks_of(got) == picks
  np.testing.assert_array_equal(got.labeled[0], labeled)
  np.testing.assert_array_equal(got.excluded[0], excluded_out)
  assert got.picks.shape == (1, num_picks, 2) and got.picks.dtype == jnp.int32
  assert np.all(np.asarray(got.picks[0, len(picks):]) == -1)


@ORDERINGS
@SETTINGS
@given(seed=st.integers(0, 10_000), radius=st.sampled_from([1, 2]),
       shape=st.sampled_from([(20, 33), (7, 5)]))
def test_ra_invariants_on_continuous_scores(ordering, seed, radius, shape):
  rng = np.random.default_rng(seed)
  height, width = shape
  score = rng.random((height, width)).astype(np.float32)
  excluded = rng.random((height, width)) < 0.1
  budget = 40
  got = acquisition.greedy_select(score[None], num_picks=budget, label_radius=radius,
                                  suppress_radius=2 * radius, excluded=excluded[None],
                                  ordering=ordering)
  picks = picks_of(got)
  assert len(picks) <= budget
  # Excluded pixels are never picked.
  assert not any(excluded[r, c] for r, c in picks)
  # RA squares never overlap: their areas add up to the labelled area.
  areas = [np.ones((height, width))[oracle.window(r, c, radius, height, width)].size
           for r, c in picks]
  assert sum(areas) == int(np.asarray(got.labeled[0]).sum())
  # Stopped early only because every pixel was excluded.
  if len(picks) < budget:
    assert np.asarray(got.excluded[0]).all()


def test_budget_exactly_spent_when_room():
  score = np.random.default_rng(0).random((1, 64, 96)).astype(np.float32)
  got = acquisition.greedy_select(score, num_picks=50, label_radius=1, suppress_radius=2)
  picks = picks_of(got)
  assert len(picks) == 50
  areas = [np.ones((64, 96))[oracle.window(r, c, 1, 64, 96)].size for r, c in picks]
  assert int(np.asarray(got.labeled).sum()) == sum(areas)


@ORDERINGS
def test_tie_rule_smallest_column_then_row(ordering):
  score = np.zeros((1, 5, 6), np.float32)
  got = acquisition.greedy_select(score, num_picks=3, label_radius=0, suppress_radius=0,
                                  ordering=ordering)
  assert picks_of(got) == [(0, 0), (1, 0), (2, 0)]
  score[0, 3, 4] = score[0, 1, 5] = score[0, 4, 4] = 1.0
  got = acquisition.greedy_select(score, num_picks=3, label_radius=0, suppress_radius=0,
                                  ordering=ordering)
  assert picks_of(got) == [(3, 4), (4, 4), (1, 5)]


@ORDERINGS
def test_band_refetch_is_exact(ordering):
  # A smooth single peak: every candidate of the first band is suppressed by the first pick,
  # so the selection has to fetch further bands and must still match the loop.
  rows, cols = np.mgrid[0:48, 0:64]
  score = -((rows - 20.0) ** 2 + (cols - 30.0) ** 2).astype(np.float32)
  budget = 30
  got = acquisition.greedy_select(score[None], num_picks=budget, label_radius=0,
                                  suppress_radius=5, ordering=ordering)
  assert greedy_lib.band_size(budget, 48 * 64) < 48 * 64
  assert picks_of(got) == oracle.greedy(score, budget, 0, 5)[0]


def test_batch_images_are_independent():
  rng = np.random.default_rng(4)
  score = rng.random((3, 20, 30)).astype(np.float32)
  together = acquisition.greedy_select(score, num_picks=12, label_radius=1, suppress_radius=2)
  for b in range(3):
    alone = acquisition.greedy_select(score[b:b + 1], num_picks=12, label_radius=1,
                                      suppress_radius=2)
    assert picks_of(together, b) == picks_of(alone)


def test_windows_larger_than_image():
  score = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
  got = acquisition.greedy_select(score, num_picks=5, label_radius=9, suppress_radius=20)
  assert picks_of(got) == [(2, 3)]
  assert np.asarray(got.labeled).all() and np.asarray(got.excluded).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(score=np.zeros((4, 4), np.float32)), "score must be an array \\[B, H, W\\]"),
    (dict(score=np.zeros((1, 4, 4), np.int32)), "floating dtype"),
    (dict(num_picks=-1), "num_picks must be a non-negative integer"),
    (dict(num_picks=2.5), "num_picks must be a non-negative integer"),
    (dict(label_radius=-1), "label_radius must be a non-negative integer"),
    (dict(suppress_radius=-2), "suppress_radius must be a non-negative integer"),
    (dict(excluded=np.zeros((1, 4, 5), bool)), "excluded must be a bool array of shape"),
    (dict(excluded=np.zeros((1, 4, 4), np.uint8)), "excluded must be a bool array of shape"),
    (dict(score=np.full((2, 4, 4), np.nan, np.float32)), "NaN for batch index \\[0, 1\\]"),
    (dict(ordering="fastest"), "ordering must be one of"),
])
def test_input_errors(kwargs, message):
  args = dict(score=np.zeros((1, 4, 4), np.float32), num_picks=2, label_radius=1,
              suppress_radius=2, excluded=None)
  args.update(kwargs)
  score = args.pop("score")
  with pytest.raises(ValueError, match=message):
    acquisition.greedy_select(score, **args)
