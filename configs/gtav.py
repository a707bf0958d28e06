"""GTAV -> Cityscapes, RA 2.2% DeepLab-v2, the release's hyper-parameters.

  python -m ripu_jax.main --config configs/gtav.py --workdir runs/gtav
  python -m ripu_jax.main --config configs/gtav.py:smoke --workdir /tmp/smoke   # seconds

Needs the prepared datasets (python -m ripu_jax.data.prepare, see the README) and the
ImageNet ResNet-101 in weights/resnet101.npz (scripts/convert_torchvision_resnet.py).
"""

from ripu_jax import config_lib


def get_config(arg=None):
  return config_lib.get_config_with_arg(
      lambda: config_lib.real_config("gtav", kind="ra", objective="ripu", model="deeplabv2",
                                     ratio=0.022), arg)
