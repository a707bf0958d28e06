"""ELN semi-supervised on Cityscapes: 1/8 (default), 1/4 or 1/2 of train labelled.

  python -m ripu_jax.main --config configs/eln/cityscapes_semi.py --workdir runs/eln_cs_1-8
  python -m ripu_jax.main --config configs/eln/cityscapes_semi.py:1/4 --workdir runs/eln_cs_1-4
  python -m ripu_jax.main --config configs/eln/cityscapes_semi.py:1/8 \
      --config.active.labelled_list=splits/cityscapes_1-8_seed0.txt --workdir runs/eln_cs_list

The release's setting (spec: ../shared/docs/eln-method.md): DeepLab-v3+ on ImageNet ResNet-50
at output stride 16 (weights/resnet50.npz; the ELN's ResNet-34 from weights/resnet34.npz, both
from scripts/convert_torchvision_resnet.py), batch 4 labelled + 4 unlabelled random
512x1024 crops of the full 1024x2048 images (no rescale), AdamW at a constant 1e-5 (backbones)
/ 1e-4 (the rest), weight decay 1e-5; epochs of 266 steps: 100 supervised, 58 with the
auxiliary decoders and the ELN, self-training to epoch 500 (133k steps; the release's real
length is undocumented). The labelled images are a seeded split of floor(fraction x 2975)
images (371 / 743 / 1487, as the release's lists), or the images a list file names
(`active.labelled_list`; the release's list lines work as they are). Evaluation: the whole
1024x2048 val images, single scale.
"""

import ml_collections

from ripu_jax import config_lib
from ripu_jax.methods.eln import config as eln_config

FRACTIONS = {"1/8": 0.125, "1/4": 0.25, "1/2": 0.5}
EPOCH = eln_config.EPOCH_STEPS


def cityscapes_config(fraction: float = 0.125) -> ml_collections.ConfigDict:
  config = eln_config.semi_supervised_config(
      config_lib.base_config(), fraction=fraction, aux_from=100 * EPOCH,
      self_training_from=158 * EPOCH)
  config.num_steps = 500 * EPOCH
  config.checkpoint_every = config.eval.every = 10 * EPOCH
  config.data.target = "cityscapes"
  config.data.target_size = config.eval.size = (1024, 2048)
  config.data.crop_size = (512, 1024)
  config.model.kwargs.depth = 50
  config.model.pretrained = "weights/resnet50.npz"
  config.eln.pretrained = "weights/resnet34.npz"
  config.train.batch_size = 4
  config.eval.batch_size = 1
  return config


def get_config(arg=None):
  return eln_config.get_config_with_arg(cityscapes_config, arg,
                                        eln_config.fraction_variants(FRACTIONS))
