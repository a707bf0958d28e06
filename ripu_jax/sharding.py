"""The device mesh and how batches are placed on it.

One 1-D mesh named "data" spans every device of every process: training, evaluation and
selection are data-parallel over it, and parameters are replicated. For training and
evaluation each process reads only its own share of a batch and `put_batch` assembles the
global array from those process-local pieces; a selection round's batches, which every
process needs whole to keep the same ledger, go through `put_global_batch`, and results come
back whole with `to_host`. The same code runs on one host or several.
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


def put_global_batch(array: np.ndarray, mesh: Mesh) -> jax.Array:
  """A batch every process holds whole -> the global array, split over the data axis (each
  process places only its own devices' rows)."""
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, batch_sharding(mesh),
                                      lambda index: array[index])


def to_host(array) -> np.ndarray:
  """The whole value of a (possibly multi-process) array as numpy, on every process."""
  if not isinstance(array, jax.Array) or array.is_fully_addressable:
    return np.asarray(array)
  if array.is_fully_replicated:
    return np.asarray(array.addressable_data(0))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def replicate(tree, mesh: Mesh):
  """A pytree of arrays (PRNG keys included) replicated over the mesh. With several
  processes each builds its copy from its own values, which must be equal everywhere (the
  same seed, the same checkpoint): jax moves no data between hosts."""
  target = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, target)

  def place(leaf):
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(place(jax.random.key_data(leaf)),
                                      impl=jax.random.key_impl(leaf))
    if isinstance(leaf, jax.Array) and leaf.sharding == target:
      return leaf
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index])

  return jax.tree.map(place, tree)
