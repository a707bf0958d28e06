"""Superpixel coverage per scene, computed once and stored with the dataset.

ViewAL's overlap relation between the superpixels of a scene's frames depends on the frames'
depth, pose, intrinsics and superpixels, never on the model, so it is computed when a dataset
is prepared (`python -m ripu_jax.methods.viewal.prepare`) and stored in the dataset's folder
as coverage/<scene>.npz: the table cov [F, S, F, S] (`scoring.coverage_table`, the scene's
frames in dataset order), the frames' names and the visibility threshold it used (1 m, the
release's). The synthetic rooms generated in memory compute a scene's table on first use and
keep it. Opened splits offer `scene_coverage(scene_id, distance_threshold)`; the acquirer
reads the tables through it and computes a table itself only for another threshold.
"""

from __future__ import annotations

import os

import numpy as np

from ripu_jax.methods.viewal import scoring

FOLDER = "coverage"
DISTANCE_THRESHOLD = 1.0  # metres: the release's visibility test, the prepared tables' value


class CoverageMissingError(FileNotFoundError):
  """A prepared dataset lacks a scene's coverage table (prepared before tables were stored,
  or the step was interrupted)."""


def scene_indices(split, scene_id: int) -> np.ndarray:
  """Sorted frame indices of one scene in a split."""
  return np.flatnonzero(np.asarray(split.scene_ids) == int(scene_id))


def compute(split, scene_id: int, distance_threshold: float = DISTANCE_THRESHOLD) -> np.ndarray:
  """float32 [F, S, F, S]: the coverage table of one scene from its frames in `split`."""
  frames = [split[int(i)] for i in scene_indices(split, scene_id)]
  if not frames:
    raise ValueError(f"split has no frames of scene {scene_id}")
  stack = {name: np.stack([np.asarray(f[name]) for f in frames])
           for name in ("depth", "intrinsics", "pose", "superpixels")}
  superpixels = stack["superpixels"].astype(np.int32)
  return np.asarray(scoring.coverage_table(
      stack["depth"], stack["intrinsics"], stack["pose"], superpixels,
      int(superpixels.max()) + 1, distance_threshold=distance_threshold))


def table_path(directory: str, scene_name: str) -> str:
  return os.path.join(directory, FOLDER, f"{scene_name}.npz")


def write_tables(directory: str, splits, *, progress: bool = False) -> int:
  """Writes the missing coverage tables of every scene of `splits` (opened splits of the
  prepared dataset in `directory`); returns how many it wrote.

  Each table goes to a temporary name, then is renamed: an interrupted step leaves no file
  that reads as a finished table, and running it again writes only what is missing.
  """
  import tqdm  # pylint: disable=g-import-not-at-top
  todo = [(split, int(scene)) for split in splits for scene in np.unique(split.scene_ids)
          if not os.path.exists(table_path(directory, split.scene_names[int(scene)]))]
  os.makedirs(os.path.join(directory, FOLDER), exist_ok=True)
  for split, scene in tqdm.tqdm(todo, desc="coverage tables", unit=" scene",
                                disable=not progress, dynamic_ncols=True):
    name = split.scene_names[scene]
    table = compute(split, scene)
    frames = np.asarray([split.name(int(i)) for i in scene_indices(split, scene)])
    target = table_path(directory, name)
    temporary = target + ".partial.npz"
    np.savez_compressed(temporary, cov=table, frames=frames,
                        distance_threshold=np.float32(DISTANCE_THRESHOLD))
    os.replace(temporary, target)
  return len(todo)


def read_table(split, scene_id: int, distance_threshold: float = DISTANCE_THRESHOLD, *,
               prepare_hint: str) -> np.ndarray:
  """The stored table of one scene of a prepared split (its `directory` holds the dataset);
  computed from the frames instead when `distance_threshold` is not the stored one's.
  prepare_hint: the command that writes missing tables, for the error."""
  name = split.scene_names[int(scene_id)]
  path = table_path(split.directory, name)
  if not os.path.exists(path):
    raise CoverageMissingError(
        f"{split.dataset_name} in {split.directory} has no coverage table for scene {name!r} "
        f"({path}); write the missing tables with: {prepare_hint} (it keeps what is there)")
  with np.load(path) as stored:
    if not np.isclose(float(stored["distance_threshold"]), distance_threshold):
      return compute(split, scene_id, distance_threshold)
    frames = [split.name(int(i)) for i in scene_indices(split, scene_id)]
    if list(stored["frames"]) != frames:
      raise ValueError(f"the coverage table {path} was written for other frames of scene "
                       f"{name!r} than the dataset holds; delete {os.path.dirname(path)} and "
                       f"run: {prepare_hint}")
    return np.asarray(stored["cov"])
