"""RIPU-RA 2.2% SYNTHIA -> Cityscapes, then an ELN stage to the end of RIPU's schedule.

  python -m ripu_jax.main --config configs/eln/synthia_ripu_eln.py --workdir runs/synthia_ripu_eln
  python -m ripu_jax.main --config configs/eln/synthia_ripu_eln.py --workdir runs/synthia_ripu_eln \
      --config.train.continue_from=runs/synthia_ripu

The project's design (spec: ../shared/docs/eln-method.md, "ELN inside active domain
adaptation"): configs/synthia.py's run (rounds at 10k-18k, DeepLab-v2) continues its poly
schedule to 62.5k: auxiliary heads and the ELN (ImageNet ResNet-34, weights/resnet34.npz)
learn from 40k, self-training on the pseudo labels the ELN keeps from 46k. No labels are
bought after the rounds. With train.continue_from the stages start from a finished RIPU
run's step 40k (its model, optimizer, ledger and data position). Compare the mIoU at 62.5k
with RIPU continued to 62.5k (configs/synthia.py with --config.num_steps=62500).
"""

from ripu_jax.methods.eln import config as eln_config


def get_config(arg=None):
  return eln_config.get_config_with_arg(lambda: eln_config.after_ripu_real_config("synthia"), arg)
