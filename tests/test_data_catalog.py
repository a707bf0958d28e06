"""The dataset catalogue and label spaces: names, roles, opening, the run's classes and tables."""

import numpy as np
import pytest

from ripu_jax.data import catalog
from ripu_jax.data import labels
from ripu_jax.data import synthetic

SMALL = {"height": 32, "width": 48, "num_source_train": 3, "num_target_train": 2,
         "num_target_val": 2}

# The published SYNTHIA -> Cityscapes 16-class protocol (the reference release's
# NUM_CLASSES: 16 label mappings), written out by hand: raw dataset ids -> 16 class indices.
SYNTHIA_ID_TO_16 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10,
                    17: 11, 8: 12, 19: 13, 12: 14, 11: 15}
CITYSCAPES_ID_TO_16 = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 23: 9,
                       24: 10, 25: 11, 26: 12, 28: 13, 32: 14, 33: 15}
SYNTHIA_16_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                    "traffic sign", "vegetation", "sky", "person", "rider", "car", "bus",
                    "motorcycle", "bicycle")


# What config_lib.class_sets / label_lookup computed before the catalogue, per source.
def _old_class_sets(source):
  sets = {
      "gtav": {"miou": labels.ALL_CLASSES},
      "synthia": {"miou": labels.SYNTHIA_CLASSES, "miou_13": labels.SYNTHIA_13_CLASSES},
      "synthetic": {"miou": synthetic.SYNTHETIC_CLASSES},
  }
  return sets[source if source in sets else "gtav"]


def _old_label_lookup(source):
  table = np.full(256, labels.IGNORE_LABEL, np.int32)
  keep = sorted({c for classes in _old_class_sets(source).values() for c in classes})
  table[keep] = keep
  return table


@pytest.mark.parametrize("source, target", [("gtav", "cityscapes"), ("synthetic", "synthetic"),
                                            ("gtav", "synthetic"), ("synthetic", "cityscapes")])
def test_gtav_and_synthetic_runs_reproduce_the_old_tables(source, target):
  space = catalog.run_label_space(source, target)
  assert space.num_classes == labels.NUM_CLASSES
  assert dict(space.eval_sets) == _old_class_sets(source)
  for dataset in (source, target):
    table = catalog.label_map(dataset, space)
    assert table.shape == (256,) and table.dtype == np.uint8
    np.testing.assert_array_equal(table.astype(np.int32), _old_label_lookup(source))


def test_synthia_runs_train_in_sixteen_classes():
  space = catalog.run_label_space("synthia", "cityscapes")
  assert space.name == "synthia16" and space.num_classes == 16
  assert space.class_names == SYNTHIA_16_NAMES
  np.testing.assert_array_equal(space.palette, labels.PALETTE[list(labels.SYNTHIA_CLASSES)])
  assert space.eval_sets["miou"] == tuple(range(16))
  dropped = set(range(16)) - set(space.eval_sets["miou_13"])
  assert {space.class_names[c] for c in dropped} == {"wall", "fence", "pole"}
  # Stored 19-space train ids reach the 16 classes as the published protocol maps raw ids.
  synthia = catalog.label_map("synthia", space)
  cityscapes = catalog.label_map("cityscapes", space)
  for raw in range(256):
    assert synthia[labels.SYNTHIA_LOOKUP[raw]] == SYNTHIA_ID_TO_16.get(raw, 255), raw
    assert cityscapes[labels.CITYSCAPES_LOOKUP[raw]] == CITYSCAPES_ID_TO_16.get(raw, 255), raw
  assert synthia[255] == cityscapes[255] == 255
  # The same space object is found by name, and a table is read-only.
  assert catalog.label_map("cityscapes", "synthia16").tolist() == cityscapes.tolist()
  with pytest.raises(ValueError):
    cityscapes[0] = 3


def own(names, *extra):
  """The built-in datasets among `names` (plug-ins imported by other tests register more),
  and `extra`."""
  return [name for name in names if name in catalog.BUILT_IN or name in extra]


