"""ViewAL's scores for one scene: view entropy, view divergence, region means and coverage.

Spec sections 2-4 of docs/viewal-method.md. Every pixel of every frame with valid depth is
lifted to the world (X = T_j K_j^-1 [x d, y d, d]) and splatted into each target frame i
(u = round(p_x / p_z), v = round(p_y / p_z) with p = K_i T_i^-1 X, in-image points only, no
z > 0 test). A point is kept where pixel (u, v) of frame i, lifted with its own depth, lies
within `distance_threshold` of it. Omega_i(u, v) is the set of kept points at (u, v); the
pixel's own distribution is in it through frame i's projection into itself.

Why the code looks as it does:
* One pass per target frame (`lax.map`) over all F*H*W lifted points, scatter-adding into the
  target's H*W pixels: memory per step is O(F*H*W*C), never O(F^2). View entropy needs the
  sum of the distributions in Omega and view divergence the sum of their log2(P + 1e-8)
  (KL(P_i || P_j) is linear in log P_j), both with the count of Omega: one scatter of
  [F*H*W, 2C+1] rows per target. The logs are taken once per scene, not once per target.
* Points are kept as three coordinate arrays and the 3x3 products are written out term by
  term, which XLA on CPU fuses into one elementwise loop (a [N, 3] x [3, 3] dot is slower).
* Distances are measured in the target camera's frame: a rigid transform keeps them, and
  `check_scene` refuses poses that are not rigid.
* A pixel's projection into its own frame is its own (x, y): exact arithmetic gives that, and
  float error must not move the pixel's own distribution to a neighbour.

Choices where the spec is silent (they follow the release where it decides):
* Depth 0 is invalid. Such a pixel is not lifted (it is in no Omega) and, as a target pixel,
  keeps nothing (there is no surface to compare with): its Omega is empty, its scores 0.
* Rounding is half-to-even (jnp.round, like np.round and torch.round).
* "Within" is strict: a point is kept when |X - Y| < distance_threshold (as the release).
* Region means (`superpixel_means`) are 0 for superpixels absent from a frame; whether one
  is present is `superpixel_sizes(...) > 0`.

Inputs are checked by `check_scene` (plain numpy, before any tracing); under an outer jit
only the shape checks run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

EPS_Q = 1e-12  # inside log2(Q + eps) of the view entropy
EPS_P = 1e-8  # inside log2(P + eps) of the view divergence
RIGID_TOLERANCE = 1e-3  # max |R^T R - I| and |det R - 1| accepted for a pose


# ---------------------------------------------------------------------------------------------
# Input checks


def _concrete(x) -> bool:
  return x is not None and not isinstance(x, jax.core.Tracer)


def check_scene(depth, intrinsics, pose, *, probs=None, ignore=None, superpixels=None,
                num_superpixels: int | None = None) -> None:
  """Raise ValueError with the fix when a scene's arrays do not fit together.

  Shapes always; values (depth finite and >= 0, rigid poses, usable intrinsics, superpixel ids
  in range) when the arrays are concrete, i.e. not traced under an outer jit.
  """
  dshape = tuple(np.shape(depth))
  if len(dshape) != 3:
    raise ValueError(f"depth must be [F, H, W] metres, got shape {dshape}")
  f, h, w = dshape
  if f < 2:
    raise ValueError(
        f"a scene needs at least two frames for ViewAL's cross-view scores, got {f}; give "
        "each scene all of its frames, or leave single-frame scenes out of the selection")
  if tuple(np.shape(intrinsics)) != (f, 3, 3):
    raise ValueError(f"intrinsics must be [F, 3, 3] = {(f, 3, 3)} for depth {dshape}, got "
                     f"{tuple(np.shape(intrinsics))}; repeat a shared K once per frame")
  if tuple(np.shape(pose)) != (f, 4, 4):
    raise ValueError(f"pose must be [F, 4, 4] = {(f, 4, 4)} camera-to-world matrices for depth "
                     f"{dshape}, got {tuple(np.shape(pose))}")
  if probs is not None:
    pshape = tuple(np.shape(probs))
    if len(pshape) != 4 or pshape[:3] != dshape:
      raise ValueError(
          f"probs must be [F, H, W, C] with [F, H, W] = depth's {dshape}, got {pshape}; "
          "resize probabilities and depth to the same working size (e.g. 240x320) first")
    if pshape[3] < 2:
      raise ValueError(f"probs needs at least 2 classes, got {pshape[3]}")
  if ignore is not None and tuple(np.shape(ignore)) != dshape:
    raise ValueError(f"ignore must be a bool [F, H, W] = {dshape} mask (ground truth 255), "
                     f"got {tuple(np.shape(ignore))}")
  if superpixels is not None:
    if tuple(np.shape(superpixels)) != dshape:
      raise ValueError(f"superpixels must be int [F, H, W] = {dshape}, got "
                       f"{tuple(np.shape(superpixels))}; compute them at the working size")
    if num_superpixels is None or int(num_superpixels) < 1:
      raise ValueError(f"num_superpixels must be a positive int, got {num_superpixels!r}")
  if _concrete(depth):
    d = np.asarray(depth)
    if not np.all(np.isfinite(d)) or np.any(d < 0):
      raise ValueError("depth must be finite and >= 0 metres (0 marks invalid pixels); "
                       "replace NaN/inf/negative values by 0")
  if _concrete(intrinsics):
    k = np.asarray(intrinsics, np.float64)
    bad = ~np.all(np.isfinite(k), axis=(1, 2)) | (k[:, 0, 0] <= 0) | (k[:, 1, 1] <= 0)
    bad |= np.any(np.abs(k[:, 2] - [0, 0, 1]) > 1e-6, axis=1)
    if np.any(bad):
      i = int(np.flatnonzero(bad)[0])
      raise ValueError(f"intrinsics[{i}] = {k[i].tolist()} is not a camera matrix "
                       "[[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
  if _concrete(pose):
    t = np.asarray(pose, np.float64)
    if not np.all(np.isfinite(t)):
      raise ValueError("pose has NaN or inf entries; drop frames without a tracked pose")
    rot = t[:, :3, :3]
    ortho = np.abs(np.einsum("fji,fjk->fik", rot, rot) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(rot)
    last = np.abs(t[:, 3] - [0, 0, 0, 1]).max(axis=1)
    bad = (ortho > RIGID_TOLERANCE) | (np.abs(det - 1) > RIGID_TOLERANCE) | (last > 1e-6)
    if np.any(bad):
      i = int(np.flatnonzero(bad)[0])
      raise ValueError(
          f"pose[{i}] is not a rigid camera-to-world transform (max |R^T R - I| = "
          f"{ortho[i]:.3g}, det R = {det[i]:.3g}, last row {t[i, 3].tolist()}); pass 4x4 "
          "[[R, t], [0, 0, 0, 1]] with R a rotation (no scale, no mirror), in metres")
  if superpixels is not None and _concrete(superpixels):
    sp = np.asarray(superpixels)
    if not np.issubdtype(sp.dtype, np.integer):
      raise ValueError(f"superpixels must hold integer ids, got dtype {sp.dtype}")
    if sp.size and (sp.min() < 0 or sp.max() >= num_superpixels):
      raise ValueError(f"superpixel ids must lie in [0, {num_superpixels}), got "
                       f"[{sp.min()}, {sp.max()}]; renumber them or raise num_superpixels")


# ---------------------------------------------------------------------------------------------
# Geometry


class _Points:
  """Every pixel of a scene lifted to the world, flattened frame-major (index f*H*W + y*W + x)."""

  def __init__(self, depth, intrinsics, pose):
    f, h, w = depth.shape
    depth = depth.astype(jnp.float32)
    kinv = jnp.linalg.inv(intrinsics.astype(jnp.float32))
    pose = pose.astype(jnp.float32)
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")

    def e(m, r, c):  # entry (r, c) of each frame's matrix, broadcast over the image
      return m[:, r, c, None, None]

    cam = [depth * (e(kinv, r, 0) * xs + e(kinv, r, 1) * ys + e(kinv, r, 2)) for r in range(3)]
    world = [e(pose, r, 0) * cam[0] + e(pose, r, 1) * cam[1] + e(pose, r, 2) * cam[2]
             + e(pose, r, 3) for r in range(3)]
    self.shape = (f, h, w)
    self.world = [c.reshape(-1) for c in world]
    self.valid = (depth > 0).reshape(-1)
    self.frame = jnp.broadcast_to(jnp.arange(f, dtype=jnp.int32)[:, None, None],
                                  (f, h, w)).reshape(-1)
    self.x = jnp.broadcast_to(xs, (f, h, w)).reshape(-1)
    self.y = jnp.broadcast_to(ys, (f, h, w)).reshape(-1)
    self.depth = depth
    self.kinv = kinv
    self.intrinsics = intrinsics.astype(jnp.float32)
    self.pose = pose

  def splat(self, target, threshold):
    """Flat pixel index (v*W + u) in frame `target` of every point, or -1 where not kept."""
    f, h, w = self.shape
    rot = self.pose[target, :3, :3]
    t = self.pose[target, :3, 3]
    k = self.intrinsics[target]
    rel = [self.world[r] - t[r] for r in range(3)]
    cam = [rot[0, c] * rel[0] + rot[1, c] * rel[1] + rot[2, c] * rel[2] for c in range(3)]
    p = [k[r, 0] * cam[0] + k[r, 1] * cam[1] + k[r, 2] * cam[2] for r in range(3)]
    own = self.frame == target
    u = jnp.where(own, self.x, jnp.round(p[0] / p[2]))
    v = jnp.where(own, self.y, jnp.round(p[1] / p[2]))
    inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)  # False for NaN and inf
    u = jnp.where(inside, u, 0.0)
    v = jnp.where(inside, v, 0.0)
    flat = v.astype(jnp.int32) * w + u.astype(jnp.int32)
    d = self.depth[target].reshape(-1)[flat]
    ki = self.kinv[target]
    back = [d * (ki[r, 0] * u + ki[r, 1] * v + ki[r, 2]) for r in range(3)]
    dist2 = sum((cam[r] - back[r]) ** 2 for r in range(3))
    keep = self.valid & inside & (d > 0) & (dist2 < threshold * threshold)
    return jnp.where(keep, flat, -1)


@jax.jit
def _project_into(depth, intrinsics, pose, target, threshold):
  points = _Points(depth, intrinsics, pose)
  return points.splat(target, threshold).reshape(depth.shape)


def project_into(depth, intrinsics, pose, target: int, *,
                 distance_threshold: float = 1.0) -> jax.Array:
  """Where each pixel of the scene lands in frame `target`: int32 [F, H, W].

  The flat index v*W + u of its target pixel when the point is kept (in the image, visible
  within the distance), else -1. Pixels of the target frame itself land on themselves.
  """
  check_scene(depth, intrinsics, pose)
  if not 0 <= int(target) < np.shape(depth)[0]:
    raise ValueError(f"target must be a frame index in [0, {np.shape(depth)[0]}), got {target}")
  return _project_into(jnp.asarray(depth), jnp.asarray(intrinsics), jnp.asarray(pose),
                       jnp.int32(target), jnp.float32(distance_threshold))


# ---------------------------------------------------------------------------------------------
# Pixel scores


@jax.jit
def _scene_pass(probs, depth, intrinsics, pose, ignore, threshold):
  """(view entropy, view divergence, |Omega|), each [F, H, W]; one scatter per target frame."""
  f, h, w, c = probs.shape
  n, hw = f * h * w, h * w
  points = _Points(depth, intrinsics, pose)
  p = probs.astype(jnp.float32).reshape(n, c)
  rows = jnp.concatenate([p, jnp.log2(p + EPS_P), jnp.ones((n, 1), jnp.float32)], axis=1)

  def one(i):
    idx = points.splat(i, threshold)
    idx = jnp.where(idx < 0, hw, idx)  # out of range: dropped
    acc = jnp.zeros((hw, 2 * c + 1), jnp.float32).at[idx].add(rows, mode="drop")
    count = acc[:, 2 * c]
    inv = 1.0 / jnp.maximum(count, 1.0)
    q = acc[:, :c] * inv[:, None]
    ve = -jnp.sum(q * jnp.log2(q + EPS_Q), axis=1)
    own = lax.dynamic_slice_in_dim(rows, i * hw, hw, axis=0)  # P_i and log2(P_i + eps)
    vd = jnp.sum(own[:, :c] * (own[:, c:2 * c] - acc[:, c:2 * c] * inv[:, None]), axis=1)
    ok = (count > 0) & ~ignore[i].reshape(-1)
    return (jnp.where(ok, ve, 0.0).reshape(h, w), jnp.where(ok, vd, 0.0).reshape(h, w),
            count.astype(jnp.int32).reshape(h, w))

  return lax.map(one, jnp.arange(f))


def view_scores(probs, depth, intrinsics, pose, ignore, *,
                distance_threshold: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Per-pixel view entropy and view divergence (bits), each float32 [F, H, W].

  VE = -sum_c Q_c log2(Q_c + 1e-12) with Q the mean of the distributions in Omega;
  VD = mean over P_j in Omega of sum_c P_i,c log2((P_i,c + 1e-8) / (P_j,c + 1e-8)).
  Both are 0 where Omega is empty (invalid depth) or `ignore` is set (ground truth 255).
  probs: float [F, H, W, C] (mean MC-dropout softmax), depth: [F, H, W] metres (0 invalid),
  intrinsics [F, 3, 3], pose [F, 4, 4] camera-to-world (OpenCV axes), ignore bool [F, H, W].
  """
  check_scene(depth, intrinsics, pose, probs=probs, ignore=ignore)
  ve, vd, _ = _scene_pass(jnp.asarray(probs), jnp.asarray(depth), jnp.asarray(intrinsics),
                          jnp.asarray(pose), jnp.asarray(ignore, bool),
                          jnp.float32(distance_threshold))
  return ve, vd


