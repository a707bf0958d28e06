"""A round's scene scores, computed for several scenes at once, one per device of the mesh.

The acquirer hands over scenes as their frames come in; `score_scenes` pads a group of
`mesh.size` of them to one [frames, superpixels] shape, splits the group over the mesh's data
axis (`sharding.put_global_batch`, as RIPU's rounds place their batches), and each device
runs the one-scene program `scoring.round_scores` on its scene (under `shard_map`): the
region view entropy and view divergence (or the entropy baseline's region mean), the
superpixel sizes, and the overlap relation from the dataset's coverage table or from the
frames. Every process of a multi-host run gets every scene's results.

Padding changes no result: padded frames have depth 0, so they are never lifted and, as
targets, keep nothing; padded superpixels are absent (size 0); a padded scene is padding
throughout. Results are cut back to each scene's own shape, bit for bit those of scoring the
scene alone.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ripu_jax import sharding
from ripu_jax.methods.viewal import scoring

# "viewal": view entropy and divergence, overlaps; "entropy": the region mean of the predictive
# entropy; "sizes": superpixel sizes only (for random).
KINDS = ("viewal", "entropy", "sizes")


@dataclasses.dataclass
class Scene:
  """One scene's frames, in ascending frame index."""
  depth: np.ndarray  # float [F, H, W] metres, 0 invalid
  intrinsics: np.ndarray  # float [F, 3, 3]
  pose: np.ndarray  # float [F, 4, 4] camera-to-world
  superpixels: np.ndarray  # int [F, H, W]
  ignore: np.ndarray  # bool [F, H, W]: ground truth 255, scored 0
  probs: np.ndarray | None = None  # float [F, H, W, C] mean MC-dropout softmax
  coverage: np.ndarray | None = None  # float [F, S, F, S] the dataset's stored table

  @functools.cached_property
  def num_superpixels(self) -> int:  # read per scene and per frame: one pass over the ids
    return int(self.superpixels.max()) + 1


@dataclasses.dataclass
class SceneScores:
  """One scene's results, at its own number of frames F and superpixels S."""
  sizes: np.ndarray  # int32 [F, S] pixels of each superpixel (0: absent from the frame)
  region_ve: np.ndarray | None = None  # float32 [F, S] (the entropy baseline's score there)
  region_vd: np.ndarray | None = None  # float32 [F, S], "viewal" only
  overlaps: np.ndarray | None = None  # bool [F, S, F, S], "viewal" only
  pixel_score: np.ndarray | None = None  # float32 [F, H, W] the score the regions average


@functools.lru_cache(maxsize=32)
def _group_program(mesh, kind: str, num_superpixels: int):
  """`scoring.round_scores` of a group of mesh.size scenes [mesh.size, ...], one scene per
  device. Each device runs the one-scene program (under `shard_map`), so the results are
  bitwise those of scoring a scene alone; a vmap over scenes would reorder float sums."""
  def per_device(pixels, depth, intrinsics, pose, ignore, superpixels, coverage,
                 distance_threshold, overlap_threshold):
    def own(x):
      return None if x is None else x[0]

    out = scoring.round_scores(own(pixels), own(depth), own(intrinsics), own(pose), own(ignore),
                               own(superpixels), own(coverage), distance_threshold,
                               overlap_threshold, kind=kind, num_superpixels=num_superpixels)
    return jax.tree.map(lambda y: y[None], out)

  scenes = P(sharding.DATA_AXIS)
  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(scenes,) * 7 + (P(), P()),
                               out_specs=scenes, check_vma=False))


def _pad(arrays: Sequence[np.ndarray], shape: tuple[int, ...], fill, dtype) -> np.ndarray:
  """The arrays stacked into [len(arrays) + padding rows, *shape], each in the top corner."""
  out = np.full(shape, fill, dtype)
  for row, array in enumerate(arrays):
    out[(row, *(slice(0, n) for n in array.shape))] = array
  return out


