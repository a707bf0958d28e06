"""The procedural synthetic benchmark: determinism, class statistics, designed domain gap."""

import dataclasses

import numpy as np
import pytest

from ripu_jax.data import labels
from ripu_jax.data import synthetic

CONFIG = synthetic.SyntheticConfig()
SAMPLE = 100  # Images per domain for statistics: enough for stable frequencies, fast.


def _statistics(split: str):
  counts = np.zeros(labels.NUM_CLASSES)
  images_with = np.zeros(labels.NUM_CLASSES)
  colours = {}
  for index in range(SAMPLE):
    example = synthetic.generate_example(CONFIG, split, index)
    counts += labels.pixel_counts(example["label"])
    images_with += labels.class_presence(example["label"])
    for class_id in (synthetic.ROAD, synthetic.SIDEWALK, synthetic.BUILDING):
      mask = example["label"] == class_id
      colours.setdefault(class_id, []).append(example["image"][mask].mean(0))
  return (counts / counts.sum(), images_with / SAMPLE,
          {c: np.mean(v, axis=0) for c, v in colours.items()})


@pytest.fixture(scope="module")
def source_stats():
  return _statistics(synthetic.SOURCE_TRAIN)


@pytest.fixture(scope="module")
def target_stats():
  return _statistics(synthetic.TARGET_TRAIN)


def test_same_seed_same_bytes_and_seed_matters():
  first = synthetic.generate_example(CONFIG, synthetic.TARGET_TRAIN, 7)
  again = synthetic.generate_example(synthetic.SyntheticConfig(), synthetic.TARGET_TRAIN, 7)
  assert first["image"].tobytes() == again["image"].tobytes()
  assert first["label"].tobytes() == again["label"].tobytes()
  assert first["name"] == "target_train_00007"
  other_seed = synthetic.generate_example(dataclasses.replace(CONFIG, seed=1),
                                          synthetic.TARGET_TRAIN, 7)
  assert other_seed["image"].tobytes() != first["image"].tobytes()
  other_split = synthetic.generate_example(CONFIG, synthetic.TARGET_VAL, 7)
  assert other_split["label"].tobytes() != first["label"].tobytes()


def test_shapes_dtypes_and_label_values():
  config = synthetic.SyntheticConfig(height=48, width=80, num_source_train=2,
                                     num_target_train=2, num_target_val=2)
  for split in synthetic.SPLITS:
    example = synthetic.generate_example(config, split, 1)
    assert example["image"].shape == (48, 80, 3) and example["image"].dtype == np.uint8
    assert example["label"].shape == (48, 80) and example["label"].dtype == np.uint8
    assert set(np.unique(example["label"])) <= set(synthetic.SYNTHETIC_CLASSES)


def test_split_sequence_matches_generator():
  config = synthetic.SyntheticConfig(height=40, width=64, num_source_train=5,
                                     num_target_train=3, num_target_val=2)
  split = synthetic.SyntheticSplit(config, synthetic.TARGET_TRAIN)
  assert len(split) == 3
  np.testing.assert_array_equal(split[-1]["image"],
                                synthetic.generate_example(config, "target_train", 2)["image"])
  assert split.label_shape(0) == (40, 64)
  presence = split.class_presence
  assert presence.shape == (3, labels.NUM_CLASSES)
  for class_id, images in enumerate(split.class_index):
    assert all(presence[i, class_id] for i in images)
  with pytest.raises(IndexError):
    split[3]  # pylint: disable=pointless-statement


def test_config_validation_and_names():
  assert CONFIG.name == "default"
  custom = synthetic.SyntheticConfig(seed=3, height=64, width=96, domain_shift=0.5)
  assert custom.name == "s3_64x96_n400-300-100_shift0p5"
  assert synthetic.SyntheticConfig(domain_shift=1.0).name.endswith("_shift1")
  with pytest.raises(ValueError, match="domain_shift"):
    synthetic.SyntheticConfig(domain_shift=1.5)
  with pytest.raises(ValueError, match="num_target_val"):
    synthetic.SyntheticConfig(num_target_val=0)
  with pytest.raises(ValueError, match="unknown synthetic split"):
    synthetic.generate_example(CONFIG, "val", 0)
  with pytest.raises(IndexError):
    synthetic.generate_example(CONFIG, synthetic.TARGET_VAL, CONFIG.num_target_val)


def test_class_frequencies_in_expected_ranges(source_stats, target_stats):
  for pixel_share, image_share, _ in (source_stats, target_stats):
    # Large "stuff" classes cover most of the image.
    assert 0.15 < pixel_share[synthetic.ROAD] < 0.40
    assert 0.05 < pixel_share[synthetic.SIDEWALK] < 0.25
    assert 0.05 < pixel_share[synthetic.BUILDING] < 0.30
    assert 0.08 < pixel_share[synthetic.SKY] < 0.35
    assert 0.03 < pixel_share[synthetic.VEGETATION] < 0.25
    assert 0.03 < pixel_share[synthetic.CAR] < 0.25
    # Rare small things are really rare, yet present in some images.
    for rare, limit in ((synthetic.POLE, 0.03), (synthetic.PERSON, 0.02),
                        (synthetic.SIGN, 0.005), (synthetic.LIGHT, 0.005),
                        (synthetic.BICYCLE, 0.003)):
      assert 0 < pixel_share[rare] < limit, labels.CLASS_NAMES[rare]
    assert 0.02 <= image_share[synthetic.BICYCLE] <= 0.3
    assert image_share[synthetic.LIGHT] <= 0.5
    # Classes outside the benchmark never occur.
    outside = [c for c in range(labels.NUM_CLASSES) if c not in synthetic.SYNTHETIC_CLASSES]
    assert pixel_share[outside].sum() == 0


def test_domains_differ_by_design(source_stats, target_stats):
  source_share, source_images, source_colour = source_stats
  target_share, target_images, target_colour = target_stats
  # Object frequencies and sizes shift: more persons, smaller cars in the target domain.
  assert target_images[synthetic.PERSON] > source_images[synthetic.PERSON] + 0.1
  assert target_share[synthetic.CAR] < source_share[synthetic.CAR]
  # Class-conditional colour shift towards other classes' source colours: target roads move
  # towards source sidewalks, target buildings towards source roads.
  def distance(a, b):
    return float(np.linalg.norm(a - b))

  source_road, source_walk = source_colour[synthetic.ROAD], source_colour[synthetic.SIDEWALK]
  source_building = source_colour[synthetic.BUILDING]
  assert distance(target_colour[synthetic.ROAD], source_walk) < 0.75 * distance(
      source_road, source_walk)
  assert distance(target_colour[synthetic.BUILDING], source_road) < 0.6 * distance(
      source_building, source_road)
  assert distance(target_colour[synthetic.ROAD], source_road) > 30


def test_no_shift_makes_target_palette_match_source():
  config = synthetic.SyntheticConfig(domain_shift=0.0)
  assert synthetic._style_for(synthetic.TARGET_VAL, 0.0) == synthetic._style_for(
      synthetic.SOURCE_TRAIN, 0.0)
  example = synthetic.generate_example(config, synthetic.TARGET_VAL, 0)
  assert example["image"].shape == (config.height, config.width, 3)
