"""Building blocks shared by the backbone and the segmentation heads.

Layout is NHWC for activations and HWIO for convolution kernels. Convolutions are shaped
around XLA CPU's fast paths, with results equal to plain convolutions: 1x1 convolutions
are 2-D matrix products, wide 3x3 convolutions take their weight gradient as per-tap
matrix products, and the ASPP-v2 head is one matrix product plus shifted sums.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

BATCH_NORM_EPS = 1e-5  # torchvision's BatchNorm2d default.

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class FrozenStat(nnx.Variable):
  """Fixed batch-norm state (statistics and affine terms).

  Not an `nnx.Param`, so `nnx.grad` and `nnx.Optimizer(..., wrt=nnx.Param)` leave it
  alone while checkpoints still carry it.
  """


def canonical_dtype(dtype: Any) -> jnp.dtype:
  """Accepts "float32" / "bfloat16" or the matching dtypes; rejects anything else."""
  if isinstance(dtype, str):
    if dtype not in _DTYPES:
      raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return jnp.dtype(_DTYPES[dtype])
  try:
    resolved = jnp.dtype(dtype)
  except TypeError as error:
    raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}") from error
  if resolved not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
    raise ValueError(f"dtype must be float32 or bfloat16, got {resolved}")
  return resolved


def check_bn_epsilon(eps: float) -> float:
  """Accepts a finite batch-norm epsilon >= 0 (0 is the RIPU release's frozen batch norm)."""
  try:
    value = float(eps)
  except (TypeError, ValueError) as error:
    raise ValueError(f"bn_epsilon must be a number >= 0, got {eps!r}") from error
  if not np.isfinite(value) or value < 0:
    raise ValueError(f"bn_epsilon must be finite and >= 0, got {eps!r}")
  return value


def _standard_normal(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  """N(0, 1) samples; drawn on the host when `key` is concrete.

  Eager jax.random compiles one small XLA program per distinct shape, which made building
  ResNet-101 take ~10 s; numpy seeded from the key's bits needs no compilation. Under a
  trace (nnx.eval_shape, jit) it falls back to jax.random, so abstract construction works.
  """
  if isinstance(key, jax.core.Tracer):
    return jax.random.normal(key, shape, dtype)
  seed = np.asarray(jax.random.key_data(key)).astype(np.uint32).ravel()
  samples = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
  return jnp.asarray(samples, dtype)


def _uniform(key: jax.Array, shape: tuple[int, ...], dtype: Any, bound: float) -> jax.Array:
  """U(-bound, bound) samples, on the host when `key` is concrete (see _standard_normal)."""
  if isinstance(key, jax.core.Tracer):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  seed = np.asarray(jax.random.key_data(key)).astype(np.uint32).ravel()
  samples = np.random.default_rng(seed).uniform(-bound, bound, shape).astype(np.float32)
  return jnp.asarray(samples, dtype)


def normal_init(std: float):
  """Kernel initializer N(0, std^2)."""

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    return std * _standard_normal(key, shape, dtype)

  return init


def he_normal_fan_out(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  """torchvision's ResNet init: kaiming_normal_(mode="fan_out", nonlinearity="relu")."""
  kh, kw, _, out_features = shape
  return np.sqrt(2.0 / (kh * kw * out_features)) * _standard_normal(key, shape, dtype)


def he_normal_fan_in(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  """Variance-preserving init for ReLU layers, from the kernel's fan-in."""
  kh, kw, in_features, _ = shape
  return np.sqrt(2.0 / (kh * kw * in_features)) * _standard_normal(key, shape, dtype)


def torch_default_bias_init(fan_in: int):
  """torch's default conv bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    return _uniform(key, shape, dtype, 1.0 / np.sqrt(fan_in))

  return init


# Convolutions whose XLA-CPU weight gradient is slow (3x3, 256+ channels on both sides,
# stride 1) get it as nine matrix products instead; smaller ones keep XLA's.
GEMM_WEIGHT_GRAD_MIN_CHANNELS = 256


def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """1x1 convolution of NHWC `x` with an [in, out] kernel as one 2-D matrix product.

  Flattening to 2-D matters on XLA CPU: the gradient of the 4-D einsum goes through
  slow 4-D transposes, the 2-D product's does not.
  """
  batch, height, width, channels = x.shape
  y = jnp.dot(x.reshape(batch * height * width, channels), kernel)
  return y.reshape(batch, height, width, kernel.shape[-1])


def shift(x: jax.Array, dy: int, dx: int) -> jax.Array:
  """out[:, h, w] = x[:, h + dy, w + dx], zero where that position is outside `x`."""
  height, width = x.shape[1], x.shape[2]
  if abs(dy) >= height or abs(dx) >= width:
    return jnp.zeros_like(x)
  x = x[:, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)]
  return jnp.pad(x, ((0, 0), (max(-dy, 0), max(dy, 0)), (max(-dx, 0), max(dx, 0)), (0, 0)))


def tap_offsets(kernel_size: int, dilation: int) -> list[tuple[int, int]]:
  """(dy, dx) input offsets of a kernel's taps, row-major, torch's symmetric padding."""
  half = kernel_size // 2
  return [((i - half) * dilation, (j - half) * dilation)
          for i in range(kernel_size) for j in range(kernel_size)]


def depthwise_conv(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
  """Stride-1 depthwise conv ([k, k, 1, C] kernel) as shifted, per-channel scaled sums.

  XLA CPU runs grouped convolutions (forward and gradients) on one thread and very
  slowly; element-wise products of shifted copies are cheap and parallel.
  """
  kernel_size = kernel.shape[0]
  out = None
  for tap, (dy, dx) in enumerate(tap_offsets(kernel_size, dilation)):
    term = shift(x, dy, dx) * kernel[tap // kernel_size, tap % kernel_size, 0]
    out = term if out is None else out + term
  return out


def _lax_conv(x: jax.Array, kernel: jax.Array, stride: int, dilation: int,
              groups: int) -> jax.Array:
  pad = dilation * (kernel.shape[0] - 1) // 2
  return jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_gemm_weight_grad(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
  """Stride-1 square conv; forward and input gradient by XLA, weight gradient by GEMMs."""
  return _lax_conv(x, kernel, 1, dilation, 1)


def _conv_gemm_forward(x, kernel, dilation):
  return _lax_conv(x, kernel, 1, dilation, 1), (x, kernel)


def _conv_gemm_backward(dilation, residuals, grad):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda inputs: _lax_conv(inputs, kernel, 1, dilation, 1), x)
  (grad_x,) = input_vjp(grad)
  kernel_size, _, in_features, out_features = kernel.shape
  grad_2d = grad.reshape(-1, out_features)
  # dW[tap] = x_shifted^T @ dy, one [N, in]^T x [N, out] product per tap.
  taps = [
      jnp.dot(shift(x, dy, dx).reshape(-1, in_features).T, grad_2d,
              preferred_element_type=jnp.float32)
      for dy, dx in tap_offsets(kernel_size, dilation)
  ]
  grad_kernel = jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)
  return grad_x, grad_kernel


conv_gemm_weight_grad.defvjp(_conv_gemm_forward, _conv_gemm_backward)


def summed_dilated_convs(x: jax.Array, kernels: Sequence[jax.Array],
                         dilations: Sequence[int]) -> jax.Array:
  """sum_b conv(x, kernels[b], dilation=dilations[b]) for narrow outputs (ASPP-v2).

  One matrix product maps every input pixel to all taps' contributions, then shifted
  slices add them up. With few output channels this runs several times faster on XLA
  CPU than separate convolutions, forward and backward, and gives the same sums.
  """
  batch, height, width, channels = x.shape
  out_features = kernels[0].shape[-1]
  stacked = jnp.concatenate(
      [k.reshape(-1, channels, out_features).transpose(1, 0, 2).reshape(channels, -1)
       for k in kernels], axis=-1)
  contributions = pointwise_conv(x, stacked).reshape(batch, height, width, -1, out_features)
  out = None
  tap = 0
  for kernel, dilation in zip(kernels, dilations):
    for dy, dx in tap_offsets(kernel.shape[0], dilation):
      term = shift(contributions[:, :, :, tap, :], dy, dx)
      out = term if out is None else out + term
      tap += 1
  return out


class Conv(nnx.Module):
  """2-D convolution with torch's symmetric padding `dilation * (kernel - 1) // 2`.

  Attributes:
    kernel: [kernel, kernel, in_features // groups, out_features] weights.
    bias: [out_features] or None.
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      kernel_size: int,
      *,
      stride: int = 1,
      dilation: int = 1,
      groups: int = 1,
      use_bias: bool = False,
      kernel_init: Any = he_normal_fan_out,
      bias_init: Any = None,
      dtype: Any = jnp.float32,
      param_dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    if in_features % groups or out_features % groups:
      raise ValueError(
          f"in_features ({in_features}) and out_features ({out_features}) must be "
          f"divisible by groups ({groups})")
    if kernel_size % 2 != 1:
      raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    self.kernel_size = kernel_size
    self.stride = stride
    self.dilation = dilation
    self.groups = groups
    self.dtype = canonical_dtype(dtype)
    shape = (kernel_size, kernel_size, in_features // groups, out_features)
    self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
    if use_bias:
      if bias_init is None:
        bias = jnp.asarray(np.zeros((out_features,), np.float32), param_dtype)
      else:
        bias = bias_init(rngs.params(), (out_features,), param_dtype)
      self.bias = nnx.Param(bias)
    else:
      self.bias = None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    kernel = self.kernel[...].astype(self.dtype)
    # kernel_in is in_features // groups: 1 for a depthwise convolution.
    kernel_in, out_features = kernel.shape[2], kernel.shape[3]
    if self.kernel_size == 1 and self.groups == 1:
      if self.stride > 1:
        x = x[:, ::self.stride, ::self.stride, :]
      y = pointwise_conv(x, kernel[0, 0])
    elif self.stride == 1 and kernel_in == 1 and self.groups == out_features:
      y = depthwise_conv(x, kernel, self.dilation)
    elif (self.stride == 1 and self.groups == 1
          and min(kernel_in, out_features) >= GEMM_WEIGHT_GRAD_MIN_CHANNELS):
      y = conv_gemm_weight_grad(x, kernel, self.dilation)
    else:
      y = _lax_conv(x, kernel, self.stride, self.dilation, self.groups)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class FrozenBatchNorm(nnx.Module):
  """Inference-mode batch norm whose statistics and affine terms never change.

  Computes `(x - running_mean) * weight / sqrt(running_var + eps) + bias`. Defaults (mean 0,
  variance 1, weight 1, bias 0) make it a near-identity, a scale of 1 / sqrt(1 + eps);
  loading pretrained values gives the ImageNet normalisation. `eps` defaults to torchvision's
  1e-5; the RIPU release's frozen batch norm adds none (`weight / sqrt(running_var)`), which
  `eps=0.0` reproduces.
  """

  def __init__(
      self,
      num_features: int,
      *,
      weight_init: float = 1.0,
      eps: float = BATCH_NORM_EPS,
      dtype: Any = jnp.float32,
      param_dtype: Any = jnp.float32,
  ):
    self.eps = check_bn_epsilon(eps)
    self.dtype = canonical_dtype(dtype)
    # Host-built constants: no per-shape XLA compilation while building a model.
    ones = np.ones((num_features,), np.float32)
    zeros = np.zeros((num_features,), np.float32)
    self.weight = FrozenStat(jnp.asarray(weight_init * ones, param_dtype))
    self.bias = FrozenStat(jnp.asarray(zeros, param_dtype))
    self.running_mean = FrozenStat(jnp.asarray(zeros, param_dtype))
    self.running_var = FrozenStat(jnp.asarray(ones, param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    # Statistics are constants: stop_gradient keeps them out of any differentiation,
    # even one taken with respect to every variable.
    weight = jax.lax.stop_gradient(self.weight[...]).astype(jnp.float32)
    bias = jax.lax.stop_gradient(self.bias[...]).astype(jnp.float32)
    mean = jax.lax.stop_gradient(self.running_mean[...]).astype(jnp.float32)
    var = jax.lax.stop_gradient(self.running_var[...]).astype(jnp.float32)
    scale = weight * jax.lax.rsqrt(var + self.eps)
    shift = bias - mean * scale
    return x * scale.astype(x.dtype) + shift.astype(x.dtype)


class BatchNorm(nnx.Module):
  """Batch norm that learns its statistics, as torch's BatchNorm2d (NHWC input).

  In training mode (`use_running_average=False`, the state after construction) it
  normalises with the batch's mean and biased variance over (N, H, W) (every axis but the
  last, channels, so [N, C] input works as BatchNorm1d) and moves the running
  statistics torch's way, `running = (1 - momentum) * running + momentum * batch_stat`,
  the variance term unbiased (n / (n - 1)). In evaluation mode it uses the running
  statistics, exactly as `FrozenBatchNorm`. `module.train()` / `module.eval()` switch the
  mode of every BatchNorm inside a model.

  Synchronised batch norm: under `jax.jit` over a batch sharded on a device mesh, the batch
  statistics are the global ones over all devices (a jitted program computes the mean of
  the whole logical array), so no cross-device reduction is written here.

  Variables carry FrozenBatchNorm's names (`weight`, `bias`, `running_mean`,
  `running_var`) so torchvision weights load into either. The running statistics are
  `nnx.BatchStat`: updated in the forward pass (also inside `nnx.jit` and `nnx.grad`),
  never differentiated. The affine terms are `nnx.Param` when `trainable_affine`, else
  `FrozenStat`, which an optimizer over `nnx.Param` leaves alone. Statistics and the
  normalisation are computed in float32; the output has the input's dtype.
  """

  def __init__(
      self,
      num_features: int,
      *,
      weight_init: float = 1.0,
      eps: float = BATCH_NORM_EPS,
      momentum: float = 0.1,
      trainable_affine: bool = True,
      dtype: Any = jnp.float32,
      param_dtype: Any = jnp.float32,
  ):
    if int(num_features) < 1:
      raise ValueError(f"num_features must be >= 1, got {num_features}")
    try:
      momentum = float(momentum)
    except (TypeError, ValueError) as error:
      raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}") from error
    if not 0.0 <= momentum <= 1.0:
      raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    self.num_features = int(num_features)
    self.eps = check_bn_epsilon(eps)
    self.momentum = momentum
    self.trainable_affine = bool(trainable_affine)
    self.dtype = canonical_dtype(dtype)
    self.use_running_average = False
    affine = nnx.Param if self.trainable_affine else FrozenStat
    ones = np.ones((self.num_features,), np.float32)
    zeros = np.zeros((self.num_features,), np.float32)
    self.weight = affine(jnp.asarray(weight_init * ones, param_dtype))
    self.bias = affine(jnp.asarray(zeros, param_dtype))
    self.running_mean = nnx.BatchStat(jnp.asarray(zeros, param_dtype))
    self.running_var = nnx.BatchStat(jnp.asarray(ones, param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim < 2 or x.shape[-1] != self.num_features:
      raise ValueError(
          f"expected channels-last input with {self.num_features} channels, got shape "
          f"{x.shape}")
    weight = self.weight[...].astype(jnp.float32)
    bias = self.bias[...].astype(jnp.float32)
    if not self.trainable_affine:
      weight = jax.lax.stop_gradient(weight)
      bias = jax.lax.stop_gradient(bias)
    values = x.astype(jnp.float32)
    if self.use_running_average:
      mean = jax.lax.stop_gradient(self.running_mean[...]).astype(jnp.float32)
      var = jax.lax.stop_gradient(self.running_var[...]).astype(jnp.float32)
    else:
      axes = tuple(range(x.ndim - 1))
      count = math.prod(x.shape[:-1])
      if count < 2:
        raise ValueError(
            "batch norm in training mode needs more than one value per channel (N * H * W "
            f">= 2), got input shape {x.shape}; call .eval() to use the running statistics")
      mean = jnp.mean(values, axis=axes)
      var = jnp.mean(jnp.square(values - mean), axis=axes)
      self._update_running_stats(mean, var * (count / (count - 1)))
    scale = weight * jax.lax.rsqrt(var + self.eps)
    shift = bias - mean * scale
    return (values * scale + shift).astype(x.dtype)

  def _update_running_stats(self, mean: jax.Array, unbiased_var: jax.Array) -> None:
    keep = 1.0 - self.momentum
    for variable, batch_stat in ((self.running_mean, mean), (self.running_var, unbiased_var)):
      running = variable[...].astype(jnp.float32)
      updated = keep * running + self.momentum * batch_stat
      variable[...] = jax.lax.stop_gradient(updated).astype(variable.dtype)


NORMS = ("frozen", "batch", "batch_affine")


def check_norm(norm: str) -> str:
  """Accepts one of `NORMS`; anything else is a ValueError listing them."""
  if not isinstance(norm, str) or norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  return norm


def make_norm(
    norm: str,
    num_features: int,
    *,
    weight_init: float = 1.0,
    eps: float = BATCH_NORM_EPS,
    dtype: Any = jnp.float32,
) -> FrozenBatchNorm | BatchNorm:
  """Builds the batch norm a network's `norm` setting names.

  "frozen": `FrozenBatchNorm`, fixed statistics and affine terms. "batch": `BatchNorm`
  with batch statistics and fixed affine terms (a backbone whose scale/shift stay out of
  the optimizer). "batch_affine": `BatchNorm` with batch statistics and trained affine
  terms. One factory so backbones and heads build their norms alike.
  """
  norm = check_norm(norm)
  if norm == "frozen":
    return FrozenBatchNorm(num_features, weight_init=weight_init, eps=eps, dtype=dtype)
  return BatchNorm(num_features, weight_init=weight_init, eps=eps, dtype=dtype,
                   trainable_affine=norm == "batch_affine")


def max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
  """torch's MaxPool2d(3, stride=2, padding=1) on NHWC input.

  Written as element-wise maxima of strided slices (rows, then columns): its gradient is
  a cheap select, unlike XLA CPU's reduce_window backward.
  """
  height, width = x.shape[1], x.shape[2]
  out_h = (height - 1) // 2 + 1
  out_w = (width - 1) // 2 + 1
  neg = jnp.asarray(-jnp.inf, x.dtype)
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=neg)
  rows = [x[:, i:i + 2 * (out_h - 1) + 1:2, :, :] for i in range(3)]
  x = jnp.maximum(jnp.maximum(rows[0], rows[1]), rows[2])
  cols = [x[:, :, j:j + 2 * (out_w - 1) + 1:2, :] for j in range(3)]
  return jnp.maximum(jnp.maximum(cols[0], cols[1]), cols[2])
