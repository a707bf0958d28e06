"""Plain numpy/python versions of ViewAL's scores and selection walk, and a tiny room scene.

The oracles follow docs/viewal-method.md literally (one pixel at a time, explicit Omega lists,
the walk as written in section 5) in float64 and share no code with ripu_jax, so the tests
compare two independent versions. `room_scene` renders a box room with an occluding box and a
panel by ray casting (depth, labels = which surface a pixel sees, poses, intrinsics); it is
vectorised, so the benchmark script uses it at 240x320 as well.
"""

from __future__ import annotations

import numpy as np

EPS_Q = 1e-12
EPS_P = 1e-8

# Surfaces: (axis of the normal, coordinate on it, [lo, hi] box of the face, label).
_ROOM = ((-3.0, 3.0), (-1.5, 1.5), (-2.0, 5.0))
_BOX = ((-0.9, 0.3), (0.2, 1.5), (1.8, 2.6))
_PANEL = ((0.8, 1.8), (-1.0, 0.4), (3.3, 3.3))
NUM_SURFACE_LABELS = 7  # 0 back/front wall, 1 left, 2 right, 3 floor, 4 ceiling, 5 box, 6 panel


def _box_faces(box, label):
  faces = []
  for axis in range(3):
    for value in sorted(set(box[axis])):
      faces.append((axis, value, box, label))
  return faces


def _surfaces():
  room = [(2, 5.0, _ROOM, 0), (2, -2.0, _ROOM, 0), (0, -3.0, _ROOM, 1), (0, 3.0, _ROOM, 2),
          (1, 1.5, _ROOM, 3), (1, -1.5, _ROOM, 4)]
  return room + _box_faces(_BOX, 5) + _box_faces(_PANEL, 6)


def rotation(yaw, pitch=0.0):
  """Camera-to-world rotation: yaw about the y (down) axis, then pitch about x."""
  cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
  r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
  return r_yaw @ r_pitch


def camera_path(num_frames, *, span=1.2, yaw=0.25):
  """(centres [F, 3], yaws [F]): a sideways sweep that turns toward the middle."""
  s = np.linspace(-1.0, 1.0, num_frames)
  centres = np.stack([span * s, -0.2 + 0.1 * np.sin(3 * s), -1.0 + 0.3 * s ** 2], axis=1)
  return centres, -yaw * s


def room_scene(height, width, centres, yaws, *, pitch=-0.1, invalid_share=0.05, seed=0,
               offset=(0.0, 0.0, 0.0)):
  """Ray-cast one scene. Returns dict: depth, labels, intrinsics, pose (float32 / int32).

  offset moves the whole world (poses only; depth and labels are unchanged).
  """
  centres = np.asarray(centres, np.float64)
  num_frames = len(centres)
  focal = 0.8 * width
  k = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]])
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
  rays_cam = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(k).T  # z = 1
  depth = np.full((num_frames, height, width), np.inf)
  labels = np.zeros((num_frames, height, width), np.int32)
  poses = np.zeros((num_frames, 4, 4))
  for f in range(num_frames):
    rot = rotation(yaws[f], pitch)
    rays = rays_cam @ rot.T
    origin = centres[f]
    for axis, value, box, label in _surfaces():
      with np.errstate(divide="ignore", invalid="ignore"):
        t = (value - origin[axis]) / rays[..., axis]
      hit = origin + t[..., None] * rays
      inside = (t > 1e-9) & np.isfinite(t)
      for a in range(3):
        if a != axis:
          inside &= (hit[..., a] >= box[a][0] - 1e-9) & (hit[..., a] <= box[a][1] + 1e-9)
      closer = inside & (t < depth[f])
      depth[f][closer] = t[closer]
      labels[f][closer] = label
    poses[f, :3, :3] = rot
    poses[f, :3, 3] = origin + np.asarray(offset)
    poses[f, 3, 3] = 1.0
  rng = np.random.default_rng(seed)
  depth[rng.random(depth.shape) < invalid_share] = 0.0
  depth[~np.isfinite(depth)] = 0.0
  return {"depth": depth.astype(np.float32), "labels": labels,
          "intrinsics": np.repeat(k[None], num_frames, 0).astype(np.float32),
          "pose": poses.astype(np.float32)}


