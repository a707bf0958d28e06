"""ELN's objective: the stages by step, the teacher's copy and EMA, the per-epoch student
reset, the keep mask the step uses, and the bad-input errors; oracles in plain numpy."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ripu_jax import config_lib
from ripu_jax import models
from ripu_jax import objectives
from ripu_jax import train
from ripu_jax.errors import ConfigError
from ripu_jax.methods.eln import losses
from ripu_jax.methods.eln.objective import ElnObjective

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "eln", "demo_semi.py")


def _config(**eln):
  config = config_lib.load_config(DEMO, "smoke")
  config.progress_bars = False
  config.eln.update(**eln)
  return config


def _state(config):
  objective = ElnObjective(config)
  model = models.build_model(config.model.name, config_lib.num_classes(config),
                             rngs=nnx.Rngs(0), **objectives.model_kwargs(config))
  return objective, objective.build_state(model)


def _batch(seed, size=(32, 64), batch=2, num_classes=12):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch, *size, 3)).astype(np.float32)
  labels = rng.integers(0, num_classes, size=(batch, *size)).astype(np.int32)
  labels[:, :4] = 255
  weak = rng.normal(size=(batch, *size, 3)).astype(np.float32)
  return {"labelled_images": jnp.asarray(images), "labelled_labels": jnp.asarray(labels),
          "unlabelled_images": jnp.asarray(weak),
          "unlabelled_strong_image": jnp.asarray(weak * 0.5 + 0.1),
          "unlabelled_labels": jnp.full((batch, *size), 255, jnp.int32)}


def _numpy(module, kinds=(nnx.Param, nnx.BatchStat)):
  return jax.tree.map(lambda x: np.array(x, np.float64), nnx.state(module, kinds))


def _parts(state, network):
  return {part: _numpy(getattr(getattr(state, network), part)) for part in ("backbone", "head")}


def _assert_tree(got, want, **tolerance):
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, **tolerance), got, want)


def _changed(before, after):
  return any(not np.array_equal(b, a) for b, a in
             zip(jax.tree.leaves(before), jax.tree.leaves(after)))


def test_stages_teacher_copy_ema_and_student_reset():
  config = _config(aux_from=1, self_training_from=2, epoch_steps=1, teacher_decay=0.9)
  config.optim.base_lr = 0.0  # the student stands still: its reset is then exact to check
  objective, state = _state(config)
  assert [objective.stage(s) for s in range(4)] == [1, 2, 3, 3]
  step = objective.make_step()
  batch = _batch(0)
  decay = config.eln.teacher_decay

  # Stage 1: only the student's supervised loss; the ELN and the teacher stay as they are.
  eln_before, teacher_before = _numpy(state.eln), _parts(state, "teacher")
  metrics = step(state, batch)
  assert float(metrics["stage"]) == 1 and float(metrics["eln"]) == 0.0
  assert not _changed(eln_before, _numpy(state.eln))
  assert not _changed(teacher_before, _parts(state, "teacher"))

  # Stage 2: the ELN learns, the teacher still waits.
  metrics = step(state, batch)
  assert float(metrics["stage"]) == 2 and float(metrics["eln"]) > 0
  assert _changed(eln_before, _numpy(state.eln))
  assert not _changed(teacher_before, _parts(state, "teacher"))

  # First stage-3 step: teacher <- student, then the EMA with the updated student
  # (batch statistics too: the student's forward pass moved them).
  student_before = _parts(state, "model")
  metrics = step(state, batch)
  assert float(metrics["stage"]) == 3 and float(metrics["pseudo"]) > 0
  student_after = _parts(state, "model")
  want = jax.tree.map(lambda b, a: decay * b + (1 - decay) * a, student_before, student_after)
  _assert_tree(_parts(state, "teacher"), want, rtol=1e-5, atol=1e-6)
  assert _changed(student_before, student_after)  # batch statistics moved

  # An epoch later: the student restarts from a (here perturbed) teacher before its step.
  noise = jax.tree.map(lambda x: x + 0.01, nnx.state(state.teacher, nnx.Param))
  nnx.update(state.teacher, noise)
  teacher_before = _parts(state, "teacher")
  snapshot = nnx.clone(state)  # with its own buffers: the step donates the state's
  nnx.update(snapshot, jax.tree.map(jnp.copy, nnx.state(snapshot)))
  metrics = step(state, batch)
  student_after = _parts(state, "model")
  for part in ("backbone", "head"):  # lr 0: the parameters are exactly the teacher's
    params_after = _numpy(getattr(state.model, part), nnx.Param)
    params_teacher = _numpy(getattr(snapshot.teacher, part), nnx.Param)
    _assert_tree(params_after, params_teacher, rtol=0, atol=0)
  want = jax.tree.map(lambda t, s: decay * t + (1 - decay) * s, teacher_before, student_after)
  _assert_tree(_parts(state, "teacher"), want, rtol=1e-5, atol=1e-6)

  # The keep mask of that step: the ELN (eval mode) on the teacher's weak-view logits.
  teacher, network = snapshot.teacher, snapshot.eln
  teacher.eval()
  network.eval()
  logits = teacher(batch["unlabelled_images"])
  keep = jax.nn.sigmoid(network(batch["unlabelled_images"], logits)) > 0.5
  np.testing.assert_allclose(float(metrics["kept_fraction"]), float(jnp.mean(keep)), atol=1e-6)


def test_without_reset_the_student_keeps_its_own_weights():
  config = _config(aux_from=0, self_training_from=0, epoch_steps=1, contrastive=False,
                   reset_student_each_epoch=False)
  config.optim.base_lr = 0.0
  objective, state = _state(config)
  step = objective.make_step()
  batch = _batch(1)
  step(state, batch)
  nnx.update(state.teacher, jax.tree.map(lambda x: x + 0.01,
                                         nnx.state(state.teacher, nnx.Param)))
  before = {part: _numpy(getattr(state.model, part), nnx.Param) for part in ("backbone", "head")}
  metrics = step(state, batch)
  after = {part: _numpy(getattr(state.model, part), nnx.Param) for part in ("backbone", "head")}
  _assert_tree(after, before, rtol=0, atol=0)
  assert float(metrics["contrastive"]) == 0.0


@pytest.mark.parametrize("field, value, match", [
    ("eln.teacher_decay", 1.0, r"eln.teacher_decay must lie in \(0, 1\)"),
    ("eln.teacher_decay", 0.0, r"eln.teacher_decay must lie in \(0, 1\)"),
    ("eln.aux_from", 10, "eln.aux_from <= eln.self_training_from"),
    ("active.labelled_fraction", 1.0, r"active.labelled_fraction must lie in \(0, 1\)"),
    ("active.labelled_fraction", 0.0, r"active.labelled_fraction must lie in \(0, 1\)"),
    ("eln.aux_gate", "pixel", "eln.aux_gate must be one of"),
])
def test_bad_config_names_the_field(field, value, match):
  config = _config()
  group, name = field.split(".")
  config[group][name] = value
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(config)


def test_split_list_with_unknown_images_is_refused_before_the_workdir_exists(tmp_path):
  listed = tmp_path / "labelled.txt"
  listed.write_text("target_train_00001\nleftImg8bit/train/x/frankfurt_000000_000294_"
                    "leftImg8bit.png gtFine/x.png\n")
  config = _config()
  config.active.labelled_list = str(listed)
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match=r"names 1 image\(s\).*frankfurt_000000_000294.*"
                                        r"named like \['target_train_00000'"):
    train.Trainer(config, str(workdir))
  assert not workdir.exists()
  config.active.labelled_list = str(tmp_path / "missing.txt")
  with pytest.raises(ConfigError, match="does not exist"):
    train.Trainer(config, str(workdir))


def test_split_from_a_list_file_and_from_a_seeded_fraction(tmp_path):
  config = _config()
  config.num_steps = 1
  listed = tmp_path / "labelled.txt"
  listed.write_text("# the labelled images\ntarget_train_00003\n\ntarget_train_00001.png\n")
  config.active.labelled_list = str(listed)
  trainer = train.Trainer(config, str(tmp_path / "listed"))
  try:
    assert [i for i in range(4) if trainer.ledger.rounds_of(i)] == [1, 3]
    # The two streams: the labelled images with their labels, the others without.
    for _ in range(2):
      labelled = next(trainer.iterators["labelled"])
      unlabelled = next(trainer.iterators["unlabelled"])
      assert set(labelled["index"].tolist()) <= {1, 3}
      assert set(unlabelled["index"].tolist()) <= {0, 2}
      assert (labelled["label"] != 255).any() and (unlabelled["label"] == 255).all()
      assert unlabelled["strong_image"].shape == unlabelled["image"].shape
  finally:
    trainer.close()
  exported = tmp_path / "listed" / "rounds" / "0" / "picks.json"
  assert "target_train_00003" in exported.read_text()
  # A seeded fraction: floor(fraction x pool), the same for the same seed.
  from ripu_jax.acquisition.acquirers import LabelledSplit  # pylint: disable=g-import-not-at-top
  config.active.labelled_list = ""
  config.active.labelled_fraction = 0.125
  split = LabelledSplit(config).labelled_indices(2975, lambda i: f"img{i}")
  assert len(split) == 371 and len(set(split.tolist())) == 371
  np.testing.assert_array_equal(split, LabelledSplit(config).labelled_indices(
      2975, lambda i: f"img{i}"))
  config.seed = 1
  assert not np.array_equal(split, LabelledSplit(config).labelled_indices(
      2975, lambda i: f"img{i}"))
