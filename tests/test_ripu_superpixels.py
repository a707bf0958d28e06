"""RIPU's score pooled over superpixels ("ra_superpixels"): the score against plain numpy,
the pool-wide budget, whole superpixels bought, and a run through the trainer."""

import math
import os

import numpy as np
import pytest

import acquisition_oracles as oracle
from ripu_jax import config_lib
from ripu_jax import sharding
from ripu_jax import train
from ripu_jax.acquisition.acquirers import ACQUIRERS, RoundPool
from ripu_jax.data import pipeline
from ripu_jax.errors import ConfigError
from ripu_jax.ledger import LabelLedger
from ripu_jax.methods.viewal import selection
from ripu_jax.methods.viewal import superpixel_rounds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def oracle_scores(logits, superpixels):
  """{superpixel id: RIPU's score over it} for one image at the label size, in numpy."""
  num_classes = logits.shape[-1]
  entropy = oracle.pixel_entropy(logits)
  label = oracle.softmax(logits).argmax(-1)
  out = {}
  for s in np.unique(superpixels):
    inside = superpixels == s
    q = np.bincount(label[inside], minlength=num_classes) / inside.sum()
    impurity = -(q * np.log(q + oracle.EPS)).sum() / math.log(num_classes)
    out[int(s)] = impurity * entropy[inside].mean() / math.log(num_classes)
  return out


@pytest.mark.parametrize("input_size", [None, (8, 12)])
def test_scores_match_numpy_per_superpixel(input_size):
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(2, 4, 6, 5)) * 2).astype(np.float32)
  label_size = (13, 17)
  superpixels = rng.integers(0, 9, size=(2, *label_size))
  superpixels[superpixels == 4] = 3  # id 4 absent
  score, sizes = superpixel_rounds.superpixel_scores(logits, superpixels,
                                                     label_size=label_size,
                                                     input_size=input_size)
  assert score.shape == sizes.shape == (2, 9)
  for b in range(2):
    upsampled = logits[b]
    if input_size is not None:
      upsampled = oracle.bilinear_align_corners(upsampled, *input_size)
    upsampled = oracle.bilinear_align_corners(upsampled, *label_size)
    want = oracle_scores(upsampled, superpixels[b])
    assert score[b, 4] == -np.inf and sizes[b, 4] == 0
    for s, value in want.items():
      np.testing.assert_allclose(score[b, s], value, rtol=1e-4, atol=1e-6)
      assert sizes[b, s] == (superpixels[b] == s).sum()


def test_superpixel_scores_reject_ids_off_the_label_grid():
  with pytest.raises(ValueError, match="label size"):
    superpixel_rounds.superpixel_scores(np.zeros((1, 4, 4, 3), np.float32),
                                        np.zeros((1, 5, 5), np.int32), label_size=(4, 4))
  with pytest.raises(ValueError, match=">= 0"):
    superpixel_rounds.superpixel_scores(np.zeros((1, 4, 4, 3), np.float32),
                                        -np.ones((1, 4, 4), np.int32))


def test_take_in_score_order_stops_at_the_superpixel_reaching_the_budget():
  scores = np.array([0.5, 0.9, 0.5, 0.1])
  sizes = np.array([10, 4, 3, 50])
  np.testing.assert_array_equal(selection.take_in_score_order(scores, sizes, 4), [1])
  np.testing.assert_array_equal(selection.take_in_score_order(scores, sizes, 5),
                                [1, 0])  # ties: lower index first
  np.testing.assert_array_equal(selection.take_in_score_order(scores, sizes, 17),
                                [1, 0, 2])


def _config(ratio=0.1):
  config = config_lib.base_config()
  config.num_steps, config.active.round_steps = 10, (0, 5)
  config.active.update(kind="ra_superpixels", strategy="ripu", ratio=ratio, batch_size=2,
                       superpixel_area=20)
  return config


