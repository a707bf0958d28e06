"""Converts a torchvision ResNet checkpoint (.pth) into the .npz that ripu_jax loads.

  pip install torch            # only this script needs it
  python scripts/convert_torchvision_resnet.py resnet101-5d3b4d8f.pth weights/resnet101.npz
  python scripts/convert_torchvision_resnet.py resnet34-333f7ec4.pth weights/resnet34.npz --depth 34

The .npz maps torchvision key names (e.g. "layer3.4.conv2.weight") to float32 arrays in
torch's layout; `ripu_jax.models.load_torchvision_npz` reads it and
`config.model.pretrained` points to it. The result is checked by building the JAX ResNet
from it before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Loads a .pth state dict (tensors only, no pickled code) as numpy arrays."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise SystemExit("this script needs torch: pip install torch") from error
  state = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
    state = state["state_dict"]
  if not isinstance(state, dict):
    raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
  arrays = {}
  for key, value in state.items():
    key = key.removeprefix("module.")
    if not hasattr(value, "detach"):
      raise ValueError(f"entry {key!r} of {path} is not a tensor")
    array = value.detach().cpu().numpy()
    arrays[key] = array.astype(np.float32) if array.dtype.kind == "f" else array
  return arrays


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("input", help="torchvision checkpoint, e.g. resnet101-5d3b4d8f.pth")
  parser.add_argument("output", help="destination .npz")
  parser.add_argument("--depth", type=int, default=101, choices=(18, 34, 50, 101, 152),
                      help="ResNet depth the checkpoint must match (checked); 18 and 34 "
                           "are basic-block ResNets")
  args = parser.parse_args(argv)

  arrays = read_torch_state_dict(args.input)
  # Check: every key the JAX backbone needs is present with the right shape.
  from ripu_jax.models import resnet_from_torchvision  # pylint: disable=import-outside-toplevel
  resnet_from_torchvision(arrays, depth=args.depth)
  output = args.output if args.output.endswith(".npz") else args.output + ".npz"
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  np.savez(output, **arrays)
  print(f"wrote {output}: {len(arrays)} arrays, ResNet-{args.depth} checked", file=sys.stderr)


if __name__ == "__main__":
  main()
