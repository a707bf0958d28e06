"""SYNTHIA -> Cityscapes, PA 40 pixels DeepLab-v2, the release's hyper-parameters.

  python -m ripu_jax.main --config configs/synthia_pa.py --workdir runs/synthia_pa
  python -m ripu_jax.main --config configs/synthia_pa.py:smoke --workdir /tmp/smoke   # seconds

Needs the prepared datasets (python -m ripu_jax.data.prepare, see the README) and the
ImageNet ResNet-101 in weights/resnet101.npz (scripts/convert_torchvision_resnet.py).
"""

from ripu_jax import config_lib


def get_config(arg=None):
  return config_lib.get_config_with_arg(
      lambda: config_lib.real_config("synthia", kind="pa", objective="ripu", model="deeplabv2",
                                     ratio=0.022), arg)
