"""Bottleneck ResNet in torchvision's layout, dilated to output stride 8.

Variable names mirror torchvision's state-dict keys (`layer3.4.conv2.weight` lives at
`model.layer3[4].conv2.kernel`) so ImageNet weights load by a mechanical renaming.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ripu_jax.models.layers import Conv, FrozenBatchNorm, canonical_dtype, max_pool_3x3_stride2

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EXPANSION = 4


class Bottleneck(nnx.Module):
  """torchvision's Bottleneck (stride on the 3x3 conv, "ResNet v1.5")."""

  def __init__(
      self,
      in_features: int,
      planes: int,
      *,
      stride: int,
      dilation: int,
      downsample: bool,
      residual_gamma: float,
      dtype: Any,
      rngs: nnx.Rngs,
  ):
    out_features = planes * EXPANSION
    self.conv1 = Conv(in_features, planes, 1, dtype=dtype, rngs=rngs)
    self.bn1 = FrozenBatchNorm(planes, dtype=dtype)
    self.conv2 = Conv(planes, planes, 3, stride=stride, dilation=dilation, dtype=dtype, rngs=rngs)
    self.bn2 = FrozenBatchNorm(planes, dtype=dtype)
    self.conv3 = Conv(planes, out_features, 1, dtype=dtype, rngs=rngs)
    self.bn3 = FrozenBatchNorm(out_features, weight_init=residual_gamma, dtype=dtype)
    if downsample:
      self.downsample_conv = Conv(
          in_features, out_features, 1, stride=stride, dtype=dtype, rngs=rngs)
      self.downsample_bn = FrozenBatchNorm(out_features, dtype=dtype)
    else:
      self.downsample_conv = None
      self.downsample_bn = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    if self.downsample_conv is not None:
      x = self.downsample_bn(self.downsample_conv(x))
    return jax.nn.relu(y + x)


def _scaled(channels: int, width_multiplier: float) -> int:
  return max(1, int(round(channels * width_multiplier)))


