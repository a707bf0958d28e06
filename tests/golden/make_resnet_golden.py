"""Writes tests/golden/resnet_tiny.npz: a tiny torchvision-layout ResNet and its features.

The file holds the inputs, the model's state dict under torchvision's key names and the
layer1 / layer4 features a plain-torch reference computes, so the JAX port's weight
conversion and dilation can be checked without torch. torchvision itself is not needed:
the reference below follows torchvision's layout and semantics (Bottleneck with the
stride on the 3x3 conv; `replace_stride_with_dilation`, where the first block of a
dilated stage keeps the previous dilation).

  pip install torch==2.13.0
  python tests/golden/make_resnet_golden.py   # from the repository root
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

BLOCKS = (1, 1, 2, 2)
BASE_WIDTH = 4  # torchvision's 64 scaled by 1/16
REPLACE_STRIDE_WITH_DILATION = (False, True, True)
INPUT_SHAPE = (2, 3, 37, 45)  # NCHW, odd sizes on purpose
SEED = 20221
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resnet_tiny.npz")


class ReferenceBottleneck(nn.Module):
  expansion = 4

  def __init__(self, in_channels: int, planes: int, stride: int, dilation: int,
               downsample: nn.Module | None):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation,
                           dilation=dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + shortcut)


class ReferenceResNet(nn.Module):
  """Bottleneck ResNet with torchvision's module names (so its state-dict keys match)."""

  def __init__(self, blocks, base_width, replace_stride_with_dilation, num_classes=10):
    super().__init__()
    self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(base_width)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    channels = base_width
    dilation = 1
    for stage, count in enumerate(blocks):
      planes = base_width * 2**stage
      stride = 1 if stage == 0 else 2
      first_dilation = dilation
      if stage > 0 and replace_stride_with_dilation[stage - 1]:
        dilation *= stride
        stride = 1
      downsample = None
      if stride != 1 or channels != planes * 4:
        downsample = nn.Sequential(
            nn.Conv2d(channels, planes * 4, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * 4))
      layer = [ReferenceBottleneck(channels, planes, stride, first_dilation, downsample)]
      channels = planes * 4
      layer += [ReferenceBottleneck(channels, planes, 1, dilation, None) for _ in range(count - 1)]
      setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(channels, num_classes)

  def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    low = self.layer1(x)
    out = self.layer4(self.layer3(self.layer2(low)))
    return low, out


def randomise_batch_norms(model: nn.Module, generator: torch.Generator) -> None:
  """Non-trivial statistics and affine terms, so the conversion of each one is tested."""
  for module in model.modules():
    if isinstance(module, nn.BatchNorm2d):
      n = module.num_features
      module.weight.data = 0.5 + torch.rand(n, generator=generator)
      module.bias.data = 0.1 * torch.randn(n, generator=generator)
      module.running_mean.data = 0.1 * torch.randn(n, generator=generator)
      module.running_var.data = 0.5 + 1.5 * torch.rand(n, generator=generator)
      module.num_batches_tracked.fill_(7)


def main() -> None:
  torch.manual_seed(SEED)
  generator = torch.Generator().manual_seed(SEED)
  model = ReferenceResNet(BLOCKS, BASE_WIDTH, REPLACE_STRIDE_WITH_DILATION)
  randomise_batch_norms(model, generator)
  model.eval()
  images = torch.randn(INPUT_SHAPE, generator=generator)
  with torch.no_grad():
    # float64 reference: the stored features carry no float32 rounding of their own.
    low, out = model.double().features(images.double())
  model.float()
  arrays = {f"state_dict/{key}": value.numpy() for key, value in model.state_dict().items()}
  arrays["inputs"] = images.permute(0, 2, 3, 1).numpy().astype(np.float32)
  arrays["expected_low"] = low.permute(0, 2, 3, 1).numpy().astype(np.float32)
  arrays["expected_out"] = out.permute(0, 2, 3, 1).numpy().astype(np.float32)
  arrays["blocks"] = np.asarray(BLOCKS, np.int64)
  arrays["width_multiplier"] = np.asarray(BASE_WIDTH / 64, np.float64)
  arrays["replace_stride_with_dilation"] = np.asarray(REPLACE_STRIDE_WITH_DILATION)
  np.savez_compressed(OUTPUT, **arrays)
  print(f"wrote {OUTPUT} ({os.path.getsize(OUTPUT) / 1024:.0f} KiB), "
        f"low {tuple(low.shape)}, out {tuple(out.shape)}")


if __name__ == "__main__":
  main()
