"""DeepLab-v2 and DeepLab-v3+ segmentation networks on dilated ResNet and MobileNetV2.

All are `Segmentor`s: the backbone sits under the attribute `backbone` and everything else
outside it (the optimizer gives the heads 10x the backbone's learning rate by that split).
Their heads take the backbone's feature dict. `aux_heads=n` adds n more heads of the main
head's kind, each randomly initialised after the main one, so the backbone and the main
head are drawn from the seed exactly as without them (LabOR's second classifier, ELN's
auxiliary decoders).

Monte-Carlo dropout (ViewAL): the DeepLab-v3+ networks can drop whole channels of the
backbone's "out" and "low" maps before the heads (`channel_dropout`, on by default for
"deeplabv3plus_mobilenet"). These layers follow the train/eval mode like any dropout,
and `model(images, dropout_key=key)` draws their masks from `key` whatever the mode; a
Monte-Carlo pass is the eval-mode network (running batch-norm statistics, training-only
dropouts off) with those masks on, which `mc_logits(model, images, key)` computes. It is
a pure function of the key, so it runs under `jax.jit` / `nnx.jit` and inside `lax.scan`
over passes:

  @nnx.jit
  def passes(model, images, keys):          # keys: [D] random keys
    step = lambda carry, key: (carry, mc_logits(model, images, key))
    return jax.lax.scan(step, None, keys)[1]  # [D, N, h, w, classes]
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ripu_jax.image_ops import resize_bilinear
from ripu_jax.models.layers import (
    BATCH_NORM_EPS,
    Conv,
    canonical_dtype,
    check_bn_epsilon,
    check_norm,
    he_normal_fan_in,
    make_norm,
    normal_init,
    summed_dilated_convs,
    torch_default_bias_init,
)
from ripu_jax.models.mobilenet import MobileNetV2
from ripu_jax.models.resnet import ResNet
from ripu_jax.models.segmentor import LOGITS, Segmentor

MC_DROPOUT_RATE = 0.25  # ViewAL's channel dropout on the backbone's maps.


def _check_counts(num_classes: int, aux_heads: int) -> None:
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  if isinstance(aux_heads, bool) or not isinstance(aux_heads, numbers.Integral) or aux_heads < 0:
    raise ValueError(f"aux_heads must be a count >= 0 of extra heads, got {aux_heads!r}")


def _check_rate(name: str, rate: float) -> float:
  try:
    value = float(rate)
  except (TypeError, ValueError) as error:
    raise ValueError(f"{name} must be a probability in [0, 1), got {rate!r}") from error
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{name} must be a probability in [0, 1), got {rate!r}")
  return value


class ChannelDropout(nnx.Dropout):
  """Dropout of whole feature maps (torch's Dropout2d) on NHWC input.

  As `nnx.Dropout`: active in training mode with the module's own random stream, the
  identity after `.eval()`. A `key` overrides the mode: the mask, one value per image and
  channel, is drawn from it (Monte-Carlo dropout at inference).
  """

  def __init__(self, rate: float, *, rngs: nnx.Rngs):
    super().__init__(_check_rate("channel dropout rate", rate), broadcast_dims=(1, 2),
                     rngs=rngs)

  def __call__(self, inputs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    if key is None:
      return super().__call__(inputs)
    return super().__call__(inputs, deterministic=False, rngs=key)


class FeatureDropout(nnx.Module):
  """Channel dropout on named maps of a feature dict, one independent mask per map."""

  def __init__(self, rate: float, names: Sequence[str] = ("out", "low"), *, rngs: nnx.Rngs):
    self.names = tuple(names)
    self.layers = nnx.List([ChannelDropout(rate, rngs=rngs) for _ in self.names])

  def __call__(self, features: Mapping[str, jax.Array],
               key: jax.Array | None = None) -> dict[str, jax.Array]:
    """The dict with its named maps dropped; `key` as `ChannelDropout`'s (folded per map)."""
    features = dict(features)
    for index, (name, layer) in enumerate(zip(self.names, self.layers)):
      layer_key = None if key is None else jax.random.fold_in(key, index)
      features[name] = layer(features[name], layer_key)
    return features


class MCDropoutSegmentor(Segmentor):
  """A `Segmentor` that can drop whole channels of its backbone's maps before the heads.

  `feature_dropout` (a `FeatureDropout`, or None for none) acts between the backbone and
  every head, so the heads, the auxiliary heads and the "features" output all see the
  dropped maps; `outputs_from_features` applies it too. `dropout_key` draws its masks (see
  `ChannelDropout`); without a key it follows the train/eval mode. With no
  feature dropout the network is exactly the plain `Segmentor`.
  """

  def __init__(
      self,
      backbone: nnx.Module,
      head: nnx.Module,
      aux_heads: Iterable[nnx.Module] = (),
      *,
      aux_stop_gradient: bool = False,
      feature_dropout: FeatureDropout | None = None,
  ):
    """As `Segmentor`, plus the channel dropout between backbone and heads (None: none)."""
    super().__init__(backbone, head, aux_heads, aux_stop_gradient=aux_stop_gradient)
    self.feature_dropout = feature_dropout

  def _check_key(self, dropout_key: jax.Array | None) -> None:
    if dropout_key is not None and self.feature_dropout is None:
      raise ValueError("dropout_key was given but this model has no channel dropout "
                       "(build it with channel_dropout > 0)")

  def _drop(self, features: Mapping[str, jax.Array],
            dropout_key: jax.Array | None) -> Mapping[str, jax.Array]:
    self._check_key(dropout_key)
    if self.feature_dropout is None:
      return features
    return self.feature_dropout(features, dropout_key)

  def __call__(self, images: jax.Array, outputs: Sequence[str] | None = None, *,
               dropout_key: jax.Array | None = None) -> jax.Array | dict[str, jax.Array]:
    """As `Segmentor.__call__`; `dropout_key` draws the channel-dropout masks."""
    self._check_key(dropout_key)
    if self.feature_dropout is None:
      return super().__call__(images, outputs)
    in_channels = getattr(self.backbone, "in_channels", None)
    if images.ndim != 4 or (in_channels is not None and images.shape[-1] != in_channels):
      raise ValueError(
          f"expected NHWC images with {in_channels} channels, got shape {images.shape}")
    names = (LOGITS,) if outputs is None else self.check_outputs(outputs)
    results = self.outputs_from_features(self.backbone(images), names, dropout_key=dropout_key)
    return results[LOGITS] if outputs is None else results

  def outputs_from_features(self, features: Mapping[str, jax.Array], outputs: Sequence[str],
                            *, dropout_key: jax.Array | None = None) -> dict[str, jax.Array]:
    """As `Segmentor.outputs_from_features`, after the channel dropout."""
    return super().outputs_from_features(self._drop(features, dropout_key), outputs)


def mc_logits(model: nnx.Module, images: jax.Array, key: jax.Array) -> jax.Array:
  """One Monte-Carlo dropout pass: float32 logits of the eval-mode network (running
  batch-norm statistics, training-only dropouts off) with channel-dropout masks from `key`.

  `model` itself is left in its mode. `functools.partial(mc_logits, model)` is the
  `apply_fn(images, key)` of the passes; different keys give different masks, the same key
  the same logits. Build it inside an `nnx.jit` that takes the model as an argument: a
  `jax.jit` over a closure of the model would keep the weights of its first trace.
  """
  if getattr(model, "feature_dropout", None) is None:
    raise ValueError(f"{type(model).__name__} has no channel dropout for Monte-Carlo passes; "
                     "build a DeepLab-v3+ with channel_dropout > 0 (e.g. "
                     "'deeplabv3plus_mobilenet', or 'deeplabv3plus' with channel_dropout=0.25)")
  view = nnx.with_attributes(model, deterministic=True, use_running_average=True,
                             raise_if_not_found=False)
  return view(images, dropout_key=key)


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
      norm: str = "frozen",
      bn_epsilon: float = BATCH_NORM_EPS,
      dtype: Any,
      rngs: nnx.Rngs,
  ):
    self.depthwise = Conv(
        in_features, in_features, 3, dilation=dilation, groups=in_features,
        kernel_init=he_normal_fan_in, dtype=dtype, rngs=rngs)
    self.depthwise_bn = make_norm(norm, in_features, eps=bn_epsilon, dtype=dtype)
    self.pointwise = Conv(
        in_features, out_features, 1, kernel_init=he_normal_fan_in, dtype=dtype, rngs=rngs)
    self.pointwise_bn = make_norm(norm, out_features, eps=bn_epsilon, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.depthwise_bn(self.depthwise(x)))
    return jax.nn.relu(self.pointwise_bn(self.pointwise(x)))


