"""Segmentation networks, their backbones, torchvision weights and a by-name registry.

Configs pick a network by string:

  model = build_model("deeplabv2", num_classes=19, rngs=nnx.Rngs(0),
                      pretrained="weights/resnet101.npz")
  model = build_model("deeplabv3plus_mobilenet", num_classes=13, rngs=nnx.Rngs(0),
                      pretrained="weights/mobilenet_v2.npz")   # ViewAL's network

Every built-in network is a `Segmentor` (backbone + head + optional auxiliary heads):
`model(images)` gives float32 logits, `model(images, outputs=("logits", "aux/0",
"features"))` named outputs. A method's own network registers with `register_model`.
Monte-Carlo dropout passes (networks built with channel dropout): `mc_logits(model, images,
key)`, see `ripu_jax.models.deeplab`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from flax import nnx

# `upsample` is the former name of `upsample_logits`, the very same function.
from ripu_jax.image_ops import upsample_logits
from ripu_jax.image_ops import upsample_logits as upsample
from ripu_jax.models.deeplab import (
    ASPPV2,
    ChannelDropout,
    DeepLabV2,
    DeepLabV3Plus,
    DeepLabV3PlusHead,
    DeepLabV3PlusMobileNet,
    FeatureDropout,
    MCDropoutSegmentor,
    mc_logits,
)
from ripu_jax.models.layers import (
    BATCH_NORM_EPS,
    NORMS,
    BatchNorm,
    Conv,
    FrozenBatchNorm,
    FrozenStat,
    make_norm,
)
from ripu_jax.models.mobilenet import (
    MOBILENET_WEIGHTS_FILE,
    MobileNetV2,
    load_mobilenet_npz,
    load_mobilenet_weights,
    mobilenet_from_torchvision,
)
from ripu_jax.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    load_torchvision_npz,
    load_torchvision_weights,
    resnet_from_torchvision,
)
from ripu_jax.models.segmentor import Segmentor
from ripu_jax.registry import Registry

MODELS: Registry[Callable[..., nnx.Module]] = Registry("model")


def register_model(name: str) -> Callable[[Callable[..., nnx.Module]], Callable[..., nnx.Module]]:
  """Decorator adding a constructor `(num_classes, *, rngs, **kwargs) -> Module` by name."""
  return MODELS.register(name)


register_model("deeplabv2")(DeepLabV2)
register_model("deeplabv3plus")(DeepLabV3Plus)
register_model("deeplabv3plus_mobilenet")(DeepLabV3PlusMobileNet)


def model_names() -> tuple[str, ...]:
  """Names `build_model` accepts."""
  return tuple(MODELS.names())


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
    pretrained: path to an .npz of torchvision ImageNet weights for the backbone, loaded
      into `model.backbone`: a ResNet's (scripts/convert_torchvision_resnet.py) or, for a
      `MobileNetV2` backbone, mobilenet_v2's (scripts/convert_torchvision_mobilenet.py);
      None keeps the random initialisation.
    **kwargs: forwarded to the constructor (depth, blocks, width_multiplier, aux_heads,
      bn_epsilon, channel_dropout, dtype, ...).

  Returns:
    The module.
  """
  model = MODELS.get(name)(num_classes, rngs=rngs, **kwargs)
  if pretrained:
    if isinstance(model.backbone, MobileNetV2):
      load_mobilenet_weights(model.backbone, load_mobilenet_npz(pretrained))
    else:
      load_torchvision_weights(model.backbone, load_torchvision_npz(pretrained))
  return model


__all__ = [
    "ASPPV2",
    "BATCH_NORM_EPS",
    "BasicBlock",
    "BatchNorm",
    "Bottleneck",
    "ChannelDropout",
    "Conv",
    "DeepLabV2",
    "DeepLabV3Plus",
    "DeepLabV3PlusHead",
    "DeepLabV3PlusMobileNet",
    "FeatureDropout",
    "FrozenBatchNorm",
    "FrozenStat",
    "MCDropoutSegmentor",
    "MOBILENET_WEIGHTS_FILE",
    "MobileNetV2",
    "NORMS",
    "ResNet",
    "Segmentor",
    "build_model",
    "load_mobilenet_npz",
    "load_mobilenet_weights",
    "load_torchvision_npz",
    "load_torchvision_weights",
    "make_norm",
    "mc_logits",
    "mobilenet_from_torchvision",
    "model_names",
    "register_model",
    "resnet_from_torchvision",
    "upsample",
    "upsample_logits",
]