def test_roles_and_names_for_config_validation():
  assert own(catalog.source_names()) == ["gtav", "synthetic", "synthia"]
  assert own(catalog.target_names()) == ["cityscapes", "synthetic", "voc_aug"]
  assert own(catalog.names()) == ["cityscapes", "gtav", "synthetic", "synthia", "voc_aug"]
  assert catalog.get("gtav").split_for("source") == "train"
  assert dict(catalog.get("cityscapes").roles) == {"target_train": "train", "target_val": "val"}
  assert dict(catalog.get("synthetic").roles) == {
      "source": "source_train", "target_train": "target_train", "target_val": "target_val"}
  for name in catalog.BUILT_IN:
    assert dict(catalog.get(name).features) == {}
  with pytest.raises(ValueError, match="cannot serve as 'target_val'.*cityscapes, .*synthetic"):
    catalog.open_role("gtav", "target_val")
  with pytest.raises(ValueError, match="unknown dataset 'kitti'; known: cityscapes, gtav"):
    catalog.open_role("kitti", "source")
  with pytest.raises(ValueError, match="unknown label space 'nope'; known: cityscapes19"):
    catalog.label_space("nope")


def test_source_free_and_sourceless_runs():
  assert catalog.run_label_space("gtav", "cityscapes").name == "cityscapes19"
  assert catalog.run_label_space(None, "cityscapes").name == "cityscapes19"
  assert catalog.run_label_space("", "synthetic").name == "synthetic"
  with pytest.raises(ValueError, match="needs a source or a target"):
    catalog.run_label_space(None, None)


def test_open_synthetic_generated_and_options_explained(tmp_path):
  splits = catalog.open_run_splits("synthetic", "synthetic", data_dir=str(tmp_path),
                                   options={"synthetic": dict(SMALL, prepared=False)})
  config = synthetic.SyntheticConfig(**SMALL)
  for split, name in zip(splits, synthetic.SPLITS):
    assert isinstance(split, synthetic.SyntheticSplit)
    assert split.config == config and split.split == name and dict(split.features) == {}
  free = catalog.open_run_splits(None, "synthetic", options={"synthetic": SMALL})
  assert free.source is None and len(free.target_val) == 2
  with pytest.raises(ValueError, match="no option.*'colour'.*seed, height"):
    catalog.open_role("synthetic", "source", colour=3)
  with pytest.raises(ValueError, match="domain_shift"):
    catalog.open_role("synthetic", "source", domain_shift=2.0)
  with pytest.raises(ValueError, match="takes no options"):
    catalog.open_role("gtav", "source", data_dir=str(tmp_path), seed=1)


def test_missing_prepared_data_says_how_to_prepare(tmp_path):
  with pytest.raises(catalog.DatasetNotPreparedError) as error:
    catalog.open_run_splits("gtav", "cityscapes", data_dir=str(tmp_path / "none"))
  text = str(error.value)
  assert "python -m ripu_jax.data.prepare --dataset gtav --manual_dir" in text
  assert "configs/demo.py" in text
  with pytest.raises(catalog.DatasetNotPreparedError) as error:
    catalog.open_run_splits("synthetic", "synthetic", data_dir=str(tmp_path),
                            options={"synthetic": dict(SMALL, seed=4, prepared=True)})
  text = str(error.value)
  assert "needs no download" in text and "--seed 4" in text and "--height 32" in text
  assert "configs/demo.py" in text
  with pytest.raises(catalog.DatasetNotPreparedError) as error:  # ELN's semi-supervised set
    catalog.open_run_splits(None, "voc_aug", data_dir=str(tmp_path))
  assert str(error.value).endswith("python -m ripu_jax.main --config configs/eln/demo_semi.py "
                                   "--workdir /tmp/eln_demo")


class _ToySplit:
  """A user's split: 2 frames with depth and intrinsics, labels in 19-space train ids."""

  def __init__(self, split, size):
    self.split, self.size = split, size

  def __len__(self):
    return 2

  def __getitem__(self, index):
    h, w = self.size
    label = np.full((h, w), 13 if self.split == "val" else 9, np.uint8)
    return {"image": np.full((h, w, 3), 10 * index, np.uint8), "label": label,
            "name": f"{self.split}{index}", "depth": np.full((h, w), 1.5, np.float32),
            "K": np.array([[10.0, 0, 3], [0, 10, 2], [0, 0, 1]])}

  def label_shape(self, index):
    del index
    return self.size


