"""ELN's self-training objective ("eln"; spec: ../shared/docs/eln-method.md).

Semi-supervised: a labelled and an unlabelled stream of target images (domains "labelled",
"unlabelled"; the acquirer "split" decides which images are labelled). Three stages, by step:

  stage 1  (step < eln.aux_from)               L_sup on the labelled batch
  stage 2  (< eln.self_training_from)          + gated L_aux of the K auxiliary decoders
                                               + L_ELN: the ELN learns where the main and
                                               auxiliary predictions are right
  stage 3                                      + L_pseudo and L_con on the unlabelled batch,
                                               from the EMA teacher's predictions where the
                                               ELN trusts them

Train state: the student (`model`, with K = len(eln.aux_alphas) auxiliary heads on
stop-gradient features, added by `model_kwargs`) and its optimizer; the `eln` network and
its AdamW optimizer; the `teacher`, a copy of the student without auxiliary heads that no
optimizer touches: copied from the student at the first stage-3 step, then
teacher = d * teacher + (1 - d) * student after every update (d = eln.teacher_decay, over
parameters, and over batch-norm statistics with eln.ema_batch_stats). With
eln.reset_student_each_epoch (the release) the student takes the teacher's weights at the
start of every eln.epoch_steps-long epoch of stage 3.

The teacher and the ELN judge the weak view in eval mode (no dropout, running statistics);
the student learns from the weak and the strong view (a colour-jittered copy the input
pipeline makes with the same geometry). Every stage is its own jitted program; the stage is
known on the host from the step, so each step runs only its stage's computation. Every
stage returns the same metrics (zeros for terms it does not compute).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from ripu_jax import config_lib
from ripu_jax import losses as ripu_losses
from ripu_jax import models
from ripu_jax.errors import ConfigError
from ripu_jax.image_ops import upsample_logits
from ripu_jax.methods.eln import losses
from ripu_jax.methods.eln.networks import ELN_RANDOM_KEYS, PROJECTION, ErrorLocalizationNet
from ripu_jax.methods.eln.report import ElnReport
from ripu_jax.objectives import OBJECTIVES, Objective, TrainState, check_batch, optimizer_for

AUX_GATES = ("batch", "image")
METRICS = ("sup", "aux", "eln", "pseudo", "contrastive", "total", "grad_norm",
           "eln_grad_norm", "kept_fraction", "stage")


def eln_optimizer_config(eln: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ELN's (and the spec's auxiliary decoders') AdamW: constant rates, eln.lr outside
  the backbone, eln.backbone_lr in it."""
  optim_config = config_lib.base_config().optim
  optim_config.update(name="adamw", schedule="constant", base_lr=eln.backbone_lr,
                      head_lr_multiplier=eln.lr / eln.backbone_lr,
                      weight_decay=eln.weight_decay, betas=(0.9, 0.999))
  return optim_config


def _blend(destination: nnx.Module, source: nnx.Module, weight: jax.Array,
           kinds) -> None:
  """destination = (1 - weight) * destination + weight * source over variables of `kinds`
  (weight 1 copies, 1 - decay is the EMA step)."""
  nnx.update(destination, losses.ema_update(nnx.state(destination, kinds),
                                            nnx.state(source, kinds), 1.0 - weight))


def _at(logits: jax.Array, size) -> jax.Array:
  return upsample_logits(logits, size)


def start_teacher(state: TrainState, is_start: jax.Array) -> None:
  """teacher <- student (backbone and head) where `is_start`: self-training begins."""
  for part in ("backbone", "head"):
    _blend(getattr(state.teacher, part), getattr(state.model, part),
           is_start.astype(jnp.float32), (nnx.Param, nnx.BatchStat))


def ema_teacher(state: TrainState, eln: ml_collections.ConfigDict) -> None:
  """teacher = d * teacher + (1 - d) * student after the student's update."""
  kinds = (nnx.Param, nnx.BatchStat) if eln.ema_batch_stats else nnx.Param
  weight = jnp.float32(1.0 - eln.teacher_decay)
  for part in ("backbone", "head"):
    _blend(getattr(state.teacher, part), getattr(state.model, part), weight, kinds)


