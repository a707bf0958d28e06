"""The ELN stage after RIPU ("ripu_eln"): RIPU's step until the stage, the continuation of a
finished RIPU run, and the errors for runs that cannot be continued."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ripu_jax import config_lib
from ripu_jax import models
from ripu_jax import objectives
from ripu_jax import train
from ripu_jax.checkpoints import Checkpoints
from ripu_jax.errors import ConfigError, MissingFileError
from ripu_jax.metrics_log import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name="eln/demo_ripu_eln", **changes):
  config = config_lib.load_config(os.path.join(ROOT, "configs", name + ".py"), "smoke")
  config.progress_bars = False
  for key, value in changes.items():
    group, _, field = key.rpartition(".")
    (config[group] if group else config)[field] = value
  return config


def _batch(seed, size=(32, 64), num_classes=19):
  rng = np.random.default_rng(seed)
  target = np.full((1, *size), 255, np.int32)
  target[:, 5:9, 10:20] = rng.integers(0, num_classes, (1, 4, 10))
  return {"source_images": jnp.asarray(rng.normal(size=(1, *size, 3)), jnp.float32),
          "source_labels": jnp.asarray(rng.integers(0, num_classes, (1, *size)), jnp.int32),
          "target_images": jnp.asarray(rng.normal(size=(1, *size, 3)), jnp.float32),
          "target_labels": jnp.asarray(target),
          "target_strong_image": jnp.asarray(rng.normal(size=(1, *size, 3)), jnp.float32)}


def _model_params(state):
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(state.model, nnx.Param))]


def test_before_the_stage_the_step_is_ripus():
  config = _config()
  config.eln.update(aux_from=5, self_training_from=5)
  states = []
  for name in ("ripu", "ripu_eln"):
    objective = objectives.OBJECTIVES.get(name)(config)
    model = models.build_model(config.model.name, config_lib.num_classes(config),
                               rngs=nnx.Rngs(0), **objectives.model_kwargs(config))
    state = objective.build_state(model)
    step = objective.make_step()
    metrics = [step(state, _batch(seed)) for seed in range(2)]
    states.append((state, metrics))
  (ripu, ripu_metrics), (eln, eln_metrics) = states
  for a, b in zip(_model_params(ripu), _model_params(eln)):  # to the bit: RIPU's own step
    np.testing.assert_array_equal(a, b)
  for a, b in zip(ripu_metrics, eln_metrics):
    for key in ("source_ce", "target_ce", "total"):
      assert float(a[key]) == float(b[key])
    assert float(b["stage"]) == 1 and float(b["eln"]) == 0


def test_continue_a_finished_ripu_run_with_the_eln_stage(tmp_path):
  ripu = _config("demo", num_steps=3)
  ripu.optim.max_iter = 8
  ripu_dir = str(tmp_path / "ripu")
  train.train_and_evaluate(ripu, ripu_dir)
  final_model = Checkpoints(os.path.join(ripu_dir, "checkpoints"), read_only=True)
  ripu_ledger = final_model.restore_ledger()
  final_model.close()

  config = _config(num_steps=5)
  config.optim.max_iter = 8
  config.eln.update(aux_from=3, self_training_from=4)
  config.train.continue_from = ripu_dir
  workdir = str(tmp_path / "eln")
  trainer = train.Trainer(config, workdir)
  try:
    assert trainer.step == 3 and trainer.ledger == ripu_ledger
    # The model and its optimizer are the RIPU run's at step 3; the ELN's networks are new.
    source = Checkpoints(os.path.join(ripu_dir, "checkpoints"), read_only=True)
    reference = train.build_model(ripu)
    source.restore_model(reference)
    source.close()
    for a, b in zip(jax.tree.leaves(nnx.state(reference, nnx.Param)),
                    jax.tree.leaves(nnx.state(trainer.state.model, nnx.Param))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(trainer.state.optimizer.step[...]) == 3
  finally:
    trainer.close()
  train.train_and_evaluate(config, workdir)
  records = read_metrics(workdir)
  stages = [r["stage"] for r in records if r["kind"] == "train"]
  assert [r["step"] for r in records if r["kind"] == "train"] == [4, 5] and stages == [2.0, 3.0]
  assert any(r["kind"] == "eln" for r in records)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["train"]["continue_from"] == ripu_dir

  # A run that did not finish cannot be continued; nor one past the teacher's start.
  os.remove(os.path.join(ripu_dir, "final.json"))
  with pytest.raises(MissingFileError, match=r"not a finished run: it stopped at step 3 "
                                             r"with rounds \[1\] recorded"):
    train.Trainer(config, str(tmp_path / "again"))
  assert not os.path.exists(tmp_path / "again")
  with open(os.path.join(ripu_dir, "final.json"), "w") as f:
    f.write("{}")
  config.eln.update(aux_from=1, self_training_from=2)
  with pytest.raises(ConfigError, match="after eln.self_training_from=2"):
    train.Trainer(config, str(tmp_path / "again"))
  config.train.continue_from = str(tmp_path / "nothing")
  with pytest.raises(MissingFileError, match="holds no checkpoint"):
    train.Trainer(config, str(tmp_path / "again"))


def test_the_stage_starts_after_the_rounds():
  config = _config()
  config.active.round_steps = (3,)
  config.eln.update(aux_from=2, self_training_from=4)
  with pytest.raises(ConfigError, match=r"eln.aux_from \(2\) comes before RIPU's last round"):
    config_lib.validate(config)


def test_semi_supervised_step_on_one_and_four_devices_agrees(tmp_path):
  """Data-parallel ELN: the batch split over 4 devices (batch statistics over all of them)
  gives the losses of one device."""
  records = {}
  for devices in (1, 4):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    workdir = str(tmp_path / f"devices{devices}")
    process = subprocess.run(
        [sys.executable, "-m", "ripu_jax.main", "--config",
         os.path.join(ROOT, "configs", "eln", "demo_semi.py") + ":smoke", "--workdir", workdir,
         "--config.progress_bars=False", "--config.num_steps=2", "--config.log_every=1",
         "--config.eln.aux_from=0", "--config.eln.self_training_from=1",
         "--config.train.batch_size=4", "--config.eval.batch_size=4",
         "--config.active.batch_size=4"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stdout + process.stderr
    records[devices] = [r for r in read_metrics(workdir) if r["kind"] == "train"]
  assert [r["stage"] for r in records[1]] == [2.0, 3.0]
  for one, four in zip(records[1], records[4]):
    for term in ("sup", "eln", "pseudo", "contrastive", "kept_fraction", "total"):
      assert one[term] == pytest.approx(four[term], rel=2e-3, abs=1e-4), term
