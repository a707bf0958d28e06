"""DeepLab-v2 and DeepLab-v3+ segmentation networks on the dilated ResNet backbone.

Both are `Segmentor`s: the backbone sits under the attribute `backbone` and everything else
outside it (the optimizer gives the heads 10x the backbone's learning rate by that split).
Their heads take the backbone's feature dict. `aux_heads=n` adds n more heads of the main
head's kind, each randomly initialised after the main one, so the backbone and the main
head are drawn from the seed exactly as without them (LabOR's second classifier, ELN's
auxiliary decoders).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ripu_jax.image_ops import resize_bilinear
from ripu_jax.models.layers import (
    BATCH_NORM_EPS,
    Conv,
    FrozenBatchNorm,
    canonical_dtype,
    check_bn_epsilon,
    he_normal_fan_in,
    normal_init,
    summed_dilated_convs,
    torch_default_bias_init,
)
from ripu_jax.models.resnet import ResNet
from ripu_jax.models.segmentor import Segmentor


def _check_counts(num_classes: int, aux_heads: int) -> None:
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  if isinstance(aux_heads, bool) or not isinstance(aux_heads, numbers.Integral) or aux_heads < 0:
    raise ValueError(f"aux_heads must be a count >= 0 of extra heads, got {aux_heads!r}")


class ASPPV2(nnx.Module):
  """DeepLab-v2 classifier: parallel dilated 3x3 convs straight to class scores, summed."""

  def __init__(
      self,
      in_features: int,
      num_classes: int,
      *,
      dilations: Sequence[int] = (6, 12, 18, 24),
      dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    fan_in = in_features * 9
    self.branches = nnx.List([
        Conv(
            in_features,
            num_classes,
            3,
            dilation=int(d),
            use_bias=True,
            kernel_init=normal_init(0.01),
            bias_init=torch_default_bias_init(fan_in),
            dtype=dtype,
            rngs=rngs,
        ) for d in dilations
    ])

  def __call__(self, features: Mapping[str, jax.Array] | jax.Array) -> jax.Array:
    """Class scores from the feature dict's "out" map (or that map itself)."""
    if isinstance(features, Mapping):
      features = features["out"]
    dtype = self.branches[0].dtype
    features = features.astype(dtype)
    kernels = [branch.kernel[...].astype(dtype) for branch in self.branches]
    bias = sum(branch.bias[...] for branch in self.branches).astype(dtype)
    dilations = [branch.dilation for branch in self.branches]
    return summed_dilated_convs(features, kernels, dilations) + bias


