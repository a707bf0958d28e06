"""The device mesh and how batches are placed on it.

One 1-D mesh named "data" spans every device of every process: training, evaluation and
selection are data-parallel over it, and parameters are replicated. Each process reads
only its own share of a batch (its `process_index`-th slice) and `put_batch` assembles the
global array from those process-local pieces, so the same code runs on one host or several.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def default_mesh() -> Mesh:
  """A 1-D mesh named "data" over all devices (automatic sharding propagation)."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_divisible(name: str, value: int, mesh: Mesh) -> None:
  """Raises when a global batch size does not split over the mesh's devices."""
  if value % mesh.size:
    raise ValueError(f"{name}={value} is not divisible by the {mesh.size} devices; set it "
                     f"to a multiple of {mesh.size} (e.g. --config.{name}={mesh.size})")


def put_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
  """This process's rows of a batch -> the global array, split over the mesh's data axis."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(local))
