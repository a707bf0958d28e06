"""grain input pipelines: shapes, normalisation, determinism, resume, sampling, padding."""

import gc
import itertools

import grain
import numpy as np
import pytest

from ripu_jax import data
from ripu_jax.data import labels
from ripu_jax.data import pipeline
from ripu_jax.data import synthetic
from ripu_jax.data.prepare import prepare

SMALL = synthetic.SyntheticConfig(height=32, width=48, num_source_train=24, num_target_train=10,
                                  num_target_val=7)


class ListSplit:
  """An in-memory split with hand-made examples."""

  def __init__(self, examples):
    self.examples = examples

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, index):
    return self.examples[index]

  def label_shape(self, index):
    return self.examples[index]["label"].shape

  @property
  def class_presence(self):
    return np.stack([labels.class_presence(e["label"]) for e in self.examples])

  def __repr__(self):
    return f"ListSplit(n={len(self)})"


def _constant_split(count=6, height=8, width=12):
  examples = []
  for i in range(count):
    label = np.full((height, width), i % 3, np.uint8)
    label[0, 0] = 255
    examples.append({"image": np.full((height, width, 3), 40 * i, np.uint8), "label": label,
                     "name": f"img{i}"})
  return ListSplit(examples)


def _take(loader, count, state=None):
  iterator = iter(loader) if state is None else pipeline.restore_iterator(loader, state)
  return [next(iterator) for _ in range(count)]


