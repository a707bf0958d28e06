"""Converts torchvision's mobilenet_v2 ImageNet weights into the .npz that ripu_jax loads.

  pip install torch            # only this script needs it
  # from a downloaded checkpoint (torchvision's IMAGENET1K_V1, mobilenet_v2-b0353104.pth):
  python scripts/convert_torchvision_mobilenet.py --weights mobilenet_v2-b0353104.pth
  # or let torch download it:
  python scripts/convert_torchvision_mobilenet.py weights/mobilenet_v2.npz

The .npz maps torchvision key names (e.g. "features.14.conv.1.0.weight") to float32 arrays
in torch's layout, for `features.0` to `features.17`: the 1280-channel `features.18` and the
classifier are not part of the segmentation backbone and are left out. It is the
`pretrained` file of build_model("deeplabv3plus_mobilenet", ...) (default location
weights/mobilenet_v2.npz). The result is checked by building the JAX MobileNetV2 from it
before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

import numpy as np

IMAGENET_URL = "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"
DEFAULT_OUTPUT = "weights/mobilenet_v2.npz"


def _torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise SystemExit("reading .pth checkpoints needs torch: pip install torch") from error
  return torch


def _to_numpy(state: object, source: str) -> dict[str, np.ndarray]:
  if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
    state = state["state_dict"]
  if not isinstance(state, dict):
    raise ValueError(f"{source} does not hold a state dict (got {type(state).__name__})")
  arrays = {}
  for key, value in state.items():
    key = key.removeprefix("module.")
    if not hasattr(value, "detach"):
      raise ValueError(f"entry {key!r} of {source} is not a tensor")
    array = value.detach().cpu().numpy()
    arrays[key] = array.astype(np.float32) if array.dtype.kind == "f" else array
  return arrays


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Loads a .pth state dict (tensors only, no pickled code) as numpy arrays."""
  state = _torch().load(path, map_location="cpu", weights_only=True)
  return _to_numpy(state, path)


def download_imagenet_state_dict() -> dict[str, np.ndarray]:
  """torchvision's IMAGENET1K_V1 mobilenet_v2 weights, through torch's download cache."""
  state = _torch().hub.load_state_dict_from_url(IMAGENET_URL, map_location="cpu",
                                                check_hash=True)
  return _to_numpy(state, IMAGENET_URL)


def convert(state_dict: Mapping[str, np.ndarray], output: str, *,
            width_multiplier: float = 1.0) -> str:
  """Checks a torchvision mobilenet_v2 state dict against the JAX backbone and writes its
  backbone arrays (`features.0` to `features.17`) to `output` (.npz added if missing).

  Returns the path written.
  """
  # pylint: disable-next=import-outside-toplevel
  from ripu_jax.models import mobilenet_from_torchvision
  mobilenet_from_torchvision(state_dict, width_multiplier=width_multiplier)
  kept = {key: np.asarray(value) for key, value in state_dict.items()
          if key.startswith("features.") and not key.startswith("features.18.")}
  output = output if output.endswith(".npz") else output + ".npz"
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  np.savez(output, **kept)
  return output


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("output", nargs="?", default=DEFAULT_OUTPUT,
                      help=f"destination .npz (default {DEFAULT_OUTPUT})")
  parser.add_argument("--weights", help="torchvision mobilenet_v2 state dict (.pth); without "
                                        "it torch downloads IMAGENET1K_V1")
  parser.add_argument("--width-multiplier", type=float, default=1.0,
                      help="width_mult the checkpoint was built with (checked; 1.0 for "
                           "torchvision's ImageNet weights)")
  args = parser.parse_args(argv)

  arrays = (read_torch_state_dict(args.weights) if args.weights
            else download_imagenet_state_dict())
  output = convert(arrays, args.output, width_multiplier=args.width_multiplier)
  print(f"wrote {output}: MobileNetV2 (width {args.width_multiplier}) checked", file=sys.stderr)


if __name__ == "__main__":
  main()