def _pool(round_number, images, logits, features=None):
  def batches(with_labels=False):
    del with_labels
    for start in range(0, len(images), 2):
      rows = slice(start, start + 2)
      count = len(images[rows])
      batch = {"image": images[rows], "index": np.arange(start, start + count),
               "label_size": np.tile(images.shape[1:3], (count, 1)),
               "valid": np.ones(count, bool)}
      batch.update({k: v[rows] for k, v in (features or {}).items()})
      yield batch

  def predict(batch_images, outputs, network="model"):
    del outputs, network
    for start in range(0, len(images), 2):
      if np.array_equal(batch_images, images[start:start + 2]):
        return {"logits": logits[start:start + 2]}
    raise AssertionError("unknown batch")

  return RoundPool(round_number=round_number, seed=0, batches=batches,
                   num_batches=-(-len(images) // 2), name=lambda i: f"img{i}",
                   predict=predict, mesh=sharding.default_mesh(), num_overlays=1)


def _pool_data(rng, count=4, size=(24, 32)):
  pixels = rng.integers(0, 256, size=(count, *size, 3)).astype(np.uint8)
  pixels[:, :, size[1] // 2:] //= 3  # two halves the superpixels follow
  images = pipeline.normalize_image(pixels)
  logits = (rng.normal(size=(count, *size, 4)) * 2).astype(np.float32)
  return images, logits


def test_a_round_buys_the_pools_best_superpixels_whole_up_to_the_budget():
  rng = np.random.default_rng(1)
  images, logits = _pool_data(rng)
  config = _config()
  acquirer = ACQUIRERS.get("ra_superpixels")(config)
  size = images.shape[1:3]
  ledger = LabelLedger([size] * len(images), label_radius=0, suppress_radius=0)
  superpixels = np.stack([superpixel_rounds.seeds_of_image(image, size, 20)
                          for image in images])
  budget = math.ceil(len(images) * size[0] * size[1] * 0.1 / 2)

  bought = []
  for round_number in (1, 2):
    result = acquirer.run_round(_pool(round_number, images, logits), ledger)
    assert result.unit == "superpixels" and len(result.overlays) == 1
    this_round = set()
    for record in result.images:
      ids = np.unique(superpixels[record.index][record.labeled])
      # whole superpixels only
      np.testing.assert_array_equal(np.isin(superpixels[record.index], ids), record.labeled)
      this_round |= {(record.index, int(s)) for s in ids}
    assert result.count == len(this_round) and not this_round & set(bought)
    pixels = sum(int(r.labeled.sum()) for r in result.images)
    largest = max(int((superpixels[i] == s).sum()) for i, s in this_round)
    assert budget <= pixels < budget + largest
    # The bought ones are the best available by the numpy score.
    table = {(i, s): v for i in range(len(images))
             for s, v in oracle_scores(logits[i], superpixels[i]).items()
             if (i, s) not in bought}
    ranked = sorted(table, key=lambda key: -table[key])
    assert set(ranked[:len(this_round)]) == this_round
    bought += sorted(this_round)
  assert ledger.labeled_pixels() >= 2 * budget


def test_a_dataset_with_superpixels_is_read_not_segmented_again():
  rng = np.random.default_rng(2)
  images, logits = _pool_data(rng, count=2, size=(8, 10))
  given = np.zeros((2, 8, 10), np.int32)
  given[:, :, 5:] = 1  # two superpixels per image: left and right halves
  acquirer = ACQUIRERS.get("ra_superpixels")(_config(ratio=0.3))
  ledger = LabelLedger([(8, 10)] * 2, label_radius=0, suppress_radius=0)
  result = acquirer.run_round(_pool(1, images, logits, {"superpixels": given}), ledger)
  for record in result.images:
    for half in (slice(0, 5), slice(5, 10)):
      assert record.labeled[:, half].all() or not record.labeled[:, half].any()
  assert ledger.labeled_pixels() == 40  # budget 24 pixels: one half of 40 suffices


def test_a_budget_larger_than_the_unlabelled_pool_is_refused():
  rng = np.random.default_rng(3)
  images, logits = _pool_data(rng, count=2, size=(8, 10))
  acquirer = ACQUIRERS.get("ra_superpixels")(_config(ratio=1.0))
  ledger = LabelLedger([(8, 10)] * 2, label_radius=0, suppress_radius=0)
  ledger.record_mask(0, 0, np.ones((8, 10), bool))
  ledger.record_mask(0, 1, np.arange(10) < 5 + np.zeros((8, 1)))  # 40 left, 80 per round
  with pytest.raises(ConfigError, match="unlabelled pixels are left"):
    acquirer.run_round(_pool(1, images, logits), ledger)


@pytest.mark.parametrize("field, value, match", [
    ("strategy", "entropy", "must be 'ripu'"),
    ("ratio", 0.0, "active.ratio"),
    ("superpixel_area", 0, "superpixel_area"),
])
def test_impossible_configs_are_refused(field, value, match):
  config = _config()
  config.active[field] = value
  with pytest.raises(ConfigError, match=match):
    ACQUIRERS.get("ra_superpixels").validate(config)


def test_the_demo_runs_with_superpixel_rounds(tmp_path):
  config = config_lib.load_config(os.path.join(ROOT, "configs", "demo.py"), "smoke")
  config.plugins = ("ripu_jax.methods.viewal",)
  config.active.kind = "ra_superpixels"
  config.progress_bars = False
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  trainer = train.Trainer(config, str(tmp_path / "run"))
  fraction = trainer.ledger.labeled_fraction()
  trainer.close()
  assert summary is not None
  assert config.active.ratio <= fraction < 2 * config.active.ratio


def test_take_in_score_order_on_a_frame_table_is_score_then_frame_then_superpixel():
  # ViewAL's baselines take (frame, superpixel) candidates this way: a plain sort by
  # descending score, then frame, then superpixel, cut where the sizes reach the budget.
  rng = np.random.default_rng(4)
  scores = rng.integers(0, 4, size=(5, 7)).astype(np.float32)  # many ties
  sizes = rng.integers(1, 30, size=(5, 7))
  rows, columns = np.nonzero(rng.random((5, 7)) > 0.3)
  for budget in (1, 50, 200, int(sizes[rows, columns].sum())):
    got = selection.take_in_score_order(scores[rows, columns], sizes[rows, columns], budget)
    want = sorted(zip(rows, columns), key=lambda rc: (-scores[rc], rc[0], rc[1]))
    spent, count = 0, 0
    while spent < budget:
      spent += sizes[want[count]]
      count += 1
    assert [(int(rows[i]), int(columns[i])) for i in got] == [
        (int(r), int(c)) for r, c in want[:count]]
