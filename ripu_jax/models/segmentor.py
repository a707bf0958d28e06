"""A segmentation network as parts: backbone + head + optional auxiliary heads.

The contract every method relies on:

* `model.backbone` maps NHWC images to a feature dict ({"low": layer1, "out": layer4} for
  `ResNet`); it is the only top-level attribute the optimizer trains at the base learning
  rate, everything else (head, auxiliary heads) gets 10x. Keep new trainable parts outside
  `backbone`.
* Every head maps that feature dict to NHWC outputs.
* `model(images)` is the main head's float32 logits, as the losses, the evaluation and the
  acquisition expect. `model(images, outputs=(...))` returns a dict of named outputs from
  one backbone pass: "logits" (main head), "aux/<i>" (auxiliary head i, float32) and
  "features" (the backbone's "out" map, in the compute dtype). Only the heads asked for run.

Auxiliary heads serve methods with more than one prediction per backbone: LabOR's second
classifier and ELN's auxiliary decoders. `aux_stop_gradient=True` feeds them
stop-gradient features, so they train without moving the backbone (ELN).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

LOGITS = "logits"
FEATURES = "features"
AUX_PREFIX = "aux/"


class Segmentor(nnx.Module):
  """backbone + head + auxiliary heads; logits by default, named outputs on request."""

  def __init__(
      self,
      backbone: nnx.Module,
      head: nnx.Module,
      aux_heads: Iterable[nnx.Module] = (),
      *,
      aux_stop_gradient: bool = False,
  ):
    """Assembles already built parts (build them in this order for reproducible seeds).

    Args:
      backbone: images -> feature dict; an `in_channels` attribute, when present, is
        checked against the images.
      head: feature dict -> NHWC logits.
      aux_heads: further feature dict -> NHWC heads, named "aux/0", "aux/1", ...
      aux_stop_gradient: feed the auxiliary heads `stop_gradient` features.
    """
    self.backbone = backbone
    self.head = head
    self.aux_heads = nnx.List(list(aux_heads))
    self.aux_stop_gradient = bool(aux_stop_gradient)

  @property
  def output_names(self) -> tuple[str, ...]:
    """Names `outputs` accepts: "logits", "aux/0" ... "aux/<n-1>", "features"."""
    aux = tuple(f"{AUX_PREFIX}{index}" for index in range(len(self.aux_heads)))
    return (LOGITS, *aux, FEATURES)

  def check_outputs(self, outputs: Sequence[str]) -> tuple[str, ...]:
    """The requested names as a tuple; raises ValueError listing the valid ones."""
    if isinstance(outputs, str):
      raise ValueError(f"outputs must be a sequence of names, e.g. ({outputs!r},), got the "
                       f"string {outputs!r}")
    names = tuple(outputs)
    unknown = [name for name in names if name not in self.output_names]
    if unknown:
      raise ValueError(f"unknown output(s) {unknown}; this model has {list(self.output_names)}")
    return names

  def __call__(self, images: jax.Array,
               outputs: Sequence[str] | None = None) -> jax.Array | dict[str, jax.Array]:
    """NHWC images -> float32 logits, or {name: output} for the names in `outputs`."""
    in_channels = getattr(self.backbone, "in_channels", None)
    if images.ndim != 4 or (in_channels is not None and images.shape[-1] != in_channels):
      raise ValueError(
          f"expected NHWC images with {in_channels} channels, got shape {images.shape}")
    names = None if outputs is None else self.check_outputs(outputs)
    features = self.backbone(images)
    if names is None:
      return self.head(features).astype(jnp.float32)
    return self.outputs_from_features(features, names)

  def outputs_from_features(self, features: Mapping[str, jax.Array],
                            outputs: Sequence[str]) -> dict[str, jax.Array]:
    """Runs the heads named in `outputs` on a backbone feature dict (e.g. to treat the
    features first, such as stopping their gradient for one loss term)."""
    names = self.check_outputs(outputs)
    aux_features = features
    if self.aux_stop_gradient:
      aux_features = jax.tree.map(jax.lax.stop_gradient, features)
    results = {}
    for name in names:
      if name == LOGITS:
        results[name] = self.head(features).astype(jnp.float32)
      elif name == FEATURES:
        results[name] = features["out"]
      else:
        head = self.aux_heads[int(name[len(AUX_PREFIX):])]
        results[name] = head(aux_features).astype(jnp.float32)
    return results
