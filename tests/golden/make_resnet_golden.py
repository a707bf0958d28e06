"""Writes tests/golden/resnet*_tiny.npz: tiny torchvision-layout ResNets and their features.

Each file holds the inputs, the model's state dict under torchvision's key names and the
layer1 / layer4 features a plain-torch reference computes, so the JAX port's weight
conversion, block types and dilation can be checked without torch. torchvision itself is
not needed: the reference below follows torchvision's layout and semantics (BasicBlock;
Bottleneck with the stride on the 3x3 conv; `replace_stride_with_dilation`, where the first
block of a dilated stage keeps the previous dilation) plus DeepLab-v3's multi-grid (layer4's
block i at the stage dilation times multi_grid[i]) and a stride dropped without dilation.

  pip install torch==2.13.0
  python tests/golden/make_resnet_golden.py            # all files, from the repository root
  python tests/golden/make_resnet_golden.py resnet18_tiny   # one of CASES
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from torch import nn

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
SEED = 20221


def case(blocks, base_width, *, depth=101, replace=(False, True, True),
         drop=(False, False, False), multi_grid=(), input_shape=(2, 3, 37, 45)):
  return dict(blocks=blocks, base_width=base_width, depth=depth, replace=replace, drop=drop,
              multi_grid=multi_grid, input_shape=input_shape)


# Name -> configuration; base width = torchvision's 64 times the width multiplier. Input
# shapes are NCHW with odd sizes on purpose.
CASES = {
    # Bottleneck, output stride 8 (RIPU's DeepLab backbone).
    "resnet_tiny": case((1, 1, 2, 2), 4),
    # ResNet-18 blocks exactly as torchvision builds them (output stride 32).
    "resnet18_tiny": case((2, 2, 2, 2), 2, depth=18, replace=(False, False, False),
                          input_shape=(1, 3, 37, 45)),
    # ResNet-34 blocks at output stride 16 without dilation (ELN's network).
    "resnet34_tiny": case((3, 4, 6, 3), 2, depth=34, replace=(False, False, False),
                          drop=(False, False, True), input_shape=(1, 3, 37, 45)),
    # Bottleneck at output stride 16 with multi-grid (1, 2, 4): layer4 dilations 2, 4, 8
    # (ELN's segmentation backbone).
    "resnet_multigrid_tiny": case((1, 1, 1, 3), 2, replace=(False, False, True),
                                  multi_grid=(1, 2, 4), input_shape=(1, 3, 69, 85)),
}
BASIC_DEPTHS = (18, 34)


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


class ReferenceBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, in_channels: int, planes: int, stride: int, dilation: int,
               downsample: nn.Module | None):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=dilation,
                           dilation=dilation, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu(y + shortcut)


class ReferenceResNet(nn.Module):
  """ResNet with torchvision's module names (so its state-dict keys match)."""

  def __init__(self, block, blocks, base_width, replace_stride_with_dilation,
               drop_stride=(False, False, False), multi_grid=(), num_classes=10):
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
      elif stage > 0 and drop_stride[stage - 1]:
        stride = 1
      dilations = [first_dilation] + [dilation] * (count - 1)
      if stage == 3 and multi_grid:
        dilations = [dilation * factor for factor in multi_grid]
      out_channels = planes * block.expansion
      downsample = None
      if stride != 1 or channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels))
      layer = [block(channels, planes, stride, dilations[0], downsample)]
      channels = out_channels
      layer += [block(channels, planes, 1, d, None) for d in dilations[1:]]
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


def write(name: str, config: dict) -> None:
  torch.manual_seed(SEED)
  generator = torch.Generator().manual_seed(SEED)
  block = ReferenceBasicBlock if config["depth"] in BASIC_DEPTHS else ReferenceBottleneck
  model = ReferenceResNet(block, config["blocks"], config["base_width"], config["replace"],
                          config["drop"], config["multi_grid"])
  randomise_batch_norms(model, generator)
  model.eval()
  images = torch.randn(config["input_shape"], generator=generator)
  with torch.no_grad():
    # float64 reference: the stored features carry no float32 rounding of their own.
    low, out = model.double().features(images.double())
  model.float()
  arrays = {f"state_dict/{key}": value.numpy() for key, value in model.state_dict().items()}
  arrays["inputs"] = images.permute(0, 2, 3, 1).numpy().astype(np.float32)
  arrays["expected_low"] = low.permute(0, 2, 3, 1).numpy().astype(np.float32)
  arrays["expected_out"] = out.permute(0, 2, 3, 1).numpy().astype(np.float32)
  arrays["blocks"] = np.asarray(config["blocks"], np.int64)
  arrays["width_multiplier"] = np.asarray(config["base_width"] / 64, np.float64)
  arrays["replace_stride_with_dilation"] = np.asarray(config["replace"])
  arrays["depth"] = np.asarray(config["depth"], np.int64)
  arrays["drop_stride"] = np.asarray(config["drop"])
  arrays["multi_grid"] = np.asarray(config["multi_grid"], np.int64)
  output = os.path.join(GOLDEN_DIR, f"{name}.npz")
  np.savez_compressed(output, **arrays)
  print(f"wrote {output} ({os.path.getsize(output) / 1024:.0f} KiB), "
        f"low {tuple(low.shape)}, out {tuple(out.shape)}")


def main(names: list[str]) -> None:
  unknown = sorted(set(names) - set(CASES))
  if unknown:
    raise SystemExit(f"unknown case(s) {unknown}; known: {sorted(CASES)}")
  for name in names or CASES:
    write(name, CASES[name])


if __name__ == "__main__":
  main(sys.argv[1:])