def grid_superpixels(num_frames, height, width, rows, cols):
  """int32 [F, H, W]: a rows x cols grid of superpixels, id = row * cols + col."""
  r = np.arange(height) * rows // height
  c = np.arange(width) * cols // width
  grid = (r[:, None] * cols + c[None, :]).astype(np.int32)
  return np.repeat(grid[None], num_frames, 0)


def smooth_probs(rng, num_frames, height, width, num_classes, *, cells=(3, 4), scale=3.0):
  """float32 [F, H, W, C]: softmax of random logits on a coarse grid, linearly upsampled."""
  coarse = rng.normal(size=(num_frames, cells[0], cells[1], num_classes)) * scale

  def weights(n, m):
    pos = np.linspace(0, m - 1, n)
    lo = np.clip(np.floor(pos).astype(int), 0, m - 2)
    frac = pos - lo
    a = np.zeros((n, m))
    a[np.arange(n), lo] = 1 - frac
    a[np.arange(n), lo + 1] += frac
    return a

  logits = np.einsum("ah,fhwc,bw->fabc", weights(height, cells[0]), coarse,
                     weights(width, cells[1]))
  logits -= logits.max(-1, keepdims=True)
  e = np.exp(logits)
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def one_hot(labels, num_classes):
  return np.eye(num_classes, dtype=np.float32)[labels]


# ---------------------------------------------------------------------------------------------
# Section 2: lift, project, visibility, one pixel at a time


def lift(x, y, d, k, pose):
  """World point of pixel (x, y) at depth d: T K^-1 [x d, y d, d, 1]."""
  k4 = np.eye(4)
  k4[:3, :3] = k
  return (pose @ np.linalg.inv(k4) @ np.array([x * d, y * d, d, 1.0]))[:3]


def splat(depth, intrinsics, pose, target, threshold=1.0):
  """Kept points in frame `target`: list of (j, y, x, v, u), source pixel -> target pixel."""
  depth = depth.astype(np.float64)
  intrinsics = intrinsics.astype(np.float64)
  pose = pose.astype(np.float64)
  num_frames, height, width = depth.shape
  world_to_target = np.linalg.inv(pose[target])
  kept = []
  for j in range(num_frames):
    for y in range(height):
      for x in range(width):
        d = depth[j, y, x]
        if d <= 0:
          continue  # invalid depth: not lifted
        point = lift(x, y, d, intrinsics[j], pose[j])
        p = intrinsics[target] @ (world_to_target @ np.append(point, 1.0))[:3]
        with np.errstate(divide="ignore", invalid="ignore"):
          uf, vf = np.round(p[0] / p[2]), np.round(p[1] / p[2])
        if not (0 <= uf <= width - 1 and 0 <= vf <= height - 1):
          continue
        u, v = int(uf), int(vf)
        dt = depth[target, v, u]
        if dt <= 0:
          continue  # the target pixel has no surface to compare with
        back = lift(u, v, dt, intrinsics[target], pose[target])
        if np.linalg.norm(point - back) < threshold:
          kept.append((j, y, x, v, u))
  return kept


def omega(depth, intrinsics, pose, target, threshold=1.0):
  """dict (v, u) -> list of source pixels (j, y, x) kept there."""
  lists = {}
  for j, y, x, v, u in splat(depth, intrinsics, pose, target, threshold):
    lists.setdefault((v, u), []).append((j, y, x))
  return lists


# ---------------------------------------------------------------------------------------------
# Section 3-4: pixel scores, region means, coverage