# ---------------------------------------------------------------------------------------------
# Regions


@functools.partial(jax.jit, static_argnames=("num_superpixels",))
def _region_sums(values, superpixels, num_superpixels):
  f = superpixels.shape[0]
  seg = (jnp.arange(f, dtype=jnp.int32)[:, None, None] * num_superpixels
         + superpixels.astype(jnp.int32)).reshape(-1)
  total = jax.ops.segment_sum(values.reshape(-1), seg, num_segments=f * num_superpixels)
  return total.reshape(f, num_superpixels)


def superpixel_sizes(superpixels, num_superpixels: int) -> jax.Array:
  """Pixels of each superpixel in each frame: int32 [F, S] (0: absent from the frame)."""
  ones = jnp.ones(np.shape(superpixels), jnp.int32)
  return _region_sums(ones, jnp.asarray(superpixels), num_superpixels=int(num_superpixels))


@functools.partial(jax.jit, static_argnames=("num_superpixels",))
def _superpixel_means(pixel_scores, superpixels, num_superpixels):
  sums = _region_sums(pixel_scores.astype(jnp.float32), superpixels, num_superpixels)
  sizes = _region_sums(jnp.ones(superpixels.shape, jnp.float32), superpixels, num_superpixels)
  return jnp.where(sizes > 0, sums / jnp.maximum(sizes, 1.0), 0.0)


