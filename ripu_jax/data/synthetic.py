"""Procedural street scenes with a synthetic-to-real style domain gap, no download needed.

Every scene is a perspective street: sky, buildings with windows, trees and hedges, a road with
lane markings, sidewalks and grass, cars on the road, and rare small things (poles with signs
or traffic lights, persons, bicycles) placed with consistent perspective. Labels use the
Cityscapes train ids of `ripu_jax.data.labels`.

The *source* domain looks like a game engine: saturated, clean colours, flat textures, no
noise or blur, even lighting. The *target* domain looks like a camera: different class
colours (e.g. its roads are as light as source sidewalks, its buildings as grey as source
roads, its cars desaturated), rough textures, sensor noise, blur, varying illumination, and
different object sizes and frequencies (more persons and poles, smaller cars). The colour
shifts are class-conditional, so a source-trained model maps target classes to wrong ones;
this is what makes adaptation with a few target labels necessary.

Runs with the synthetic source train in `LABEL_SPACE` (19 outputs, 12 classes kept and evaluated).

Every example is a pure function of (config.seed, split, index): generation is random-access,
parallel-friendly and reproducible byte for byte.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator

import numpy as np

from ripu_jax.data import labels as labels_lib

SOURCE_TRAIN = "source_train"
TARGET_TRAIN = "target_train"
TARGET_VAL = "target_val"
SPLITS = (SOURCE_TRAIN, TARGET_TRAIN, TARGET_VAL)

ROAD, SIDEWALK, BUILDING, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR, BICYCLE = (
    0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 13, 18)

# Train ids that occur in the synthetic benchmark (evaluate mIoU over these).
SYNTHETIC_CLASSES = (ROAD, SIDEWALK, BUILDING, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY,
                     PERSON, CAR, BICYCLE)

# The benchmark's label space: a 19-output network over the Cityscapes train ids whose labels
# keep, and whose mIoU averages, only the classes the generator paints (the others never occur).
LABEL_SPACE = labels_lib.LabelSpace("synthetic", labels_lib.CLASS_NAMES, labels_lib.PALETTE,
                                    {"miou": SYNTHETIC_CLASSES}, kept=SYNTHETIC_CLASSES)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Generator parameters; the defaults train on a CPU in minutes.

  Attributes:
    seed: master seed; same seed, same bytes.
    height: image height in pixels.
    width: image width in pixels.
    num_source_train: number of source-domain training images.
    num_target_train: number of target-domain training images (the active-learning pool).
    num_target_val: number of target-domain validation images.
    domain_shift: how far the target style moves from the source style (every style
      parameter is interpolated): 0 gives two identically distributed domains, 1 the most
      adversarial shift (target classes take other classes' source colours). The default 0.6
      gives a gap of the size seen from GTAV to Cityscapes: a small CNN trained on the source
      scores about 30 mIoU points lower on the target than the same CNN trained on the target.
  """

  seed: int = 0
  height: int = 128
  width: int = 256
  num_source_train: int = 400
  num_target_train: int = 300
  num_target_val: int = 100
  domain_shift: float = 0.6

  def __post_init__(self):
    if self.height < 32 or self.width < 32:
      raise ValueError(f"synthetic images must be at least 32x32, got {self.height}x{self.width}")
    for field in ("num_source_train", "num_target_train", "num_target_val"):
      if getattr(self, field) < 1:
        raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
    if not 0.0 <= self.domain_shift <= 1.0:
      raise ValueError(f"domain_shift must lie in [0, 1], got {self.domain_shift}")
    if self.seed < 0:
      raise ValueError(f"seed must be >= 0, got {self.seed}")

  def num_examples(self, split: str) -> int:
    _check_split(split)
    return {SOURCE_TRAIN: self.num_source_train, TARGET_TRAIN: self.num_target_train,
            TARGET_VAL: self.num_target_val}[split]

  @property
  def name(self) -> str:
    """Short identifier used as the TFDS config name ("default" for the defaults)."""
    if self == SyntheticConfig():
      return "default"
    shift = f"{self.domain_shift:.3f}".rstrip("0").rstrip(".")
    return (f"s{self.seed}_{self.height}x{self.width}_n{self.num_source_train}-"
            f"{self.num_target_train}-{self.num_target_val}_shift{shift.replace('.', 'p')}")