class DeepLabV2(Segmentor):
  """ResNet (output stride 8 by default) + ASPP-v2; logits at the backbone's stride."""

  def __init__(
      self,
      num_classes: int,
      *,
      depth: int = 101,
      blocks: Sequence[int] | None = None,
      width_multiplier: float = 1.0,
      dilations: Sequence[int] = (6, 12, 18, 24),
      residual_gamma: float = 0.2,
      replace_stride_with_dilation: Sequence[bool] = (False, True, True),
      multi_grid: Sequence[int] | None = None,
      in_channels: int = 3,
      bn_epsilon: float = BATCH_NORM_EPS,
      aux_heads: int = 0,
      aux_stop_gradient: bool = False,
      dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Builds the network with a randomly initialised backbone.

    Args:
      num_classes: output channels (19 for Cityscapes, 16 for SYNTHIA).
      depth, blocks, width_multiplier, residual_gamma, replace_stride_with_dilation,
        multi_grid, in_channels: backbone shape, see `ResNet`.
      dilations: the ASPP-v2 branches' dilation rates.
      bn_epsilon: epsilon of the backbone's frozen batch norms (1e-5; 0 is the release's).
      aux_heads: extra ASPP-v2 heads ("aux/0", ...), built after the main one.
      aux_stop_gradient: feed the extra heads stop-gradient features (see `Segmentor`).
      dtype: compute dtype (float32 or bfloat16); parameters and logits are float32.
      rngs: random streams (`params`).
    """
    _check_counts(num_classes, aux_heads)
    dtype = canonical_dtype(dtype)
    backbone = ResNet(depth, blocks=blocks, width_multiplier=width_multiplier,
                      replace_stride_with_dilation=replace_stride_with_dilation,
                      multi_grid=multi_grid, in_channels=in_channels,
                      residual_gamma=residual_gamma, bn_epsilon=bn_epsilon, dtype=dtype,
                      rngs=rngs)

    def make_head() -> ASPPV2:
      return ASPPV2(backbone.out_features, num_classes, dilations=dilations, dtype=dtype,
                    rngs=rngs)

    head = make_head()
    extra = [make_head() for _ in range(int(aux_heads))]
    super().__init__(backbone, head, extra, aux_stop_gradient=aux_stop_gradient)
    self.num_classes = num_classes
    self.dtype = dtype


class SeparableConv(nnx.Module):
  """Depthwise 3x3 conv -> BN -> ReLU -> pointwise 1x1 conv -> BN -> ReLU."""

  def __init__(
      self,
      in_features: int,
      out_features: int,
      *,
      dilation: int = 1,
      bn_epsilon: float = BATCH_NORM_EPS,
      dtype: Any,
      rngs: nnx.Rngs,
  ):
    self.depthwise = Conv(
        in_features, in_features, 3, dilation=dilation, groups=in_features,
        kernel_init=he_normal_fan_in, dtype=dtype, rngs=rngs)
    self.depthwise_bn = FrozenBatchNorm(in_features, eps=bn_epsilon, dtype=dtype)
    self.pointwise = Conv(
        in_features, out_features, 1, kernel_init=he_normal_fan_in, dtype=dtype, rngs=rngs)
    self.pointwise_bn = FrozenBatchNorm(out_features, eps=bn_epsilon, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.depthwise_bn(self.depthwise(x)))
    return jax.nn.relu(self.pointwise_bn(self.pointwise(x)))


class ConvBNReLU(nnx.Module):
  """Conv (no bias) -> frozen BN -> ReLU."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
               bn_epsilon: float = BATCH_NORM_EPS, dtype: Any, rngs: nnx.Rngs):
    self.conv = Conv(
        in_features, out_features, kernel_size, kernel_init=he_normal_fan_in, dtype=dtype,
        rngs=rngs)
    self.bn = FrozenBatchNorm(out_features, eps=bn_epsilon, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


class DeepLabV3PlusHead(nnx.Module):
  """Depthwise-separable ASPP (1x1, three dilated branches, image pooling) + decoder.

  Every batch norm here is frozen with default statistics (mean 0, variance 1, weight 1,
  bias 0), i.e. a constant scale of 1 / sqrt(1 + bn_epsilon): the reference release freezes
  all batch norms and its head never receives ImageNet statistics, so its head BNs act as
  identities (exactly so with `bn_epsilon=0`, the release's formula). That behaviour is
  kept; loading other statistics into them is possible but they still never train.
  """

  def __init__(
      self,
      in_features: int,
      low_features: int,
      num_classes: int,
      *,
      dilations: Sequence[int] = (6, 12, 18),
      channels: int = 512,
      low_channels: int = 48,
      dropout_rate: float = 0.1,
      bn_epsilon: float = BATCH_NORM_EPS,
      dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    eps = check_bn_epsilon(bn_epsilon)
    self.aspp_pointwise = ConvBNReLU(
        in_features, channels, 1, bn_epsilon=eps, dtype=dtype, rngs=rngs)
    self.aspp_branches = nnx.List([
        SeparableConv(in_features, channels, dilation=int(d), bn_epsilon=eps, dtype=dtype,
                      rngs=rngs)
        for d in dilations
    ])
    self.image_pooling = ConvBNReLU(
        in_features, channels, 1, bn_epsilon=eps, dtype=dtype, rngs=rngs)
    self.bottleneck = ConvBNReLU(
        channels * (len(dilations) + 2), channels, 3, bn_epsilon=eps, dtype=dtype, rngs=rngs)
    self.shortcut = ConvBNReLU(
        low_features, low_channels, 1, bn_epsilon=eps, dtype=dtype, rngs=rngs)
    self.decoder1 = SeparableConv(
        channels + low_channels, channels, bn_epsilon=eps, dtype=dtype, rngs=rngs)
    self.decoder2 = SeparableConv(channels, channels, bn_epsilon=eps, dtype=dtype, rngs=rngs)
    # Channel-wise dropout (torch's Dropout2d): one mask value per image and channel.
    self.dropout = nnx.Dropout(dropout_rate, broadcast_dims=(1, 2), rngs=rngs)
    self.classifier = Conv(
        channels, num_classes, 1, use_bias=True, kernel_init=he_normal_fan_in,
        bias_init=torch_default_bias_init(channels), dtype=dtype, rngs=rngs)

  def __call__(self, features: Mapping[str, jax.Array]) -> jax.Array:
    """Class scores at the "low" map's size from the feature dict {"low", "out"}."""
    low, out = features["low"], features["out"]
    height, width = out.shape[1], out.shape[2]
    pooled = jnp.mean(out.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(out.dtype)
    pooled = self.image_pooling(pooled)
    pooled = jnp.broadcast_to(pooled, (out.shape[0], height, width, pooled.shape[-1]))
    branches = [self.aspp_pointwise(out)]
    branches += [branch(out) for branch in self.aspp_branches]
    branches.append(pooled)
    x = self.bottleneck(jnp.concatenate(branches, axis=-1))
    x = resize_bilinear(x, (low.shape[1], low.shape[2]))
    x = jnp.concatenate([x, self.shortcut(low)], axis=-1)
    x = self.decoder2(self.decoder1(x))
    return self.classifier(self.dropout(x))


class DeepLabV3Plus(Segmentor):
  """ResNet (output stride 8 by default) + DeepLab-v3+ head; logits at layer1's size (1/4).

  The decoder fuses layer1 features, so the logits come out at output stride 4; as for
  DeepLab-v2, `upsample_logits` them to the label size before the losses. Dropout is active
  after construction and after `model.train()`; call `model.eval()` for inference.
  """

  def __init__(
      self,
      num_classes: int,
      *,
      depth: int = 101,
      blocks: Sequence[int] | None = None,
      width_multiplier: float = 1.0,
      dilations: Sequence[int] = (6, 12, 18),
      channels: int = 512,
      low_channels: int = 48,
      dropout_rate: float = 0.1,
      residual_gamma: float = 0.2,
      replace_stride_with_dilation: Sequence[bool] = (False, True, True),
      multi_grid: Sequence[int] | None = None,
      in_channels: int = 3,
      bn_epsilon: float = BATCH_NORM_EPS,
      aux_heads: int = 0,
      aux_stop_gradient: bool = False,
      dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Builds the network with a randomly initialised backbone.

    Args:
      num_classes: output channels.
      depth, blocks, width_multiplier, residual_gamma, replace_stride_with_dilation,
        multi_grid, in_channels: backbone shape, see `ResNet`.
      dilations: dilation rates of the separable ASPP branches.
      channels: ASPP and decoder width (512 in the release).
      low_channels: width the layer1 shortcut is reduced to (48).
      dropout_rate: channel dropout before the classifier (0.1).
      bn_epsilon: epsilon of every frozen batch norm, backbone and head (1e-5; 0 is the
        release's).
      aux_heads: extra ASPP + decoder heads ("aux/0", ...), built after the main one.
      aux_stop_gradient: feed the extra heads stop-gradient features (see `Segmentor`).
      dtype: compute dtype (float32 or bfloat16); parameters and logits are float32.
      rngs: random streams (`params`, and `dropout` or `default` for dropout masks).
    """
    _check_counts(num_classes, aux_heads)
    dtype = canonical_dtype(dtype)
    backbone = ResNet(depth, blocks=blocks, width_multiplier=width_multiplier,
                      replace_stride_with_dilation=replace_stride_with_dilation,
                      multi_grid=multi_grid, in_channels=in_channels,
                      residual_gamma=residual_gamma, bn_epsilon=bn_epsilon, dtype=dtype,
                      rngs=rngs)

    def make_head() -> DeepLabV3PlusHead:
      return DeepLabV3PlusHead(
          backbone.out_features,
          backbone.low_features,
          num_classes,
          dilations=dilations,
          channels=channels,
          low_channels=low_channels,
          dropout_rate=dropout_rate,
          bn_epsilon=bn_epsilon,
          dtype=dtype,
          rngs=rngs,
      )

    head = make_head()
    extra = [make_head() for _ in range(int(aux_heads))]
    super().__init__(backbone, head, extra, aux_stop_gradient=aux_stop_gradient)
    self.num_classes = num_classes
    self.dtype = dtype
