"""Per-round annotation budgets of RIPU (region-based RA and pixel-based PA)."""

from __future__ import annotations

from fractions import Fraction
import math

# The PA budget ("40 pixels per image") is defined at this resolution (width x height).
PA_REFERENCE_PIXELS = 1280 * 640


def _check_size(height: int, width: int) -> None:
  if int(height) != height or int(width) != width or height < 1 or width < 1:
    raise ValueError(f"image size must be positive integers, got {height}x{width}")


def _check_rounds(rounds: int) -> None:
  if int(rounds) != rounds or rounds < 1:
    raise ValueError(f"rounds must be a positive integer, got {rounds!r}")


def regions_per_round(height: int, width: int, ratio: float, rounds: int, radius: int) -> int:
  """Regions to pick per image per round: ceil(H * W * ratio / rounds / (2 * radius + 1)^2).

  `ratio` is the total labelled fraction over all rounds, in (0, 1]. Decimal ratios such as
  0.022 are taken exactly (no float round-up: 1024x2048 at 2.2% over 5 rounds gives 1026).
  """
  _check_size(height, width)
  _check_rounds(rounds)
  if not 0 < ratio <= 1:
    raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
  if int(radius) != radius or radius < 0:
    raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
  exact_ratio = Fraction(str(ratio))
  area = (2 * int(radius) + 1) ** 2
  return math.ceil(Fraction(height * width) * exact_ratio / rounds / area)


def pixels_per_round(height: int, width: int, pixels: int, rounds: int) -> int:
  """Pixels to pick per image per round: ceil(pixels / rounds / (1280 * 640) * H * W)."""
  _check_size(height, width)
  _check_rounds(rounds)
  if int(pixels) != pixels or pixels < 0:
    raise ValueError(f"pixels must be a non-negative integer, got {pixels!r}")
  return math.ceil(Fraction(int(pixels) * height * width, rounds * PA_REFERENCE_PIXELS))
