"""LabOR's output-space discriminator (AdaptSeg's fully convolutional D).

D sees softmax probabilities, not features: five 4x4 stride-2 convolutions with
channels, 2*channels, 4*channels, 8*channels and 1 outputs (64-128-256-512-1 by default),
LeakyReLU(0.2) after the first four and no normalisation. Padding is 1 on every side, as in
torch's Conv2d(k=4, s=2, p=1), so each layer maps a side of n pixels to floor(n / 2) and the
logits come out at 1/32 of the input size (64x128 -> 2x4). Weights and biases are drawn as
torch's default Conv2d init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming uniform with
a=sqrt(5)). `ripu_jax.models.layers.Conv` is not used because it only pads odd kernels
symmetrically; the even kernel needs the explicit (1, 1) padding given here.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ripu_jax.models.layers import canonical_dtype, torch_default_bias_init

KERNEL_SIZE = 4
STRIDE = 2
PADDING = 1
NEGATIVE_SLOPE = 0.2
NUM_LAYERS = 5
MIN_INPUT_SIZE = STRIDE**NUM_LAYERS  # the smallest side that leaves one output pixel


def _torch_conv_init(fan_in: int):
  """torch's default Conv2d init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); weights and biases alike.

  kaiming_uniform_(a=sqrt(5)) has bound sqrt(6 / ((1 + 5) * fan_in)) = 1/sqrt(fan_in), the
  bias bound, so one initializer serves both.
  """
  return torch_default_bias_init(fan_in)


def output_size(size: int) -> int:
  """Side length after the five layers: floor((n + 2 * 1 - 4) / 2) + 1, applied five times."""
  for _ in range(NUM_LAYERS):
    size = (size + 2 * PADDING - KERNEL_SIZE) // STRIDE + 1
  return size


class OutputDiscriminator(nnx.Module):
  """AdaptSeg's discriminator: NHWC probabilities [B, H, W, C] -> logits [B, H/32, W/32, 1].

  Attributes:
    convs: the five `nnx.Conv` layers (HWIO kernels, with bias).
  """

  def __init__(
      self,
      num_classes: int,
      *,
      channels: int = 64,
      dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Builds D with torch's default init.

    Args:
      num_classes: input channels (the segmentation network's classes).
      channels: width of the first layer; the others are 2x, 4x, 8x it, then 1 (64 is
        AdaptSeg's; a few channels make a tiny D for tests and demos).
      dtype: compute dtype (float32 or bfloat16); parameters and logits are float32.
      rngs: random streams (`params`).
    """
    for name, value in (("num_classes", num_classes), ("channels", channels)):
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    self.num_classes = int(num_classes)
    self.dtype = canonical_dtype(dtype)
    widths = [self.num_classes] + [int(channels) * 2**i for i in range(NUM_LAYERS - 1)] + [1]
    convs = []
    for in_features, out_features in zip(widths[:-1], widths[1:]):
      init = _torch_conv_init(in_features * KERNEL_SIZE * KERNEL_SIZE)
      convs.append(nnx.Conv(
          in_features,
          out_features,
          (KERNEL_SIZE, KERNEL_SIZE),
          strides=(STRIDE, STRIDE),
          padding=((PADDING, PADDING), (PADDING, PADDING)),
          use_bias=True,
          kernel_init=init,
          bias_init=init,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          rngs=rngs,
      ))
    self.convs = nnx.List(convs)

  def __call__(self, probs: jax.Array) -> jax.Array:
    """Domain logits (float32) for softmax probabilities `probs` [B, H, W, num_classes]."""
    if probs.ndim != 4 or probs.shape[-1] != self.num_classes:
      raise ValueError(
          f"expected NHWC probabilities [B, H, W, {self.num_classes}], got shape {probs.shape}")
    if min(probs.shape[1], probs.shape[2]) < MIN_INPUT_SIZE:
      raise ValueError(
          f"height and width must be >= {MIN_INPUT_SIZE} to leave an output pixel after "
          f"{NUM_LAYERS} stride-{STRIDE} layers, got {probs.shape[1]}x{probs.shape[2]}")
    x = probs.astype(self.dtype)
    for index, conv in enumerate(self.convs):
      x = conv(x)
      if index < NUM_LAYERS - 1:
        x = jax.nn.leaky_relu(x, NEGATIVE_SLOPE)
    return x.astype(jnp.float32)
