"""LabOR PPL on the built-in synthetic benchmark: the demo's network, data and schedule.

  python -m ripu_jax.main --config configs/labor/demo_ppl.py --workdir /tmp/labor_demo_ppl
  python -m ripu_jax.main --config configs/labor/demo_ppl.py:smoke --workdir /tmp/smoke   # seconds

As configs/demo.py (random initialisation, 1000 steps, five rounds at 400-800), with LabOR's
objective (model A, the two-head selector B and the discriminator D) and its point
labelling (one point per predicted class and round).
"""

import os

from ripu_jax import config_lib
from ripu_jax.methods.labor.config import labor_config


def get_config(arg=None):
  demo = config_lib.load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "demo.py"))
  return config_lib.get_config_with_arg(lambda: labor_config(demo, "ppl"), arg)