@dataclasses.dataclass(frozen=True)
class _Style:
  """Appearance and layout statistics of one domain (all numbers, so domains interpolate)."""

  # Candidate base colours (RGB) per stuff class; one is drawn per image, then jittered.
  road: tuple
  sidewalk: tuple
  building: tuple
  sky: tuple
  vegetation: tuple
  terrain: tuple
  pole: tuple
  sign: tuple
  light_box: tuple
  skin: tuple
  colour_jitter: float
  # Object colours drawn in HSV: (saturation lo, hi), (value lo, hi).
  car_saturation: tuple
  car_value: tuple
  clothes_saturation: tuple
  clothes_value: tuple
  bicycle_value: tuple
  window_darkness: float
  # Texture amplitude per class family: (fine grain, blotches).
  road_texture: tuple
  sidewalk_texture: tuple
  building_texture: tuple
  sky_texture: tuple
  vegetation_texture: tuple
  terrain_texture: tuple
  object_texture: tuple
  tile_lines: float
  # Camera: gain range, colour cast std, gamma range, vertical shading, blur sigma, noise std.
  gain: tuple
  colour_cast: float
  gamma: tuple
  shading: float
  blur_sigma: tuple
  noise_std: float
  # Layout: expected counts and size multipliers.
  cars_mean: float
  car_scale: float
  persons_mean: float
  person_scale: float
  poles_mean: float
  sign_prob: float
  light_prob: float
  bicycle_prob: float
  trees_mean: float
  terrain_prob: float
  hedge_prob: float


_SOURCE_STYLE = _Style(
    road=((88, 86, 96), (80, 80, 84), (96, 92, 100)),
    sidewalk=((176, 160, 168), (168, 158, 150), (186, 170, 176)),
    building=((192, 166, 124), (166, 96, 76), (214, 204, 178)),
    sky=((104, 160, 236), (120, 176, 240), (90, 150, 226)),
    vegetation=((62, 152, 52), (76, 164, 60), (52, 136, 48)),
    terrain=((168, 182, 88), (156, 176, 80), (176, 188, 100)),
    pole=((150, 150, 156), (140, 140, 140), (160, 158, 150)),
    sign=((236, 204, 28), (230, 196, 40), (240, 212, 36)),
    light_box=((44, 44, 40), (36, 40, 36), (52, 50, 46)),
    skin=((232, 190, 160), (222, 178, 146), (200, 150, 118)),
    colour_jitter=6.0,
    car_saturation=(0.65, 0.95),
    car_value=(0.6, 0.95),
    clothes_saturation=(0.6, 0.95),
    clothes_value=(0.6, 0.95),
    bicycle_value=(0.55, 0.8),
    window_darkness=0.45,
    road_texture=(2.0, 2.0),
    sidewalk_texture=(2.0, 2.0),
    building_texture=(2.0, 3.0),
    sky_texture=(0.5, 2.0),
    vegetation_texture=(8.0, 6.0),
    terrain_texture=(3.0, 3.0),
    object_texture=(1.0, 1.0),
    tile_lines=0.0,
    gain=(0.97, 1.03),
    colour_cast=0.01,
    gamma=(0.98, 1.02),
    shading=0.03,
    blur_sigma=(0.0, 0.0),
    noise_std=0.5,
    cars_mean=2.6,
    car_scale=0.95,
    persons_mean=0.9,
    person_scale=1.05,
    poles_mean=1.6,
    sign_prob=0.35,
    light_prob=0.25,
    bicycle_prob=0.12,
    trees_mean=2.0,
    terrain_prob=0.45,
    hedge_prob=0.5,
)

_TARGET_STYLE = _Style(
    # Target roads are as light as source sidewalks; sidewalks are reddish like source bricks;
    # buildings are grey like source roads; the sky is overcast like source cream facades;
    # vegetation is olive and terrain is dry brown.
    road=((160, 152, 150), (150, 146, 140), (170, 160, 158)),
    sidewalk=((150, 96, 84), (136, 92, 82), (160, 108, 92)),
    building=((96, 94, 102), (118, 120, 128), (84, 84, 90)),
    sky=((214, 210, 196), (222, 220, 212), (200, 204, 200)),
    vegetation=((110, 118, 56), (96, 108, 52), (126, 122, 60)),
    terrain=((156, 132, 96), (146, 124, 90), (166, 140, 104)),
    pole=((58, 60, 66), (70, 70, 72), (50, 52, 56)),
    sign=((40, 82, 176), (232, 232, 236), (48, 96, 184)),
    light_box=((196, 170, 40), (60, 64, 60), (176, 160, 48)),
    skin=((200, 160, 136), (150, 110, 86), (210, 176, 150)),
    colour_jitter=14.0,
    car_saturation=(0.0, 0.25),
    car_value=(0.12, 0.9),
    clothes_saturation=(0.05, 0.35),
    clothes_value=(0.12, 0.5),
    bicycle_value=(0.08, 0.25),
    window_darkness=0.7,
    road_texture=(9.0, 10.0),
    sidewalk_texture=(8.0, 8.0),
    building_texture=(8.0, 12.0),
    sky_texture=(2.0, 14.0),
    vegetation_texture=(22.0, 14.0),
    terrain_texture=(12.0, 10.0),
    object_texture=(5.0, 4.0),
    tile_lines=0.35,
    gain=(0.65, 1.15),
    colour_cast=0.07,
    gamma=(0.8, 1.25),
    shading=0.25,
    blur_sigma=(0.5, 1.1),
    noise_std=5.0,
    cars_mean=2.2,
    car_scale=0.75,
    persons_mean=2.2,
    person_scale=0.9,
    poles_mean=2.4,
    sign_prob=0.45,
    light_prob=0.35,
    bicycle_prob=0.15,
    trees_mean=2.6,
    terrain_prob=0.35,
    hedge_prob=0.35,
)