class ConvBNReLU(nnx.Module):
  """Conv (no bias) -> BN (frozen by default) -> ReLU."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
               dilation: int = 1, norm: str = "frozen", bn_epsilon: float = BATCH_NORM_EPS,
               dtype: Any, rngs: nnx.Rngs):
    self.conv = Conv(
        in_features, out_features, kernel_size, dilation=dilation,
        kernel_init=he_normal_fan_in, dtype=dtype, rngs=rngs)
    self.bn = make_norm(norm, out_features, eps=bn_epsilon, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


class DeepLabV3PlusHead(nnx.Module):
  """ASPP (1x1, three dilated branches, image pooling) + decoder with the "low" map.

  ASPP: the branches' outputs concatenated -> `projection_kernel` conv -> BN -> ReLU
  [-> dropout `aspp_dropout`]; upsampled (bilinear, align_corners) to the "low" map's size
  and concatenated with its 1x1 `low_channels` reduction; decoder: two 3x3 conv-BN-ReLU
  [with dropout `decoder_dropout` between them], dropout `dropout_rate`, 1x1 classifier
  with bias. All dropouts act in training mode only.

  Defaults are RIPU's head: depthwise-separable dilated branches and decoder convs, a 3x3
  projection, channel dropout 0.1 before the classifier, and every batch norm frozen with
  default statistics (mean 0, variance 1, weight 1, bias 0), i.e. a constant scale of
  1 / sqrt(1 + bn_epsilon): the reference release freezes all batch norms and its head
  never receives ImageNet statistics, so its head BNs act as identities (exactly so with
  `bn_epsilon=0`, the release's formula). `separable=False, projection_kernel=1`,
  element-wise dropouts and `norm="batch_affine"` give the standard DeepLab-v3+ head
  (ViewAL's).
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
      channelwise_dropout: bool = True,
      aspp_dropout: float = 0.0,
      decoder_dropout: float = 0.0,
      separable: bool = True,
      projection_kernel: int = 3,
      norm: str = "frozen",
      bn_epsilon: float = BATCH_NORM_EPS,
      dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Args (beyond the shapes):
      dropout_rate: dropout before the classifier; whole channels when
        `channelwise_dropout`, else single elements.
      aspp_dropout, decoder_dropout: element-wise dropout after the ASPP projection and
        between the decoder convs (0: none).
      separable: depthwise-separable dilated ASPP branches and decoder convs (RIPU's), or
        plain 3x3 convolutions.
      projection_kernel: kernel size of the conv after the ASPP concatenation (3 or 1).
      norm: kind of every batch norm here, one of `NORMS`.
    """
    eps = check_bn_epsilon(bn_epsilon)
    norm = check_norm(norm)
    aspp_dropout = _check_rate("aspp_dropout", aspp_dropout)
    decoder_dropout = _check_rate("decoder_dropout", decoder_dropout)
    layer = dict(norm=norm, bn_epsilon=eps, dtype=dtype, rngs=rngs)
    self.aspp_pointwise = ConvBNReLU(in_features, channels, 1, **layer)
    if separable:
      self.aspp_branches = nnx.List([
          SeparableConv(in_features, channels, dilation=int(d), **layer) for d in dilations])
    else:
      self.aspp_branches = nnx.List([
          ConvBNReLU(in_features, channels, 3, dilation=int(d), **layer) for d in dilations])
    self.image_pooling = ConvBNReLU(in_features, channels, 1, **layer)
    self.bottleneck = ConvBNReLU(
        channels * (len(dilations) + 2), channels, int(projection_kernel), **layer)
    self.shortcut = ConvBNReLU(low_features, low_channels, 1, **layer)
    if separable:
      self.decoder1 = SeparableConv(channels + low_channels, channels, **layer)
      self.decoder2 = SeparableConv(channels, channels, **layer)
    else:
      self.decoder1 = ConvBNReLU(channels + low_channels, channels, 3, **layer)
      self.decoder2 = ConvBNReLU(channels, channels, 3, **layer)
    # Channel-wise dropout (torch's Dropout2d) has one mask value per image and channel.
    self.dropout = nnx.Dropout(dropout_rate, broadcast_dims=(1, 2) if channelwise_dropout
                               else (), rngs=rngs)
    self.classifier = Conv(
        channels, num_classes, 1, use_bias=True, kernel_init=he_normal_fan_in,
        bias_init=torch_default_bias_init(channels), dtype=dtype, rngs=rngs)
    # Built last (and only when used): their random streams leave the weights as without.
    self.aspp_dropout = nnx.Dropout(aspp_dropout, rngs=rngs) if aspp_dropout else None
    self.decoder_dropout = nnx.Dropout(decoder_dropout, rngs=rngs) if decoder_dropout else None

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
    if self.aspp_dropout is not None:
      x = self.aspp_dropout(x)
    x = resize_bilinear(x, (low.shape[1], low.shape[2]))
    x = jnp.concatenate([x, self.shortcut(low)], axis=-1)
    x = self.decoder1(x)
    if self.decoder_dropout is not None:
      x = self.decoder_dropout(x)
    x = self.decoder2(x)
    return self.classifier(self.dropout(x))


def _feature_dropout(rate: float, rngs: nnx.Rngs) -> FeatureDropout | None:
  return FeatureDropout(rate, rngs=rngs) if rate else None


class DeepLabV3Plus(MCDropoutSegmentor):
  """ResNet (output stride 8 by default) + DeepLab-v3+ head; logits at layer1's size (1/4).

  The decoder fuses layer1 features, so the logits come out at output stride 4; as for
  DeepLab-v2, `upsample_logits` them to the label size before the losses. Dropout is active
  after construction and after `model.train()`; call `model.eval()` for inference.
  `channel_dropout=0.25` adds Monte-Carlo channel dropout on the layer4 ("out") and layer1
  ("low") maps (ViewAL's placement carried over to ResNet; see the module docstring).
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
      channel_dropout: float = 0.0,
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
      channel_dropout: Monte-Carlo channel dropout on the layer4 and layer1 maps (0: none;
        ViewAL's rate is 0.25). Built after the heads, so the weights are the same either
        way.
      bn_epsilon: epsilon of every frozen batch norm, backbone and head (1e-5; 0 is the
        release's).
      aux_heads: extra ASPP + decoder heads ("aux/0", ...), built after the main one.
      aux_stop_gradient: feed the extra heads stop-gradient features (see `Segmentor`).
      dtype: compute dtype (float32 or bfloat16); parameters and logits are float32.
      rngs: random streams (`params`, and `dropout` or `default` for dropout masks).
    """
    _check_counts(num_classes, aux_heads)
    channel_dropout = _check_rate("channel_dropout", channel_dropout)
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
    super().__init__(backbone, head, extra, aux_stop_gradient=aux_stop_gradient,
                     feature_dropout=_feature_dropout(channel_dropout, rngs))
    self.num_classes = num_classes
    self.dtype = dtype


class DeepLabV3PlusMobileNet(MCDropoutSegmentor):
  """ViewAL's network: DeepLab-v3+ on MobileNetV2 at output stride 16; logits at 1/4.

  Backbone: `MobileNetV2` ("low": 24 channels at stride 4, "out": the 320-channel last
  block, no 1280 conv). Channel dropout 0.25 on "out" (before the ASPP) and "low" (before
  the decoder), the Monte-Carlo dropout of ViewAL. Head: the standard DeepLab-v3+ head,
  plain convolutions: ASPP of 256 channels (1x1, 3x3 at dilations 6, 12, 18, image
  pooling) -> 1x1 projection -> dropout 0.5; decoder: "low" -> 1x1 48, concatenated with
  the upsampled ASPP output -> 3x3 256 -> dropout 0.5 -> 3x3 256 -> dropout 0.25 -> 1x1
  classifier; element-wise dropouts, training only. Batch norms learn (batch statistics,
  trained scale and shift) as in the release: the model starts in training mode; call
  `model.eval()` for inference, `mc_logits` for Monte-Carlo passes. Logits come out at
  the "low" map's size; `upsample_logits` them to the input size.
  """

  def __init__(
      self,
      num_classes: int,
      *,
      width_multiplier: float = 1.0,
      round_nearest: int = 8,
      output_stride: int = 16,
      dilation_rule: str = "stage",
      dilations: Sequence[int] | None = None,
      channels: int = 256,
      low_channels: int = 48,
      aspp_dropout: float = 0.5,
      decoder_dropout: float = 0.5,
      dropout_rate: float = MC_DROPOUT_RATE,
      channel_dropout: float = MC_DROPOUT_RATE,
      norm: str = "batch_affine",
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
      width_multiplier, round_nearest, output_stride, dilation_rule, in_channels: backbone
        shape, see `MobileNetV2`.
      dilations: ASPP dilation rates; None: (6, 12, 18) scaled by 16 / output_stride
        (12, 24, 36 at output stride 8).
      channels: ASPP and decoder width (256).
      low_channels: width the "low" map is reduced to (48).
      aspp_dropout, decoder_dropout, dropout_rate: the head's element-wise training
        dropouts after the ASPP, between and after the decoder convs (0.5, 0.5, 0.25).
      channel_dropout: Monte-Carlo channel dropout on "out" and "low" (0.25; 0: none).
      norm: kind of every batch norm, backbone and head ("batch_affine", the release's;
        "frozen" or "batch", see `NORMS`).
      bn_epsilon: epsilon of every batch norm (1e-5).
      aux_heads: extra heads ("aux/0", ...), built after the main one.
      aux_stop_gradient: feed the extra heads stop-gradient features (see `Segmentor`).
      dtype: compute dtype (float32 or bfloat16); parameters and logits are float32.
      rngs: random streams (`params`, and `dropout` or `default` for dropout masks).
    """
    _check_counts(num_classes, aux_heads)
    channel_dropout = _check_rate("channel_dropout", channel_dropout)
    dtype = canonical_dtype(dtype)
    backbone = MobileNetV2(width_multiplier=width_multiplier, round_nearest=round_nearest,
                           output_stride=output_stride, dilation_rule=dilation_rule,
                           in_channels=in_channels, bn_epsilon=bn_epsilon, norm=norm,
                           dtype=dtype, rngs=rngs)
    if dilations is None:
      dilations = tuple(rate * 16 // backbone.output_stride for rate in (6, 12, 18))
    dilations = tuple(int(d) for d in dilations)

    def make_head() -> DeepLabV3PlusHead:
      return DeepLabV3PlusHead(
          backbone.out_features, backbone.low_features, num_classes, dilations=dilations,
          channels=channels, low_channels=low_channels, dropout_rate=dropout_rate,
          channelwise_dropout=False, aspp_dropout=aspp_dropout,
          decoder_dropout=decoder_dropout, separable=False, projection_kernel=1, norm=norm,
          bn_epsilon=bn_epsilon, dtype=dtype, rngs=rngs)

    head = make_head()
    extra = [make_head() for _ in range(int(aux_heads))]
    super().__init__(backbone, head, extra, aux_stop_gradient=aux_stop_gradient,
                     feature_dropout=_feature_dropout(channel_dropout, rngs))
    self.num_classes = num_classes
    self.dtype = dtype
