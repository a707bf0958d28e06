"""ResNet in torchvision's layout (basic or bottleneck blocks), dilated for segmentation.

Variable names mirror torchvision's state-dict keys (`layer3.4.conv2.weight` lives at
`model.layer3[4].conv2.kernel`) so ImageNet weights load by a mechanical renaming. Depths 18
and 34 use torchvision's BasicBlock, 50/101/152 its Bottleneck. The output stride is set per
stage: a stage's stride-2 is kept, traded for dilation (torchvision's
`replace_stride_with_dilation`; DeepLab's default, output stride 8) or dropped without
dilation (`drop_stride`; ELN's ResNet-34 at output stride 16). `multi_grid` scales layer4's
per-block dilations as in DeepLab-v3 (ELN's output-stride-16 segmentation backbone).
Batch norm is frozen by default (`norm="frozen"`); `norm="batch"` / `"batch_affine"` learn
batch statistics (ELN), with fixed or trained scale and shift.
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
    Conv,
    canonical_dtype,
    check_bn_epsilon,
    check_norm,
    make_norm,
    max_pool_3x3_stride2,
)

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                152: (3, 8, 36, 3)}
BASIC_DEPTHS = (18, 34)  # torchvision builds these from BasicBlock, the others from Bottleneck.
EXPANSION = 4  # Bottleneck's output channels per plane.


class _ResidualBlock(nnx.Module):
  """What both block types share: the optional projection shortcut and the residual sum."""

  def _shortcut(self, in_features: int, out_features: int, *, stride: int, downsample: bool,
                eps: float, norm: str, dtype: Any, rngs: nnx.Rngs) -> None:
    if downsample:
      self.downsample_conv = Conv(
          in_features, out_features, 1, stride=stride, dtype=dtype, rngs=rngs)
      self.downsample_bn = make_norm(norm, out_features, eps=eps, dtype=dtype)
    else:
      self.downsample_conv = None
      self.downsample_bn = None

  def _add_residual(self, x: jax.Array, y: jax.Array) -> jax.Array:
    if self.downsample_conv is not None:
      x = self.downsample_bn(self.downsample_conv(x))
    return jax.nn.relu(y + x)


class Bottleneck(_ResidualBlock):
  """torchvision's Bottleneck (stride on the 3x3 conv, "ResNet v1.5")."""

  expansion = EXPANSION
  parts = ("1", "2", "3")  # conv{i} / bn{i} pairs, in torchvision's key order.

  def __init__(
      self,
      in_features: int,
      planes: int,
      *,
      stride: int,
      dilation: int,
      downsample: bool,
      residual_gamma: float,
      bn_epsilon: float = BATCH_NORM_EPS,
      norm: str = "frozen",
      dtype: Any,
      rngs: nnx.Rngs,
  ):
    out_features = planes * EXPANSION
    eps = bn_epsilon
    norm = check_norm(norm)
    self.conv1 = Conv(in_features, planes, 1, dtype=dtype, rngs=rngs)
    self.bn1 = make_norm(norm, planes, eps=eps, dtype=dtype)
    self.conv2 = Conv(planes, planes, 3, stride=stride, dilation=dilation, dtype=dtype, rngs=rngs)
    self.bn2 = make_norm(norm, planes, eps=eps, dtype=dtype)
    self.conv3 = Conv(planes, out_features, 1, dtype=dtype, rngs=rngs)
    self.bn3 = make_norm(norm, out_features, weight_init=residual_gamma, eps=eps, dtype=dtype)
    self._shortcut(in_features, out_features, stride=stride, downsample=downsample, eps=eps,
                   norm=norm, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    return self._add_residual(x, self.bn3(self.conv3(y)))


class BasicBlock(_ResidualBlock):
  """torchvision's BasicBlock: two 3x3 convs (stride on the first), expansion 1.

  torchvision rejects dilation > 1 here; this one applies the block's dilation to both
  3x3 convs, so a basic-block ResNet can also be dilated.
  """

  expansion = 1
  parts = ("1", "2")

  def __init__(
      self,
      in_features: int,
      planes: int,
      *,
      stride: int,
      dilation: int,
      downsample: bool,
      residual_gamma: float,
      bn_epsilon: float = BATCH_NORM_EPS,
      norm: str = "frozen",
      dtype: Any,
      rngs: nnx.Rngs,
  ):
    eps = bn_epsilon
    norm = check_norm(norm)
    self.conv1 = Conv(in_features, planes, 3, stride=stride, dilation=dilation, dtype=dtype,
                      rngs=rngs)
    self.bn1 = make_norm(norm, planes, eps=eps, dtype=dtype)
    self.conv2 = Conv(planes, planes, 3, dilation=dilation, dtype=dtype, rngs=rngs)
    self.bn2 = make_norm(norm, planes, weight_init=residual_gamma, eps=eps, dtype=dtype)
    self._shortcut(in_features, planes, stride=stride, downsample=downsample, eps=eps,
                   norm=norm, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    return self._add_residual(x, self.bn2(self.conv2(y)))


def _scaled(channels: int, width_multiplier: float) -> int:
  return max(1, int(round(channels * width_multiplier)))


def _three_flags(name: str, flags: Sequence[bool]) -> tuple[bool, bool, bool]:
  flags = tuple(bool(flag) for flag in flags)
  if len(flags) != 3:
    raise ValueError(f"{name} must have 3 entries (stages 2-4), got {flags}")
  return flags


class ResNet(nnx.Module):
  """ResNet feature extractor; batch norm frozen by default, or learning batch statistics.

  Attributes:
    in_channels: channels of the input images (3 for RGB).
    low_features: channels of layer1's output (256 at full width; 64 for depth 18/34).
    out_features: channels of layer4's output (2048 at full width; 512 for depth 18/34).
    output_stride: input size / layer4 size (8 by default).
    norm: the batch-norm kind, one of `NORMS` ("frozen", "batch", "batch_affine").
  """

  def __init__(
      self,
      depth: int = 101,
      *,
      blocks: Sequence[int] | None = None,
      width_multiplier: float = 1.0,
      replace_stride_with_dilation: Sequence[bool] = (False, True, True),
      drop_stride: Sequence[bool] = (False, False, False),
      multi_grid: Sequence[int] | None = None,
      in_channels: int = 3,
      residual_gamma: float = 0.2,
      bn_epsilon: float = BATCH_NORM_EPS,
      norm: str = "frozen",
      dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Builds the network with random weights (load ImageNet ones for real training).

    Args:
      depth: 18, 34 (basic blocks), 50, 101 or 152 (bottlenecks); selects torchvision's
        block type, and its block counts unless `blocks` is set.
      blocks: four per-stage block counts, overriding `depth`'s (tiny test models).
      width_multiplier: scales every channel count (1.0 = torchvision's widths).
      replace_stride_with_dilation: per stage 2-4, trade the stride-2 for dilation
        (torchvision semantics: the first block of a dilated stage keeps the previous
        dilation). The default gives output stride 8.
      drop_stride: per stage 2-4, run the stage at stride 1 without dilation (ELN's
        ResNet-34 at output stride 16). A stage cannot both drop and replace its stride.
      multi_grid: DeepLab-v3's multi-grid: layer4's block i gets dilation
        `d * multi_grid[i]`, d being layer4's dilation, its first block included (so
        `replace_stride_with_dilation=(False, False, True), multi_grid=(1, 2, 4)` gives
        output stride 16 with dilations 2, 4, 8, as ELN's segmentation backbone). One entry
        per layer4 block; None keeps the torchvision rule above.
      in_channels: channels of the input (3 for RGB; ELN's network takes 4 + classes).
      residual_gamma: initial weight of each block's last batch norm. With frozen
        default statistics a He-initialised deep ResNet blows up at gamma 1; a small
        gamma keeps random-init activations finite. Pretrained weights replace it.
      bn_epsilon: epsilon of every batch norm (torchvision's 1e-5; the RIPU release
        uses 0).
      norm: batch-norm kind. "frozen" (default): `FrozenBatchNorm`, fixed statistics.
        "batch": `BatchNorm`, batch statistics in training mode and running ones after
        `.eval()`, scale and shift fixed (`FrozenStat`, outside an optimizer over
        `nnx.Param`; ELN's segmentation backbone). "batch_affine": as "batch" with trained
        scale and shift (`nnx.Param`; ELN's own network). A BatchNorm model starts in
        training mode.
      dtype: compute dtype (float32 or bfloat16); parameters stay float32.
      rngs: random streams; `params` initialises the convolutions.
    """
    if blocks is None:
      if depth not in STAGE_BLOCKS:
        raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
      blocks = STAGE_BLOCKS[depth]
    elif depth not in STAGE_BLOCKS:
      raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)} (it selects the block "
                       f"type even when blocks is set), got {depth}")
    blocks = tuple(int(b) for b in blocks)
    if len(blocks) != 4 or min(blocks) < 1:
      raise ValueError(f"blocks must be four positive counts, got {blocks}")
    replace = _three_flags("replace_stride_with_dilation", replace_stride_with_dilation)
    drop = _three_flags("drop_stride", drop_stride)
    both = [stage + 2 for stage in range(3) if replace[stage] and drop[stage]]
    if both:
      raise ValueError(
          f"stage(s) {both} are set in both replace_stride_with_dilation and drop_stride; "
          "a stage either dilates or drops its stride")
    if multi_grid is not None:
      multi_grid = tuple(int(m) for m in multi_grid)
      if len(multi_grid) != blocks[3] or min(multi_grid) < 1:
        raise ValueError(
            f"multi_grid needs one positive factor per layer4 block ({blocks[3]}), got "
            f"{multi_grid}")
    if width_multiplier <= 0:
      raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
    if int(in_channels) < 1:
      raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    bn_epsilon = check_bn_epsilon(bn_epsilon)
    self.norm = check_norm(norm)
    block_type = BasicBlock if depth in BASIC_DEPTHS else Bottleneck
    self.dtype = canonical_dtype(dtype)
    self.blocks = blocks
    self.in_channels = int(in_channels)
    stem = _scaled(64, width_multiplier)
    self.conv1 = Conv(self.in_channels, stem, 7, stride=2, dtype=self.dtype, rngs=rngs)
    self.bn1 = make_norm(self.norm, stem, eps=bn_epsilon, dtype=self.dtype)
    in_features = stem
    dilation = 1
    output_stride = 4  # The stem conv and the max pool.
    stages = []
    for index, count in enumerate(blocks):
      planes = _scaled(64 * 2**index, width_multiplier)
      stride = 1 if index == 0 else 2
      previous_dilation = dilation
      if index > 0 and replace[index - 1]:
        dilation *= stride
        stride = 1
      elif index > 0 and drop[index - 1]:
        stride = 1
      output_stride *= stride
      dilations = [previous_dilation] + [dilation] * (count - 1)
      if index == 3 and multi_grid is not None:
        dilations = [dilation * factor for factor in multi_grid]
      out_features = planes * block_type.expansion
      layer = []
      for block_index in range(count):
        layer.append(block_type(
            in_features,
            planes,
            stride=stride if block_index == 0 else 1,
            dilation=dilations[block_index],
            downsample=block_index == 0 and (stride != 1 or in_features != out_features),
            residual_gamma=residual_gamma,
            bn_epsilon=bn_epsilon,
            norm=self.norm,
            dtype=self.dtype,
            rngs=rngs,
        ))
        in_features = out_features
      stages.append(nnx.List(layer))
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.low_features = stem * block_type.expansion
    self.out_features = in_features
    self.output_stride = output_stride

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Maps NHWC images to {"low": layer1 features, "out": layer4 features}."""
    if images.ndim != 4 or images.shape[-1] != self.in_channels:
      raise ValueError(
          f"expected NHWC images with {self.in_channels} channels, got shape {images.shape}")
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

def _torchvision_targets(model: ResNet) -> torchvision_weights.Targets:
  """torchvision key -> (variable to fill, torch-layout shape it expects)."""
  targets: torchvision_weights.Targets = {}
  add_conv = functools.partial(torchvision_weights.conv_target, targets)
  add_bn = functools.partial(torchvision_weights.bn_target, targets)
  add_conv("conv1", model.conv1)
  add_bn("bn1", model.bn1)
  for layer_name in ("layer1", "layer2", "layer3", "layer4"):
    for index, block in enumerate(getattr(model, layer_name)):
      prefix = f"{layer_name}.{index}"
      for part in block.parts:
        add_conv(f"{prefix}.conv{part}", getattr(block, f"conv{part}"))
        add_bn(f"{prefix}.bn{part}", getattr(block, f"bn{part}"))
      if block.downsample_conv is not None:
        add_conv(f"{prefix}.downsample.0", block.downsample_conv)
        add_bn(f"{prefix}.downsample.1", block.downsample_bn)
  return targets


def _is_ignored_key(key: str) -> bool:
  return key.startswith("fc.") or key.endswith("num_batches_tracked")


def load_torchvision_weights(model: ResNet, state_dict: Mapping[str, Any], *,
                             keep_random: Sequence[str] = ()) -> ResNet:
  """Copies a torchvision ResNet state dict (key -> array) into `model`, in place.

  Fills conv kernels and every batch norm's weight, bias, running_mean and running_var,
  whichever `norm` the model was built with. `fc.*` and `num_batches_tracked` are ignored;
  any other missing, unexpected or mis-shaped key raises a ValueError naming it.

  A stem over other than 3 input channels (`in_channels`) cannot take ImageNet's
  `conv1.weight`, and that raises too rather than silently leaving the stem random: a
  wrong `in_channels` would otherwise train on quietly. A caller who wants a random stem
  says so with `keep_random=("conv1",)`; bn1 and every block still load (ELN's release
  does exactly this for its 4 + C channel input).

  Args:
    model: the ResNet to fill.
    state_dict: torchvision key names -> arrays.
    keep_random: torchvision keys, or prefixes of them up to a dot ("conv1",
      "layer2.0.downsample"), whose variables keep their current values; the state dict
      may lack them, and entries it has for them are not loaded.

  Returns:
    `model`.
  """
  torchvision_weights.fill(
      _torchvision_targets(model), state_dict, network="ResNet", ignored=_is_ignored_key,
      keep_random=keep_random, stem="conv1", examples="'conv1' or 'layer1.0.conv2'",
      unexpected_hint="wrong depth or blocks?")
  return model


def resnet_from_torchvision(
    state_dict: Mapping[str, Any],
    depth: int = 101,
    *,
    blocks: Sequence[int] | None = None,
    width_multiplier: float = 1.0,
    replace_stride_with_dilation: Sequence[bool] = (False, True, True),
    drop_stride: Sequence[bool] = (False, False, False),
    multi_grid: Sequence[int] | None = None,
    in_channels: int = 3,
    bn_epsilon: float = BATCH_NORM_EPS,
    norm: str = "frozen",
    keep_random: Sequence[str] = (),
    dtype: Any = jnp.float32,
) -> ResNet:
  """Builds a ResNet holding the weights of a torchvision state dict.

  Args:
    state_dict: torchvision key names -> arrays (numpy or anything `np.asarray` takes),
      e.g. from `load_torchvision_npz`.
    depth, blocks, width_multiplier, replace_stride_with_dilation, drop_stride, multi_grid,
      in_channels, bn_epsilon, norm, dtype: as `ResNet`.
    keep_random: as `load_torchvision_weights`.

  Returns:
    The ResNet, every weight and batch-norm statistic taken from `state_dict` (except
    those under `keep_random`, initialised from seed 0).
  """
  model = ResNet(
      depth,
      blocks=blocks,
      width_multiplier=width_multiplier,
      replace_stride_with_dilation=replace_stride_with_dilation,
      drop_stride=drop_stride,
      multi_grid=multi_grid,
      in_channels=in_channels,
      bn_epsilon=bn_epsilon,
      norm=norm,
      dtype=dtype,
      rngs=nnx.Rngs(0),
  )
  return load_torchvision_weights(model, state_dict, keep_random=keep_random)


def load_torchvision_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads the .npz written by scripts/convert_torchvision_resnet.py (key -> array)."""
  return torchvision_weights.read_npz(
      path, "convert torchvision's ResNet checkpoint (e.g. resnet101-5d3b4d8f.pth) with "
      "scripts/convert_torchvision_resnet.py")
