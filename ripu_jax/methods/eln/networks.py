"""ELN's networks (spec: ../shared/docs/eln-method.md, "Networks").

`ElnDeepLab` ("eln_deeplabv3plus"): the student, DeepLab-v3+ at output stride 16 (layer4 at
stride 1 with multi-grid dilations 2, 4, 8) and a plain-convolution decoder (`PlainDecoder`,
256 channels) carrying two heads: "logits" (1x1 256 -> 256, ReLU, 1x1 -> classes) and
"projection" (the same shape to 128 channels, for the pixel contrastive loss). Auxiliary
heads ("aux/<i>", `aux_heads=K`) are randomly initialised copies of decoder + heads, fed
stop-gradient encoder features when the objective asks. All outputs are at stride 4.

`ErrorLocalizationNet`: the same layout on ResNet-34 at stride 16 without dilation, over
4 + C input channels (normalised image, the prediction's entropy, its C logits upsampled to
the image), returning one logit per stride-4 pixel: that the prediction there is right.

Batch norm is a choice (`norm`, see `ripu_jax.models.layers.NORMS`): "batch" (batch
statistics, fixed scale and shift) is the student's in the semi-supervised release,
"batch_affine" the ELN's, "frozen" RIPU's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ripu_jax.image_ops import resize_bilinear, upsample_logits
from ripu_jax.methods.eln import losses
from ripu_jax.models import register_model
from ripu_jax.models.layers import (BATCH_NORM_EPS, Conv, canonical_dtype, he_normal_fan_in,
                                    make_norm, torch_default_bias_init)
from ripu_jax.models.resnet import STAGE_BLOCKS, ResNet
from ripu_jax.models.segmentor import Segmentor

PROJECTION = "projection"
PROJECTION_CHANNELS = 128
# torchvision keys an ELN backbone does not take from ImageNet weights: its stem sees 4 + C
# channels, and the release's projection shortcuts miss the checkpoint (they start random).
ELN_RANDOM_KEYS = ("conv1", "layer2.0.downsample", "layer3.0.downsample",
                   "layer4.0.downsample")


class ConvNorm(nnx.Module):
  """Conv (no bias) -> batch norm of the chosen kind -> ReLU."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
               dilation: int = 1, norm: str, bn_epsilon: float, dtype: Any, rngs: nnx.Rngs):
    self.conv = Conv(in_features, out_features, kernel_size, dilation=dilation,
                     kernel_init=he_normal_fan_in, dtype=dtype, rngs=rngs)
    self.bn = make_norm(norm, out_features, eps=bn_epsilon, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


def _pointwise(in_features: int, out_features: int, *, dtype, rngs) -> Conv:
  return Conv(in_features, out_features, 1, use_bias=True, kernel_init=he_normal_fan_in,
              bias_init=torch_default_bias_init(in_features), dtype=dtype, rngs=rngs)


class PlainDecoder(nnx.Module):
  """ASPP (1x1, three dilated 3x3, image pooling) + decoder with layer1, plain convolutions.

  ASPP: five 256-channel branches (image pooling: a 1x1 convolution with bias and ReLU, no
  batch norm), concatenated -> 1x1 256, BN, ReLU, dropout `aspp_dropout`. Decoder: layer1 ->
  1x1 48; ASPP output upsampled (bilinear, align_corners) to layer1's size; concatenated ->
  3x3 256 BN ReLU, dropout 0.5, 3x3 256 BN ReLU, dropout 0.1, 1x1 256 -> 256 with bias.
  Dropout zeroes single elements (torch's Dropout), active in train mode.
  """

  def __init__(self, in_features: int, low_features: int, *, channels: int = 256,
               low_channels: int = 48, dilations: Sequence[int] = (6, 12, 18),
               aspp_dropout: float = 0.1, norm: str = "batch",
               bn_epsilon: float = BATCH_NORM_EPS, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    layer = dict(norm=norm, bn_epsilon=bn_epsilon, dtype=dtype, rngs=rngs)
    self.aspp = nnx.List([ConvNorm(in_features, channels, 1, **layer)] + [
        ConvNorm(in_features, channels, 3, dilation=int(d), **layer) for d in dilations])
    self.image_pooling = _pointwise(in_features, channels, dtype=dtype, rngs=rngs)
    self.aspp_project = ConvNorm(channels * (len(dilations) + 2), channels, 1, **layer)
    self.aspp_dropout = nnx.Dropout(aspp_dropout, rngs=rngs)
    self.low = ConvNorm(low_features, low_channels, 1, **layer)
    self.fuse1 = ConvNorm(channels + low_channels, channels, 3, **layer)
    self.fuse1_dropout = nnx.Dropout(0.5, rngs=rngs)
    self.fuse2 = ConvNorm(channels, channels, 3, **layer)
    self.fuse2_dropout = nnx.Dropout(0.1, rngs=rngs)
    self.out = _pointwise(channels, channels, dtype=dtype, rngs=rngs)
    self.channels = channels

  def __call__(self, features: Mapping[str, jax.Array]) -> jax.Array:
    """[B, h, w, channels] at the "low" map's size from {"low", "out"}."""
    low, out = features["low"], features["out"]
    pooled = jnp.mean(out.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(out.dtype)
    pooled = jax.nn.relu(self.image_pooling(pooled))
    pooled = jnp.broadcast_to(pooled, (*out.shape[:3], pooled.shape[-1]))
    x = jnp.concatenate([branch(out) for branch in self.aspp] + [pooled], axis=-1)
    x = self.aspp_dropout(self.aspp_project(x))
    x = resize_bilinear(x, (low.shape[1], low.shape[2]))
    x = jnp.concatenate([x, self.low(low)], axis=-1)
    x = self.fuse1_dropout(self.fuse1(x))
    x = self.fuse2_dropout(self.fuse2(x))
    return self.out(x)


class MLPHead(nnx.Module):
  """1x1 conv -> ReLU -> 1x1 conv: a per-pixel two-layer head on the decoder's map."""

  def __init__(self, in_features: int, out_features: int, *, dtype: Any, rngs: nnx.Rngs):
    self.hidden = _pointwise(in_features, in_features, dtype=dtype, rngs=rngs)
    self.out = _pointwise(in_features, out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(jax.nn.relu(self.hidden(x)))


class SegmentationHead(nnx.Module):
  """Decoder + segmentation head + projection head; called, it returns the class scores."""

  def __init__(self, in_features: int, low_features: int, num_classes: int, *,
               projection_channels: int = PROJECTION_CHANNELS, **decoder: Any):
    self.decoder = PlainDecoder(in_features, low_features, **decoder)
    channels, dtype, rngs = self.decoder.channels, decoder["dtype"], decoder["rngs"]
    self.classifier = MLPHead(channels, num_classes, dtype=dtype, rngs=rngs)
    self.projection = MLPHead(channels, projection_channels, dtype=dtype, rngs=rngs)

  def __call__(self, features: Mapping[str, jax.Array]) -> jax.Array:
    return self.classifier(self.decoder(features))

  def both(self, features: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(class scores, projected features) from one decoder pass."""
    x = self.decoder(features)
    return self.classifier(x), self.projection(x)


def _multi_grid(layer4_blocks: int) -> tuple[int, ...]:
  """1, 2, 4, ... per layer4 block: (1, 2, 4) at ResNet-50/101's three blocks."""
  return tuple(2**i for i in range(layer4_blocks))


@register_model("eln_deeplabv3plus")
class ElnDeepLab(Segmentor):
  """ELN's student: ResNet at output stride 16 (multi-grid) + plain DeepLab-v3+ decoder with
  segmentation and projection heads. Named outputs add "projection" (float32, stride 4)."""

  def __init__(
      self,
      num_classes: int,
      *,
      depth: int = 101,
      blocks: Sequence[int] | None = None,
      width_multiplier: float = 1.0,
      multi_grid: Sequence[int] | None = None,
      channels: int = 256,
      low_channels: int = 48,
      projection_channels: int = PROJECTION_CHANNELS,
      norm: str = "batch",
      residual_gamma: float = 0.2,
      bn_epsilon: float = BATCH_NORM_EPS,
      aux_heads: int = 0,
      aux_stop_gradient: bool = False,
      dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Args: as `DeepLabV3Plus`; `multi_grid` defaults to 1, 2, 4, ... per layer4 block
    (dilations 2, 4, 8), `norm` is every batch norm's kind (backbone and decoders)."""
    if num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    dtype = canonical_dtype(dtype)
    if multi_grid is None:
      layer4_blocks = (blocks if blocks is not None else STAGE_BLOCKS.get(depth, (1,) * 4))[3]
      multi_grid = _multi_grid(int(layer4_blocks))
    backbone = ResNet(depth, blocks=blocks, width_multiplier=width_multiplier,
                      replace_stride_with_dilation=(False, False, True),
                      multi_grid=multi_grid, norm=norm, residual_gamma=residual_gamma,
                      bn_epsilon=bn_epsilon, dtype=dtype, rngs=rngs)

    def make_head() -> SegmentationHead:
      return SegmentationHead(
          backbone.out_features, backbone.low_features, num_classes,
          projection_channels=projection_channels, channels=channels,
          low_channels=low_channels, norm=norm, bn_epsilon=bn_epsilon, dtype=dtype, rngs=rngs)

    head = make_head()
    extra = [make_head() for _ in range(int(aux_heads))]
    super().__init__(backbone, head, extra, aux_stop_gradient=aux_stop_gradient)
    self.num_classes = num_classes
    self.dtype = dtype

  @property
  def output_names(self) -> tuple[str, ...]:
    return (*super().output_names, PROJECTION)

  def outputs_from_features(self, features: Mapping[str, jax.Array],
                            outputs: Sequence[str]) -> dict[str, jax.Array]:
    names = self.check_outputs(outputs)
    if PROJECTION not in names:
      return super().outputs_from_features(features, names)
    logits, projection = self.head.both(features)
    results = super().outputs_from_features(
        features, [name for name in names if name not in ("logits", PROJECTION)])
    results["logits"] = logits.astype(jnp.float32)
    results[PROJECTION] = projection.astype(jnp.float32)
    return {name: results[name] for name in names}


class ErrorLocalizationNet(nnx.Module):
  """ELN: is the prediction right here? One logit per stride-4 pixel.

  `eln(images, logits)` builds the 4 + C channel input from the normalised images
  [B, H, W, 3] and a prediction's logits [B, h, w, C] (any size: upsampled to the images'
  bilinearly with align_corners), both detached, and returns [B, H/4, W/4] float32 logits.
  """

  def __init__(self, num_classes: int, *, depth: int = 34, blocks: Sequence[int] | None = None,
               width_multiplier: float = 1.0, channels: int = 256, low_channels: int = 48,
               norm: str = "batch_affine", residual_gamma: float = 0.2,
               bn_epsilon: float = BATCH_NORM_EPS, dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    dtype = canonical_dtype(dtype)
    self.num_classes = int(num_classes)
    self.backbone = ResNet(depth, blocks=blocks, width_multiplier=width_multiplier,
                           replace_stride_with_dilation=(False, False, False),
                           drop_stride=(False, False, True), in_channels=4 + self.num_classes,
                           norm=norm, residual_gamma=residual_gamma, bn_epsilon=bn_epsilon,
                           dtype=dtype, rngs=rngs)
    self.decoder = PlainDecoder(self.backbone.out_features, self.backbone.low_features,
                                channels=channels, low_channels=low_channels,
                                aspp_dropout=0.5, norm=norm, bn_epsilon=bn_epsilon,
                                dtype=dtype, rngs=rngs)
    self.classifier = MLPHead(channels, 1, dtype=dtype, rngs=rngs)

  def inputs(self, images: jax.Array, logits: jax.Array) -> jax.Array:
    """[B, H, W, 4 + C]: images, entropy, logits at the images' size; no gradient."""
    if logits.shape[-1] != self.num_classes or images.shape[0] != logits.shape[0]:
      raise ValueError(f"expected logits [{images.shape[0]}, h, w, {self.num_classes}] for "
                       f"images {images.shape}, got {logits.shape}")
    logits = upsample_logits(jax.lax.stop_gradient(logits), images.shape[1:3])
    images = jax.lax.stop_gradient(images).astype(jnp.float32)
    return jnp.concatenate([images, losses.entropy_map(logits)[..., None], logits], axis=-1)

  def __call__(self, images: jax.Array, logits: jax.Array) -> jax.Array:
    features = self.backbone(self.inputs(images, logits))
    return self.classifier(self.decoder(features))[..., 0].astype(jnp.float32)