def score_scenes(scenes: Sequence[Scene], *, kind: str, mesh, distance_threshold: float = 1.0,
                 overlap_threshold: float = 0.25,
                 pixel_scores: bool = False) -> list[SceneScores]:
  """Scores of each scene (module docstring), in groups of mesh.size scenes split over the
  mesh's data axis.

  Every process of a multi-host run must call this with the same scenes (a round's pool
  passes are whole on every process); each gets every scene's results. `pixel_scores` also
  returns the pixel score the regions average (for overlays).
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  if not scenes:
    return []
  for scene in scenes:
    s = scene.num_superpixels
    scoring.check_scene(scene.depth, scene.intrinsics, scene.pose, ignore=scene.ignore,
                        probs=None if kind == "sizes" else scene.probs,
                        superpixels=scene.superpixels, num_superpixels=s)
    if kind != "sizes" and scene.probs is None:
      raise ValueError(f"kind {kind!r} needs each scene's probs")
    if scene.coverage is not None:
      f = len(scene.depth)
      if tuple(scene.coverage.shape) != (f, s, f, s):
        raise ValueError(f"a scene's coverage table must be [F, S, F, S] = {(f, s, f, s)}, "
                         f"got {tuple(scene.coverage.shape)}")
  given = [scene.coverage is not None for scene in scenes]
  if kind == "viewal" and any(given) and not all(given):
    raise ValueError("give a coverage table for every scene or for none")
  height, width = scenes[0].depth.shape[1:]
  if any(scene.depth.shape[1:] != (height, width) for scene in scenes):
    raise ValueError("the scenes of a round must share one frame size; got "
                     f"{sorted({scene.depth.shape[1:] for scene in scenes})}")
  results = []
  for start in range(0, len(scenes), mesh.size):
    results += _score_group(scenes[start:start + mesh.size], kind, mesh, distance_threshold,
                            overlap_threshold, pixel_scores)
  return results


def _score_group(scenes: Sequence[Scene], kind: str, mesh, distance_threshold: float,
                 overlap_threshold: float, pixel_scores: bool) -> list[SceneScores]:
  """At most mesh.size scenes, padded to one shape and one scene per device."""
  group = mesh.size
  frames = max(len(scene.depth) for scene in scenes)
  s = max(scene.num_superpixels for scene in scenes)
  height, width = scenes[0].depth.shape[1:]
  image = (group, frames, height, width)

  def stack(name, fill, dtype, extra=()):
    return _pad([getattr(scene, name) for scene in scenes], (*image, *extra), fill, dtype)

  intrinsics = np.tile(np.eye(3, dtype=np.float32), (group, frames, 1, 1))
  pose = np.tile(np.eye(4, dtype=np.float32), (group, frames, 1, 1))
  for row, scene in enumerate(scenes):
    intrinsics[row] = scene.intrinsics[0]  # padded frames: any camera matrix (depth 0)
    intrinsics[row, :len(scene.depth)] = scene.intrinsics
    pose[row, :len(scene.depth)] = scene.pose
  inputs = dict(pixels=None, depth=stack("depth", 0.0, np.float32), intrinsics=intrinsics,
                pose=pose, ignore=stack("ignore", True, bool),
                superpixels=stack("superpixels", 0, np.int32), coverage=None)
  if kind != "sizes":
    classes = scenes[0].probs.shape[-1]
    inputs["pixels"] = stack("probs", 1.0 / classes, np.float32, (classes,))
  if kind == "viewal" and scenes[0].coverage is not None:
    inputs["coverage"] = _pad([scene.coverage for scene in scenes],
                              (group, frames, s, frames, s), 0.0, np.float32)
  placed = {name: None if value is None else sharding.put_global_batch(value, mesh)
            for name, value in inputs.items()}
  if kind == "entropy":
    placed["pixels"] = scoring.predictive_entropy(placed["pixels"], placed["ignore"])
  program = _group_program(mesh, {"entropy": "score"}.get(kind, kind), s)
  out = program(*placed.values(), jnp.float32(distance_threshold),
                jnp.float32(overlap_threshold))
  host = {name: sharding.to_host(value) for name, value in out.items()
          if name != "pixel_score" or pixel_scores}
  results = []
  for row, scene in enumerate(scenes):
    f, n = len(scene.depth), scene.num_superpixels
    cut = {"sizes": host["sizes"][row, :f, :n]}
    for name in ("region_ve", "region_vd"):
      if name in host:
        cut[name] = host[name][row, :f, :n]
    if "overlaps" in host:
      cut["overlaps"] = host["overlaps"][row, :f, :n, :f, :n]
    if "pixel_score" in host:
      cut["pixel_score"] = host["pixel_score"][row, :f]
    results.append(SceneScores(**cut))
  return results