def superpixel_means(pixel_scores, superpixels, num_superpixels: int) -> jax.Array:
  """Plain mean of a pixel score over each superpixel, zeros included: float32 [F, S].

  Superpixels absent from a frame get 0; `superpixel_sizes(...) > 0` says which exist.
  """
  if np.shape(pixel_scores) != np.shape(superpixels) or len(np.shape(superpixels)) != 3:
    raise ValueError(f"pixel_scores {np.shape(pixel_scores)} and superpixels "
                     f"{np.shape(superpixels)} must both be [F, H, W]")
  if _concrete(superpixels):
    sp = np.asarray(superpixels)
    if sp.size and (sp.min() < 0 or sp.max() >= num_superpixels):
      raise ValueError(f"superpixel ids must lie in [0, {num_superpixels}), got "
                       f"[{sp.min()}, {sp.max()}]")
  return _superpixel_means(jnp.asarray(pixel_scores), jnp.asarray(superpixels),
                           num_superpixels=int(num_superpixels))


@functools.partial(jax.jit, static_argnames=("num_superpixels",))
def _coverage_table(depth, intrinsics, pose, superpixels, threshold, num_superpixels):
  f, h, w = depth.shape
  s = num_superpixels
  points = _Points(depth, intrinsics, pose)
  superpixels = superpixels.astype(jnp.int32)
  source = (points.frame * s + superpixels.reshape(-1))  # region f*S + t of every point
  sizes = _region_sums(jnp.ones((f, h, w), jnp.float32), superpixels, s)

  def one(i):
    idx = points.splat(i, threshold)
    target = superpixels[i].reshape(-1)[jnp.maximum(idx, 0)]
    seg = jnp.where(idx >= 0, target * (f * s) + source, s * f * s)  # out of range: dropped
    counts = jnp.zeros((s * f * s,), jnp.int32).at[seg].add(1, mode="drop")
    size = sizes[i]
    cov = counts.reshape(s, f, s).astype(jnp.float32) / jnp.maximum(size, 1.0)[:, None, None]
    return jnp.where(size[:, None, None] > 0, cov, 0.0)

  return lax.map(one, jnp.arange(f))


