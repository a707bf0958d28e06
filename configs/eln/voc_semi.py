"""ELN semi-supervised on PASCAL VOC 2012 + SBD: 1/8 (default), 1/4 or 1/20 of train labelled.

  python -m ripu_jax.main --config configs/eln/voc_semi.py --workdir runs/eln_voc_1-8
  python -m ripu_jax.main --config configs/eln/voc_semi.py:1/20 --workdir runs/eln_voc_1-20

The release's VOC setting (spec: ../shared/docs/eln-method.md): DeepLab-v3+ on ImageNet
ResNet-101 at output stride 16 (weights/resnet101.npz; the ELN's ResNet-34 from
weights/resnet34.npz), every image resized to 505x505 (the paper says 512), batch 6 labelled
+ 6 unlabelled, AdamW at a constant 1e-5 (backbones) / 1e-4 (the rest), weight decay 1e-5;
epochs of 266 steps: 70 supervised, 50 with the auxiliary decoders and the ELN, self-training
to epoch 500. The labelled images are a seeded split of floor(fraction x 10,582) images (529 /
1,322 / 2,645; the release's 1/20 list has 530) or those a list file names
(`active.labelled_list`). Evaluation: val at 505x505, logits upsampled to each image's own
label size (the release compares at 505x505), one image per batch (VOC's sizes differ).
Prepare the data first: python -m ripu_jax.data.prepare --dataset voc_aug --manual_dir DIR.
"""

import ml_collections

from ripu_jax import config_lib
from ripu_jax.methods.eln import config as eln_config

FRACTIONS = {"1/20": 0.05, "1/8": 0.125, "1/4": 0.25}
EPOCH = eln_config.EPOCH_STEPS


def voc_config(fraction: float = 0.125) -> ml_collections.ConfigDict:
  config = eln_config.semi_supervised_config(
      config_lib.base_config(), fraction=fraction, aux_from=70 * EPOCH,
      self_training_from=120 * EPOCH)
  config.num_steps = 500 * EPOCH
  config.checkpoint_every = config.eval.every = 10 * EPOCH
  config.data.target = "voc_aug"
  config.data.target_size = config.eval.size = (505, 505)
  config.model.pretrained = "weights/resnet101.npz"
  config.eln.pretrained = "weights/resnet34.npz"
  config.train.batch_size = 6
  config.eval.batch_size = 1
  config.active.batch_size = 1
  return config


def get_config(arg=None):
  return eln_config.get_config_with_arg(voc_config, arg, eln_config.fraction_variants(FRACTIONS))
