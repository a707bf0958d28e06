"""ViewAL's scores (ripu_jax.methods.viewal.scoring) against the numpy oracles, on a tiny room.

One scene shape (4 frames, 12x16, 7 classes, 12 superpixels) throughout, so that each jitted
function compiles once for the whole file.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import viewal_oracles as oracle
from ripu_jax.methods.viewal import scoring

F, H, W, C, S = 4, 12, 16, 7, 12


def make_scene(centres=None, yaws=None, **kwargs):
  if centres is None:
    centres, yaws = oracle.camera_path(F)
  scene = oracle.room_scene(H, W, centres, yaws, **kwargs)
  superpixels = oracle.grid_superpixels(F, H, W, 3, 4)
  superpixels[1][superpixels[1] == 5] = 4  # superpixel 5 is absent from frame 1
  scene["superpixels"] = superpixels
  return scene


def geometry(scene):
  return scene["depth"], scene["intrinsics"], scene["pose"]


@pytest.fixture(scope="module")
def scene():
  scene = make_scene()
  rng = np.random.default_rng(0)
  scene["probs"] = oracle.smooth_probs(rng, F, H, W, C)
  ignore = np.zeros((F, H, W), bool)
  ignore[0][scene["labels"][0] == 4] = True  # frame 0's ceiling has no ground truth
  ignore[2, 5:7, 3:6] = True
  scene["ignore"] = ignore
  return scene


@pytest.fixture(scope="module")
def scores(scene):
  ve, vd = scoring.view_scores(scene["probs"], *geometry(scene), scene["ignore"])
  return np.asarray(ve), np.asarray(vd)


def counts_of(scene, probs, ignore=None):
  ignore = np.zeros((F, H, W), bool) if ignore is None else ignore
  out = scoring._scene_pass(jnp.asarray(probs), *map(jnp.asarray, geometry(scene)),
                            jnp.asarray(ignore), jnp.float32(1.0))
  return [np.asarray(x) for x in out]


def test_view_scores_match_the_oracle(scene, scores):
  ve, vd = scores
  want_ve, want_vd = oracle.view_scores(scene["probs"], *geometry(scene), scene["ignore"])
  assert ve.shape == vd.shape == (F, H, W) and ve.dtype == np.float32
  np.testing.assert_allclose(ve, want_ve, atol=2e-5)
  np.testing.assert_allclose(vd, want_vd, atol=1e-4)
  assert (want_ve > 0.1).mean() > 0.5 and (want_vd > 0.01).mean() > 0.3  # not a trivial case


def test_invalid_depth_and_ignore_give_zero(scene, scores):
  ve, vd = scores
  dead = (scene["depth"] == 0) | scene["ignore"]
  assert dead.sum() > 10
  assert np.all(ve[dead] == 0) and np.all(vd[dead] == 0)


def test_own_pixel_lands_on_itself(scene):
  depth = scene["depth"]
  own = np.arange(H * W).reshape(H, W)
  for target in (0, 3):
    idx = np.asarray(scoring.project_into(*geometry(scene), target))
    assert idx.shape == (F, H, W) and idx.dtype == np.int32
    np.testing.assert_array_equal(idx[target], np.where(depth[target] > 0, own, -1))
    assert np.all(idx[depth == 0] == -1)  # invalid depth is not lifted
    assert np.all(depth[target].reshape(-1)[idx[idx >= 0]] > 0)  # nor a target
  # Far from the origin (float32 world coordinates near 500 m) nothing moves.
  far = make_scene(offset=(500.0, -300.0, 400.0))
  np.testing.assert_array_equal(np.asarray(scoring.project_into(*geometry(far), 2)),
                                np.asarray(scoring.project_into(*geometry(scene), 2)))


def test_projection_matches_the_oracle_and_keeps_labels(scene):
  labels = scene["labels"]
  agree = total = 0
  for target in range(F):
    idx = np.asarray(scoring.project_into(*geometry(scene), target))
    want = np.full((F, H, W), -1)
    for j, y, x, v, u in oracle.splat(*geometry(scene), target):
      want[j, y, x] = v * W + u
    np.testing.assert_array_equal(idx, want)
    other = (idx >= 0) & (np.arange(F) != target)[:, None, None]
    agree += (labels[other] == labels[target].reshape(-1)[idx[other]]).sum()
    total += other.sum()
    # The occluding box hides part of the back wall: such points are projected, not kept.
    assert other.sum() < (scene["depth"][np.arange(F) != target] > 0).sum()
  assert total > 300 and agree / total > 0.95  # labels follow surfaces across views


def test_ground_truth_one_hot_gives_zero_on_covisible_pixels(scene):
  labels = scene["labels"]
  ve, vd, count = counts_of(scene, oracle.one_hot(labels, C))
  # Co-visible pixels whose Omega holds only their own surface (the 1 m tolerance also lets a
  # few floor points in front of the box's base through; those are counted, not tested).
  same = np.zeros((F, H, W), bool)
  for i in range(F):
    for (v, u), members in oracle.omega(*geometry(scene), i).items():
      same[i, v, u] = all(labels[j, y, x] == labels[i, v, u] for j, y, x in members)
  covisible = count >= 2
  assert (covisible & same).sum() > 0.9 * covisible.sum() > 0.5 * F * H * W
  assert np.abs(ve[same]).max() < 1e-5 and np.abs(vd[same]).max() < 1e-5
  assert np.all(ve[covisible & ~same] > 0.1)


def test_flipping_one_view_raises_vd_there_and_ve_everywhere(scene):
  labels = scene["labels"]
  flipped_frame, surface = 1, 5  # the occluding box, seen by all four frames
  probs = oracle.one_hot(labels, C)
  flipped = labels.copy()
  flipped[flipped_frame][labels[flipped_frame] == surface] = 2
  ve0, vd0, _ = counts_of(scene, probs)
  ve1, vd1, _ = counts_of(scene, oracle.one_hot(flipped, C))
  on_box = (labels == surface) & (scene["depth"] > 0)
  mean_vd = [vd1[f][on_box[f]].mean() for f in range(F)]
  assert all(on_box[f].sum() > 5 for f in range(F))
  assert int(np.argmax(mean_vd)) == flipped_frame
  assert mean_vd[flipped_frame] > 2 * max(np.delete(mean_vd, flipped_frame))
  for f in range(F):
    assert ve1[f][on_box[f]].mean() > ve0[f][on_box[f]].mean() + 0.1
    assert vd1[f][on_box[f]].mean() > vd0[f][on_box[f]].mean() + 0.1


def test_superpixel_means_and_sizes(scene, scores):
  ve, _ = scores
  sp = scene["superpixels"]
  means = np.asarray(scoring.superpixel_means(ve, sp, S))
  np.testing.assert_allclose(means, oracle.superpixel_means(ve, sp, S), atol=1e-6)
  sizes = np.asarray(scoring.superpixel_sizes(sp, S))
  np.testing.assert_array_equal(sizes, oracle.superpixel_sizes(sp, S))
  assert sizes[1, 5] == 0 and means[1, 5] == 0
  with pytest.raises(ValueError, match="ids must lie"):
    scoring.superpixel_means(ve, sp + 1, S)


def test_coverage_table_matches_the_oracle(scene):
  sp = scene["superpixels"]
  cov = np.asarray(scoring.coverage_table(*geometry(scene), sp, S))
  want = oracle.coverage_table(*geometry(scene), sp, S)
  assert cov.shape == (F, S, F, S) and cov.dtype == np.float32
  np.testing.assert_allclose(cov, want, rtol=1e-6)
  sizes = oracle.superpixel_sizes(sp, S)
  for i in range(F):
    valid = np.stack([(scene["depth"][i][sp[i] == s] > 0).sum() for s in range(S)])
    share = np.where(sizes[i] > 0, valid / np.maximum(sizes[i], 1), 0)
    np.testing.assert_allclose(np.diagonal(cov[i, :, i, :]), share, rtol=1e-6)
    off = cov[i, :, i, :] * (1 - np.eye(S))
    assert np.all(off == 0)  # a frame's own points only land on themselves
  assert np.all(cov[1, 5] == 0) and np.all(cov[:, :, 1, 5] == 0)  # absent superpixel
  ov = np.asarray(scoring.overlaps(cov))
  np.testing.assert_array_equal(ov, oracle.overlaps(want))
  np.testing.assert_array_equal(ov, ov.transpose(2, 3, 0, 1))
  assert ov[0, :, 1, :].any()  # neighbouring views share surfaces


def test_coverage_of_identical_frames_is_symmetric():
  centres, yaws = oracle.camera_path(F)
  centres[1], yaws[1] = centres[0], yaws[0]
  scene = make_scene(centres, yaws)
  scene["depth"][1] = scene["depth"][0]
  scene["superpixels"][1] = scene["superpixels"][0]
  sp = scene["superpixels"]
  cov = np.asarray(scoring.coverage_table(*geometry(scene), sp, S))
  np.testing.assert_array_equal(cov[0, :, 1, :], cov[1, :, 0, :])
  np.testing.assert_array_equal(cov[0, :, 1, :], cov[0, :, 0, :])
  valid = np.stack([(scene["depth"][0][sp[0] == s] > 0).mean() for s in range(S)])
  np.testing.assert_allclose(np.diagonal(cov[0, :, 1, :]), valid, rtol=1e-6)


def test_overlaps_in_either_direction():
  cov = np.zeros((2, 2, 2, 2), np.float32)
  cov[0, 0, 1, 1] = 0.3  # one direction only
  cov[0, 1, 1, 0] = 0.25  # not above the threshold
  ov = np.asarray(scoring.overlaps(cov))
  assert ov[0, 0, 1, 1] and ov[1, 1, 0, 0]
  assert not ov[0, 1, 1, 0] and not ov[1, 0, 0, 1]
  assert ov.sum() == 2
  with pytest.raises(ValueError, match=r"\[F, S, F, S\]"):
    scoring.overlaps(np.zeros((2, 3, 3, 2)))


def _noisy_apply(images, key):
  weights = jnp.linspace(-1.0, 1.0, 3 * C).reshape(3, C)
  logits = images @ weights
  keep = jax.random.bernoulli(key, 0.75, logits.shape[:-1] + (1,))
  return jnp.where(keep, logits, 0.0) / 0.75


def test_mc_dropout_probs_is_the_mean_softmax():
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 6, 3)), jnp.float32)
  key = jax.random.key(3)
  got = np.asarray(scoring.mc_dropout_probs(_noisy_apply, images, key, passes=5))
  want = np.mean([np.asarray(jax.nn.softmax(_noisy_apply(images, k), axis=-1))
                  for k in jax.random.split(key, 5)], axis=0)
  assert got.shape == (2, 5, 6, C)
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
  assert np.abs(got - np.asarray(jax.nn.softmax(_noisy_apply(images, key)))).max() > 1e-3
  with pytest.raises(ValueError, match="passes"):
    scoring.mc_dropout_probs(_noisy_apply, images, key, passes=0)


def test_bad_scenes_are_refused_with_the_fix(scene):
  depth, k, pose = geometry(scene)
  probs, ignore = scene["probs"], scene["ignore"]
  with pytest.raises(ValueError, match="same working size"):
    scoring.view_scores(probs[:, :6], depth, k, pose, ignore)
  with pytest.raises(ValueError, match="at least two frames"):
    scoring.view_scores(probs[:1], depth[:1], k[:1], pose[:1], ignore[:1])
  scaled = pose.copy()
  scaled[2, :3, :3] *= 1.1
  with pytest.raises(ValueError, match=r"pose\[2\] is not a rigid"):
    scoring.view_scores(probs, depth, k, scaled, ignore)
  projective = pose.copy()
  projective[0, 3, 0] = 0.5
  with pytest.raises(ValueError, match=r"pose\[0\] is not a rigid"):
    scoring.coverage_table(depth, k, projective, scene["superpixels"], S)
  mirrored = pose.copy()
  mirrored[3, :3, 0] *= -1
  with pytest.raises(ValueError, match="no mirror"):
    scoring.project_into(depth, k, mirrored, 0)
  with pytest.raises(ValueError, match="ignore must be"):
    scoring.view_scores(probs, depth, k, pose, ignore[:, :, :5])
  with pytest.raises(ValueError, match="intrinsics must be"):
    scoring.view_scores(probs, depth, k[:2], pose, ignore)
  bad_k = k.copy()
  bad_k[1, 0, 0] = 0
  with pytest.raises(ValueError, match=r"intrinsics\[1\]"):
    scoring.view_scores(probs, depth, bad_k, pose, ignore)
  with pytest.raises(ValueError, match="finite and >= 0"):
    scoring.view_scores(probs, np.where(depth > 5, np.nan, depth), k, pose, ignore)
  with pytest.raises(ValueError, match="ids must lie"):
    scoring.coverage_table(depth, k, pose, scene["superpixels"], 5)
