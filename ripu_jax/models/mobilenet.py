"""MobileNetV2 in torchvision's layout, dilated for segmentation (ViewAL's backbone).

Layers mirror torchvision's `mobilenet_v2().features[0:18]`: a 3x3 stride-2 stem and 17
inverted residual blocks (1x1 expansion, 3x3 depthwise, linear 1x1 projection; ReLU6; a
residual sum where stride 1 keeps the width). The final 1x1 conv to 1280 channels
(`features.18`) and the classifier are left out: DeepLab-v3+ feeds its ASPP the 320-channel
map of the last block. ImageNet weights load by a mechanical renaming of torchvision's
state-dict keys (`features.14.conv.1.0.weight` is block 14's depthwise kernel).

Output stride: the stride-2s past `output_stride` become dilations. Two rules exist:
"stage" (default; ViewAL's release and the PyTorch DeepLab-v3+ it builds on): a stage whose
stride is dropped keeps the current rate for all its blocks and later stages run at
rate * stride, so at output stride 16 the 160-channel stage stays undilated and the 320
stage runs at dilation 2; "block" (TensorFlow DeepLab, torchvision's
`replace_stride_with_dilation`): only the block that drops the stride keeps the current
rate, so the rest of the 160 stage is dilated too. Features: {"low": output of
`features[3]` (stride 4, 24 channels at width 1), "out": output of `features[17]`}.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ripu_jax.models import torchvision_weights
from ripu_jax.models.layers import (
    BATCH_NORM_EPS,
    BatchNorm,
    Conv,
    FrozenBatchNorm,
    canonical_dtype,
    check_bn_epsilon,
    check_norm,
    make_norm,
)

# torchvision's inverted residual setting: expansion t, channels c, blocks n, stride s.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LOW_INDEX = 3  # features[0:4] give the stride-4 "low" map.
OUTPUT_STRIDES = (8, 16, 32)
DILATION_RULES = ("stage", "block")
MOBILENET_WEIGHTS_FILE = "weights/mobilenet_v2.npz"


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's channel rounding: nearest multiple of `divisor`, never 10% below."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


def _relu6(x: jax.Array) -> jax.Array:
  return jnp.clip(x, 0, 6).astype(x.dtype)


class StemBlock(nnx.Module):
  """3x3 stride-2 conv -> batch norm -> ReLU6 (torchvision's `features.0`)."""

  def __init__(self, in_features: int, out_features: int, *, norm: str, eps: float,
               dtype: Any, rngs: nnx.Rngs):
    self.conv = Conv(in_features, out_features, 3, stride=2, dtype=dtype, rngs=rngs)
    self.bn = make_norm(norm, out_features, eps=eps, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return _relu6(self.bn(self.conv(x)))


class InvertedResidual(nnx.Module):
  """torchvision's InvertedResidual with a dilation for its depthwise conv.

  A stride-2 depthwise conv runs at stride 1 and keeps every other row and column: the
  same numbers (torch's padding 1), without XLA CPU's slow strided grouped convolution.
  """

  def __init__(self, in_features: int, out_features: int, *, stride: int, dilation: int,
               expand_ratio: int, norm: str, eps: float, dtype: Any, rngs: nnx.Rngs):
    if stride not in (1, 2):
      raise ValueError(f"stride must be 1 or 2, got {stride}")
    hidden = int(round(in_features * expand_ratio))
    self.stride = stride
    self.dilation = dilation
    self.use_residual = stride == 1 and in_features == out_features
    if expand_ratio != 1:
      self.expand_conv = Conv(in_features, hidden, 1, dtype=dtype, rngs=rngs)
      self.expand_bn = make_norm(norm, hidden, eps=eps, dtype=dtype)
    else:
      self.expand_conv = None
      self.expand_bn = None
    self.depthwise_conv = Conv(hidden, hidden, 3, dilation=dilation, groups=hidden,
                               dtype=dtype, rngs=rngs)
    self.depthwise_bn = make_norm(norm, hidden, eps=eps, dtype=dtype)
    self.project_conv = Conv(hidden, out_features, 1, dtype=dtype, rngs=rngs)
    self.project_bn = make_norm(norm, out_features, eps=eps, dtype=dtype)

  def torchvision_parts(
      self) -> list[tuple[str, Conv | None, FrozenBatchNorm | BatchNorm | None]]:
    """(key prefix inside `conv.`, conv or None, batch norm or None) in torchvision's order."""
    parts = []
    if self.expand_conv is not None:
      parts.append(("0.0", self.expand_conv, None))
      parts.append(("0.1", None, self.expand_bn))
    index = len(parts) // 2
    parts.append((f"{index}.0", self.depthwise_conv, None))
    parts.append((f"{index}.1", None, self.depthwise_bn))
    parts.append((f"{index + 1}", self.project_conv, None))
    parts.append((f"{index + 2}", None, self.project_bn))
    return parts

  def __call__(self, x: jax.Array) -> jax.Array:
    y = x
    if self.expand_conv is not None:
      y = _relu6(self.expand_bn(self.expand_conv(y)))
    y = self.depthwise_conv(y)
    if self.stride == 2:
      y = y[:, ::2, ::2, :]
    y = _relu6(self.depthwise_bn(y))
    y = self.project_bn(self.project_conv(y))
    return x + y if self.use_residual else y


def _block_plan(output_stride: int, rule: str) -> list[tuple[int, int, int, int]]:
  """(expand ratio, torchvision channels, stride, dilation) per block."""
  plan = []
  current_stride, rate = 2, 1  # after the stem

  def place(stride: int) -> tuple[int, int]:
    # Past the output stride a stride-2 becomes a dilation, applied from the next unit on.
    nonlocal current_stride, rate
    if current_stride == output_stride:
      dilation = rate
      rate *= stride
      return 1, dilation
    current_stride *= stride
    return stride, 1

  for expand, channels, count, stride in INVERTED_RESIDUAL_SETTING:
    if rule == "stage":
      first_stride, dilation = place(stride)
      strides, dilations = [first_stride] + [1] * (count - 1), [dilation] * count
    else:
      strides, dilations = [], []
      for index in range(count):
        block_stride, dilation = place(stride if index == 0 else 1)
        strides.append(block_stride)
        dilations.append(dilation)
    plan += [(expand, channels, s, d) for s, d in zip(strides, dilations)]
  return plan


class MobileNetV2(nnx.Module):
  """MobileNetV2 feature extractor (torchvision layout), output stride 16 by default.

  Attributes:
    in_channels: channels of the input images (3 for RGB).
    low_features: channels of the "low" map (24 at width 1).
    out_features: channels of the "out" map (320 at width 1).
    output_stride: input size / "out" size.
    dilations: the depthwise dilation of each of the 17 blocks.
    norm: the batch-norm kind, one of `NORMS`.
  """

  def __init__(
      self,
      *,
      width_multiplier: float = 1.0,
      round_nearest: int = 8,
      output_stride: int = 16,
      dilation_rule: str = "stage",
      in_channels: int = 3,
      bn_epsilon: float = BATCH_NORM_EPS,
      norm: str = "frozen",
      dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Builds the network with random weights (torchvision's init: He normal, fan out).

    Args:
      width_multiplier: torchvision's `width_mult`; channels are `make_divisible(c * w,
        round_nearest)`.
      round_nearest: torchvision's `round_nearest` (8).
      output_stride: 8, 16 or 32 (32 = torchvision's classification network).
      dilation_rule: "stage" (ViewAL's release) or "block" (TensorFlow DeepLab), see the
        module docstring.
      in_channels: channels of the input (3 for RGB).
      bn_epsilon: epsilon of every batch norm (torchvision's 1e-5).
      norm: "frozen", "batch" or "batch_affine", as `ResNet`. A BatchNorm model starts in
        training mode.
      dtype: compute dtype (float32 or bfloat16); parameters stay float32.
      rngs: random streams; `params` initialises the convolutions.
    """
    if width_multiplier <= 0:
      raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
    if int(round_nearest) < 1:
      raise ValueError(f"round_nearest must be >= 1, got {round_nearest}")
    if output_stride not in OUTPUT_STRIDES:
      raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    if dilation_rule not in DILATION_RULES:
      raise ValueError(f"dilation_rule must be one of {DILATION_RULES}, got {dilation_rule!r}")
    if int(in_channels) < 1:
      raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    eps = check_bn_epsilon(bn_epsilon)
    self.norm = check_norm(norm)
    self.dtype = canonical_dtype(dtype)
    self.in_channels = int(in_channels)
    self.output_stride = int(output_stride)
    self.dilation_rule = dilation_rule
    layer = dict(norm=self.norm, eps=eps, dtype=self.dtype, rngs=rngs)
    in_features = make_divisible(STEM_CHANNELS * width_multiplier, int(round_nearest))
    blocks: list[nnx.Module] = [StemBlock(self.in_channels, in_features, **layer)]
    plan = _block_plan(self.output_stride, dilation_rule)
    for expand, channels, stride, dilation in plan:
      out_features = make_divisible(channels * width_multiplier, int(round_nearest))
      blocks.append(InvertedResidual(in_features, out_features, stride=stride,
                                     dilation=dilation, expand_ratio=expand, **layer))
      in_features = out_features
    self.features = nnx.List(blocks)
    self.dilations = tuple(dilation for _, _, _, dilation in plan)
    self.low_features = make_divisible(
        INVERTED_RESIDUAL_SETTING[1][1] * width_multiplier, int(round_nearest))
    self.out_features = in_features

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Maps NHWC images to {"low": features[3] output, "out": features[17] output}."""
    if images.ndim != 4 or images.shape[-1] != self.in_channels:
      raise ValueError(
          f"expected NHWC images with {self.in_channels} channels, got shape {images.shape}")
    x = images
    low = None
    for index, block in enumerate(self.features):
      x = block(x)
      if index == LOW_INDEX:
        low = x
    return {"low": low, "out": x}


# ---------------------------------------------------------------------------------------
# torchvision weights

def _torchvision_targets(model: MobileNetV2) -> torchvision_weights.Targets:
  """torchvision key -> (variable to fill, torch-layout shape it expects)."""
  targets: torchvision_weights.Targets = {}
  add_conv = functools.partial(torchvision_weights.conv_target, targets)
  add_bn = functools.partial(torchvision_weights.bn_target, targets)
  stem = model.features[0]
  add_conv("features.0.0", stem.conv)
  add_bn("features.0.1", stem.bn)
  for index in range(1, len(model.features)):
    for part, conv, bn in model.features[index].torchvision_parts():
      prefix = f"features.{index}.conv.{part}"
      if conv is not None:
        add_conv(prefix, conv)
      else:
        add_bn(prefix, bn)
  return targets


def _is_ignored_key(key: str) -> bool:
  # features.18 (the 1x1 conv to 1280 channels) and the classifier are not part of the
  # segmentation backbone.
  return (key.startswith("classifier.") or key.startswith("features.18.")
          or key.endswith("num_batches_tracked"))


def load_mobilenet_weights(model: MobileNetV2, state_dict: Mapping[str, Any], *,
                           keep_random: Sequence[str] = ()) -> MobileNetV2:
  """Copies a torchvision `mobilenet_v2` state dict (key -> array) into `model`, in place.

  Fills every conv kernel and batch norm (weight, bias, running statistics) of
  `features.0` to `features.17`; `features.18.*`, `classifier.*` and `num_batches_tracked`
  are ignored. Any other missing, unexpected or mis-shaped key raises a ValueError naming
  it. A stem over other than 3 input channels cannot take ImageNet's: pass
  `keep_random=("features.0.0",)` to keep it random and load the rest.

  Args:
    model: the MobileNetV2 to fill.
    state_dict: torchvision key names -> arrays.
    keep_random: torchvision keys, or prefixes of them up to a dot, whose variables keep
      their current values.

  Returns:
    `model`.
  """
  torchvision_weights.fill(
      _torchvision_targets(model), state_dict, network="MobileNetV2", ignored=_is_ignored_key,
      keep_random=keep_random, stem="features.0.0", examples="'features.0.0'",
      unexpected_hint="not a torchvision mobilenet_v2?",
      shape_hint=" (width_multiplier or round_nearest differ from the checkpoint's?)")
  return model


def mobilenet_from_torchvision(
    state_dict: Mapping[str, Any],
    *,
    width_multiplier: float = 1.0,
    round_nearest: int = 8,
    output_stride: int = 16,
    dilation_rule: str = "stage",
    in_channels: int = 3,
    bn_epsilon: float = BATCH_NORM_EPS,
    norm: str = "frozen",
    keep_random: Sequence[str] = (),
    dtype: Any = jnp.float32,
) -> MobileNetV2:
  """Builds a MobileNetV2 holding the weights of a torchvision state dict.

  Args: as `MobileNetV2`, and `keep_random` as `load_mobilenet_weights`.
  """
  model = MobileNetV2(width_multiplier=width_multiplier, round_nearest=round_nearest,
                      output_stride=output_stride, dilation_rule=dilation_rule,
                      in_channels=in_channels, bn_epsilon=bn_epsilon, norm=norm, dtype=dtype,
                      rngs=nnx.Rngs(0))
  return load_mobilenet_weights(model, state_dict, keep_random=keep_random)


def load_mobilenet_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads the .npz written by scripts/convert_torchvision_mobilenet.py (key -> array)."""
  return torchvision_weights.read_npz(
      path, "convert torchvision's ImageNet mobilenet_v2 (IMAGENET1K_V1, "
      "mobilenet_v2-b0353104.pth) with scripts/convert_torchvision_mobilenet.py (default "
      f"output {MOBILENET_WEIGHTS_FILE})")