class ResNet(nnx.Module):
  """Bottleneck ResNet feature extractor with frozen batch norm.

  Attributes:
    low_features: channels of layer1's output (256 at full width).
    out_features: channels of layer4's output (2048 at full width).
  """

  def __init__(
      self,
      depth: int = 101,
      *,
      blocks: Sequence[int] | None = None,
      width_multiplier: float = 1.0,
      replace_stride_with_dilation: Sequence[bool] = (False, True, True),
      residual_gamma: float = 0.2,
      dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Builds the network with random weights (load ImageNet ones for real training).

    Args:
      depth: 50, 101 or 152; selects torchvision's block counts unless `blocks` is set.
      blocks: four per-stage block counts, overriding `depth` (tiny test models).
      width_multiplier: scales every channel count (1.0 = torchvision's widths).
      replace_stride_with_dilation: per stage 2-4, trade the stride-2 for dilation
        (torchvision semantics: the first block of a dilated stage keeps the previous
        dilation). The default gives output stride 8.
      residual_gamma: initial weight of each block's last batch norm. With frozen
        default statistics a He-initialised deep ResNet blows up at gamma 1; a small
        gamma keeps random-init activations finite. Pretrained weights replace it.
      dtype: compute dtype (float32 or bfloat16); parameters stay float32.
      rngs: random streams; `params` initialises the convolutions.
    """
    if blocks is None:
      if depth not in STAGE_BLOCKS:
        raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
      blocks = STAGE_BLOCKS[depth]
    blocks = tuple(int(b) for b in blocks)
    if len(blocks) != 4 or min(blocks) < 1:
      raise ValueError(f"blocks must be four positive counts, got {blocks}")
    replace = tuple(bool(r) for r in replace_stride_with_dilation)
    if len(replace) != 3:
      raise ValueError(
          f"replace_stride_with_dilation must have 3 entries, got {replace_stride_with_dilation}")
    if width_multiplier <= 0:
      raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
    self.dtype = canonical_dtype(dtype)
    self.blocks = blocks
    stem = _scaled(64, width_multiplier)
    self.conv1 = Conv(3, stem, 7, stride=2, dtype=self.dtype, rngs=rngs)
    self.bn1 = FrozenBatchNorm(stem, dtype=self.dtype)
    in_features = stem
    dilation = 1
    stages = []
    for index, count in enumerate(blocks):
      planes = _scaled(64 * 2**index, width_multiplier)
      stride = 1 if index == 0 else 2
      previous_dilation = dilation
      if index > 0 and replace[index - 1]:
        dilation *= stride
        stride = 1
      layer = []
      for block_index in range(count):
        layer.append(Bottleneck(
            in_features,
            planes,
            stride=stride if block_index == 0 else 1,
            dilation=previous_dilation if block_index == 0 else dilation,
            downsample=block_index == 0 and (stride != 1 or in_features != planes * EXPANSION),
            residual_gamma=residual_gamma,
            dtype=self.dtype,
            rngs=rngs,
        ))
        in_features = planes * EXPANSION
      stages.append(nnx.List(layer))
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.low_features = _scaled(64, width_multiplier) * EXPANSION
    self.out_features = in_features

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Maps NHWC images to {"low": layer1 features, "out": layer4 features}."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"expected NHWC images with 3 channels, got shape {images.shape}")
    x = jax.nn.relu(self.bn1(self.conv1(images)))
    x = max_pool_3x3_stride2(x)
    for block in self.layer1:
      x = block(x)
    low = x
    for layer in (self.layer2, self.layer3, self.layer4):
      for block in layer:
        x = block(x)
    return {"low": low, "out": x}


# ---------------------------------------------------------------------------------------
# torchvision weights

_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def _torchvision_targets(model: ResNet) -> dict[str, tuple[nnx.Variable, tuple[int, ...]]]:
  """torchvision key -> (variable to fill, torch-layout shape it expects)."""
  targets: dict[str, tuple[nnx.Variable, tuple[int, ...]]] = {}

  def add_conv(prefix: str, conv: Conv):
    kh, kw, in_features, out_features = conv.kernel.shape
    targets[f"{prefix}.weight"] = (conv.kernel, (out_features, in_features, kh, kw))

  def add_bn(prefix: str, bn: FrozenBatchNorm):
    for name in _BN_KEYS:
      variable = getattr(bn, name)
      targets[f"{prefix}.{name}"] = (variable, tuple(variable.shape))

  add_conv("conv1", model.conv1)
  add_bn("bn1", model.bn1)
  for layer_name in ("layer1", "layer2", "layer3", "layer4"):
    for index, block in enumerate(getattr(model, layer_name)):
      prefix = f"{layer_name}.{index}"
      for part in ("1", "2", "3"):
        add_conv(f"{prefix}.conv{part}", getattr(block, f"conv{part}"))
        add_bn(f"{prefix}.bn{part}", getattr(block, f"bn{part}"))
      if block.downsample_conv is not None:
        add_conv(f"{prefix}.downsample.0", block.downsample_conv)
        add_bn(f"{prefix}.downsample.1", block.downsample_bn)
  return targets


def _is_ignored_key(key: str) -> bool:
  return key.startswith("fc.") or key.endswith("num_batches_tracked")


def load_torchvision_weights(model: ResNet, state_dict: Mapping[str, Any]) -> ResNet:
  """Copies a torchvision ResNet state dict (key -> array) into `model`, in place.

  `fc.*` and `num_batches_tracked` are ignored; any other missing, unexpected or
  mis-shaped key raises a ValueError naming it.
  """
  targets = _torchvision_targets(model)
  missing = [key for key in targets if key not in state_dict]
  if missing:
    raise ValueError(
        f"state dict is missing {len(missing)} key(s) the ResNet needs, e.g. "
        f"{missing[:5]}")
  unexpected = [key for key in state_dict if key not in targets and not _is_ignored_key(key)]
  if unexpected:
    raise ValueError(
        f"state dict has {len(unexpected)} key(s) this ResNet does not have (wrong depth "
        f"or blocks?), e.g. {unexpected[:5]}")
  for key, (variable, torch_shape) in targets.items():
    array = np.asarray(state_dict[key])
    if array.shape != torch_shape:
      raise ValueError(f"state dict key {key!r} has shape {array.shape}, expected {torch_shape}")
    if array.ndim == 4:
      array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    variable.set_value(jnp.asarray(array, variable.dtype))
  return model


def resnet_from_torchvision(
    state_dict: Mapping[str, Any],
    depth: int = 101,
    *,
    blocks: Sequence[int] | None = None,
    width_multiplier: float = 1.0,
    replace_stride_with_dilation: Sequence[bool] = (False, True, True),
    dtype: Any = jnp.float32,
) -> ResNet:
  """Builds a dilated ResNet holding the weights of a torchvision state dict.

  Args:
    state_dict: torchvision key names -> arrays (numpy or anything `np.asarray` takes),
      e.g. from `load_torchvision_npz`.
    depth, blocks, width_multiplier, replace_stride_with_dilation, dtype: as `ResNet`.

  Returns:
    The ResNet, every weight and batch-norm statistic taken from `state_dict`.
  """
  model = ResNet(
      depth,
      blocks=blocks,
      width_multiplier=width_multiplier,
      replace_stride_with_dilation=replace_stride_with_dilation,
      dtype=dtype,
      rngs=nnx.Rngs(0),
  )
  return load_torchvision_weights(model, state_dict)


def load_torchvision_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads the .npz written by scripts/convert_torchvision_resnet.py (key -> array)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ValueError(
        f"pretrained weights file {path!r} does not exist; convert torchvision's "
        f"resnet101-5d3b4d8f.pth with scripts/convert_torchvision_resnet.py")
  with np.load(path, allow_pickle=False) as archive:
    return {key: archive[key] for key in archive.files}
