"""RIPU on the synthetic benchmark, then an ELN stage: the demo's rounds, 500 steps more.

  python -m ripu_jax.main --config configs/eln/demo_ripu_eln.py --workdir /tmp/ripu_eln_demo
  python -m ripu_jax.main --config configs/eln/demo_ripu_eln.py:smoke --workdir /tmp/smoke   # seconds

configs/demo.py's RIPU run (five rounds at 400-800 buying 2.2% of the target pixels) on a
poly schedule to 1500 steps, as the release stops at 40k of its 62.5k: RIPU alone to step
1000, then the auxiliary heads and the ELN (1000-1150), then self-training on the pseudo
labels the ELN keeps (1150-1500). `--config.train.continue_from=DIR` starts at step 1000 from
a finished RIPU run of that schedule (configs/demo.py with --config.num_steps=1000
--config.optim.max_iter=1500). The baseline for it: RIPU continued to 1500 without ELN
(configs/demo.py with --config.num_steps=1500 --config.optim.max_iter=1500).
"""

import os

from ripu_jax import config_lib
from ripu_jax.methods.eln import config as eln_config


def demo_config():
  config = config_lib.load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                               "demo.py"))
  config.optim.max_iter = 1_500
  config = eln_config.after_ripu_config(config, num_steps=1_500, aux_from=1_000,
                                        self_training_from=1_150)
  config.eln.network = eln_config.network_config()
  config.eval.every = 250
  return config


def get_config(arg=None):
  return eln_config.get_config_with_arg(demo_config, arg)
