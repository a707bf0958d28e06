"""Checkpoint checksums: damage is found on restore, skipped, moved aside and reported."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from ripu_jax import config_lib
from ripu_jax import models
from ripu_jax import optim
from ripu_jax import train
from ripu_jax.checkpoints import MANIFEST, Checkpoints, DamagedCheckpointError
from ripu_jax.ledger import LabelLedger
from ripu_jax.metrics_log import read_metrics
from ripu_jax.objectives import TrainState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_state(seed=0):
  model = models.DeepLabV2(3, blocks=(1, 1, 1, 1), width_multiplier=1 / 16,
                           rngs=nnx.Rngs(seed))
  return TrainState(model, optim.create_optimizer(model))


def host_state(state):
  return jax.tree.map(np.asarray, nnx.state(state))


def assert_states_equal(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def save_two(directory):
  """Saves steps 1 and 2 with different parameters and ledgers; returns what each held."""
  state = tiny_state()
  ledger = LabelLedger([(8, 8)], label_radius=1, suppress_radius=2)
  checkpoints = Checkpoints(directory, keep=5)
  saved = {}
  for step in (1, 2):
    nnx.update(state.model, jax.tree.map(lambda x: x + 1.0, nnx.state(state.model, nnx.Param)))
    ledger.record(step, 0, np.array([[5 * step - 5, 5 * step - 5]]))
    checkpoints.save(step, state=state, ledger=ledger, progress={"marker": step})
    saved[step] = (host_state(state), LabelLedger.from_state(ledger.state()))
  checkpoints.close()
  return saved


def files_of(folder):
  """{relative path: bytes} of every file under `folder`."""
  found = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        found[os.path.relpath(path, folder)] = f.read()
  return found


def largest_file(folder):
  sizes = {rel: len(data) for rel, data in files_of(folder).items() if rel != MANIFEST}
  return max(sizes, key=sizes.get)


def corrupt(folder):
  """Writes 4 KiB of 0x7f into the middle of the folder's largest file; returns its path."""
  rel = largest_file(folder)
  path = os.path.join(folder, rel)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b"\x7f" * 4096)
  return rel


@pytest.fixture
def warnings_seen(caplog):
  caplog.set_level(logging.WARNING)
  return lambda: "\n".join(r.getMessage() for r in caplog.records
                           if r.levelno >= logging.WARNING)


def test_save_writes_a_manifest_of_every_file(tmp_path):
  directory = str(tmp_path / "checkpoints")
  save_two(directory)
  step = os.path.join(directory, "2")
  manifest = json.load(open(os.path.join(step, MANIFEST)))
  assert manifest["step"] == 2 and manifest["algorithm"] == "sha256"
  files = files_of(step)
  assert set(manifest["files"]) == set(files) - {MANIFEST}
  assert all(manifest["files"][rel]["size"] == len(files[rel]) for rel in manifest["files"])
  assert not [name for name in os.listdir(step) if name.startswith(MANIFEST + ".tmp")]


