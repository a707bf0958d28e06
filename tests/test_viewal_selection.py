"""ViewAL's selection walk (ripu_jax.methods.viewal.selection) against the literal oracle."""

from __future__ import annotations

import numpy as np
import pytest

import viewal_oracles as oracle
from ripu_jax.methods.viewal import scoring
from ripu_jax.methods.viewal import selection

S = 6
SCENE_FRAMES = (2, 4, 3)  # frames per scene; frames of a scene are interleaved below


def random_round(seed):
  """Region scores, scenes, overlaps, sizes and labels of a random round (ties included)."""
  rng = np.random.default_rng(seed)
  scene_ids = np.concatenate([np.full(n, k) for k, n in enumerate(SCENE_FRAMES)])
  scene_ids = rng.permutation(scene_ids)
  n = len(scene_ids)
  ve = np.round(rng.random((n, S)) * 2, 1).astype(np.float32)  # many exact ties
  vd = (rng.random((n, S)) * 3).astype(np.float32)  # truncation to int matters
  vd[rng.random((n, S)) < 0.2] = 0.0
  counts = rng.integers(1, 60, (n, S))
  counts[rng.random((n, S)) < 0.1] = 0  # absent
  labelled = rng.random((n, S)) < 0.1
  tables = []
  for k, f in enumerate(SCENE_FRAMES):
    cov = rng.random((f, S, f, S)) * (rng.random((f, S, f, S)) < 0.15)
    cov[np.arange(f)[:, None], np.arange(S), np.arange(f)[:, None], np.arange(S)] = (
        rng.random((f, S)) < 0.9)  # self-coverage mostly above the threshold
    frames = np.flatnonzero(scene_ids == k)
    absent = counts[frames] == 0
    cov[absent] = 0
    cov[:, :, absent] = 0
    tables.append(oracle.overlaps(cov))
  return ve, vd, scene_ids, tables, counts, labelled


def run_both(round_, budget, mode, **kwargs):
  ve, vd, scene_ids, tables, counts, labelled = round_
  got = selection.select_superpixels(ve, vd, scene_ids, tables, counts, labelled, budget,
                                     mode=mode, **kwargs)
  picks, pixels, reached = oracle.select_walk(ve, vd, scene_ids, tables, counts, labelled,
                                              budget, mode)
  return got, (picks, pixels, reached)


