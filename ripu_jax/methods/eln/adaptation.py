"""ELN as a stage after RIPU's rounds ("ripu_eln"; spec: ../shared/docs/eln-method.md, "ELN
inside active domain adaptation", the project's own design).

RIPU buys 2.2% of the target pixels at its rounds and trains to 40k of its 62.5k-step poly
schedule. This objective is RIPU's until eln.aux_from (stage 1: the same loss, data and
updates, so a run from scratch is a RIPU run up to there), then continues the schedule:

  stage 2  (< eln.self_training_from)  + gated L_aux of K auxiliary heads (random copies of
                                       the model's head on stop-gradient features; the gate
                                       compares their CE on source + target with RIPU's)
                                       + L_ELN on the target images, restricted to the
                                       actively labelled pixels (255 is excluded, not an
                                       error: it would mark ~98% of the pixels wrong)
  stage 3                              + the pseudo-label CE of the student's strong view on
                                       the target pixels that are not actively labelled and
                                       that the ELN keeps; teacher logits and ELN logit are
                                       upsampled to the label size first, as RIPU's CE

No labels are bought after the rounds. The segmentation network keeps RIPU's SGD and frozen
batch norm; the auxiliary heads and the ELN learn with AdamW (eln.lr, eln.backbone_lr); the
teacher is the EMA of the student from eln.self_training_from on. `train.continue_from` runs
the stages from a finished RIPU workdir: its model, optimizer, ledger and step carry over,
the auxiliary heads, the ELN and the teacher start fresh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ripu_jax import config_lib
from ripu_jax import losses as ripu_losses
from ripu_jax import models
from ripu_jax.errors import ConfigError
from ripu_jax.methods.eln import losses
from ripu_jax.methods.eln.objective import (METRICS, ElnObjective, _at, build_eln,
                                            eln_optimizer_config, eval_view, start_teacher)
from ripu_jax.objectives import OBJECTIVES, TrainState, optimizer_for


class AuxHeads(nnx.Module):
  """K heads of the model's kind on its (stop-gradient) backbone features."""

  def __init__(self, heads):
    self.heads = nnx.List(list(heads))

  def __call__(self, features) -> list[jax.Array]:
    features = jax.tree.map(jax.lax.stop_gradient, features)
    return [head(features).astype(jnp.float32) for head in self.heads]


def _split(x: jax.Array, sizes) -> list[jax.Array]:
  return jnp.split(x, np.cumsum(sizes)[:-1].tolist(), axis=0)