def view_scores(probs, depth, intrinsics, pose, ignore, threshold=1.0):
  """(VE, VD) float64 [F, H, W], from explicit Omega lists."""
  probs = probs.astype(np.float64)
  num_frames, height, width, _ = probs.shape
  ve = np.zeros((num_frames, height, width))
  vd = np.zeros((num_frames, height, width))
  for i in range(num_frames):
    for (v, u), members in omega(depth, intrinsics, pose, i, threshold).items():
      if ignore[i, v, u]:
        continue
      dists = [probs[j, y, x] for j, y, x in members]
      q = np.mean(dists, axis=0)
      ve[i, v, u] = -np.sum(q * np.log2(q + EPS_Q))
      own = probs[i, v, u]
      vd[i, v, u] = np.mean([np.sum(own * np.log2((own + EPS_P) / (pj + EPS_P)))
                             for pj in dists])
  return ve, vd


def superpixel_means(scores, superpixels, num_superpixels):
  out = np.zeros((scores.shape[0], num_superpixels))
  for f in range(scores.shape[0]):
    for s in range(num_superpixels):
      inside = superpixels[f] == s
      if inside.any():
        out[f, s] = scores[f][inside].mean()
  return out


def superpixel_sizes(superpixels, num_superpixels):
  return np.stack([np.bincount(sp.reshape(-1), minlength=num_superpixels)
                   for sp in superpixels])


def coverage_table(depth, intrinsics, pose, superpixels, num_superpixels, threshold=1.0):
  num_frames = depth.shape[0]
  s = num_superpixels
  counts = np.zeros((num_frames, s, num_frames, s))
  for i in range(num_frames):
    for j, y, x, v, u in splat(depth, intrinsics, pose, i, threshold):
      counts[i, superpixels[i, v, u], j, superpixels[j, y, x]] += 1
  sizes = superpixel_sizes(superpixels, s)
  with np.errstate(divide="ignore", invalid="ignore"):
    cov = counts / sizes[:, :, None, None]
  return np.where(sizes[:, :, None, None] > 0, cov, 0.0)


def overlaps(cov, threshold=0.25):
  hit = cov > threshold
  return hit | hit.transpose(2, 3, 0, 1)


# ---------------------------------------------------------------------------------------------
# Section 5: the selection walk, as written


def select_walk(ve, vd, scene_ids, overlap_tables, pixel_counts, labelled, budget, mode):
  """(picks [(frame, superpixel), ...], pixels, budget_reached), following section 5."""
  num_frames, num_spx = ve.shape
  frames_of = {k: sorted(f for f in range(num_frames) if scene_ids[f] == k)
               for k in set(int(k) for k in scene_ids)}

  def overlap(a, b):
    frames = frames_of[int(scene_ids[a[0]])]
    return bool(overlap_tables[int(scene_ids[a[0]])][frames.index(a[0]), a[1],
                                                     frames.index(b[0]), b[1]])

  def key(r):
    value = float(vd[r])
    return value if mode == "paper" else int(value)  # int(): toward zero, as int32

  regions = [(f, s) for f in range(num_frames) for s in range(num_spx)]
  order = sorted(regions, key=lambda r: (-float(ve[r]), r[0], r[1]))
  done = {r for r in regions if labelled[r]}
  marked = set()
  picks, pixels = [], 0
  for r in order:
    if pixels >= budget:
      break
    if r in done or r in marked or pixel_counts[r] == 0:
      continue
    candidates = [q for q in order
                  if scene_ids[q[0]] == scene_ids[r[0]] and q not in done and q not in marked
                  and pixel_counts[q] > 0 and overlap(r, q)]
    if candidates:
      best = max(key(q) for q in candidates)
      winner = next(q for q in candidates if key(q) == best)  # first in VE order
      marked.update(candidates)
    else:
      winner = r
    done.add(winner)
    picks.append(winner)
    pixels += int(pixel_counts[winner])
  return picks, pixels, pixels >= budget
