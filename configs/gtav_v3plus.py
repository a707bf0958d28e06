"""GTAV -> Cityscapes, RA 5% DeepLab-v3+, the release's hyper-parameters.

  python -m ripu_jax.main --config configs/gtav_v3plus.py --workdir runs/gtav_v3plus
  python -m ripu_jax.main --config configs/gtav_v3plus.py:smoke --workdir /tmp/smoke   # seconds

Needs the prepared datasets (python -m ripu_jax.data.prepare, see the README) and the
ImageNet ResNet-101 in weights/resnet101.npz (scripts/convert_torchvision_resnet.py).
"""

from ripu_jax import config_lib


def get_config(arg=None):
  return config_lib.get_config_with_arg(
      lambda: config_lib.real_config("gtav", kind="ra", objective="ripu", model="deeplabv3plus",
                                     ratio=0.05), arg)
