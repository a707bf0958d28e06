"""ViewAL through the trainer: seed frames, superpixel rounds, restarts, exact resume."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ripu_jax import config_lib
from ripu_jax import train
from ripu_jax.acquisition.acquirers import ACQUIRERS
from ripu_jax.errors import ConfigError
from ripu_jax.ledger import LabelLedger
from ripu_jax.methods import viewal  # noqa: F401  (registers the datasets, objective, acquirer)
from ripu_jax.methods.viewal import datasets
from ripu_jax.methods.viewal import objective as objective_lib
from ripu_jax.methods.viewal import scoring
from ripu_jax.metrics_log import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke(variant=""):
  config = config_lib.load_config(os.path.join(ROOT, "configs", "viewal", "synthetic.py"),
                                  ",".join(["smoke"] + ([variant] if variant else [])))
  config.progress_bars = False
  config.checkpoint_every = 2
  config.keep_checkpoints = 5
  return config


def _records(workdir):
  return [r for r in read_metrics(workdir) if r["kind"] in ("train", "eval", "round")]


def _superpixels(config):
  split = datasets.ViewalSyntheticSplit(
      datasets.scenes.ViewalSyntheticConfig(**{
          k: v for k, v in config.data.viewal_synthetic.items() if k != "prepared"}),
      datasets.TRAIN)
  return [split[i]["superpixels"] for i in range(len(split))]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  config = smoke()
  workdir = str(tmp_path_factory.mktemp("viewal") / "run")
  summary = train.train_and_evaluate(config, workdir)
  return config, workdir, summary


def test_rounds_buy_whole_superpixels_after_the_seed_frames(finished_run):
  config, workdir, _ = finished_run
  trainer = train.Trainer(config, workdir)
  ledger = trainer.ledger
  trainer.close()
  superpixels = _superpixels(config)
  assert ledger.rounds_recorded == (0, 1, 2)
  seed_frames = [i for i in range(ledger.num_images) if ledger.rounds_of(i)[:1] == (0,)]
  assert seed_frames and all(ledger.labeled_mask(i).all() for i in seed_frames)
  height, width = config.data.target_size
  budget = config.viewal.budget_frames * height * width
  for round_number in (1, 2):
    bought = 0
    for index in range(ledger.num_images):
      if round_number not in ledger.rounds_of(index):
        continue
      mask = ledger.round_mask(round_number, index)
      bought += int(mask.sum())
      # A union of whole superpixels, none of them labelled before.
      for superpixel in np.unique(superpixels[index][mask]):
        assert mask[superpixels[index] == superpixel].all()
      assert not (mask & ledger.labeled_mask(index, upto=round_number - 1)).any()
    assert bought >= budget  # the last pick may overshoot


def test_the_round_restarts_training_and_the_best_model_selects(finished_run):
  config, workdir, _ = finished_run
  records = read_metrics(workdir)
  rounds = [r for r in records if r["kind"] == "round"]
  assert [r["round"] for r in rounds] == [0, 1, 2]
  trainer = train.Trainer(config, workdir)
  try:
    initial = train.build_model(config)
    # Perturb the model, then restart: the weights are the initial ones again, no best yet.
    nnx.update(trainer.state.model, jax.tree.map(lambda x: x + 1.0 if jnp.issubdtype(
        x.dtype, jnp.floating) else x, nnx.state(trainer.state.model, nnx.Param)))
    trainer.reinitialize()
    for got, want in zip(jax.tree.leaves(nnx.state(trainer.state.model, nnx.Param)),
                         jax.tree.leaves(nnx.state(initial, nnx.Param))):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert float(trainer.state.best.miou[...]) == -1.0
    # A better evaluation copies the model into best_model; a worse one does not.
    hook = objective_lib.RoundRestart(config)
    nnx.update(trainer.state.model, jax.tree.map(lambda x: x * 0.5, nnx.state(
        trainer.state.model, nnx.Param)))
    hook.after_eval(trainer, {"miou": 10.0})
    saved = [np.asarray(x) for x in jax.tree.leaves(nnx.state(trainer.state.best_model,
                                                              nnx.Param))]
    nnx.update(trainer.state.model, jax.tree.map(lambda x: x * 0.0, nnx.state(
        trainer.state.model, nnx.Param)))
    hook.after_eval(trainer, {"miou": 5.0})
    for got, want in zip(jax.tree.leaves(nnx.state(trainer.state.best_model, nnx.Param)),
                         saved):
      np.testing.assert_array_equal(np.asarray(got), want)
    assert float(trainer.state.best.miou[...]) == 10.0
  finally:
    trainer.close()


def test_resume_after_a_restart_is_exact(finished_run, tmp_path):
  config, workdir, summary = finished_run
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  # Back to the checkpoint of step 2, saved after round 1 and its restart.
  checkpoints = os.path.join(copy, "checkpoints")
  for step in os.listdir(checkpoints):
    if step.isdigit() and int(step) > 2:
      shutil.rmtree(os.path.join(checkpoints, step))
  again = train.train_and_evaluate(config, copy)
  assert _records(copy) == _records(workdir)
  assert again["miou"] == summary["miou"]


def test_bad_configs_say_what_to_change():
  config = smoke()
  config.viewal.strategy = "best"
  with pytest.raises(ConfigError, match="viewal.strategy must be one of"):
    config_lib.validate(config)
  config = smoke()
  config.viewal.mode = "fast"
  with pytest.raises(ConfigError, match="viewal.mode must be one of"):
    config_lib.validate(config)
  config = smoke()
  del config["viewal"]
  with pytest.raises(ConfigError, match="config group `viewal`"):
    ACQUIRERS.get("viewal").validate(config)


def test_a_budget_larger_than_the_pool_is_refused_before_scoring():
  from ripu_jax.methods.viewal import acquirer as acquirer_lib
  ledger = LabelLedger([(8, 10)] * 3, label_radius=0, suppress_radius=0)
  ledger.record_frame(0, 0)
  with pytest.raises(ConfigError, match="only 160 target pixels are left unlabelled"):
    acquirer_lib._check_budget(200, ledger, 2.5)


def test_a_pool_without_scenes_or_superpixels_is_refused_with_the_fix():
  from ripu_jax import sharding
  from ripu_jax.acquisition.acquirers import RoundPool
  config = smoke()
  acquirer = ACQUIRERS.get("viewal")(config)
  ledger = LabelLedger([(32, 40)] * 2, label_radius=0, suppress_radius=0)

  def batches(with_labels=False):
    del with_labels
    yield {"image": np.zeros((2, 32, 40, 3), np.float32), "index": np.arange(2),
           "label_size": np.tile((32, 40), (2, 1)), "valid": np.ones(2, bool),
           "label": np.zeros((2, 32, 40), np.uint8)}

  def pool(groups):
    return RoundPool(round_number=1, seed=0, batches=batches, num_batches=1,
                     name=lambda i: f"img{i}", predict=None, mesh=sharding.default_mesh(),
                     predict_mc=lambda *args, **kwargs: jnp.full((2, 32, 40, 9), 1 / 9),
                     groups=groups)

  with pytest.raises(ConfigError, match="has no scene ids. Use a multi-view dataset"):
    acquirer.run_round(pool(None), ledger)
  with pytest.raises(ConfigError, match="lack \\['depth', 'pose', 'intrinsics', 'superpixels'\\]"):
    acquirer.run_round(pool(np.zeros(2, np.int32)), ledger)


def test_a_schedule_buying_more_than_the_pool_is_refused_before_training(tmp_path):
  config = smoke()
  config.viewal.budget_frames = 5.0  # 2 rounds of 5 frames; 7 of the 8 frames are unlabelled
  workdir = str(tmp_path / "run")
  with pytest.raises(ConfigError, match="2 rounds of viewal.budget_frames=5.0"):
    train.train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir)


def test_rounds_read_the_datasets_coverage_table_and_check_its_shape():
  from ripu_jax import sharding
  from ripu_jax.acquisition.acquirers import RoundPool
  from ripu_jax.data import pipeline
  config = smoke()
  split = datasets.ViewalSyntheticSplit(datasets.scenes.ViewalSyntheticConfig(**{
      k: v for k, v in config.data.viewal_synthetic.items() if k != "prepared"}),
      datasets.TRAIN)
  frames = np.flatnonzero(split.scene_ids == split.scene_ids[0])[:3]
  examples = [split[int(i)] for i in frames]
  size = examples[0]["label"].shape
  batch = {"image": np.stack([pipeline.normalize_image(e["image"]) for e in examples]),
           "index": np.arange(len(frames)), "label_size": np.tile(size, (len(frames), 1)),
           "valid": np.ones(len(frames), bool),
           "label": np.stack([e["label"] for e in examples]),
           **{k: np.stack([e[k] for e in examples])
              for k in ("depth", "pose", "intrinsics", "superpixels")}}
  probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (len(frames), *size, 9)) * 3)
  num_superpixels = int(batch["superpixels"].max()) + 1
  table = np.asarray(scoring.coverage_table(batch["depth"], batch["intrinsics"], batch["pose"],
                                            batch["superpixels"], num_superpixels))
  asked = []

  def run(coverage):
    pool = RoundPool(round_number=1, seed=0, batches=lambda with_labels=False: iter([batch]),
                     num_batches=1, name=lambda i: f"img{i}", predict=None,
                     mesh=sharding.default_mesh(),
                     predict_mc=lambda *args, **kwargs: probs,
                     groups=np.zeros(len(frames), np.int32), coverage=coverage)
    ledger = LabelLedger([size] * len(frames), label_radius=0, suppress_radius=0)
    result = ACQUIRERS.get("viewal")(config).run_round(pool, ledger)
    return [record.labeled for record in result.images]

  def stored(scene, distance_threshold):
    asked.append((scene, distance_threshold))
    return table

  computed = run(None)
  read = run(stored)
  assert asked == [(0, config.viewal.distance_threshold)]
  assert computed and len(read) == len(computed)
  for a, b in zip(read, computed):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="prepare the dataset again"):
    run(lambda scene, distance_threshold: table[:, :-1, :, :-1])
