"""Segmentation networks, their backbone, torchvision weights and a by-name registry.

Configs pick a network by string:

  model = build_model("deeplabv2", num_classes=19, rngs=nnx.Rngs(0),
                      pretrained="weights/resnet101.npz")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from flax import nnx

from ripu_jax.models.deeplab import ASPPV2, DeepLabV2, DeepLabV3Plus, DeepLabV3PlusHead, upsample
from ripu_jax.models.layers import BATCH_NORM_EPS, Conv, FrozenBatchNorm, FrozenStat
from ripu_jax.models.resnet import (
    ResNet,
    load_torchvision_npz,
    load_torchvision_weights,
    resnet_from_torchvision,
)

_REGISTRY: dict[str, Callable[..., nnx.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nnx.Module]], Callable[..., nnx.Module]]:
  """Decorator adding a constructor `(num_classes, *, rngs, **kwargs) -> Module` by name."""

  def decorator(constructor: Callable[..., nnx.Module]) -> Callable[..., nnx.Module]:
    if name in _REGISTRY:
      raise ValueError(f"a model named {name!r} is already registered")
    _REGISTRY[name] = constructor
    return constructor

  return decorator


register_model("deeplabv2")(DeepLabV2)
register_model("deeplabv3plus")(DeepLabV3Plus)


def model_names() -> tuple[str, ...]:
  """Names `build_model` accepts."""
  return tuple(sorted(_REGISTRY))


def build_model(
    name: str,
    num_classes: int,
    *,
    rngs: nnx.Rngs,
    pretrained: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nnx.Module:
  """Builds a registered network, optionally with ImageNet backbone weights.

  Args:
    name: one of `model_names()`, e.g. "deeplabv2" or "deeplabv3plus".
    num_classes: output channels.
    rngs: random streams for the initialisation (and dropout).
    pretrained: path to an .npz of torchvision ResNet weights (see
      scripts/convert_torchvision_resnet.py), loaded into `model.backbone`; None keeps
      the random initialisation.
    **kwargs: forwarded to the constructor (depth, blocks, width_multiplier, dtype, ...).

  Returns:
    The module.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; expected one of {model_names()}")
  model = _REGISTRY[name](num_classes, rngs=rngs, **kwargs)
  if pretrained:
    load_torchvision_weights(model.backbone, load_torchvision_npz(pretrained))
  return model


__all__ = [
    "ASPPV2",
    "BATCH_NORM_EPS",
    "Conv",
    "DeepLabV2",
    "DeepLabV3Plus",
    "DeepLabV3PlusHead",
    "FrozenBatchNorm",
    "FrozenStat",
    "ResNet",
    "build_model",
    "load_torchvision_npz",
    "load_torchvision_weights",
    "model_names",
    "register_model",
    "resnet_from_torchvision",
    "upsample",
]