def test_corrupted_newest_falls_back_and_is_moved_aside(tmp_path, warnings_seen):
  directory = str(tmp_path / "checkpoints")
  saved = save_two(directory)
  rel = corrupt(os.path.join(directory, "2"))
  damaged_bytes = files_of(os.path.join(directory, "2"))

  checkpoints = Checkpoints(directory, keep=5)
  state = tiny_state(seed=1)
  ledger, progress = checkpoints.restore(state=state)
  assert progress["marker"] == 1 and progress["step"] == 1
  assert_states_equal(host_state(state), saved[1][0])
  assert ledger == saved[1][1]
  assert checkpoints.restore_ledger() == saved[1][1]
  text = warnings_seen()
  assert f"{directory}/2 is damaged: checksum mismatch in {rel}" in text
  assert "; using step 1 instead" in text
  moved = str(tmp_path / "checkpoints_damaged" / "2")
  assert f"Moved it to {moved}" in text
  assert files_of(moved) == damaged_bytes
  assert checkpoints.latest_step() == 1 and checkpoints.all_steps() == [1]
  # The run goes on: step 2 is saved again, and its next damage is moved beside the first.
  checkpoints.save(2, state=state, ledger=ledger, progress={"marker": 2})
  assert checkpoints.all_steps() == [1, 2]
  checkpoints.close()
  corrupt(os.path.join(directory, "2"))
  assert Checkpoints(directory).restore(state=tiny_state())[1]["marker"] == 1
  assert os.path.isdir(moved + ".1") and files_of(moved) == damaged_bytes


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_manifest_missing_or_truncated(tmp_path, warnings_seen, damage):
  directory = str(tmp_path / "checkpoints")
  save_two(directory)
  manifest = os.path.join(directory, "2", MANIFEST)
  if damage == "missing":  # the process stopped between orbax's commit and the manifest
    os.remove(manifest)
  else:
    with open(manifest, "r+") as f:
      f.truncate(os.path.getsize(manifest) // 2)
  checkpoints = Checkpoints(directory)
  assert checkpoints.restore(state=tiny_state())[1]["marker"] == 1
  text = warnings_seen()
  assert f"{directory}/2 is damaged: " in text
  assert (f"it has no {MANIFEST} although older checkpoints have one" in text
          if damage == "missing" else f"its {MANIFEST} is unreadable" in text)
  assert os.path.isdir(tmp_path / "checkpoints_damaged" / "2")
  assert checkpoints.latest_step() == 1


def test_garbage_orbax_metadata_is_caught_by_the_manifest(tmp_path, warnings_seen):
  directory = str(tmp_path / "checkpoints")
  save_two(directory)
  with open(os.path.join(directory, "2", "state", "_METADATA"), "w") as f:
    f.write("{not json")
  assert Checkpoints(directory).restore(state=tiny_state())[1]["marker"] == 1
  assert "state/_METADATA has 9 bytes" in warnings_seen()


def test_all_damaged_starts_fresh_and_says_so(tmp_path, warnings_seen):
  directory = str(tmp_path / "checkpoints")
  save_two(directory)
  for step in ("1", "2"):
    corrupt(os.path.join(directory, step))
  checkpoints = Checkpoints(directory)
  assert checkpoints.restore(state=tiny_state()) is None
  damaged = str(tmp_path / "checkpoints_damaged")
  assert f"no intact checkpoint in {directory}: all 2 were damaged (step 2: " in warnings_seen()
  assert f"moved them to {damaged}; starting from scratch" in warnings_seen()
  assert sorted(os.listdir(damaged)) == ["1", "2"]
  assert checkpoints.latest_step() is None
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    checkpoints.restore_ledger()


def test_checkpoints_without_any_manifest_are_restored_unverified(tmp_path, warnings_seen):
  """Checkpoints saved before checksums existed still resume, with a warning."""
  directory = str(tmp_path / "checkpoints")
  saved = save_two(directory)
  for step in ("1", "2"):
    os.remove(os.path.join(directory, step, MANIFEST))
  state = tiny_state(seed=1)
  assert Checkpoints(directory).restore(state=state)[1]["marker"] == 2
  assert_states_equal(host_state(state), saved[2][0])
  assert f"{directory}/2 has no {MANIFEST}" in warnings_seen()
  # Without a manifest, metadata orbax cannot read still makes a checkpoint damaged.
  with open(os.path.join(directory, "2", "ledger", "_METADATA"), "w") as f:
    f.write("{not json")
  assert Checkpoints(directory).restore(state=tiny_state())[1]["marker"] == 1
  assert "orbax could not read it" in warnings_seen()


def tree_listing(root):
  return sorted((os.path.relpath(os.path.join(r, n), root), os.stat(os.path.join(r, n)).st_size,
                 os.stat(os.path.join(r, n)).st_mtime_ns)
                for r, dirs, names in os.walk(root) for n in names + dirs)


def test_read_only_falls_back_without_touching_the_run(tmp_path, warnings_seen):
  directory = str(tmp_path / "other_run" / "checkpoints")
  saved = save_two(directory)
  corrupt(os.path.join(directory, "2"))
  before = tree_listing(tmp_path)
  checkpoints = Checkpoints(directory, read_only=True)
  model = tiny_state(seed=1).model
  assert checkpoints.restore_model(model) == 1
  assert_states_equal(jax.tree.map(np.asarray, nnx.state(model)), saved[1][0]["model"])
  assert f"{directory}/2 is damaged: checksum mismatch in" in warnings_seen()
  assert "Left it in place; using step 1 instead" in warnings_seen()
  assert checkpoints.restore_ledger() == saved[1][1]
  with pytest.raises(DamagedCheckpointError, match=f"{directory}/2 is damaged: checksum"):
    checkpoints.restore_model(model, step=2)
  with pytest.raises(RuntimeError, match="read_only=True.*cannot save"):
    checkpoints.save(3, state=tiny_state(), ledger=saved[1][1], progress={})
  checkpoints.close()
  # restore_ledger on a writable Checkpoints does not move anything either.
  assert Checkpoints(directory).restore_ledger() == saved[1][1]
  assert tree_listing(tmp_path) == before
  corrupt(os.path.join(directory, "1"))
  with pytest.raises(DamagedCheckpointError,
                     match=r"every checkpoint in .* is damaged \(step 2: checksum"):
    Checkpoints(directory, read_only=True).restore_model(model)


def test_read_only_on_a_missing_folder_creates_nothing(tmp_path):
  directory = tmp_path / "nowhere" / "checkpoints"
  with pytest.raises(FileNotFoundError, match="does not exist.*workdir of a run"):
    Checkpoints(str(directory), read_only=True)
  assert not (tmp_path / "nowhere").exists()


def smoke_config():
  config = config_lib.load_config(os.path.join(ROOT, "configs", "demo.py"), "smoke")
  config.num_steps = 10
  config.checkpoint_every = 3
  config.active.round_steps = (2, 5, 8)
  config.progress_bars = False
  return config


def flat(record, prefix=""):
  out = {}
  for key, value in record.items():
    if isinstance(value, dict):
      out.update(flat(value, f"{prefix}{key}/"))
    else:
      out[prefix + key] = value
  return out


def test_corrupted_newest_checkpoint_reruns_to_the_same_result(tmp_path, warnings_seen):
  reference = str(tmp_path / "reference")
  train.train_and_evaluate(smoke_config(), reference)
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  directory = os.path.join(workdir, "checkpoints")
  assert Checkpoints(directory, read_only=True).all_steps() == [9, 10]
  corrupt(os.path.join(directory, "10"))
  os.remove(os.path.join(workdir, "final.json"))

  train.train_and_evaluate(smoke_config(), workdir)
  assert f"{directory}/10 is damaged: checksum mismatch" in warnings_seen()
  assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", "10"))
  mine, theirs = read_metrics(workdir), read_metrics(reference)
  assert [(r["step"], r["kind"]) for r in mine] == [(r["step"], r["kind"]) for r in theirs]
  for a, b in zip(mine, theirs):
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    for key in a:
      if isinstance(a[key], float):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
      else:
        assert a[key] == b[key], (a["step"], key)
  assert (Checkpoints(directory, read_only=True).restore_ledger()
          == Checkpoints(os.path.join(reference, "checkpoints"), read_only=True).restore_ledger())
  assert json.load(open(os.path.join(workdir, "final.json")))["step"] == 10


def test_a_checkpoint_of_another_class_count_is_one_clear_error(tmp_path):
  """E.g. a selector or model saved with 16 classes restored into a 19-class config."""
  from ripu_jax import errors  # pylint: disable=g-import-not-at-top
  from ripu_jax import models as models_lib  # pylint: disable=g-import-not-at-top
  from ripu_jax.objectives import TrainState  # pylint: disable=g-import-not-at-top
  from ripu_jax import optim as optim_lib  # pylint: disable=g-import-not-at-top
  from ripu_jax.ledger import LabelLedger as Ledger  # pylint: disable=g-import-not-at-top

  def state_with(classes):
    model = models_lib.DeepLabV2(classes, blocks=(1, 1, 1, 1), width_multiplier=1 / 16,
                                 rngs=nnx.Rngs(0))
    return TrainState(model, optim_lib.create_optimizer(model))

  directory = str(tmp_path / "checkpoints")
  checkpoints = Checkpoints(directory)
  checkpoints.save(1, state=state_with(3), ledger=Ledger([(8, 8)], label_radius=1,
                                                         suppress_radius=2), progress={})
  checkpoints.close()
  for restore in (lambda c: c.restore(state=state_with(4)),
                  lambda c: c.restore_model(state_with(4).model)):
    reader = Checkpoints(directory)
    with pytest.raises(errors.StateMismatchError, match="another class count"):
      restore(reader)
    reader.close()