def _assert_batches_equal(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_source_batch_shapes_and_normalisation():
  split = _constant_split()
  loader = pipeline.source_train_loader(split, batch_size=3, image_size=(4, 6), label_size=(2, 3),
                                        sampling="uniform", flip=False, seed=0)
  batch = next(iter(loader))
  assert batch["image"].shape == (3, 4, 6, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (3, 2, 3) and batch["label"].dtype == np.int32
  assert batch["index"].shape == (3,) and batch["index"].dtype == np.int32
  for row, index in enumerate(batch["index"]):
    value = 40 * int(index) / 255.0
    expected = (value - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(batch["image"][row], np.broadcast_to(expected, (4, 6, 3)),
                               rtol=1e-5, atol=1e-5)
    assert set(np.unique(batch["label"][row])) <= {int(index) % 3, 255}
  np.testing.assert_array_equal(
      pipeline.denormalize_image(batch["image"][0]),
      np.full((4, 6, 3), 40 * int(batch["index"][0]), np.uint8))


def test_same_arguments_same_batches_and_seed_matters():
  split = data.SyntheticSplit(SMALL, synthetic.SOURCE_TRAIN)

  def loader(seed):
    return pipeline.source_train_loader(split, batch_size=2, image_size=(16, 24), seed=seed)

  first, again = _take(loader(3), 3), _take(loader(3), 3)
  _assert_batches_equal(first, again)
  other = _take(loader(4), 3)
  assert any((a["index"] != b["index"]).any() for a, b in zip(first, other))


def test_resume_from_saved_iterator_state():
  split = data.SyntheticSplit(SMALL, synthetic.SOURCE_TRAIN)

  def loader():
    return pipeline.source_train_loader(split, batch_size=2, image_size=(16, 24), seed=7,
                                        sub_epoch_size=5)

  iterator = iter(loader())
  for _ in range(3):
    next(iterator)
  state = iterator.get_state()
  assert isinstance(state, bytes)
  expected = [next(iterator) for _ in range(3)]  # Crosses sub-epoch boundaries.
  _assert_batches_equal(_take(loader(), 3, state), expected)


def test_target_resume_with_masks():
  split = data.SyntheticSplit(SMALL, synthetic.TARGET_TRAIN)
  masks = _Masks(len(split), (SMALL.height, SMALL.width))

  def loader():
    return pipeline.target_train_loader(split, masks, batch_size=2, image_size=(16, 24), seed=1)

  iterator = iter(loader())
  next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(6)]  # Crosses an epoch of the 10 images.
  _assert_batches_equal(_take(loader(), 6, state), expected)


class _Masks:
  """A read-only stand-in for the trainer's label ledger."""

  def __init__(self, count, shape):
    self.masks = []
    rng = np.random.default_rng(0)
    for _ in range(count):
      mask = rng.random(shape) < 0.1
      mask.setflags(write=False)
      self.masks.append(mask)

  def __len__(self):
    return len(self.masks)

  def __getitem__(self, index):
    return self.masks[index]


def test_target_labels_only_where_labelled():
  split = _constant_split(count=4)
  masks = _Masks(4, (8, 12))
  loader = pipeline.target_train_loader(split, masks, batch_size=4, image_size=(8, 12),
                                        flip=False, seed=0)
  batch = next(iter(loader))
  for row, index in enumerate(batch["index"]):
    truth = split[int(index)]["label"]
    expected = np.where(masks[int(index)], truth, 255)
    np.testing.assert_array_equal(batch["label"][row], expected)
  with pytest.raises(ValueError, match="labeled_masks has 3 entries"):
    pipeline.target_train_loader(split, _Masks(3, (8, 12)), batch_size=2, image_size=(8, 12))
  wrong = pipeline.target_train_loader(split, _Masks(4, (4, 6)), batch_size=2, image_size=(8, 12))
  with pytest.raises(ValueError, match="full label resolution"):
    next(iter(wrong))


def test_class_balanced_sampler_oversamples_rare_class():
  rng = np.random.default_rng(0)
  presence = np.zeros((200, labels.NUM_CLASSES), bool)
  presence[:, :3] = True  # Road, sidewalk, building everywhere.
  presence[:, 13] = rng.random(200) < 0.6  # Common cars.
  presence[[5, 77, 150], 18] = True  # Bicycles in 1.5% of the images.
  sampler = pipeline.ClassBalancedSampler(presence, seed=0, sub_epoch_size=500)
  keys = sampler.record_keys(0, 2000)
  rare_share = presence[keys, 18].mean()
  assert rare_share > 0.15, rare_share  # Ten times the base rate of 0.015.
  uniform = grain.samplers.IndexSampler(200, shuffle=True, seed=0, num_epochs=None)
  uniform_keys = np.array([uniform[i].record_key for i in range(2000)])
  assert presence[uniform_keys, 18].mean() < 0.05
  # Random access: any window equals the same part of the stream; seeds are reproducible.
  np.testing.assert_array_equal(sampler.record_keys(490, 510), keys[490:510])
  again = pipeline.ClassBalancedSampler(presence, seed=0, sub_epoch_size=500)
  np.testing.assert_array_equal(again.record_keys(1200, 1300), keys[1200:1300])
  assert repr(again) == repr(sampler)
  with pytest.raises(ValueError, match="sampling='uniform'"):
    pipeline.ClassBalancedSampler(np.zeros((4, labels.NUM_CLASSES), bool))


def test_eval_padding_and_valid_mask():
  split = data.SyntheticSplit(SMALL, synthetic.TARGET_VAL)  # 7 images.
  loader = pipeline.eval_loader(split, batch_size=4, image_size=(16, 24), num_devices=2)
  batches = list(loader)
  assert len(batches) == pipeline.pass_batches(len(split), 4) == 2
  assert [b["valid"].tolist() for b in batches] == [[True] * 4, [True, True, True, False]]
  indices = np.concatenate([b["index"][b["valid"]] for b in batches])
  assert indices.tolist() == list(range(7))
  assert batches[0]["image"].shape == (4, 16, 24, 3)
  assert batches[0]["label"].shape == (4, SMALL.height, SMALL.width)  # Full resolution.
  np.testing.assert_array_equal(batches[1]["label"][2], split[6]["label"])
  with pytest.raises(ValueError, match="not divisible by the 2 devices"):
    pipeline.eval_loader(split, batch_size=3, image_size=(16, 24), num_devices=2)
  # Two processes: both get the same number of full batches, together every image once.
  seen = []
  for shard in range(2):
    options = grain.sharding.ShardOptions(shard_index=shard, shard_count=2)
    shard_batches = list(pipeline.eval_loader(split, batch_size=2, image_size=(16, 24),
                                              num_devices=1, shard_options=options))
    assert len(shard_batches) == pipeline.pass_batches(len(split), 2, options) == 2
    seen += [int(i) for b in shard_batches for i in b["index"][b["valid"]]]
  assert sorted(seen) == list(range(7))


def test_selection_pass_carries_index_and_label_size():
  split = data.SyntheticSplit(SMALL, synthetic.TARGET_TRAIN)  # 10 images.
  batches = list(pipeline.selection_loader(split, batch_size=4, image_size=(16, 24),
                                           num_devices=1))
  assert len(batches) == 3
  assert set(batches[0]) == {"image", "index", "label_size", "valid"}
  assert batches[0]["image"].shape == (4, 16, 24, 3)
  assert batches[2]["valid"].tolist() == [True, True, False, False]
  assert (batches[0]["label_size"] == [SMALL.height, SMALL.width]).all()
  assert np.concatenate([b["index"][b["valid"]] for b in batches]).tolist() == list(range(10))


def test_prepared_split_feeds_the_same_batches(tmp_path):
  prepare("synthetic", data_dir=str(tmp_path), config=SMALL)
  prepared = data.open_split("synthetic", "target_val", str(tmp_path), config=SMALL)
  generated = data.SyntheticSplit(SMALL, synthetic.TARGET_VAL)
  _assert_batches_equal(
      list(pipeline.eval_loader(prepared, batch_size=2, image_size=(16, 24), num_devices=1)),
      list(pipeline.eval_loader(generated, batch_size=2, image_size=(16, 24), num_devices=1)))
  source = data.open_split("synthetic", "source_train", str(tmp_path), config=SMALL)
  _assert_batches_equal(
      _take(pipeline.source_train_loader(source, batch_size=2, image_size=(16, 24)), 2),
      _take(pipeline.source_train_loader(data.SyntheticSplit(SMALL), batch_size=2,
                                         image_size=(16, 24)), 2))


def test_worker_processes_give_the_same_batches():
  split = data.SyntheticSplit(SMALL, synthetic.SOURCE_TRAIN)
  in_process = _take(pipeline.source_train_loader(split, batch_size=2, image_size=(16, 24),
                                                  seed=2), 3)
  loader = pipeline.source_train_loader(split, batch_size=2, image_size=(16, 24), seed=2,
                                        worker_count=1)
  iterator = iter(loader)
  try:
    _assert_batches_equal(list(itertools.islice(iterator, 3)), in_process)
  finally:
    del iterator  # Stops the worker process.
    gc.collect()


def test_eval_with_two_workers_still_full_batches():
  split = data.SyntheticSplit(SMALL, synthetic.TARGET_VAL)  # 7 images.
  batches = list(pipeline.eval_loader(split, batch_size=2, image_size=(16, 24), num_devices=1,
                                      worker_count=2))
  assert len(batches) == pipeline.pass_batches(len(split), 2, worker_count=2) == 4
  assert all(b["image"].shape[0] == 2 for b in batches)
  valid = np.concatenate([b["index"][b["valid"]] for b in batches])
  assert sorted(valid.tolist()) == list(range(7))
  gc.collect()


def test_bad_arguments_are_explained():
  split = _constant_split()
  with pytest.raises(ValueError, match="sampling must be one of"):
    pipeline.source_train_loader(split, batch_size=2, image_size=(4, 4), sampling="balanced")
  with pytest.raises(ValueError, match="image_size must be positive"):
    pipeline.source_train_loader(split, batch_size=2, image_size=(0, 4))
  with pytest.raises(ValueError, match=r"\(height, width\)"):
    pipeline.eval_loader(split, batch_size=2, image_size=4, num_devices=1)
  with pytest.raises(ValueError, match="worker_count"):
    pipeline.eval_loader(split, batch_size=2, image_size=(4, 4), num_devices=1, worker_count=-1)


@pytest.mark.parametrize("workers", [0, 2])
def test_processes_read_one_process_batches_row_for_row(workers):
  """Training batches of 2 (or 3) processes, stacked in process order, are one process's
  batches: the same images, flips and row order (dropout masks follow the row)."""
  split = data.SyntheticSplit(SMALL, synthetic.SOURCE_TRAIN)  # 24 images
  masks = [np.ones(split.label_shape(i), bool) for i in range(len(split))]

  def loaders(batch_size, options):
    return [pipeline.source_train_loader(split, batch_size=batch_size, image_size=(8, 12),
                                         sampling="class_balanced", seed=3,
                                         worker_count=workers, shard_options=options),
            pipeline.target_train_loader(split, masks, batch_size=batch_size,
                                         image_size=(8, 12), seed=3, worker_count=workers,
                                         shard_options=options)]

  batches = 5  # more than one epoch of the target stream, and each worker's several
  for processes in ((2, 3) if workers == 0 else (2,)):
    single = [_take(loader, batches) for loader in loaders(6, None)]
    shards = [[_take(loader, batches) for loader in loaders(
        6 // processes, grain.sharding.ShardOptions(shard_index=p, shard_count=processes))]
        for p in range(processes)]
    for which, one in enumerate(single):
      stacked = [{key: np.concatenate([shard[which][b][key] for shard in shards])
                  for key in one[b]} for b in range(batches)]
      _assert_batches_equal(stacked, one)
    assert len({int(i) for b in single[1] for i in b["index"]}) == len(split)