def coverage_table(depth, intrinsics, pose, superpixels, num_superpixels: int, *,
                   distance_threshold: float = 1.0) -> jax.Array:
  """cov[i, s, j, t]: points of superpixel t of frame j kept in superpixel s of frame i / |s|.

  float32 [F, S, F, S]; |s| counts all pixels of s in frame i (invalid depth included), so
  cov[i, s, i, s] is the share of s with valid depth. Rows of absent superpixels are 0.
  """
  check_scene(depth, intrinsics, pose, superpixels=superpixels,
              num_superpixels=num_superpixels)
  return _coverage_table(jnp.asarray(depth), jnp.asarray(intrinsics), jnp.asarray(pose),
                         jnp.asarray(superpixels), jnp.float32(distance_threshold),
                         num_superpixels=int(num_superpixels))


def overlaps(cov, threshold: float = 0.25) -> jax.Array:
  """bool [F, S, F, S]: superpixels (i, s) and (j, t) overlap if cov > threshold either way."""
  cov = jnp.asarray(cov)
  if cov.ndim != 4 or cov.shape[:2] != cov.shape[2:]:
    raise ValueError(f"cov must be [F, S, F, S] (coverage_table's output), got {cov.shape}")
  hit = cov > threshold
  return hit | jnp.transpose(hit, (2, 3, 0, 1))


