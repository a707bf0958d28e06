"""GTAV -> Cityscapes, source-free RA 2.2% DeepLab-v2, the release's hyper-parameters.

  python -m ripu_jax.main --config configs/gtav_source_free.py --workdir runs/gtav_source_free
  python -m ripu_jax.main --config configs/gtav_source_free.py:smoke --workdir /tmp/smoke   # seconds

Source-free: starts from a finished source-only run and never sees source images again:
  python -m ripu_jax.main --config configs/gtav_source_only.py --workdir runs/gtav_source_only
  python -m ripu_jax.main --config configs/gtav_source_free.py --workdir runs/gtav_source_free \\
      --config.model.init_from=runs/gtav_source_only

Needs the prepared datasets (python -m ripu_jax.data.prepare, see the README) and the
ImageNet ResNet-101 in weights/resnet101.npz (scripts/convert_torchvision_resnet.py).
"""

from ripu_jax import config_lib


def get_config(arg=None):
  return config_lib.get_config_with_arg(
      lambda: config_lib.real_config("gtav", kind="ra", objective="source_free", model="deeplabv2",
                                     ratio=0.022), arg)
