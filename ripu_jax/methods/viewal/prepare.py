"""Prepares a multi-view RGB-D dataset for ViewAL (frames at 240x320 with their superpixels).

  python -m ripu_jax.methods.viewal.prepare --dataset viewal_synthetic --data_dir DIR
  python -m ripu_jax.methods.viewal.prepare --dataset scannet --manual_dir RAW --data_dir DIR

The flags of `python -m ripu_jax.data.prepare`, with ViewAL's datasets registered
(`ripu_jax.methods.viewal.datasets`).
"""

import sys

from ripu_jax.methods.viewal import datasets

if __name__ == "__main__":
  sys.exit(datasets.main())