# ---------------------------------------------------------------------------------------------
# A round's scores of one scene

# What a round computes: "viewal" (view entropy, view divergence and overlaps from the mean
# MC-dropout softmax), "score" (region means of a given pixel score, e.g. the entropy
# baseline's) or "sizes" (superpixel sizes only, for random).
ROUND_KINDS = ("viewal", "score", "sizes")


def round_scores(pixels, depth, intrinsics, pose, ignore, superpixels, coverage,
                 distance_threshold, overlap_threshold, *, kind: str,
                 num_superpixels: int) -> dict[str, jax.Array]:
  """What a selection round reads of one scene, as one traceable program (no input checks).

  pixels: the probs [F, H, W, C] for kind "viewal", the pixel score [F, H, W] for "score",
  None for "sizes". Always returns "sizes" ([F, S], `superpixel_sizes`); with "viewal" or
  "score" also "pixel_score" [F, H, W] (view entropy, or the given score) and its superpixel
  mean "region_ve" [F, S]; with "viewal" also "region_vd" and "overlaps" (`overlaps` of
  `coverage`, or of the table computed from the frames when `coverage` is None).
  """
  s = num_superpixels
  superpixels = superpixels.astype(jnp.int32)
  out = {"sizes": _region_sums(jnp.ones(superpixels.shape, jnp.int32), superpixels, s)}
  if kind == "sizes":
    return out
  if kind == "viewal":
    score, vd, _ = _scene_pass(pixels, depth, intrinsics, pose, ignore, distance_threshold)
    out["region_vd"] = _superpixel_means(vd, superpixels, s)
    if coverage is None:
      coverage = _coverage_table(depth, intrinsics, pose, superpixels, distance_threshold,
                                 num_superpixels=s)
    hit = coverage > overlap_threshold
    out["overlaps"] = hit | jnp.transpose(hit, (2, 3, 0, 1))
  elif kind == "score":
    score = pixels
  else:
    raise ValueError(f"kind must be one of {ROUND_KINDS}, got {kind!r}")
  out["pixel_score"] = score
  out["region_ve"] = _superpixel_means(score, superpixels, s)
  return out


def predictive_entropy(probs, ignore) -> jax.Array:
  """-sum_c P_c log2(P_c + 1e-12) per pixel, 0 where `ignore`: the entropy baseline's score.

  Runs op by op, on whatever devices `probs` lies on. Inside a larger compiled program XLA
  may compute log2 differently in the last bit, and the baseline's picks (and its stored
  comparison runs) come from this version.
  """
  entropy = -jnp.sum(probs * jnp.log2(probs + EPS_Q), axis=-1)
  return jnp.where(ignore, 0.0, entropy)


# ---------------------------------------------------------------------------------------------
# Predictions


@functools.partial(jax.jit, static_argnums=(0, 3))
def _mc_dropout(apply_fn, images, key, passes):
  keys = jax.random.split(key, passes)
  shape = jax.eval_shape(apply_fn, images, keys[0]).shape

  def body(total, k):
    logits = apply_fn(images, k).astype(jnp.float32)
    return total + jax.nn.softmax(logits, axis=-1), None

  total, _ = lax.scan(body, jnp.zeros(shape, jnp.float32), keys)
  return total / passes


def mc_dropout_probs(apply_fn: Callable[[jax.Array, jax.Array], jax.Array], images,
                     key: jax.Array, passes: int = 20) -> jax.Array:
  """Mean softmax over `passes` stochastic forward passes: float32 [B, H, W, C].

  apply_fn(images, key) -> logits [B, H, W, C] is one pass with dropout drawn from `key`.
  The passes run as one compiled `lax.scan`; the program is cached per `apply_fn` object (pass
  the same function each round to compile once). Also traceable inside an outer jit.
  """
  if int(passes) != passes or passes < 1:
    raise ValueError(f"passes must be a positive int, got {passes!r}")
  return _mc_dropout(apply_fn, images, key, int(passes))
