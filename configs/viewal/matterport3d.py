"""ViewAL on Matterport3D (40 NYU classes), the release's loop.

  python -m ripu_jax.methods.viewal.prepare --dataset matterport3d --manual_dir RAW --data_dir DIR
  python scripts/convert_torchvision_mobilenet.py weights/mobilenet_v2.npz
  python -m ripu_jax.main --config configs/viewal/matterport3d.py --workdir runs/viewal_matterport3d \
      --config.data.data_dir=DIR [--config.active.labelled_list=RAW/selections/seedset_0_frames.txt]

The first command prepares the frames at 240x320 with their SEEDS superpixels (its --help and
the dataset's error messages say which files and layout it expects). Then: the seed frames
labelled, 7 rounds of 50 epochs each (training restarted from ImageNet weights every round),
1,500 frames' worth of superpixels bought per round by view entropy / view divergence.
Variants: :release (VD truncated, as the release's walk), :entropy, :random, :full,
:resnet101 (DeepLab-v3+ on ResNet-101, weights/resnet101.npz), :smoke.
"""

from ripu_jax.methods.viewal.config import get_config_with_arg, real_data_config


def get_config(arg=None):
  return get_config_with_arg(lambda: real_data_config("matterport3d"), arg)
