"""LabOR's adversarial and discrepancy terms.

`discriminator_bce` is AdaptSeg's loss on the output-space discriminator's logits, against
one constant domain label (source = 0, target = 1, as the spec fixes): A's adversarial term
asks target outputs to look like source, D learns to tell them apart. `discriminator_mse` is
the least-squares (LSGAN) form IAST's release uses, on the same raw outputs; `GAN_LOSSES`
names both for `labor.gan_loss`. `discrepancy` is MCD's
mean |p1 - p2| between the two classifiers' probabilities, which model B's classifiers
maximise; `pixel_discrepancy` keeps the per-pixel sum over classes for ranking uncertain
pixels. All compute in float32.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

SOURCE_DOMAIN = 0.0
TARGET_DOMAIN = 1.0


def discriminator_bce(logits: jax.Array, domain: float) -> jax.Array:
  """Mean binary cross-entropy of `logits` (any shape) against the constant label `domain`.

  Stable for any logit: max(x, 0) - x * y + log1p(exp(-|x|)), the log-sum-exp form of
  -y log sigmoid(x) - (1 - y) log(1 - sigmoid(x)).
  """
  _check_domain(logits, domain)
  x = jnp.asarray(logits, jnp.float32)
  y = jnp.asarray(domain, jnp.float32)
  return jnp.mean(jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x))))


def _check_domain(logits: jax.Array, domain: float) -> None:
  if isinstance(domain, numbers.Real) and not 0.0 <= float(domain) <= 1.0:
    raise ValueError(f"domain must be a label in [0, 1] (source 0, target 1), got {domain!r}")
  if jnp.size(logits) == 0:
    raise ValueError(f"logits must not be empty, got shape {jnp.shape(logits)}")


def discriminator_mse(outputs: jax.Array, domain: float) -> jax.Array:
  """LSGAN: mean (D(x) - domain)^2 over D's raw outputs (no sigmoid), any shape."""
  _check_domain(outputs, domain)
  return jnp.mean(jnp.square(jnp.asarray(outputs, jnp.float32) - domain))


GAN_LOSSES = {"bce": discriminator_bce, "lsgan": discriminator_mse}


def _check_pair(p1: jax.Array, p2: jax.Array) -> None:
  if p1.ndim != 4:
    raise ValueError(f"expected NHWC probabilities of rank 4, got shape {p1.shape}")
  if p1.shape != p2.shape:
    raise ValueError(f"p1 and p2 must have the same shape, got {p1.shape} and {p2.shape}")


def pixel_discrepancy(p1: jax.Array, p2: jax.Array) -> jax.Array:
  """sum_c |p1 - p2| per pixel: [B, H, W] float32 from two [B, H, W, C] probability maps."""
  _check_pair(p1, p2)
  return jnp.sum(jnp.abs(p1.astype(jnp.float32) - p2.astype(jnp.float32)), axis=-1)


def discrepancy(p1: jax.Array, p2: jax.Array) -> jax.Array:
  """MCD's discrepancy: mean |p1 - p2| over batch, pixels and classes (a scalar)."""
  _check_pair(p1, p2)
  return jnp.mean(jnp.abs(p1.astype(jnp.float32) - p2.astype(jnp.float32)))