def build_eln(config: ml_collections.ConfigDict) -> ErrorLocalizationNet:
  """The config's ELN (eln.network), its backbone from ImageNet weights when eln.pretrained
  names them (stem and projection shortcuts stay random, as the release)."""
  network = ErrorLocalizationNet(config_lib.num_classes(config),
                                 rngs=nnx.Rngs(config.seed + 2), dtype=config.model.dtype,
                                 **config.eln.network.to_dict())
  if config.eln.pretrained:
    models.load_torchvision_weights(network.backbone,
                                    models.load_torchvision_npz(config.eln.pretrained),
                                    keep_random=ELN_RANDOM_KEYS)
  return network


def eval_view(module: nnx.Module) -> nnx.Module:
  """The module without dropout and with running batch-norm statistics (shares arrays)."""
  return nnx.with_attributes(module, deterministic=True, use_running_average=True,
                             raise_if_not_found=False)


@OBJECTIVES.register("eln")
class ElnObjective(Objective):
  """ELN self-training: supervised, then auxiliary decoders and the ELN, then pseudo labels."""

  domains = ("labelled", "unlabelled")

  @classmethod
  def validate(cls, config) -> None:
    eln = config.get("eln")
    if eln is None:
      raise ConfigError("invalid config: train.objective 'eln' needs the config group `eln` "
                        "(start from a config under configs/eln/)")
    if not 0 < eln.teacher_decay < 1:
      raise ConfigError(f"invalid config: eln.teacher_decay must lie in (0, 1) (the release: "
                        f"0.995), got {eln.teacher_decay}")
    if not 0 <= eln.aux_from <= eln.self_training_from:
      raise ConfigError(f"invalid config: need 0 <= eln.aux_from <= eln.self_training_from, "
                        f"got {eln.aux_from} and {eln.self_training_from}")
    if eln.epoch_steps < 1:
      raise ConfigError(f"invalid config: eln.epoch_steps must be >= 1, got {eln.epoch_steps}")
    if not len(eln.aux_alphas) or min(eln.aux_alphas) <= 0:
      raise ConfigError(f"invalid config: eln.aux_alphas must be positive gate factors, one "
                        f"per auxiliary decoder, got {eln.aux_alphas}")
    if eln.aux_gate not in AUX_GATES:
      raise ConfigError(f"invalid config: eln.aux_gate must be one of {AUX_GATES}, got "
                        f"{eln.aux_gate!r}")
    if eln.eln_reduce not in ("sum", "mean"):
      raise ConfigError(f"invalid config: eln.eln_reduce must be 'sum' or 'mean', got "
                        f"{eln.eln_reduce!r}")
    if not 0 < eln.keep_threshold < 1:
      raise ConfigError(f"invalid config: eln.keep_threshold must lie in (0, 1), got "
                        f"{eln.keep_threshold}")
    if eln.lr <= 0 or eln.backbone_lr <= 0:
      raise ConfigError(f"invalid config: eln.lr and eln.backbone_lr must be > 0, got "
                        f"{eln.lr}, {eln.backbone_lr}")

  def model_kwargs(self) -> dict:
    return dict(aux_heads=len(self.config.eln.aux_alphas), aux_stop_gradient=True)

  def init_from_may_lack(self) -> tuple[str, ...]:
    return ("aux_heads",)

  def hooks(self) -> list:
    return [ElnReport(self.config)]

  def loader_options(self, domain: str) -> dict:
    return {"strong_view": True} if domain == "unlabelled" else {}

  def build_state(self, model: nnx.Module) -> TrainState:
    config, eln = self.config, self.config.eln
    if eln.contrastive and PROJECTION not in getattr(model, "output_names", ()):
      raise ConfigError(f"invalid config: eln.contrastive needs a model with a "
                        f"{PROJECTION!r} output (model.name 'eln_deeplabv3plus'); "
                        f"{config.model.name!r} has none: set --config.eln.contrastive=False")
    num_classes = config_lib.num_classes(config)
    kwargs = {k: v for k, v in config.model.kwargs.to_dict().items()
              if k not in ("aux_heads", "aux_stop_gradient")}
    teacher = models.build_model(config.model.name, num_classes,
                                 rngs=nnx.Rngs(config.seed + 1), dtype=config.model.dtype,
                                 **kwargs)
    network = build_eln(config)
    return TrainState(model, optimizer_for(model, config.optim), teacher=teacher,
                      eln=network,
                      eln_optimizer=optimizer_for(network, eln_optimizer_config(eln)))

  def check_start(self, step: int) -> None:
    if step > self.config.eln.self_training_from:
      raise ConfigError(
          f"invalid config: the continued run ends at step {step}, after "
          f"eln.self_training_from={self.config.eln.self_training_from}: the teacher starts "
          "there; continue an earlier run or move the stages later")

  def stage(self, step: int) -> int:
    eln = self.config.eln
    return 1 if step < eln.aux_from else 2 if step < eln.self_training_from else 3

  # ------------------------------------------------------------------ the step

  def _eln_loss(self, network, images, labels, predictions):
    """L_ELN of the ELN on each prediction of the labelled batch (one batched pass)."""
    eln = self.config.eln
    count = len(predictions)
    stacked = jax.lax.stop_gradient(jnp.concatenate(predictions, axis=0))
    logits = network(jnp.concatenate([images] * count, axis=0), stacked)
    logits = _at(logits[..., None], labels.shape[1:3])[..., 0]
    return losses.eln_loss(jnp.split(logits, count, axis=0),
                           jnp.split(stacked, count, axis=0), labels,
                           ignore_as_error=eln.eln_ignore_as_error, reduce=eln.eln_reduce)

  def _step(self, state: TrainState, batch, step: jax.Array, *, stage: int):
    eln = self.config.eln
    images, labels = batch["labelled_images"], batch["labelled_labels"]
    zero = jnp.float32(0.0)
    metrics = dict.fromkeys(METRICS, zero)
    metrics["stage"] = jnp.float32(stage)

    pseudo = None
    if stage == 3:
      start_teacher(state, step == eln.self_training_from)
      if eln.reset_student_each_epoch:
        since = step - eln.self_training_from
        reset = ((since > 0) & (since % eln.epoch_steps == 0)).astype(jnp.float32)
        for part in ("backbone", "head"):
          _blend(getattr(state.model, part), getattr(state.teacher, part), reset,
                 (nnx.Param, nnx.BatchStat))
      weak = batch["unlabelled_images"]
      teacher = eval_view(state.teacher)
      names = ("logits", PROJECTION) if eln.contrastive else ("logits",)
      teacher_outputs = teacher(weak, outputs=names)
      teacher_logits = teacher_outputs["logits"]
      keep = losses.keep_mask(eval_view(state.eln)(weak, teacher_logits), eln.keep_threshold)
      pseudo = losses.pseudo_labels(teacher_logits, keep)
      metrics["kept_fraction"] = jnp.mean(keep.astype(jnp.float32))

    def loss_fn(model, network):
      # One student pass over the labelled images, in stage 3 with the weak and strong views.
      split, size = images.shape[0], labels.shape[1:3]
      views = [images]
      if stage == 3:
        views += [batch["unlabelled_images"], batch["unlabelled_strong_image"]]
      features = model.backbone(jnp.concatenate(views, axis=0) if len(views) > 1 else images)
      contrastive = stage == 3 and eln.contrastive
      outputs = model.outputs_from_features(
          features, ("logits", PROJECTION) if contrastive else ("logits",))
      main = _at(outputs["logits"][:split], size)
      terms = {"sup": ripu_losses.cross_entropy(main, labels)}
      if stage >= 2:
        labelled = jax.tree.map(lambda f: f[:split], features)
        aux_names = tuple(f"aux/{k}" for k in range(len(eln.aux_alphas)))
        aux_outputs = model.outputs_from_features(labelled, aux_names)
        aux_logits = [_at(aux_outputs[name], size) for name in aux_names]
        per_image = eln.aux_gate == "image"
        reference = (losses.per_image_cross_entropy(main, labels) if per_image
                     else terms["sup"])
        terms["aux"], _ = losses.gated_aux_loss(aux_logits, labels, reference,
                                                tuple(eln.aux_alphas), per_image=per_image)
        terms["eln"] = self._eln_loss(network, images, labels, [*aux_logits, main])
      if stage == 3:
        weak_logits, strong_logits = jnp.split(outputs["logits"][split:], 2, axis=0)
        terms["pseudo"] = ripu_losses.cross_entropy(strong_logits, pseudo)
        if eln.pseudo_on_weak:
          terms["pseudo"] += ripu_losses.cross_entropy(weak_logits, pseudo)
      if contrastive:
        key = jax.random.fold_in(jax.random.key(self.config.seed), step)
        corners = losses.random_window_corners(key, eln.contrastive_windows, *pseudo.shape[1:3],
                                               eln.contrastive_window)
        terms["contrastive"] = sum(
            losses.window_contrastive_loss(
                projection, teacher_outputs[PROJECTION], pseudo, corners,
                window=eln.contrastive_window, temperature=eln.contrastive_temperature,
                num_classes=teacher_logits.shape[-1])
            for projection in jnp.split(outputs[PROJECTION][split:], 2, axis=0))
      total = sum(terms.values())
      return total, {**terms, "total": total}

    return self._update(state, loss_fn, ("eln",), metrics, stage=stage)

  def _update(self, state: TrainState, loss_fn, extras: tuple[str, ...], metrics: dict, *,
              stage: int) -> dict:
    """One update: `loss_fn(model, *extras)` differentiated with respect to the model and,
    from stage 2, the extra networks (each by its `<name>_optimizer`); then the EMA teacher
    in stage 3. Returns the metrics as float32 scalars."""
    names = ("model", *extras) if stage > 1 else ("model",)
    modules = [getattr(state, name) for name in names]
    loss = loss_fn if stage > 1 else (lambda model: loss_fn(model, *[None] * len(extras)))
    grads, terms = nnx.grad(loss, argnums=tuple(range(len(names))), has_aux=True)(*modules)
    for name, module, grad in zip(names, modules, grads):
      optimizer = state.optimizer if name == "model" else getattr(state, f"{name}_optimizer")
      optimizer.update(module, grad)
    metrics.update(terms)
    metrics["grad_norm"] = optax.tree.norm(grads[0])
    if "eln" in names:
      metrics["eln_grad_norm"] = optax.tree.norm(grads[names.index("eln")])
    if stage == 3:
      ema_teacher(state, self.config.eln)
    return {key: jnp.asarray(value, jnp.float32) for key, value in metrics.items()}

  def make_step(self):
    """`step(state, batch) -> metrics`: the stage's jitted, donated program for this step.

    The step count comes from the student optimizer's (one update per training step), read
    once, then counted on the host, so no step waits on the device to learn its stage.
    """
    programs = {
        stage: nnx.jit(lambda state, batch, step, stage=stage: self._step(
            state, batch, step, stage=stage), donate_argnames=("state",))
        for stage in (1, 2, 3)}
    counter = {}

    def step(state: TrainState, batch) -> dict:
      check_batch(batch, self.domains)
      if "step" not in counter:
        counter["step"] = int(state.optimizer.step[...])
      number = counter["step"]
      batch = {k: v for k, v in batch.items() if k.split("_")[0] in self.domains}
      metrics = programs[self.stage(number)](state, batch, jnp.int32(number))
      counter["step"] = number + 1
      return metrics

    return step