def _lerp_style(source: _Style, target: _Style, t: float) -> _Style:
  values = {}
  for field in dataclasses.fields(_Style):
    a = np.asarray(getattr(source, field.name), np.float64)
    b = np.asarray(getattr(target, field.name), np.float64)
    mixed = (1.0 - t) * a + t * b
    if mixed.ndim == 2:
      values[field.name] = tuple(tuple(row) for row in mixed.tolist())
    elif mixed.ndim == 1:
      values[field.name] = tuple(mixed.tolist())
    else:
      values[field.name] = float(mixed)
  return _Style(**values)


@functools.lru_cache(maxsize=16)
def _style_for(split: str, domain_shift: float) -> _Style:
  if split == SOURCE_TRAIN:
    return _SOURCE_STYLE
  return _lerp_style(_SOURCE_STYLE, _TARGET_STYLE, domain_shift)


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown synthetic split {split!r}; choose one of {SPLITS}")


# ----------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=32)
def _upsample_matrix(out_size: int, in_size: int, transposed: bool = False) -> np.ndarray:
  """[out, in] linear interpolation weights (corner-aligned) for smooth noise fields.

  The transposed variant is materialised C-contiguous: numpy's matmul falls off its BLAS
  path for some transposed views and becomes ~1000x slower.
  """
  pos = np.linspace(0.0, in_size - 1, out_size)
  lo = np.minimum(np.floor(pos).astype(np.int64), in_size - 2)
  frac = pos - lo
  matrix = np.zeros((out_size, in_size), np.float32)
  matrix[np.arange(out_size), lo] = 1.0 - frac
  matrix[np.arange(out_size), lo + 1] = frac
  return np.ascontiguousarray(matrix.T) if transposed else matrix


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
  """Zero-mean, unit-ish [H, W] noise varying over about `cells` blobs along the width."""
  cells_h = max(2, int(round(cells * height / width)) + 1)
  grid = rng.standard_normal((cells_h, cells + 1), dtype=np.float32)
  return (_upsample_matrix(height, cells_h) @ grid) @ _upsample_matrix(width, cells + 1, True)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian blur of an [H, W, C] float image, edge padding."""
  if sigma < 0.2:
    return image
  radius = max(1, int(np.ceil(2.5 * sigma)))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps = (taps / taps.sum()).astype(np.float32)
  height, width = image.shape[:2]
  padded = np.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="edge")
  out = sum(w * padded[i:i + height] for i, w in enumerate(taps))
  padded = np.pad(out, ((0, 0), (radius, radius), (0, 0)), mode="edge")
  return sum(w * padded[:, i:i + width] for i, w in enumerate(taps))


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
  i = int(hue * 6.0) % 6
  f = hue * 6.0 - int(hue * 6.0)
  p = value * (1 - saturation)
  q = value * (1 - f * saturation)
  t = value * (1 - (1 - f) * saturation)
  rgb = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value),
         (value, p, q)][i]
  return np.array(rgb, np.float32) * 255.0


class _Canvas:
  """Label map and base colours painted together; later paint occludes earlier paint."""

  def __init__(self, height: int, width: int):
    self.height, self.width = height, width
    self.label = np.full((height, width), SKY, np.uint8)
    self.colour = np.zeros((height, width, 3), np.float32)
    self.yy = np.arange(height, dtype=np.float32)[:, None] + 0.5
    self.xx = np.arange(width, dtype=np.float32)[None, :] + 0.5

  def box(self, top: float, bottom: float, left: float, right: float):
    """Clipped integer window (row slice, col slice, local yy, local xx) or None if empty."""
    r0, r1 = max(0, int(np.floor(top))), min(self.height, int(np.ceil(bottom)))
    c0, c1 = max(0, int(np.floor(left))), min(self.width, int(np.ceil(right)))
    if r1 <= r0 or c1 <= c0:
      return None
    return (slice(r0, r1), slice(c0, c1), self.yy[r0:r1], self.xx[:, c0:c1])

  def paint(self, rows: slice, cols: slice, mask: np.ndarray, class_id: int, rgb) -> None:
    self.label[rows, cols][mask] = class_id
    self.colour[rows, cols][mask] = rgb

  def rect(self, top, bottom, left, right, class_id, rgb) -> None:
    window = self.box(top, bottom, left, right)
    if window is None:
      return
    rows, cols, _, _ = window
    self.label[rows, cols] = class_id
    self.colour[rows, cols] = rgb

  def ellipse(self, cy, cx, ry, rx, class_id, rgb) -> None:
    window = self.box(cy - ry, cy + ry, cx - rx, cx + rx)
    if window is None:
      return
    rows, cols, yy, xx = window
    mask = ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1.0
    self.paint(rows, cols, mask, class_id, rgb)


# ----------------------------------------------------------------------------- scene


class _Scene:
  """Draws one street scene; all randomness comes from `rng`."""

  def __init__(self, rng: np.random.Generator, style: _Style, height: int, width: int):
    self.rng, self.style = rng, style
    self.h, self.w = height, width
    self.canvas = _Canvas(height, width)
    self.horizon = rng.uniform(0.36, 0.5) * height
    self.vanish_x = rng.uniform(0.35, 0.65) * width
    spread = rng.uniform(0.5, 0.8, size=2) * width
    self.road_left_bottom = self.vanish_x - spread[0]
    self.road_right_bottom = self.vanish_x + spread[1]
    walk = rng.uniform(0.18, 0.45, size=2) * width
    self.walk_left_bottom = self.road_left_bottom - walk[0]
    self.walk_right_bottom = self.road_right_bottom + walk[1]

  # Colours ------------------------------------------------------------------

  def _stuff_colour(self, candidates) -> np.ndarray:
    base = np.asarray(candidates[self.rng.integers(len(candidates))], np.float32)
    return base + self.rng.normal(0.0, self.style.colour_jitter, 3).astype(np.float32)

  def _hsv_colour(self, saturation, value) -> np.ndarray:
    return _hsv_to_rgb(self.rng.uniform(), self.rng.uniform(*saturation),
                       self.rng.uniform(*value))

  # Geometry -----------------------------------------------------------------

  def _depth(self, y) -> np.ndarray:
    """0 at the horizon, 1 at the bottom row."""
    return (np.asarray(y, np.float32) - self.horizon) / (self.h - self.horizon)

  def _edge(self, bottom_x: float, y) -> np.ndarray:
    return self.vanish_x + (bottom_x - self.vanish_x) * self._depth(y)

  def _ground_row(self, near: float = 1.0) -> float:
    """A row below the horizon; denser far away like a real perspective sampling."""
    return self.horizon + (self.h - self.horizon) * self.rng.uniform(0.06, near) ** 0.8

  # Layers -------------------------------------------------------------------

  def draw(self) -> None:
    self._sky()
    self._buildings()
    self._ground()
    self._hedges()
    objects = self._objects()
    for _, draw in sorted(objects, key=lambda item: item[0]):
      draw()

  def _sky(self) -> None:
    canvas, style = self.canvas, self.style
    top = self._stuff_colour(style.sky)
    gradient = (canvas.yy / self.h)[:, :, None] * np.array([40.0, 30.0, 10.0], np.float32)
    canvas.colour[:] = top + gradient

  def _buildings(self) -> None:
    canvas, style, rng = self.canvas, self.style, self.rng
    x = -rng.uniform(0, 0.1) * self.w
    while x < self.w:
      seg = rng.uniform(0.08, 0.3) * self.w
      centre = x + seg / 2
      if rng.uniform() > 0.12:
        closeness = min(1.0, abs(centre - self.vanish_x) / (0.5 * self.w))
        height = self.horizon * (0.2 + 0.75 * closeness) * rng.uniform(0.6, 1.1)
        top = self.horizon - height
        colour = self._stuff_colour(style.building)
        canvas.rect(top, self.horizon + 1, x, x + seg, BUILDING, colour)
        self._windows(top, x, seg, colour)
      x += seg

  def _windows(self, top: float, left: float, seg: float, colour: np.ndarray) -> None:
    canvas, rng = self.canvas, self.rng
    window = canvas.box(top, self.horizon, left, left + seg)
    if window is None:
      return
    rows, cols, yy, xx = window
    period_x = rng.uniform(0.03, 0.06) * self.w
    period_y = period_x * rng.uniform(0.8, 1.4)
    frac = rng.uniform(0.35, 0.65)
    mask = (((xx - left) % period_x) < frac * period_x) & (((yy - top) % period_y) <
                                                            frac * period_y)
    mask &= (yy > top + 0.3 * period_y)
    dark = colour * (1.0 - self.style.window_darkness)
    canvas.colour[rows, cols][mask] = dark

  def _ground(self) -> None:
    canvas, style, rng = self.canvas, self.style, self.rng
    window = canvas.box(self.horizon, self.h, 0, self.w)
    rows, cols, yy, xx = window
    road_l, road_r = self._edge(self.road_left_bottom, yy), self._edge(self.road_right_bottom, yy)
    walk_l, walk_r = self._edge(self.walk_left_bottom, yy), self._edge(self.walk_right_bottom, yy)
    ground = np.broadcast_to(yy >= self.horizon, (yy.shape[0], xx.shape[1]))
    outer_left = ground & (xx < walk_l)
    outer_right = ground & (xx >= walk_r)
    for outer in (outer_left, outer_right):
      if rng.uniform() < style.terrain_prob:
        canvas.paint(rows, cols, outer, TERRAIN, self._stuff_colour(style.terrain))
      else:
        canvas.paint(rows, cols, outer, SIDEWALK, self._stuff_colour(style.sidewalk))
    walk_colour = self._stuff_colour(style.sidewalk)
    canvas.paint(rows, cols, ground & (xx >= walk_l) & (xx < road_l), SIDEWALK, walk_colour)
    canvas.paint(rows, cols, ground & (xx >= road_r) & (xx < walk_r), SIDEWALK, walk_colour)
    # Curb: a thin lighter strip on the sidewalk side of each road edge.
    curb = np.maximum(1.0, 0.012 * self.w * self._depth(yy))
    curb_mask = ground & (((xx >= road_l - curb) & (xx < road_l)) |
                          ((xx >= road_r) & (xx < road_r + curb)))
    canvas.paint(rows, cols, curb_mask, SIDEWALK, walk_colour * 1.15)
    road_colour = self._stuff_colour(style.road)
    road = ground & (xx >= road_l) & (xx < road_r)
    canvas.paint(rows, cols, road, ROAD, road_colour)
    # Dashed centre line, still labelled road.
    centre = 0.5 * (road_l + road_r)
    depth = self._depth(yy)
    half = np.maximum(0.4, 0.006 * self.w * depth)
    dash = (np.log(np.maximum(depth, 1e-3)) * 6.0 + rng.uniform(0, 6.28)) % 2.0 < 1.0
    marking = road & (np.abs(xx - centre) < half) & dash
    canvas.colour[rows, cols][marking] = np.array([225.0, 225.0, 215.0], np.float32)

  def _hedges(self) -> None:
    canvas, style, rng = self.canvas, self.style, self.rng
    for side in (-1, 1):
      if rng.uniform() >= style.hedge_prob:
        continue
      height = rng.uniform(0.03, 0.08) * self.h
      if side < 0:
        left, right = 0.0, self.vanish_x - rng.uniform(0.05, 0.2) * self.w
      else:
        left, right = self.vanish_x + rng.uniform(0.05, 0.2) * self.w, float(self.w)
      window = canvas.box(self.horizon - height, self.horizon + 1, left, right)
      if window is None:
        continue
      rows, cols, yy, xx = window
      bumps = self.horizon - height * (0.7 + 0.3 * np.sin(xx * rng.uniform(0.2, 0.5)))
      canvas.paint(rows, cols, np.broadcast_to(yy >= bumps, (yy.shape[0], xx.shape[1])),
                   VEGETATION, self._stuff_colour(style.vegetation))

  def _objects(self) -> list:
    """(depth key, draw callable) for every object; drawn far to near."""
    style, rng = self.style, self.rng
    items = []
    for _ in range(rng.poisson(style.trees_mean)):
      items.append(self._tree())
    for _ in range(min(7, rng.poisson(style.cars_mean))):
      items.append(self._car())
    for _ in range(min(8, rng.poisson(style.persons_mean))):
      items.append(self._person())
    for _ in range(min(6, rng.poisson(style.poles_mean))):
      items.append(self._pole())
    if rng.uniform() < style.bicycle_prob:
      for _ in range(1 + int(rng.uniform() < 0.3)):
        items.append(self._bicycle())
    return [item for item in items if item is not None]

  def _sidewalk_point(self, near: float = 1.0) -> tuple[float, float]:
    """(row, col) of a point on a sidewalk strip."""
    y = self._ground_row(near)
    if self.rng.uniform() < 0.5:
      lo, hi = self._edge(self.walk_left_bottom, y), self._edge(self.road_left_bottom, y)
    else:
      lo, hi = self._edge(self.road_right_bottom, y), self._edge(self.walk_right_bottom, y)
    return y, float(self.rng.uniform(lo, hi))

  def _tree(self):
    rng, style = self.rng, self.style
    y = self.horizon + (self.h - self.horizon) * rng.uniform(0.0, 0.35)
    side = -1 if rng.uniform() < 0.5 else 1
    bottom = self.walk_left_bottom if side < 0 else self.walk_right_bottom
    x = float(self._edge(bottom, y)) + side * rng.uniform(0.0, 0.15) * self.w
    scale = (y - self.horizon) + 0.06 * self.h
    radius = scale * rng.uniform(0.9, 1.6)
    trunk_h = scale * rng.uniform(0.8, 1.3)
    colour = self._stuff_colour(style.vegetation)

    def draw():
      self.canvas.rect(y - trunk_h, y, x - 0.12 * radius, x + 0.12 * radius, VEGETATION,
                       colour * 0.55)
      self.canvas.ellipse(y - trunk_h - 0.6 * radius, x, radius, radius * rng.uniform(0.8, 1.2),
                          VEGETATION, colour)

    return y, draw

  def _car(self):
    rng, style = self.rng, self.style
    y = self._ground_row(1.1)
    dist = y - self.horizon
    if dist < 2:
      return None
    width = 1.25 * dist * style.car_scale * rng.uniform(0.85, 1.15)
    height = 0.95 * dist * style.car_scale * rng.uniform(0.85, 1.1)
    road_l = float(self._edge(self.road_left_bottom, y))
    road_r = float(self._edge(self.road_right_bottom, y))
    if road_r - road_l <= width:
      x = 0.5 * (road_l + road_r)
    else:
      x = rng.uniform(road_l + width / 2, road_r - width / 2)
    body = self._hsv_colour(style.car_saturation, style.car_value)
    glass = body * 0.25 + np.array([20.0, 24.0, 32.0], np.float32)
    tyre = np.array([22.0, 22.0, 24.0], np.float32)

    def draw():
      canvas = self.canvas
      left, right = x - width / 2, x + width / 2
      canvas.rect(y - 0.6 * height, y - 0.12 * height, left, right, CAR, body)
      inset = 0.17 * width
      canvas.rect(y - height, y - 0.6 * height, left + inset, right - inset, CAR, body * 0.9)
      canvas.rect(y - 0.93 * height, y - 0.62 * height, left + inset * 1.25,
                  right - inset * 1.25, CAR, glass)
      for wheel_x in (left + 0.2 * width, right - 0.2 * width):
        canvas.ellipse(y - 0.14 * height, wheel_x, 0.14 * height, 0.11 * width, CAR, tyre)
      canvas.rect(y - 0.16 * height, y - 0.1 * height, left + 0.32 * width,
                  right - 0.32 * width, CAR, body * 0.6)

    return y, draw

  def _person(self):
    rng, style = self.rng, self.style
    y, x = self._sidewalk_point()
    dist = y - self.horizon
    height = 1.15 * dist * style.person_scale * rng.uniform(0.85, 1.15)
    if height < 4:
      return None
    shirt = self._hsv_colour(style.clothes_saturation, style.clothes_value)
    trousers = self._hsv_colour(style.clothes_saturation, style.clothes_value) * 0.7
    skin = self._stuff_colour(style.skin)

    def draw():
      canvas = self.canvas
      top = y - height
      canvas.ellipse(top + 0.07 * height, x, 0.07 * height, 0.055 * height, PERSON, skin)
      canvas.rect(top + 0.14 * height, top + 0.56 * height, x - 0.13 * height,
                  x + 0.13 * height, PERSON, shirt)
      for leg_x in (x - 0.07 * height, x + 0.07 * height):
        canvas.rect(top + 0.55 * height, y, leg_x - 0.045 * height, leg_x + 0.045 * height,
                    PERSON, trousers)

    return y, draw

  def _pole(self):
    rng, style = self.rng, self.style
    y = self._ground_row()
    side = -1 if rng.uniform() < 0.5 else 1
    road_edge = self._edge(self.road_left_bottom if side < 0 else self.road_right_bottom, y)
    dist = y - self.horizon
    x = float(road_edge) - side * 0.25 * dist * rng.uniform(0.3, 1.0)
    height = 3.0 * dist * rng.uniform(0.8, 1.2)
    width = max(1.0, 0.09 * dist)
    colour = self._stuff_colour(style.pole)
    attachment = rng.uniform()
    sign_colour = self._stuff_colour(style.sign)
    box_colour = self._stuff_colour(style.light_box)
    lamp = np.array([[230, 40, 30], [240, 190, 30], [40, 220, 90]][rng.integers(3)], np.float32)
    round_sign = rng.uniform() < 0.5

    def draw():
      canvas = self.canvas
      top = y - height
      canvas.rect(top, y, x - width / 2, x + width / 2, POLE, colour)
      if attachment < style.sign_prob:
        size = 0.45 * dist
        cy = top + 0.2 * height
        if round_sign:
          canvas.ellipse(cy, x, size / 2, size / 2, SIGN, sign_colour)
        else:
          canvas.rect(cy - size / 2, cy + size / 2, x - size / 2, x + size / 2, SIGN,
                      sign_colour)
      elif attachment < style.sign_prob + style.light_prob:
        box_w, box_h = 0.28 * dist, 0.7 * dist
        canvas.rect(top, top + box_h, x - box_w / 2, x + box_w / 2, LIGHT, box_colour)
        canvas.ellipse(top + box_h * 0.3, x, box_w * 0.3, box_w * 0.3, LIGHT, lamp)

    return y, draw

  def _bicycle(self):
    rng, style = self.rng, self.style
    y, x = self._sidewalk_point()
    dist = y - self.horizon
    radius = 0.24 * dist * rng.uniform(0.9, 1.1)
    if radius < 2:
      return None
    colour = _hsv_to_rgb(rng.uniform(), 0.8 * (1 - style.clothes_value[0]),
                         rng.uniform(*style.bicycle_value))
    thickness = max(0.8, 0.22 * radius)

    def draw():
      canvas = self.canvas
      hubs = ((y - radius, x - 1.3 * radius), (y - radius, x + 1.3 * radius))
      for cy, cx in hubs:
        window = canvas.box(cy - radius - 1, cy + radius + 1, cx - radius - 1, cx + radius + 1)
        if window is None:
          continue
        rows, cols, yy, xx = window
        ring = np.abs(np.hypot(yy - cy, xx - cx) - radius + thickness / 2) <= thickness / 2
        canvas.paint(rows, cols, ring, BICYCLE, colour)
      saddle = (y - 2.1 * radius, x - 0.3 * radius)
      bar = (y - 2.1 * radius, x + 1.0 * radius)
      for (ya, xa), (yb, xb) in ((hubs[0], saddle), (saddle, bar), (bar, hubs[1]),
                                 (hubs[0], (y - radius, x)), ((y - radius, x), saddle),
                                 ((y - radius, x), bar)):
        self._segment(ya, xa, yb, xb, thickness, colour)

    return y, draw

  def _segment(self, ya, xa, yb, xb, thickness, colour) -> None:
    canvas = self.canvas
    window = canvas.box(min(ya, yb) - thickness, max(ya, yb) + thickness,
                        min(xa, xb) - thickness, max(xa, xb) + thickness)
    if window is None:
      return
    rows, cols, yy, xx = window
    dy, dx = yb - ya, xb - xa
    length_sq = max(dy * dy + dx * dx, 1e-6)
    t = np.clip(((yy - ya) * dy + (xx - xa) * dx) / length_sq, 0.0, 1.0)
    mask = np.hypot(yy - (ya + t * dy), xx - (xa + t * dx)) <= thickness / 2
    canvas.paint(rows, cols, mask, BICYCLE, colour)

  # Appearance ---------------------------------------------------------------

  def render(self) -> np.ndarray:
    """Adds textures and camera effects to the painted colours; returns uint8 RGB."""
    rng, style, canvas = self.rng, self.style, self.canvas
    h, w = self.h, self.w
    fine_amp = np.zeros(256, np.float32)
    blotch_amp = np.zeros(256, np.float32)
    families = {
        ROAD: style.road_texture, SIDEWALK: style.sidewalk_texture,
        BUILDING: style.building_texture, SKY: style.sky_texture,
        VEGETATION: style.vegetation_texture, TERRAIN: style.terrain_texture,
    }
    for class_id in SYNTHETIC_CLASSES:
      fine, blotch = families.get(class_id, style.object_texture)
      fine_amp[class_id], blotch_amp[class_id] = fine, blotch
    fine_noise = rng.standard_normal((h, w), dtype=np.float32)
    blotches = _smooth_noise(rng, h, w, cells=24)
    texture = fine_amp[canvas.label] * fine_noise + blotch_amp[canvas.label] * blotches
    image = canvas.colour + texture[:, :, None]
    if style.tile_lines > 0:
      period = rng.uniform(0.025, 0.04) * w
      lines = ((canvas.xx % period) < 1.0) | ((canvas.yy % (0.6 * period)) < 1.0)
      walk = (canvas.label == SIDEWALK) & lines
      image[walk] *= 1.0 - style.tile_lines
    # Camera: illumination, colour cast, vertical shading, gamma, blur, sensor noise.
    gain = rng.uniform(*style.gain)
    cast = 1.0 + rng.normal(0.0, style.colour_cast, 3).astype(np.float32)
    shading = 1.0 + style.shading * rng.uniform(-1, 1) * (canvas.yy / h - 0.5)
    image = image * (gain * cast)[None, None, :] * shading[:, :, None]
    image = np.clip(image, 0.0, 255.0)
    gamma = rng.uniform(*style.gamma)
    image = np.float32(255.0) * (image * np.float32(1.0 / 255.0)) ** np.float32(gamma)
    image = _gaussian_blur(image, rng.uniform(*style.blur_sigma))
    image = image + np.float32(style.noise_std) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


_SPLIT_STREAM = {SOURCE_TRAIN: 0, TARGET_TRAIN: 1, TARGET_VAL: 2}


def generate_example(config: SyntheticConfig, split: str, index: int) -> dict:
  """One example {"image": uint8 [H, W, 3], "label": uint8 [H, W], "name": str}."""
  _check_split(split)
  count = config.num_examples(split)
  if not 0 <= index < count:
    raise IndexError(f"index {index} out of range for {split} with {count} examples")
  rng = np.random.default_rng([config.seed, _SPLIT_STREAM[split], index])
  scene = _Scene(rng, _style_for(split, float(config.domain_shift)), config.height,
                 config.width)
  scene.draw()
  image = scene.render()
  return {"image": image, "label": scene.canvas.label.copy(), "name": f"{split}_{index:05d}"}


def generate_split(config: SyntheticConfig, split: str) -> Iterator[dict]:
  """All examples of `split`, in index order."""
  for index in range(config.num_examples(split)):
    yield generate_example(config, split, index)


class SyntheticSplit:
  """A synthetic split as a random-access sequence, generated on demand (no TFDS needed).

  Offers the same interface as the prepared splits of `ripu_jax.data.open_split`, so pipelines
  and tests can run on it directly.
  """

  def __init__(self, config: SyntheticConfig | None = None, split: str = SOURCE_TRAIN):
    _check_split(split)
    self.config = config or SyntheticConfig()
    self.split = split
    self.dataset_name = "synthetic"

  def __len__(self) -> int:
    return self.config.num_examples(self.split)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if index < 0:
      index += len(self)
    return generate_example(self.config, self.split, index)

  def encoded(self, index: int) -> dict:
    """Same as `self[index]`: generated examples need no decoding."""
    return self[index]

  def label(self, index: int) -> np.ndarray:
    return self[index]["label"]

  def name(self, index: int) -> str:
    """The example's name (without generating it)."""
    return f"{self.split}_{int(index):05d}"

  def label_shape(self, index: int) -> tuple[int, int]:
    del index  # All synthetic labels share the configured size.
    return self.config.height, self.config.width

  def __repr__(self) -> str:
    return f"SyntheticSplit(config={self.config!r}, split={self.split!r})"

  @functools.cached_property
  def class_presence(self) -> np.ndarray:
    """[N, NUM_CLASSES] bool: which classes each image contains."""
    return np.stack([labels_lib.class_presence(self[i]["label"]) for i in range(len(self))])

  @property
  def class_index(self) -> tuple[np.ndarray, ...]:
    """Per train id, the sorted indices of the images that contain it."""
    return tuple(np.flatnonzero(self.class_presence[:, c]) for c in range(labels_lib.NUM_CLASSES))
