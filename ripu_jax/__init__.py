"""ripu_jax: active domain adaptation for semantic segmentation in JAX/Flax."""

__version__ = "0.1.0"
