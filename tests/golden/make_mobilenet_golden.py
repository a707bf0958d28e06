"""Writes tests/golden/mobilenet_v2_tiny.npz: torchvision's mobilenet_v2 and its features.

The file holds an input, a width-0.25 torchvision `mobilenet_v2` state dict (random
seeded weights and batch-norm statistics; `features.18` and the classifier left out, the
JAX backbone ignores them) and the features torch computes in float64: "low" (output of
`features[3]`) and "out" (output of `features[17]`) at output stride 32, plus "out" at
output strides 16 and 8 under both dilation rules, made by re-striding and dilating the
depthwise convs of the torchvision model in place. The dilation schedules are written out
below, independently of ripu_jax, so the JAX port's stride/dilation logic, block layout and
weight conversion are checked without torch at test time.

  pip install torch==2.13.0 torchvision      # torchvision matching that torch
  python tests/golden/make_mobilenet_golden.py   # from the repository root
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
NAME = "mobilenet_v2_tiny"
SEED = 20223
WIDTH = 0.25
INPUT_SHAPE = (1, 3, 61, 77)  # NCHW, odd sizes on purpose

# case -> {features index: (depthwise stride, dilation)} for the blocks that differ from
# torchvision's (stride as built, dilation 1).
SCHEDULES = {
    "os32": {},
    # ViewAL's release ("stage" rule): the 160 stage drops its stride undilated, the 320
    # stage runs at dilation 2.
    "os16": {14: (1, 1), 17: (1, 2)},
    # TensorFlow DeepLab ("block" rule): blocks after the dropped stride are dilated.
    "os16_block": {14: (1, 1), 15: (1, 2), 16: (1, 2), 17: (1, 2)},
    # "stage" rule at output stride 8: 64 stage undilated, 96 and 160 at 2, 320 at 4.
    "os8": {7: (1, 1), 11: (1, 2), 12: (1, 2), 13: (1, 2), 14: (1, 2), 15: (1, 2),
            16: (1, 2), 17: (1, 4)},
    "os8_block": {7: (1, 1), 8: (1, 2), 9: (1, 2), 10: (1, 2), 11: (1, 2), 12: (1, 2),
                  13: (1, 2), 14: (1, 2), 15: (1, 4), 16: (1, 4), 17: (1, 4)},
}


def import_torchvision():
  """torchvision, also when its compiled ops do not load (e.g. a CUDA build beside a CPU
  torch): registering them fails, and the model definitions used here need none of them."""
  try:
    import torchvision  # pylint: disable=import-outside-toplevel
    return torchvision
  except RuntimeError:
    for name in [name for name in sys.modules if name.startswith("torchvision")]:
      del sys.modules[name]
    torch.library.register_fake = lambda *args, **kwargs: (lambda function: function)
    import torchvision  # pylint: disable=import-outside-toplevel
    return torchvision


def randomise_batch_norms(model: torch.nn.Module, generator: torch.Generator) -> None:
  """Non-trivial statistics and affine terms, so the conversion of each one is tested."""
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      n = module.num_features
      module.weight.data = 0.5 + torch.rand(n, generator=generator)
      module.bias.data = 0.1 * torch.randn(n, generator=generator)
      module.running_mean.data = 0.1 * torch.randn(n, generator=generator)
      module.running_var.data = 0.5 + 1.5 * torch.rand(n, generator=generator)
      module.num_batches_tracked.fill_(7)


def depthwise_conv(block: torch.nn.Module) -> torch.nn.Conv2d:
  convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
  assert len(convs) == 1, block
  return convs[0]


def restride(model: torch.nn.Module, schedule: dict) -> None:
  """Sets each listed block's depthwise stride and dilation (torch padding = dilation)."""
  for index, (stride, dilation) in schedule.items():
    block = model.features[index]
    conv = depthwise_conv(block)
    if conv.stride[0] != stride:
      # A block that drops its stride changes width here, so no residual appears.
      first = next(m for m in block.modules() if isinstance(m, torch.nn.Conv2d))
      assert not block.use_res_connect and first.in_channels != block.out_channels
    conv.stride = (stride, stride)
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation, dilation)


def main() -> None:
  torchvision = import_torchvision()
  torch.manual_seed(SEED)
  generator = torch.Generator().manual_seed(SEED)
  model = torchvision.models.mobilenet_v2(width_mult=WIDTH)
  randomise_batch_norms(model, generator)
  model.eval()
  state_dict = {key: value.numpy().copy() for key, value in model.state_dict().items()
                if not key.startswith(("features.18.", "classifier."))}
  images = torch.randn(INPUT_SHAPE, generator=generator)
  model.double()

  def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy().astype(np.float32)

  arrays = {f"state_dict/{key}": value for key, value in state_dict.items()}
  arrays["inputs"] = nhwc(images)
  arrays["width_multiplier"] = np.asarray(WIDTH, np.float64)
  with torch.no_grad():
    # float64 reference: the stored features carry no float32 rounding of their own.
    low = model.features[:4](images.double())
    arrays["expected_low"] = nhwc(low)
    for case, schedule in SCHEDULES.items():
      reference = torchvision.models.mobilenet_v2(width_mult=WIDTH)
      reference.load_state_dict(model.state_dict())
      reference.eval().double()
      restride(reference, schedule)
      out = reference.features[:18](images.double())
      arrays[f"expected_out_{case}"] = nhwc(out)
      print(f"{case}: out {tuple(out.shape)}")
  output = os.path.join(GOLDEN_DIR, f"{NAME}.npz")
  np.savez_compressed(output, **arrays)
  print(f"wrote {output} ({os.path.getsize(output) / 1024:.0f} KiB), low {tuple(low.shape)}")


if __name__ == "__main__":
  main()
