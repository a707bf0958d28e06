"""Procedural multi-view RGB-D rooms: a ViewAL benchmark that needs no download.

Every scene is a metric room (a box of 4-8 m by 4-8 m, 2.5-3.2 m high) furnished with
axis-aligned boxes: a bed with a headboard, cabinets against the walls, a table on four legs,
chairs, pictures on the walls, small objects on the table and cabinets, and unlabelled clutter
on the floor. A camera walks a smooth path through the room, turning 20-30 degrees between
frames, so neighbouring frames share roughly half of their pixels and frames far apart in the
sequence share none. Frames are ray cast (vectorised numpy) at the requested size, so every
frame's depth, labels and pose agree exactly: lifting a pixel with its depth and the camera's
intrinsics and pose gives the surface point it sees, in metres.

Why each property (ViewAL scores pixels by projecting every frame of a scene into every
other):
* occlusions (furniture before walls and before other furniture) make the visibility test
  reject hidden points;
* labels are properties of surfaces (clutter surfaces carry 255), so a label reprojected
  from another view is the label of the pixel it lands on;
* the table and the cabinets share one wood material (same colour and grain), and shading
  has a view-dependent specular term, so a weak model disagrees across views;
* classes are imbalanced: walls and floor cover most pixels, pictures and objects little;
* depth has holes (0 = invalid): random dropout patches, glancing surfaces and surfaces beyond
  the sensor range.

Frames are a pure function of (config.seed, scene, frame): scenes are split train/val/test at
the scene level, and a seed set of about 1.5% of the training frames (at least 3) is drawn
from the seed too. Frame `f` of scene `s` is named "scene{s:04d}/frame{f:03d}"; scene indices
run over train, then val, then test scenes, so they are unique across splits.

Camera conventions: pose = camera-to-world 4x4 in OpenCV axes (x right, y down, z forward);
K = intrinsics at the generated size, pixel centres at integer coordinates; depth = z in the
camera frame, metres (float32). World: z up, the room spans [0, size] on each axis.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

TRAIN, VAL, TEST = "train", "val", "test"
SPLITS = (TRAIN, VAL, TEST)

CLASS_NAMES = ("wall", "floor", "ceiling", "bed", "cabinet", "table", "chair", "picture",
               "object")
WALL, FLOOR, CEILING, BED, CABINET, TABLE, CHAIR, PICTURE, OBJECT = range(len(CLASS_NAMES))
NUM_CLASSES = len(CLASS_NAMES)
IGNORE = 255  # Clutter surfaces: labelled "ignore".
PALETTE = np.array([(174, 199, 232), (152, 223, 138), (220, 220, 220), (255, 187, 120),
                    (140, 86, 75), (214, 39, 40), (31, 119, 180), (227, 119, 194),
                    (188, 189, 34)], np.uint8)

# Materials: albedo source, specular strength, shininess, texture. Tables and cabinets share
# "wood" (one albedo per scene), so only shape and context tell them apart.
MATERIAL_OF_CLASS = {WALL: "paint", FLOOR: "floor", CEILING: "ceiling", BED: "fabric",
                     CABINET: "wood", TABLE: "wood", CHAIR: "plastic", PICTURE: "print",
                     OBJECT: "plastic", IGNORE: "clutter"}
_MATERIALS = ("paint", "floor", "ceiling", "fabric", "wood", "plastic", "print", "clutter")
_SPECULAR = {"paint": (0.05, 8.0), "floor": (0.45, 20.0), "ceiling": (0.0, 1.0),
             "fabric": (0.03, 4.0), "wood": (0.5, 30.0), "plastic": (0.6, 60.0),
             "print": (0.25, 20.0), "clutter": (0.1, 10.0)}

WORKING_SIZE = (240, 320)
HORIZONTAL_FOV_DEG = 60.0
MAX_DEPTH = 7.0  # Sensor range in metres: farther surfaces read 0 (invalid).
GLANCING_COSINE = 0.1  # Surfaces seen at a grazing angle read 0.
SEED_FRACTION = 0.015
MIN_SEED_FRAMES = 3


@dataclasses.dataclass(frozen=True)
class ViewalSyntheticConfig:
  """Generator parameters of the synthetic multi-view benchmark.

  Attributes:
    seed: master seed; same seed, same bytes (scenes, frames, splits and seed set).
    height: frame height in pixels (ViewAL's working size is 240x320).
    width: frame width in pixels.
    train_scenes: scenes of the training pool.
    val_scenes: scenes of the validation split.
    test_scenes: scenes of the test split.
    frames_per_scene: camera poses per scene (ViewAL's datasets have 10-30).
  """

  seed: int = 0
  height: int = WORKING_SIZE[0]
  width: int = WORKING_SIZE[1]
  train_scenes: int = 16
  val_scenes: int = 4
  test_scenes: int = 4
  frames_per_scene: int = 20

  def __post_init__(self):
    if self.height < 16 or self.width < 16:
      raise ValueError(f"frames must be at least 16x16, got {self.height}x{self.width}")
    for field in ("train_scenes", "val_scenes", "test_scenes"):
      if getattr(self, field) < 1:
        raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
    if self.frames_per_scene < 2:
      raise ValueError(f"frames_per_scene must be >= 2, got {self.frames_per_scene}")
    if self.seed < 0:
      raise ValueError(f"seed must be >= 0, got {self.seed}")

  @property
  def name(self) -> str:
    """Folder name of the prepared copy ("default" for the defaults)."""
    if self == ViewalSyntheticConfig():
      return "default"
    return (f"s{self.seed}_{self.height}x{self.width}_n{self.train_scenes}-{self.val_scenes}-"
            f"{self.test_scenes}_f{self.frames_per_scene}")

  def scenes(self, split: str) -> range:
    """Global scene indices of `split` (train first, then val, then test)."""
    _check_split(split)
    counts = (self.train_scenes, self.val_scenes, self.test_scenes)
    start = sum(counts[:SPLITS.index(split)])
    return range(start, start + counts[SPLITS.index(split)])

  def num_frames(self, split: str) -> int:
    return len(self.scenes(split)) * self.frames_per_scene

  @property
  def num_scenes(self) -> int:
    return self.train_scenes + self.val_scenes + self.test_scenes


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")


def scene_name(scene: int) -> str:
  return f"scene{scene:04d}"


def frame_name(scene: int, frame: int) -> str:
  return f"{scene_name(scene)}/frame{frame:03d}"


def intrinsics(height: int, width: int) -> np.ndarray:
  """[3, 3] float32 pinhole K of a generated frame (60 degree horizontal field of view, square
  pixels at 4:3, principal point at the centre of the integer pixel grid)."""
  fx = 0.5 * width / np.tan(np.radians(HORIZONTAL_FOV_DEG) / 2)
  fy = fx * (height / width) / 0.75
  return np.array([[fx, 0.0, (width - 1) / 2], [0.0, fy, (height - 1) / 2], [0.0, 0.0, 1.0]],
                  np.float32)


def default_superpixel_count(height: int, width: int) -> int:
  """About 40 superpixels at 240x320, fewer (by the side length) when smaller."""
  scale = np.sqrt(height * width / (WORKING_SIZE[0] * WORKING_SIZE[1]))
  return max(4, int(round(40 * scale)))


# ----------------------------------------------------------------------------- scenes


@dataclasses.dataclass(frozen=True, eq=False)
class Scene:
  """One static room and its camera path.

  Attributes:
    index: global scene index.
    size: [3] room extents (x, y, z) in metres; the room spans [0, size].
    lo, hi: [B, 3] corners of the furniture boxes.
    box_class: [B] uint8 class of each box (IGNORE for clutter).
    box_albedo: [B, 3] float32 base colour (0..1) of each box.
    box_material: [B] index into the material table.
    room_albedo: [3, 3] base colours of walls, floor, ceiling.
    light: [3] position of the ceiling light.
    poses: [F, 4, 4] float64 camera-to-world transforms (OpenCV axes).
  """

  index: int
  size: np.ndarray
  lo: np.ndarray
  hi: np.ndarray
  box_class: np.ndarray
  box_albedo: np.ndarray
  box_material: np.ndarray
  room_albedo: np.ndarray
  light: np.ndarray
  poses: np.ndarray


class _Layout:
  """Places furniture boxes without footprint overlaps."""

  def __init__(self, rng: np.random.Generator, size: np.ndarray):
    self.rng, self.size = rng, size
    self.boxes: list[tuple[np.ndarray, np.ndarray, int]] = []
    self.footprints: list[tuple[float, float, float, float]] = []

  def free(self, x0, y0, x1, y1, margin=0.1) -> bool:
    if x0 < 0.02 or y0 < 0.02 or x1 > self.size[0] - 0.02 or y1 > self.size[1] - 0.02:
      return False
    return all(x1 + margin <= a0 or a1 + margin <= x0 or y1 + margin <= b0 or b1 + margin <= y0
               for a0, b0, a1, b1 in self.footprints)

  def add(self, lo, hi, class_id: int, footprint: bool = True) -> None:
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    self.boxes.append((lo, hi, class_id))
    if footprint:
      self.footprints.append((lo[0], lo[1], hi[0], hi[1]))

  def against_wall(self, width: float, depth: float, tries: int = 30):
    """A footprint (x0, y0, x1, y1, wall) touching a random wall, or None."""
    for _ in range(tries):
      wall = int(self.rng.integers(4))
      along = self.size[1] if wall % 2 == 0 else self.size[0]
      if width > along - 0.4:
        continue
      start = self.rng.uniform(0.1, along - width - 0.1)
      if wall == 0:    # x = 0
        box = (0.02, start, 0.02 + depth, start + width)
      elif wall == 1:  # y = 0
        box = (start, 0.02, start + width, 0.02 + depth)
      elif wall == 2:  # x = X
        box = (self.size[0] - 0.02 - depth, start, self.size[0] - 0.02, start + width)
      else:            # y = Y
        box = (start, self.size[1] - 0.02 - depth, start + width, self.size[1] - 0.02)
      if self.free(*box):
        return (*box, wall)
    return None


def _furnish(rng: np.random.Generator, size: np.ndarray) -> _Layout:
  layout = _Layout(rng, size)
  # Bed with a headboard against a wall.
  if rng.random() < 0.85:
    length, width = rng.uniform(1.9, 2.1), rng.uniform(1.3, 1.8)
    spot = layout.against_wall(width, length)
    if spot is not None:
      x0, y0, x1, y1, wall = spot
      height = rng.uniform(0.45, 0.6)
      layout.add((x0, y0, 0), (x1, y1, height), BED)
      board = {0: ((x0, y0), (x0 + 0.08, y1)), 1: ((x0, y0), (x1, y0 + 0.08)),
               2: ((x1 - 0.08, y0), (x1, y1)), 3: ((x0, y1 - 0.08), (x1, y1))}[wall]
      layout.add((*board[0], height), (*board[1], rng.uniform(1.0, 1.25)), BED, footprint=False)
  # Cabinets, some with objects on top.
  tops = []
  for _ in range(rng.integers(1, 4)):
    spot = layout.against_wall(rng.uniform(0.5, 1.3), rng.uniform(0.4, 0.6))
    if spot is not None:
      x0, y0, x1, y1, _ = spot
      height = rng.uniform(0.8, 2.0)
      layout.add((x0, y0, 0), (x1, y1, height), CABINET)
      if height < 1.3:
        tops.append((x0, y0, x1, y1, height))
  # A table on four legs with chairs around it.
  if rng.random() < 0.9:
    for _ in range(30):
      length, depth = rng.uniform(1.1, 1.8), rng.uniform(0.7, 1.0)
      if rng.random() < 0.5:
        length, depth = depth, length
      cx = rng.uniform(0.3, 0.7) * size[0]
      cy = rng.uniform(0.3, 0.7) * size[1]
      x0, y0, x1, y1 = cx - length / 2, cy - depth / 2, cx + length / 2, cy + depth / 2
      if layout.free(x0 - 0.6, y0 - 0.6, x1 + 0.6, y1 + 0.6, margin=0.0):
        height = rng.uniform(0.72, 0.78)
        layout.add((x0, y0, height - 0.04), (x1, y1, height), TABLE)
        for lx, ly in ((x0, y0), (x1 - 0.05, y0), (x0, y1 - 0.05), (x1 - 0.05, y1 - 0.05)):
          layout.add((lx + 0.02, ly + 0.02, 0), (lx + 0.05, ly + 0.05, height - 0.04), TABLE,
                     footprint=False)
        tops.append((x0, y0, x1, y1, height))
        sides = rng.permutation(4)[:rng.integers(2, 5)]
        for side in sides:
          seat = 0.42
          if side == 0:
            sx, sy, back = cx - seat / 2, y0 - seat - 0.05, 1
          elif side == 1:
            sx, sy, back = cx - seat / 2, y1 + 0.05, 3
          elif side == 2:
            sx, sy, back = x0 - seat - 0.05, cy - seat / 2, 0
          else:
            sx, sy, back = x1 + 0.05, cy - seat / 2, 2
          layout.add((sx, sy, 0), (sx + seat, sy + seat, 0.45), CHAIR, footprint=False)
          rest = {0: ((sx, sy), (sx + 0.05, sy + seat)), 1: ((sx, sy), (sx + seat, sy + 0.05)),
                  2: ((sx + seat - 0.05, sy), (sx + seat, sy + seat)),
                  3: ((sx, sy + seat - 0.05), (sx + seat, sy + seat))}[back]
          layout.add((*rest[0], 0.45), (*rest[1], 0.95), CHAIR, footprint=False)
        break
  # Small objects on tables and low cabinets.
  for _ in range(rng.integers(2, 6)):
    if not tops:
      break
    x0, y0, x1, y1, height = tops[rng.integers(len(tops))]
    w, d = rng.uniform(0.08, 0.3, size=2)
    if x1 - x0 <= w + 0.04 or y1 - y0 <= d + 0.04:
      continue
    ox, oy = rng.uniform(x0 + 0.02, x1 - w - 0.02), rng.uniform(y0 + 0.02, y1 - d - 0.02)
    layout.add((ox, oy, height), (ox + w, oy + d, height + rng.uniform(0.05, 0.3)), OBJECT,
               footprint=False)
  # Pictures on the walls (thin boxes), above whatever stands there.
  for _ in range(rng.integers(1, 5)):
    wall = int(rng.integers(4))
    along = size[1] if wall in (0, 2) else size[0]
    w, h = rng.uniform(0.3, 1.0), rng.uniform(0.3, 0.8)
    start, bottom = rng.uniform(0.2, along - w - 0.2), rng.uniform(1.3, 1.9) - h / 2
    if wall == 0:
      lo, hi = (0.0, start, bottom), (0.03, start + w, bottom + h)
    elif wall == 1:
      lo, hi = (start, 0.0, bottom), (start + w, 0.03, bottom + h)
    elif wall == 2:
      lo, hi = (size[0] - 0.03, start, bottom), (size[0], start + w, bottom + h)
    else:
      lo, hi = (start, size[1] - 0.03, bottom), (start + w, size[1], bottom + h)
    if not any(_overlaps(lo, hi, blo, bhi) for blo, bhi, _ in layout.boxes):
      layout.add(lo, hi, PICTURE, footprint=False)
  # Unlabelled clutter on the floor.
  for _ in range(rng.integers(2, 5)):
    w, d = rng.uniform(0.15, 0.45, size=2)
    x0, y0 = rng.uniform(0.1, size[0] - w - 0.1), rng.uniform(0.1, size[1] - d - 0.1)
    if layout.free(x0, y0, x0 + w, y0 + d, margin=0.05):
      layout.add((x0, y0, 0), (x0 + w, y0 + d, rng.uniform(0.1, 0.45)), IGNORE)
  return layout


def _overlaps(lo_a, hi_a, lo_b, hi_b) -> bool:
  return all(hi_a[k] > lo_b[k] and hi_b[k] > lo_a[k] for k in range(3))


def _look(position, yaw: float, pitch: float, roll: float) -> np.ndarray:
  """Camera-to-world [4, 4] at `position` looking along (yaw, pitch) with z up."""
  forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
  right = np.cross(forward, [0.0, 0.0, 1.0])
  right /= np.linalg.norm(right)
  down = np.cross(forward, right)
  c, s = np.cos(roll), np.sin(roll)
  right, down = c * right + s * down, -s * right + c * down
  pose = np.eye(4)
  pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, position
  return pose


def _camera_path(rng: np.random.Generator, size: np.ndarray, count: int) -> np.ndarray:
  """[count, 4, 4] poses along a smooth arc around the room centre, turning 20-30 degrees a
  frame (about half of the 60 degree field of view)."""
  centre = size[:2] / 2 + rng.uniform(-0.15, 0.15, 2) * size[:2]
  radii = rng.uniform(0.12, 0.22, 2) * size[:2]
  angle0, step = rng.uniform(0, 2 * np.pi), rng.uniform(0.08, 0.2) * rng.choice([-1, 1])
  yaw0, turn = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(20, 30)) * rng.choice([-1, 1])
  height, phase = rng.uniform(1.3, 1.6), rng.uniform(0, 2 * np.pi)
  poses = []
  for k in range(count):
    angle = angle0 + step * k
    position = (centre[0] + radii[0] * np.cos(angle), centre[1] + radii[1] * np.sin(angle),
                height + 0.1 * np.sin(0.7 * k + phase))
    pitch = -np.radians(12 + 12 * np.sin(0.5 * k + phase))
    roll = np.radians(rng.uniform(-2, 2))
    poses.append(_look(np.array(position), yaw0 + turn * k, pitch, roll))
  return np.stack(poses)


@functools.lru_cache(maxsize=64)
def build_scene(seed: int, scene: int, frames: int) -> Scene:
  """Scene `scene` of the benchmark with master seed `seed` and `frames` camera poses."""
  rng = np.random.default_rng([seed, scene, 0])
  size = np.array([rng.uniform(4, 8), rng.uniform(4, 8), rng.uniform(2.5, 3.2)])
  layout = _furnish(rng, size)
  poses = _camera_path(np.random.default_rng([seed, scene, 1]), size, frames)
  cameras = poses[:, :3, 3]
  boxes = [(lo, hi, c) for lo, hi, c in layout.boxes  # No camera inside or against a box.
           if not np.any(np.all((cameras > lo - 0.25) & (cameras < hi + 0.25), axis=1))]
  wood = _colour(rng, (0.45, 0.3, 0.18), 0.08)
  paint = _colour(rng, (0.8, 0.78, 0.72), 0.1)
  albedo, material = [], []
  for _, _, class_id in boxes:
    name = MATERIAL_OF_CLASS[class_id]
    if name == "wood":
      albedo.append(wood)
    elif name == "fabric":
      albedo.append(_colour(rng, rng.uniform(0.2, 0.8, 3), 0.0))
    elif name == "plastic":
      albedo.append(_colour(rng, rng.uniform(0.1, 0.9, 3), 0.0))
    elif name == "print":
      albedo.append(_colour(rng, rng.uniform(0.3, 0.9, 3), 0.0))
    else:
      albedo.append(_colour(rng, (0.5, 0.5, 0.5), 0.1))
    material.append(_MATERIALS.index(name))
  count = len(boxes)
  return Scene(
      index=scene, size=size,
      lo=np.array([b[0] for b in boxes], np.float64).reshape(count, 3),
      hi=np.array([b[1] for b in boxes], np.float64).reshape(count, 3),
      box_class=np.array([b[2] for b in boxes], np.uint8),
      box_albedo=np.array(albedo, np.float32).reshape(count, 3),
      box_material=np.array(material, np.int64),
      room_albedo=np.stack([paint, _colour(rng, (0.55, 0.42, 0.3), 0.1),
                            _colour(rng, (0.85, 0.85, 0.85), 0.05)]).astype(np.float32),
      light=np.array([size[0] / 2, size[1] / 2, size[2] - 0.3]) + np.append(
          rng.uniform(-0.2, 0.2, 2) * size[:2], 0.0),
      poses=poses)


def _colour(rng, base, jitter) -> np.ndarray:
  return np.clip(np.asarray(base, np.float64) + rng.normal(0, jitter, 3), 0.05, 0.95)


# ----------------------------------------------------------------------------- rendering


def cast_rays(scene: Scene, origin: np.ndarray, directions: np.ndarray):
  """Nearest hits of rays `origin + t * directions` ([N, 3], not normalised) in the room.

  Returns (t [N], surface [N] int: box index or -1 (wall), -2 (floor), -3 (ceiling),
  normal [N, 3] facing the ray).
  """
  directions = np.asarray(directions, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    inverse = 1.0 / directions
  # The room: the camera is inside, so the ray leaves through the nearest face ahead.
  exits = np.where(directions > 0, (scene.size - origin) * inverse,
                   np.where(directions < 0, -origin * inverse, np.inf))
  axis_out = np.argmin(exits, axis=1)
  t = exits[np.arange(len(directions)), axis_out]
  ahead = directions[np.arange(len(directions)), axis_out] > 0
  surface = np.where(axis_out < 2, -1, np.where(ahead, -3, -2))
  normal = np.zeros_like(directions)
  normal[np.arange(len(directions)), axis_out] = np.where(ahead, -1.0, 1.0)
  if len(scene.lo):
    # Slab test against every box, one axis at a time ([N, B] float32 arrays; the hit
    # distance of the nearest box is then recomputed in float64).
    near = np.full((len(directions), len(scene.lo)), -np.inf, np.float32)
    far = np.full_like(near, np.inf)
    near_axis = np.zeros(near.shape, np.int8)
    inverse32 = inverse.astype(np.float32)
    for k in range(3):
      with np.errstate(invalid="ignore"):
        t0 = (scene.lo[None, :, k] - origin[k]).astype(np.float32) * inverse32[:, k, None]
        t1 = (scene.hi[None, :, k] - origin[k]).astype(np.float32) * inverse32[:, k, None]
      flat = directions[:, k] == 0
      if flat.any():  # Parallel to the slab: inside it for all t, or never.
        inside = (origin[k] > scene.lo[:, k]) & (origin[k] < scene.hi[:, k])
        t0[flat] = np.where(inside, -np.inf, np.inf)[None, :]
        t1[flat] = np.where(inside, np.inf, -np.inf)[None, :]
      entry, leave = np.minimum(t0, t1), np.maximum(t0, t1)
      later = entry > near
      np.copyto(near, entry, where=later)
      np.copyto(near_axis, np.int8(k), where=later)
      np.minimum(far, leave, out=far)
    near[~((near <= far) & (near > 1e-6))] = np.inf
    best = np.argmin(near, axis=1)
    rows = np.arange(len(directions))
    axis_in = near_axis[rows, best].astype(np.int64)
    face = np.where(directions[rows, axis_in] > 0, scene.lo[best, axis_in],
                    scene.hi[best, axis_in])
    with np.errstate(invalid="ignore"):
      t_box = np.where(np.isfinite(near[rows, best]),
                       (face - origin[axis_in]) * inverse[rows, axis_in], np.inf)
    closer = t_box < t
    t = np.where(closer, t_box, t)
    surface = np.where(closer, best, surface)
    box_normal = np.zeros_like(directions)
    box_normal[rows, axis_in] = -np.sign(directions[rows, axis_in])
    normal = np.where(closer[:, None], box_normal, normal)
  return t, surface, normal


def _texture(material: np.ndarray, point: np.ndarray, normal: np.ndarray) -> np.ndarray:
  """[N] brightness factor of each material's pattern, a function of the world point only
  (so the same surface point looks the same from every view up to shading)."""
  x, y, z = point[:, 0], point[:, 1], point[:, 2]
  factor = np.ones(len(point))
  names = np.array(_MATERIALS)[material]
  grain_axis = np.where(np.abs(normal[:, 2]) > 0.5, x + 0.3 * y, z + 0.3 * (x + y))
  wood = names == "wood"
  factor[wood] = 1 + 0.12 * np.sin(45 * grain_axis[wood] + 3 * np.sin(4 * (x + y)[wood]))
  floor = names == "floor"
  tiles = (np.floor(x[floor] / 0.6) + np.floor(y[floor] / 0.6)) % 2
  grout = (np.minimum(x[floor] % 0.6, y[floor] % 0.6) < 0.015)
  factor[floor] = np.where(grout, 0.6, 1 + 0.08 * (2 * tiles - 1))
  paint = (names == "paint") | (names == "ceiling")
  factor[paint] = 1 + 0.04 * np.sin(1.3 * x[paint] + 0.7 * z[paint]) * np.sin(0.9 * y[paint])
  fabric = names == "fabric"
  factor[fabric] = 1 + 0.08 * np.sin(60 * (x + y)[fabric]) * np.sin(60 * z[fabric])
  printed = names == "print"
  factor[printed] = 0.7 + 0.5 * (np.sin(25 * (x + y + z)[printed]) > 0)
  return factor


def _shade(scene: Scene, origin, point, normal, surface, rng) -> np.ndarray:
  """[N, 3] linear colour: textured albedo x (ambient + Lambert) + view-dependent specular."""
  is_box = surface >= 0
  box = np.where(is_box, surface, 0)
  room = np.clip(-surface - 1, 0, 2)
  if len(scene.lo):
    albedo = np.where(is_box[:, None], scene.box_albedo[box], scene.room_albedo[room])
    material = np.where(is_box, scene.box_material[box], 0)
  else:
    albedo, material = scene.room_albedo[room], np.zeros(len(point), np.int64)
  room_material = np.array([_MATERIALS.index(m) for m in ("paint", "floor", "ceiling")])
  material = np.where(is_box, material, room_material[room])
  albedo = albedo * _texture(material, point, normal)[:, None]
  to_light = scene.light - point
  distance = np.linalg.norm(to_light, axis=1, keepdims=True)
  to_light /= distance
  to_eye = origin - point
  to_eye /= np.linalg.norm(to_eye, axis=1, keepdims=True)
  lambert = np.clip(np.sum(normal * to_light, axis=1), 0, None)
  falloff = 1.0 / (1.0 + 0.05 * distance[:, 0] ** 2)
  half = to_light + to_eye
  half /= np.linalg.norm(half, axis=1, keepdims=True)
  strength = np.array([_SPECULAR[m][0] for m in _MATERIALS])[material]
  shininess = np.array([_SPECULAR[m][1] for m in _MATERIALS])[material]
  specular = strength * np.clip(np.sum(normal * half, axis=1), 0, None) ** shininess
  specular *= lambert > 0
  # A faint camera-mounted fill light keeps surfaces facing away from the lamp visible.
  fill = 0.15 * np.abs(np.sum(normal * to_eye, axis=1))
  colour = albedo * (0.3 + fill + 0.9 * lambert * falloff)[:, None] + specular[:, None] * 0.9
  gain = rng.uniform(0.93, 1.07)
  return colour * gain


def render_frame(scene: Scene, frame: int, height: int, width: int, seed: int,
                 superpixels: bool = True) -> dict:
  """One frame of `scene` at height x width.

  Returns {"image": uint8 [H, W, 3], "label": uint8 [H, W] (255 = clutter), "depth": float32
  [H, W] metres (0 = invalid), "pose": float32 [4, 4] camera-to-world (OpenCV axes),
  "intrinsics": float32 [3, 3], "superpixels": int32 [H, W] (SEEDS; omitted without
  `superpixels`), "scene": int32, "name": str}.
  """
  rng = np.random.default_rng([seed, scene.index, 2, frame])
  pose = scene.poses[frame]
  k = intrinsics(height, width).astype(np.float64)
  rows, cols = np.mgrid[:height, :width]
  rays = np.stack([(cols - k[0, 2]) / k[0, 0], (rows - k[1, 2]) / k[1, 1],
                   np.ones((height, width))], -1).reshape(-1, 3)
  directions = rays @ pose[:3, :3].T  # z-component 1 in the camera: t is z-depth.
  origin = pose[:3, 3]
  t, surface, normal = cast_rays(scene, origin, directions)
  point = origin + t[:, None] * directions
  classes = np.array([WALL, FLOOR, CEILING], np.uint8)[np.clip(-surface - 1, 0, 2)]
  if len(scene.lo):
    classes = np.where(surface >= 0, scene.box_class[np.maximum(surface, 0)], classes)
  label = classes.astype(np.uint8).reshape(height, width)
  colour = _shade(scene, origin, point, normal, surface, rng).reshape(height, width, 3)
  colour = 255 * np.clip(colour, 0, 1) ** (1 / 2.2)
  colour += rng.normal(0, 2.0, colour.shape)
  image = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
  depth = t.reshape(height, width).astype(np.float32)
  cosine = np.abs(np.sum(normal * directions, axis=1)) / np.linalg.norm(directions, axis=1)
  depth[cosine.reshape(height, width) < GLANCING_COSINE] = 0
  depth[depth > MAX_DEPTH] = 0
  for _ in range(rng.integers(0, 4)):  # Dropout patches (sensor holes).
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry, rx = rng.uniform(0.03, 0.1, 2) * (height, width)
    depth[((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1] = 0
  example = {
      "image": image, "label": label, "depth": depth,
      "pose": pose.astype(np.float32), "intrinsics": k.astype(np.float32),
      "scene": np.int32(scene.index), "name": frame_name(scene.index, frame),
  }
  if superpixels:
    from ripu_jax.methods.viewal import datasets  # pylint: disable=g-import-not-at-top
    example["superpixels"] = datasets.seeds_superpixels(
        image, num_superpixels=default_superpixel_count(height, width))
  return example


# ----------------------------------------------------------------------------- splits


def frame_of(config: ViewalSyntheticConfig, split: str, index: int) -> tuple[int, int]:
  """(global scene, frame) of example `index` of `split` (scene-major order)."""
  count = config.num_frames(split)
  if not 0 <= index < count:
    raise IndexError(f"index {index} out of range for {split} with {count} frames")
  scene, frame = divmod(index, config.frames_per_scene)
  return config.scenes(split)[scene], frame


def generate_frame(config: ViewalSyntheticConfig, split: str, index: int,
                   superpixels: bool = True) -> dict:
  """Example `index` of `split` (see `render_frame` for the keys)."""
  scene, frame = frame_of(config, split, index)
  return render_frame(build_scene(config.seed, scene, config.frames_per_scene), frame,
                      config.height, config.width, config.seed, superpixels=superpixels)


def seed_indices(config: ViewalSyntheticConfig) -> np.ndarray:
  """Sorted indices of the train frames labelled from the start: about 1.5% of them, at
  least MIN_SEED_FRAMES (all, for a smaller pool), drawn from the seed."""
  count = config.num_frames(TRAIN)
  wanted = min(count, max(MIN_SEED_FRAMES, int(round(SEED_FRACTION * count))))
  rng = np.random.default_rng([config.seed, 3])
  return np.sort(rng.choice(count, wanted, replace=False)).astype(np.int64)
