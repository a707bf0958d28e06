"""Filling our backbones from torchvision state dicts: one checked copy for every backbone.

A backbone lists its variables under torchvision's key names (`conv_target`, `bn_target`),
and `fill` copies a state dict into them: every key the backbone needs must be there with
torchvision's shape (conv kernels OIHW, turned into our HWIO), keys the backbone does not
have must be ones it ignores (a classifier, `num_batches_tracked`), and `keep_random`
prefixes (e.g. a stem over other than 3 channels) keep their initialisation. Every problem
raises a ValueError naming the key and, where one is known, the fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ripu_jax.errors import MissingWeightsError
from ripu_jax.models.layers import BatchNorm, Conv, FrozenBatchNorm

BN_KEYS = ("weight", "bias", "running_mean", "running_var")
Targets = dict[str, tuple[nnx.Variable, tuple[int, ...]]]


def conv_target(targets: Targets, prefix: str, conv: Conv) -> None:
  """Adds a conv kernel under `<prefix>.weight` with torchvision's (O, I, H, W) shape."""
  kh, kw, in_features, out_features = conv.kernel.shape
  targets[f"{prefix}.weight"] = (conv.kernel, (out_features, in_features, kh, kw))


def bn_target(targets: Targets, prefix: str, bn: FrozenBatchNorm | BatchNorm) -> None:
  """Adds a batch norm's four variables (both kinds hold them under torchvision's names)."""
  if not isinstance(bn, (FrozenBatchNorm, BatchNorm)):
    raise ValueError(f"{prefix} is a {type(bn).__name__}, expected FrozenBatchNorm or "
                     "BatchNorm")
  for name in BN_KEYS:
    variable = getattr(bn, name)
    targets[f"{prefix}.{name}"] = (variable, tuple(variable.shape))


def _kept_random(key: str, keep_random: Sequence[str]) -> bool:
  return any(key == prefix or key.startswith(prefix + ".") for prefix in keep_random)


def fill(targets: Targets, state_dict: Mapping[str, Any], *, network: str,
         ignored: Callable[[str], bool], keep_random: Sequence[str], stem: str,
         examples: str, unexpected_hint: str, shape_hint: str = "") -> None:
  """Copies `state_dict` into `targets` (torchvision key -> (variable, torch shape)).

  network: the backbone's name in messages ("ResNet"); ignored(key): keys it may skip;
  stem: the first conv's key prefix ("conv1"), for the in_channels hint; examples: keys to
  show for keep_random; unexpected_hint / shape_hint: the likely cause of unknown keys / of a
  mis-shaped one.
  """
  keep_random = tuple(keep_random)
  unmatched = [prefix for prefix in keep_random if not any(
      _kept_random(key, (prefix,)) for key in targets)]
  if unmatched:
    raise ValueError(f"keep_random names no variable of this {network}: {unmatched}; give "
                     f"torchvision keys or their prefixes, e.g. {examples}")
  loaded = {key: target for key, target in targets.items()
            if not _kept_random(key, keep_random)}
  missing = [key for key in loaded if key not in state_dict]
  if missing:
    raise ValueError(f"state dict is missing {len(missing)} key(s) the {network} needs, e.g. "
                     f"{missing[:5]}")
  unexpected = [key for key in state_dict if key not in targets and not ignored(key)]
  if unexpected:
    raise ValueError(f"state dict has {len(unexpected)} key(s) this {network} does not have "
                     f"({unexpected_hint}), e.g. {unexpected[:5]}")
  for key, (variable, torch_shape) in loaded.items():
    array = np.asarray(state_dict[key])
    if array.shape != torch_shape:
      hint = shape_hint
      if key == f"{stem}.weight" and array.ndim == 4 and array.shape[1] != torch_shape[1]:
        hint = (f": the stem takes {torch_shape[1]} input channels (in_channels) and these "
                f"weights {array.shape[1]}; pass keep_random=('{stem}',) to keep a random "
                "stem and load everything else")
      raise ValueError(
          f"state dict key {key!r} has shape {array.shape}, expected {torch_shape}{hint}")
    if array.ndim == 4:
      array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    variable.set_value(jnp.asarray(array, variable.dtype))


def read_npz(path: str | os.PathLike, how_to_make: str) -> dict[str, np.ndarray]:
  """The arrays of a converted weights file (key -> array); a missing file raises with
  `how_to_make` it."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise MissingWeightsError(f"pretrained weights file {path!r} does not exist; {how_to_make}")
  with np.load(path, allow_pickle=False) as archive:
    return {key: archive[key] for key in archive.files}