@pytest.mark.parametrize("mode", ["paper", "release"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_walk_matches_the_oracle(seed, mode):
  round_ = random_round(seed)
  counts = round_[4]
  budget = int(counts.sum() * 0.3)
  got, (picks, pixels, reached) = run_both(round_, budget, mode)
  assert [tuple(p) for p in got.picks.tolist()] == picks
  assert got.pixels == pixels and got.budget_reached == reached is True
  assert got.picks.dtype == np.int32 and got.picks.shape == (len(picks), 2)
  # The last pick reaches the budget, the one before it did not.
  sizes = counts[got.picks[:, 0], got.picks[:, 1]]
  assert sizes.sum() >= budget > sizes[:-1].sum()
  # Labelled and absent superpixels are never picked, nothing twice.
  assert not round_[5][got.picks[:, 0], got.picks[:, 1]].any() and np.all(sizes > 0)
  assert len(set(picks)) == len(picks)


def test_modes_differ_and_chunks_do_not_matter():
  differ = 0
  for seed in range(4):
    round_ = random_round(seed)
    budget = int(round_[4].sum())
    paper = selection.select_superpixels(*round_, budget, mode="paper")
    release = selection.select_superpixels(*round_, budget, mode="release")
    differ += not np.array_equal(paper.picks, release.picks)
    one_by_one = selection.select_superpixels(*round_, budget, mode="release",
                                              max_chunk_bytes=1)
    np.testing.assert_array_equal(one_by_one.picks, release.picks)
  assert differ >= 2


def test_budget_beyond_the_pool_returns_every_pick():
  round_ = random_round(5)
  counts, labelled = round_[4], round_[5]
  budget = int(counts.sum()) + 1
  got, (picks, pixels, reached) = run_both(round_, budget, "release")
  assert got.budget_reached is False and reached is False
  assert [tuple(p) for p in got.picks.tolist()] == picks and got.pixels == pixels
  # Marked candidates that did not win stay unlabelled: the walk ends below the pool.
  assert 0 < got.pixels < counts[~labelled].sum()


def test_only_candidates_are_marked():
  # One scene, two frames: a=(0,0) overlaps b=(1,0), b overlaps c=(1,1), a and c do not.
  cov = np.zeros((2, 2, 2, 2), np.float32)
  for f, s in [(0, 0), (1, 0), (1, 1), (0, 1)]:
    cov[f, s, f, s] = 1.0
  cov[0, 0, 1, 0] = cov[1, 0, 1, 1] = 0.5
  tables = [np.asarray(scoring.overlaps(cov))]
  ve = np.array([[0.9, 0.1], [0.5, 0.7]], np.float32)  # order: a, c, b, d=(0,1)
  vd = np.array([[0.2, 0.0], [0.8, 0.1]], np.float32)
  counts = np.full((2, 2), 10)
  labelled = np.zeros((2, 2), bool)
  got = selection.select_superpixels(ve, vd, [0, 0], tables, counts, labelled, 100,
                                     mode="paper")
  # a: candidates {a, b}, winner b (larger VD), a and b marked; c: candidates {c} (b is
  # marked), winner c; b: marked; d: candidates {d}.
  assert got.picks.tolist() == [[1, 0], [1, 1], [0, 1]]
  # Release: VDs truncate to 0, so ties go to VE order and the winner is a itself.
  got = selection.select_superpixels(ve, vd, [0, 0], tables, counts, labelled, 100)
  assert got.picks.tolist() == [[0, 0], [1, 1], [0, 1]]
  # A winner without candidates is labelled for the rest of the round: never picked twice.
  cov[0, 0, 0, 0] = 0.0  # a does not overlap itself; it overlaps b
  tables = [np.asarray(scoring.overlaps(cov))]
  ve = np.array([[0.9, 0.1], [0.5, 0.7]], np.float32)
  got = selection.select_superpixels(ve, vd, [0, 0], tables, counts, labelled, 100,
                                     mode="paper")
  picks, _, _ = oracle.select_walk(ve, vd, [0, 0], tables, counts, labelled, 100, "paper")
  assert got.picks.tolist() == [list(p) for p in picks]
  assert len({tuple(p) for p in got.picks.tolist()}) == len(got.picks)


def test_ve_ties_go_by_frame_then_superpixel():
  tables = [np.zeros((2, 2, 2, 2), bool)]  # no overlaps: every pick is r itself
  ve = np.full((2, 2), 0.5, np.float32)
  got = selection.select_superpixels(ve, np.zeros((2, 2)), [0, 0], tables,
                                     np.full((2, 2), 3), np.zeros((2, 2), bool), 100)
  assert got.picks.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
  assert got.pixels == 12 and got.budget_reached is False


def test_scores_of_two_room_scenes_end_to_end():
  height, width, frames, spx = 12, 16, 3, 12
  scenes = []
  for k in range(2):
    centres, yaws = oracle.camera_path(frames, span=0.8 + 0.4 * k)
    scene = oracle.room_scene(height, width, centres, yaws, seed=k)
    scene["superpixels"] = oracle.grid_superpixels(frames, height, width, 3, 4)
    scene["probs"] = oracle.smooth_probs(np.random.default_rng(k), frames, height, width, 5)
    scenes.append(scene)
  ve, vd, sizes, tables = [], [], [], []
  for scene in scenes:
    geo = (scene["depth"], scene["intrinsics"], scene["pose"])
    pix_ve, pix_vd = scoring.view_scores(scene["probs"], *geo, np.zeros((frames, height, width),
                                                                         bool))
    ve.append(np.asarray(scoring.superpixel_means(pix_ve, scene["superpixels"], spx)))
    vd.append(np.asarray(scoring.superpixel_means(pix_vd, scene["superpixels"], spx)))
    sizes.append(np.asarray(scoring.superpixel_sizes(scene["superpixels"], spx)))
    cov = scoring.coverage_table(*geo, scene["superpixels"], spx)
    tables.append(np.asarray(scoring.overlaps(cov)))
  ve, vd, sizes = (np.concatenate(x) for x in (ve, vd, sizes))
  scene_ids = np.repeat([0, 1], frames)
  labelled = np.zeros_like(sizes, bool)
  labelled[0, :4] = True
  for mode in ("paper", "release"):
    got = selection.select_superpixels(ve, vd, scene_ids, tables, sizes, labelled, 400,
                                       mode=mode)
    picks, pixels, _ = oracle.select_walk(ve, vd, scene_ids, tables, sizes, labelled, 400,
                                          mode)
    assert [tuple(p) for p in got.picks.tolist()] == picks and got.pixels == pixels >= 400
    assert {f for f, _ in picks} & {0, 1, 2} and {f for f, _ in picks} & {3, 4, 5}


def test_bad_inputs_are_refused():
  ve, vd, scene_ids, tables, counts, labelled = random_round(0)
  call = selection.select_superpixels
  with pytest.raises(ValueError, match="mode"):
    call(ve, vd, scene_ids, tables, counts, labelled, 10, mode="viewal")
  with pytest.raises(ValueError, match="budget"):
    call(ve, vd, scene_ids, tables, counts, labelled, 0)
  with pytest.raises(ValueError, match="view_divergence must have"):
    call(ve, vd[:, :3], scene_ids, tables, counts, labelled, 10)
  with pytest.raises(ValueError, match="scene_ids"):
    call(ve, vd, scene_ids[:2], tables, counts, labelled, 10)
  with pytest.raises(ValueError, match="no overlap table for scene 2"):
    call(ve, vd, scene_ids, tables[:2], counts, labelled, 10)
  with pytest.raises(ValueError, match="bool"):
    call(ve, vd, scene_ids, [t.astype(np.float32) for t in tables], counts, labelled, 10)
  with pytest.raises(ValueError, match="for its 4 frames"):
    call(ve, vd, scene_ids, [tables[0], tables[0], tables[2]], counts, labelled, 10)
  with pytest.raises(ValueError, match="finite"):
    call(np.where(ve > 1, np.nan, ve), vd, scene_ids, tables, counts, labelled, 10)