@OBJECTIVES.register("ripu_eln")
class RipuElnObjective(ElnObjective):
  """RIPU, then (from eln.aux_from) auxiliary heads and the ELN, then self-training."""

  domains = ("source", "target")

  @classmethod
  def validate(cls, config) -> None:
    super().validate(config)
    if config.eln.contrastive:
      raise ConfigError("invalid config: the ELN stage after RIPU has no contrastive loss "
                        "(DeepLab-v2 has no projection head); set eln.contrastive=False")
    if config.eln.aux_from < max(config.active.round_steps, default=0):
      raise ConfigError(f"invalid config: eln.aux_from ({config.eln.aux_from}) comes before "
                        f"RIPU's last round (active.round_steps {tuple(config.active.round_steps)}"
                        "); the ELN stage starts after the rounds")

  def model_kwargs(self) -> dict:
    return {}

  def init_from_may_lack(self) -> tuple[str, ...]:
    return ()

  def loader_options(self, domain: str) -> dict:
    return {"strong_view": True} if domain == "target" else {}

  def build_state(self, model: nnx.Module) -> TrainState:
    config, eln = self.config, self.config.eln
    num_classes = config_lib.num_classes(config)
    kwargs = config.model.kwargs.to_dict()
    build = lambda seed, **extra: models.build_model(  # noqa: E731
        config.model.name, num_classes, rngs=nnx.Rngs(seed), dtype=config.model.dtype,
        **kwargs, **extra)
    teacher = build(config.seed + 1)
    aux = AuxHeads(build(config.seed + 3, aux_heads=len(eln.aux_alphas)).aux_heads)
    network = build_eln(config)
    adamw = eln_optimizer_config(eln)
    return TrainState(model, optimizer_for(model, config.optim), teacher=teacher,
                      aux=aux, aux_optimizer=optimizer_for(aux, adamw),
                      eln=network, eln_optimizer=optimizer_for(network, adamw))

  def _step(self, state: TrainState, batch, step: jax.Array, *, stage: int):
    if stage == 1:  # RIPU's own step, so that the run is RIPU's to the bit until the stage
      ripu = OBJECTIVES.get("ripu")(self.config)
      metrics = ripu.train_step(state, {k: v for k, v in batch.items()
                                        if k.split("_")[0] in ripu.domains and "strong" not in k})
      zeros = dict.fromkeys(METRICS, jnp.float32(0.0))
      return {**zeros, **metrics, "sup": metrics["total"], "stage": jnp.float32(1.0)}
    eln, train = self.config.eln, self.config.train
    source_images, source_labels = batch["source_images"], batch["source_labels"]
    target_images, target_labels = batch["target_images"], batch["target_labels"]
    label_size = target_labels.shape[1:3]
    metrics = dict.fromkeys(METRICS, jnp.float32(0.0))
    metrics["stage"] = jnp.float32(stage)

    pseudo = None
    if stage == 3:
      start_teacher(state, step == eln.self_training_from)
      teacher_logits = eval_view(state.teacher)(target_images)
      keep_logits = eval_view(state.eln)(target_images, teacher_logits)
      keep = losses.keep_mask(_at(keep_logits[..., None], label_size)[..., 0],
                              eln.keep_threshold)
      pseudo = losses.pseudo_labels(_at(teacher_logits, label_size), keep,
                                    exclude=target_labels != ripu_losses.IGNORE_INDEX)
      metrics["kept_fraction"] = jnp.mean(keep.astype(jnp.float32))

    def loss_fn(model, aux, network):
      images = [source_images, target_images]
      if stage == 3:
        images.append(batch["target_strong_image"])
      sizes = [x.shape[0] for x in images]
      if len({x.shape[1:] for x in images}) == 1:  # one pass (frozen BN: exact)
        features = model.backbone(jnp.concatenate(images, axis=0))
        logits = _split(model.outputs_from_features(features, ("logits",))["logits"], sizes)
        parts = [jax.tree.map(lambda f, i=i: _split(f, sizes)[i], features)
                 for i in range(len(sizes))]
      else:
        parts = [model.backbone(x) for x in images]
        logits = [model.outputs_from_features(f, ("logits",))["logits"] for f in parts]
      source_logits = _at(logits[0], source_labels.shape[1:3])
      target_logits = _at(logits[1], label_size)
      total, terms = ripu_losses.ripu_objective(
          source_logits, source_labels, target_logits, target_labels,
          consistency_weight=train.consistency_weight, negative_weight=train.negative_weight,
          negative_threshold=train.negative_threshold)
      terms = {"sup": total, **terms}
      if stage >= 2:
        supervised_ce = terms["source_ce"] + terms["target_ce"]
        source_aux, target_aux = aux(parts[0]), aux(parts[1])
        aux_total, predictions = jnp.float32(0.0), []
        for alpha, on_source, on_target in zip(eln.aux_alphas, source_aux, target_aux):
          on_target = _at(on_target, label_size)
          aux_ce = (ripu_losses.cross_entropy(_at(on_source, source_labels.shape[1:3]),
                                              source_labels)
                    + ripu_losses.cross_entropy(on_target, target_labels))
          aux_total = aux_total + losses.aux_gate(aux_ce, supervised_ce, alpha) * aux_ce
          predictions.append(on_target)
        terms["aux"] = aux_total
        terms["eln"] = self._eln_loss(network, target_images, target_labels,
                                      [*predictions, target_logits])
        total = total + aux_total + terms["eln"]
      if stage == 3:
        terms["pseudo"] = ripu_losses.cross_entropy(_at(logits[2], label_size), pseudo)
        total = total + terms["pseudo"]
      terms["total"] = total
      return total, terms

    return self._update(state, loss_fn, ("aux", "eln"), metrics, stage=stage)
