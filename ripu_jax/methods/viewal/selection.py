"""ViewAL's selection walk (spec section 5) over all training frames of a round.

Every superpixel of every frame is sorted by region view entropy (VE), descending; ties go by
(frame index, superpixel id), ascending, which is the release's stable sort. The walk skips
labelled, marked and absent superpixels; for the current one, r:
1. candidates: available (present, unlabelled, unmarked) superpixels of r's scene overlapping
   r, r included when it overlaps itself;
2. winner: the candidate with the largest region view divergence (VD), r itself when there
   are no candidates. mode="paper" compares VD as a float; mode="release" compares it
   truncated to an integer (int32, toward zero), as the release's int32 table does. Ties (equal
   VD, or equal truncated VD) go to the candidate that comes first in the VE order above;
3. the winner is labelled and all candidates are marked (and nothing else: this is both the
   paper's rule and what the release does in effect, spec section 10);
4. the walk stops once the labelled pixels reach the budget; the last pick may overshoot.

Choice where the spec is silent: a winner counts as labelled for the rest of the round, so no
superpixel is picked twice (the release only reads labels at the round's start, so a winner
that was not a candidate, r itself without self-overlap, could come back as a candidate).

Why it looks as it does: marks and labels never cross a scene, and the budget only cuts the
global sequence of picks. The global walk is therefore each scene's walk run to its end,
merged in the global VE order of the superpixels that triggered the picks, and cut where the
pixels reach the budget. Each scene's walk runs on device as a `lax.fori_loop` over its
superpixels in VE order with a boolean availability vector: one row of the scene's overlap
relation per step, O(M) work for M = frames x superpixels, O(M^2) per scene. Scenes of a chunk
run side by side, padded to the largest scene; no array grows with the square of the number
of training frames. With a mesh, the scenes of a chunk are split over its devices.

A budget above what the walk can label is not an error here: every pick the walk can make is
returned with `budget_reached=False`, and the caller decides.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from ripu_jax import sharding

MODES = ("paper", "release")


@dataclasses.dataclass(frozen=True)
class Selection:
  """The superpixels to label this round."""
  picks: np.ndarray  # int32 [P, 2]: (frame, superpixel), in pick order
  pixels: int  # pixels of the picked superpixels
  budget_reached: bool  # False when the walk ran out of superpixels first


@jax.jit
def _walk(overlap, key, available):
  """Winner position for each position of each scene's VE order, -1 where skipped.

  overlap bool [B, M, M], key float32 [B, M] and available bool [B, M], all in VE order.
  """
  b, m = key.shape
  positions = jnp.arange(m, dtype=jnp.int32)

  def step(p, state):
    avail, winners = state
    row = lax.dynamic_index_in_dim(overlap, p, axis=1, keepdims=False)
    here = lax.dynamic_index_in_dim(avail, p, axis=1, keepdims=False)
    cand = avail & row
    best = jnp.argmax(jnp.where(cand, key, -jnp.inf), axis=1).astype(jnp.int32)
    winner = jnp.where(jnp.any(cand, axis=1), best, p)
    winner = jnp.where(here, winner, -1)
    taken = (cand & here[:, None]) | (positions[None, :] == winner[:, None])
    winners = lax.dynamic_update_index_in_dim(winners, winner, p, axis=1)
    return avail & ~taken, winners

  init = (available, jnp.full((b, m), -1, jnp.int32))
  return lax.fori_loop(0, m, step, init)[1]


def _chunk_size(num_scenes: int, m: int, max_chunk_bytes: int) -> int:
  """Scenes per device call: a power of two (few compiled shapes) within the byte limit."""
  fit = max(1, max_chunk_bytes // max(1, m * m))
  size = 1
  while size * 2 <= fit and size < num_scenes:
    size *= 2
  return size


def _check(view_entropy, view_divergence, scene_ids, pixel_counts, labelled, budget, mode):
  ve = np.asarray(view_entropy, np.float32)
  if ve.ndim != 2:
    raise ValueError(f"view_entropy must be [N_frames, S] region scores, got {ve.shape}")
  shapes = {"view_divergence": np.shape(view_divergence), "pixel_counts": np.shape(pixel_counts),
            "labelled": np.shape(labelled)}
  for name, shape in shapes.items():
    if tuple(shape) != ve.shape:
      raise ValueError(f"{name} must have view_entropy's shape {ve.shape}, got {tuple(shape)}")
  if tuple(np.shape(scene_ids)) != ve.shape[:1]:
    raise ValueError(f"scene_ids must be int [N_frames] = [{ve.shape[0]}], got "
                     f"{tuple(np.shape(scene_ids))}")
  vd = np.asarray(view_divergence, np.float32)
  if not (np.all(np.isfinite(ve)) and np.all(np.isfinite(vd))):
    raise ValueError("region scores must be finite (NaN or inf in view_entropy/divergence)")
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if not budget > 0:
    raise ValueError(f"budget must be a positive number of pixels, got {budget!r}")
  counts = np.asarray(pixel_counts)
  if np.any(counts < 0):
    raise ValueError("pixel_counts must be >= 0 (0 marks a superpixel absent from its frame)")
  return ve, vd, counts.astype(np.int64), np.asarray(labelled, bool)


def select_superpixels(view_entropy, view_divergence, scene_ids,
                       overlap_tables: Mapping[int, np.ndarray] | Sequence[np.ndarray],
                       pixel_counts, labelled, budget: int, *, mode: str = "release",
                       max_chunk_bytes: int = 1 << 28, mesh=None) -> Selection:
  """Runs the selection walk over all training frames; returns the picks in pick order.

  view_entropy, view_divergence: float [N_frames, S] region scores (superpixel means).
  scene_ids: int [N_frames], the scene of each frame.
  overlap_tables: overlap_tables[k] for each scene id k (a mapping or a sequence indexed by
    scene id): bool [F_k, S, F_k, S] (`scoring.overlaps` of the scene's coverage table), its
    frames being the frames of scene k in ascending frame index.
  pixel_counts: int [N_frames, S] pixels per superpixel, 0 for one absent from its frame
    (never picked). labelled: bool [N_frames, S], labelled before this round (never picked).
  budget: pixels to label this round. mode: "release" (VD truncated to an int) or "paper".
  max_chunk_bytes: bound on the overlap relations sent to one device at once.
  mesh: scenes of a chunk are split over its data axis (each process of a multi-host run
    passing the same arguments gets the same picks); None: the default device.
  """
  ve, vd, counts, labelled = _check(view_entropy, view_divergence, scene_ids, pixel_counts,
                                    labelled, budget, mode)
  num_frames, s = ve.shape
  scene_ids = np.asarray(scene_ids)
  key = vd.astype(np.int32).astype(np.float32) if mode == "release" else vd
  flat_frame, flat_spx = np.divmod(np.arange(num_frames * s), s)
  order = np.lexsort((flat_spx, flat_frame, -ve.reshape(-1)))
  rank = np.empty(num_frames * s, np.int64)
  rank[order] = np.arange(num_frames * s)
  rank = rank.reshape(num_frames, s)
  available = (counts > 0) & ~labelled

  scenes = []
  for k in np.unique(scene_ids):
    frames = np.flatnonzero(scene_ids == k)
    try:
      table = np.asarray(overlap_tables[int(k)])
    except (KeyError, IndexError) as e:
      raise ValueError(f"no overlap table for scene {int(k)}; overlap_tables must hold one "
                       "per scene id in scene_ids") from e
    if table.shape != (len(frames), s, len(frames), s):
      raise ValueError(f"overlap table of scene {int(k)} must be bool [F, S, F, S] = "
                       f"{(len(frames), s, len(frames), s)} for its {len(frames)} frames, got "
                       f"{table.shape}")
    if table.dtype != bool:
      raise ValueError(f"overlap table of scene {int(k)} has dtype {table.dtype}; pass "
                       "scoring.overlaps(cov) (bool), not the coverage table")
    scenes.append((frames, table))

  m = max(len(frames) for frames, _ in scenes) * s
  devices = 1 if mesh is None else mesh.size
  chunk = _chunk_size(-(-len(scenes) // devices), m, max_chunk_bytes) * devices
  place = jnp.asarray if mesh is None else functools.partial(sharding.put_global_batch,
                                                            mesh=mesh)
  events_rank, events_frame, events_spx = [], [], []
  for start in range(0, len(scenes), chunk):
    part = scenes[start:start + chunk]
    ov = np.zeros((chunk, m, m), bool)
    keys = np.zeros((chunk, m), np.float32)
    avail = np.zeros((chunk, m), bool)
    ranks = np.zeros((chunk, m), np.int64)
    regions = np.zeros((chunk, m, 2), np.int64)
    for b, (frames, table) in enumerate(part):
      size = len(frames) * s
      local_rank = rank[frames].reshape(-1)
      perm = np.argsort(local_rank, kind="stable")
      ov[b, :size, :size] = table.reshape(size, size)[np.ix_(perm, perm)]
      keys[b, :size] = key[frames].reshape(-1)[perm]
      avail[b, :size] = available[frames].reshape(-1)[perm]
      ranks[b, :size] = local_rank[perm]
      regions[b, :size, 0] = frames[perm // s]
      regions[b, :size, 1] = perm % s
    winners = sharding.to_host(_walk(place(ov), place(keys), place(avail)))
    b_idx, p_idx = np.nonzero(winners >= 0)
    events_rank.append(ranks[b_idx, p_idx])
    won = regions[b_idx, winners[b_idx, p_idx]]
    events_frame.append(won[:, 0])
    events_spx.append(won[:, 1])

  ev_rank = np.concatenate(events_rank)
  sequence = np.argsort(ev_rank, kind="stable")
  picks = np.stack([np.concatenate(events_frame)[sequence],
                    np.concatenate(events_spx)[sequence]], axis=1).astype(np.int32)
  total = np.cumsum(counts[picks[:, 0], picks[:, 1]])
  reached = bool(total.size) and bool(total[-1] >= budget)
  if reached:
    stop = int(np.searchsorted(total, budget, side="left")) + 1
    picks = picks[:stop]
    total = total[:stop]
  return Selection(picks=picks, pixels=int(total[-1]) if total.size else 0,
                   budget_reached=reached)


def take_in_score_order(scores: np.ndarray, sizes: np.ndarray, budget: int) -> np.ndarray:
  """Indices into flat candidate arrays, highest score first (ties: lower index), until the
  sizes reach `budget` (the one reaching it included): the baselines' rule, without the walk."""
  order = np.lexsort((np.arange(len(scores)), -scores))
  spent = np.cumsum(sizes[order])
  return order[:int(np.searchsorted(spent, budget)) + 1]
