"""ELN's config group and the semi-supervised setting built on a base config."""

from __future__ import annotations

import ml_collections

PLUGIN = "ripu_jax.methods.eln"
EPOCH_STEPS = 266  # the release's iterations per epoch


def eln_group(*, aux_from: int, self_training_from: int) -> ml_collections.ConfigDict:
  """`config.eln`, with the release's choices where the paper differs (spec: "Release vs
  paper"); stage boundaries in steps."""
  return ml_collections.ConfigDict(dict(
      aux_from=aux_from,  # stage 2: auxiliary decoders and the ELN start learning
      self_training_from=self_training_from,  # stage 3: pseudo labels and L_con
      epoch_steps=EPOCH_STEPS,
      aux_alphas=(20.0, 50.0),  # one gate factor per auxiliary decoder (K = 2)
      aux_gate="batch",  # release: gate on batch means, >=; "image": per image, > (paper)
      eln_ignore_as_error=True,  # release: label 255 counts as a wrong prediction
      eln_reduce="sum",  # release: the K + 1 ELN terms summed; "mean": paper
      keep_threshold=0.5,
      teacher_decay=0.995,
      ema_batch_stats=True,  # the teacher also averages batch-norm statistics
      reset_student_each_epoch=True,  # release: student <- teacher at every epoch start
      pseudo_on_weak=True,  # release: pseudo-label CE on the weak view too
      contrastive=True,
      contrastive_windows=8,
      contrastive_window=32,
      contrastive_temperature=0.5,
      lr=1e-4,  # ELN decoder and head (AdamW, constant)
      backbone_lr=1e-5,  # ELN's ResNet-34
      weight_decay=1e-5,
      pretrained="",  # torchvision ResNet-34 .npz for the ELN's backbone ("" = random)
      network=ml_collections.ConfigDict(dict(depth=34)),  # ErrorLocalizationNet kwargs
  ))


def semi_supervised_config(config: ml_collections.ConfigDict, *, fraction: float,
                           aux_from: int,
                           self_training_from: int) -> ml_collections.ConfigDict:
  """Turns a base config into ELN's semi-supervised setting on its target dataset: no source,
  `fraction` of target train labelled (acquirer "split"), student "eln_deeplabv3plus"
  with batch-statistics BN, AdamW at a constant 1e-5 (backbone) / 1e-4 (rest)."""
  config.plugins = tuple(config.plugins) + (PLUGIN,)
  config.data.source = ""
  config.data.sampling = "uniform"
  config.train.objective = "eln"
  config.active.kind = "split"
  config.active.labelled_fraction = fraction
  config.active.round_steps = ()
  config.model.name = "eln_deeplabv3plus"
  config.model.kwargs = ml_collections.ConfigDict(dict(depth=101, norm="batch"))
  config.optim.update(name="adamw", schedule="constant", base_lr=1e-5,
                      head_lr_multiplier=10.0, weight_decay=1e-5, betas=(0.9, 0.999))
  config.eln = eln_group(aux_from=aux_from, self_training_from=self_training_from)
  return config


def after_ripu_config(config: ml_collections.ConfigDict, *, num_steps: int, aux_from: int,
                      self_training_from: int) -> ml_collections.ConfigDict:
  """Turns a RIPU config into one whose run continues with an ELN stage ("ripu_eln"): the
  project's design (spec: "ELN inside active domain adaptation"): RIPU's schedule runs on to
  `num_steps` (the release's max_iter), ELN's stages at `aux_from` / `self_training_from`;
  the ELN learns from the actively labelled pixels only (255 excluded), no contrastive loss,
  no student reset, the pseudo-label CE on the strong view only."""
  config.plugins = tuple(config.plugins) + (PLUGIN,)
  config.train.objective = "ripu_eln"
  config.num_steps = num_steps
  config.eln = eln_group(aux_from=aux_from, self_training_from=self_training_from)
  config.eln.update(eln_ignore_as_error=False, contrastive=False,
                    reset_student_each_epoch=False, pseudo_on_weak=False)
  return config


def after_ripu_real_config(source: str) -> ml_collections.ConfigDict:
  """configs/eln/<source>_ripu_eln.py: RIPU-RA 2.2% `source` -> Cityscapes (DeepLab-v2) to the
  end of its 62.5k-step schedule, ELN's stages from 40k and 46k, the ELN's ResNet-34 from
  ImageNet (weights/resnet34.npz)."""
  from ripu_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = after_ripu_config(config_lib.real_config(source), num_steps=62_500,
                             aux_from=40_000, self_training_from=46_000)
  config.eln.pretrained = "weights/resnet34.npz"
  return config


def network_config(smoke: bool = False) -> ml_collections.ConfigDict:
  """`eln.network` of the synthetic benchmark's runs: a ResNet-34 layout with one block per
  stage at 1/4 width (1/8 and narrower decoders for smoke runs)."""
  if smoke:
    return ml_collections.ConfigDict(dict(depth=34, blocks=(1, 1, 1, 1),
                                          width_multiplier=0.125, channels=16, low_channels=8))
  return ml_collections.ConfigDict(dict(depth=34, blocks=(1, 1, 1, 1), width_multiplier=0.25,
                                        channels=64, low_channels=16))


def shrink_for_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """After `config_lib.smoke`: tiny ELN networks and every stage within its 6 steps."""
  if config.model.name == "eln_deeplabv3plus":
    config.model.kwargs.update(channels=16, low_channels=8, projection_channels=8)
  config.eln.network = network_config(smoke=True)
  config.eln.update(aux_from=2, self_training_from=4, epoch_steps=1, contrastive_window=8,
                    pretrained="")
  if config.active.kind == "split":
    config.active.labelled_fraction = 0.5
    config.active.labelled_list = ""
  else:  # the rounds come before the stages
    config.active.round_steps = (1,)
  return config


def fraction_variants(fractions: dict[str, float]) -> dict:
  """Config-file arguments ('1/8', ...) that set the labelled fraction of the split."""

  def variant(fraction):
    def apply(config):
      config.active.labelled_fraction = fraction
      return config
    return apply

  return {name: variant(fraction) for name, fraction in fractions.items()}


def get_config_with_arg(make, arg: str | None, variants=None) -> ml_collections.ConfigDict:
  """`config_lib.get_config_with_arg` for ELN's config files ('smoke' also shrinks ELN)."""
  from ripu_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.get_config_with_arg(make, arg, variants)
  if "smoke" in [part.strip() for part in (arg or "").split(",")]:
    config = shrink_for_smoke(config)
  return config