def test_temporary_user_dataset_opened_through_the_catalogue():
  opened = []

  def opener(spec, split, *, data_dir, size=(4, 6)):
    opened.append((spec.name, split, data_dir))
    return _ToySplit(split, size)

  spec = catalog.DatasetSpec(
      name="toy_rgbd", splits=("train", "val"), roles={"target_train": "train",
                                                       "target_val": "val"},
      label_space="cityscapes19", opener=opener, features={"depth": "depth", "K": "intrinsics"})
  with catalog.DATASETS.temporary("toy_rgbd", spec):
    assert own(catalog.target_names(), "toy_rgbd") == [
        "cityscapes", "synthetic", "toy_rgbd", "voc_aug"]
    assert "toy_rgbd" not in catalog.source_names()
    splits = catalog.open_run_splits("synthetic", "toy_rgbd", data_dir="/data",
                                     options={"toy_rgbd": {"size": (6, 8)},
                                              "synthetic": SMALL})
    assert opened == [("toy_rgbd", "train", "/data"), ("toy_rgbd", "val", "/data")]
    assert splits.target_val.label_shape(0) == (6, 8)
    assert dict(splits.target_train.features) == {"depth": "depth", "K": "intrinsics"}
    # The run's space is the synthetic source's: the toy's terrain (9) is kept, truck (14)
    # would not be.
    space = catalog.run_label_space("synthetic", "toy_rgbd")
    table = catalog.label_map("toy_rgbd", space)
    assert table[9] == 9 and table[14] == 255
    with pytest.raises(ValueError, match="no TFDS builder"):
      catalog.get("toy_rgbd").builder_class()
  assert "toy_rgbd" not in catalog.DATASETS
  with pytest.raises(ValueError, match="unknown dataset 'toy_rgbd'"):
    catalog.open_role("toy_rgbd", "target_train")


def test_bad_specs_and_spaces_are_explained():
  with pytest.raises(ValueError, match="role 'source' names split 'test'"):
    catalog.DatasetSpec(name="x", splits=("train",), roles={"source": "test"},
                        label_space="cityscapes19")
  with pytest.raises(ValueError, match="reserved"):
    catalog.DatasetSpec(name="x", splits=("train",), roles={}, label_space="cityscapes19",
                        features=("label",))
  with pytest.raises(ValueError, match="needs help"):
    catalog.DatasetSpec(name="x", splits=("train",), roles={}, label_space="cityscapes19",
                        builder="m:C", finder=lambda tree: {})
  spec = catalog.DatasetSpec(name="y", splits=("train",), roles={"source": "train"},
                             label_space="cityscapes19")
  with catalog.DATASETS.temporary("x", spec):
    with pytest.raises(ValueError, match="names itself 'y'"):
      catalog.get("x")
  with pytest.raises(ValueError, match="'miou'"):
    labels.LabelSpace("s", ("a", "b"), np.zeros((2, 3)), {"other": (0,)})
  with pytest.raises(ValueError, match="not kept"):
    labels.LabelSpace("s", ("a", "b"), np.zeros((2, 3)), {"miou": (0, 1)}, kept=(0,))
  with pytest.raises(ValueError, match=r"palette must be \[2, 3\]"):
    labels.LabelSpace("s", ("a", "b"), np.zeros((3, 3)), {"miou": (0, 1)})
  indoor = labels.LabelSpace("indoor", ("wall", "floor"), np.zeros((2, 3)), {"miou": (0, 1)})
  assert indoor.table_from(labels.CITYSCAPES_19)[3] == 0  # Cityscapes "wall".
  with pytest.raises(ValueError, match="share no class"):
    labels.LabelSpace("other", ("floor",), np.zeros((1, 3)), {"miou": (0,)}).table_from(
        labels.CITYSCAPES_19)


def test_space_colours_its_own_indices():
  space = catalog.label_space("synthia16")
  ids = np.array([[9, 255]], np.uint8)  # Index 9 of the 16 is sky.
  np.testing.assert_array_equal(space.colorize(ids)[0, 0], labels.PALETTE[10])
  assert space.colorize(ids)[0, 1].tolist() == [0, 0, 0]
  np.testing.assert_array_equal(labels.colorize(ids), labels.CITYSCAPES_19.colorize(ids))
