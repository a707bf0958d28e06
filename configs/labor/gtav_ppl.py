"""LabOR PPL (one point per predicted class and round, 40 points per image in total),
GTAV -> Cityscapes, DeepLab-v2, on RIPU's protocol.

  python -m ripu_jax.main --config configs/labor/gtav_ppl.py --workdir runs/labor_gtav_ppl \
      --config.model.init_from=runs/gtav_source_only
  python -m ripu_jax.main --config configs/labor/gtav_ppl.py:smoke --workdir /tmp/smoke   # seconds
  python -m ripu_jax.main --config configs/labor/gtav_ppl.py:iast ...   # IAST's optimiser

Starts from a finished source-only run (configs/gtav_source_only.py); labels are asked at
RIPU's rounds (10k-18k). Needs the prepared datasets and weights/resnet101.npz (see README).
':iast' trains as IAST's release, LabOR's UDA baseline, does: Adam 2e-5 with cosine
restarts and least-squares output alignment weighted 0.05 (`iast_release`).
"""

from ripu_jax.methods.labor.config import real_data_config


def get_config(arg=None):
  return real_data_config("gtav", "ppl", arg)
