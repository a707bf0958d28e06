"""The trainer end to end on tiny synthetic configs: rounds, exports, resume, devices, errors."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from ripu_jax import config_lib
from ripu_jax import registry
from ripu_jax import train
from ripu_jax.checkpoints import Checkpoints
from ripu_jax.data import DatasetNotPreparedError
from ripu_jax.metrics_log import read_metrics

from tiny_runs import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))


def load_config(name, arg=None):
  return config_lib.load_config(os.path.join(ROOT, "configs", name + ".py"), arg)


def ledger_of(workdir):
  """The ledger of the latest checkpoint (the model and optimizer are not needed)."""
  return Checkpoints(os.path.join(workdir, "checkpoints")).restore_ledger()


@pytest.mark.parametrize("path", CONFIG_FILES,
                         ids=lambda p: os.path.relpath(p, os.path.join(ROOT, "configs")))
def test_every_config_loads_and_validates(path):
  name = os.path.relpath(path, os.path.join(ROOT, "configs"))[:-3]
  for arg in (None, "smoke"):
    config = load_config(name, arg)
    registry.import_plugins(config.plugins)
    config_lib.validate(config)
    assert "python -m ripu_jax.main --config configs/" + name + ".py" in open(path).read()
  if name.endswith("_ripu_eln") and not os.path.basename(name).startswith("demo"):
    real = load_config(name)  # RIPU's release run to the end of its schedule, ELN from 40k
    assert real.optim.base_lr == 2.5e-4 and real.optim.max_iter == real.num_steps == 62_500
    assert real.train.objective == "ripu_eln" and real.active.ratio == 0.022
    assert (real.eln.aux_from, real.eln.self_training_from) == (40_000, 46_000)
    assert not real.eln.eln_ignore_as_error and real.eln.teacher_decay == 0.995
  elif name.startswith("eln/") and not os.path.basename(name).startswith("demo"):
    real = load_config(name)  # ELN's semi-supervised release setting
    assert (real.optim.name, real.optim.schedule, real.optim.base_lr) == (
        "adamw", "constant", 1e-5)
    assert real.optim.head_lr_multiplier == 10 and real.optim.weight_decay == 1e-5
    assert real.eln.teacher_decay == 0.995 and real.num_steps == 500 * 266
    # (batch, supervised epochs, + ELN epochs) of the release's README per dataset.
    batch, supervised, with_eln = {"cityscapes": (4, 100, 58), "voc_aug": (6, 70, 50)}[
        real.data.target]
    assert real.train.batch_size == batch
    assert (real.eln.aux_from, real.eln.self_training_from) == (
        supervised * 266, (supervised + with_eln) * 266)
  elif name.startswith("viewal/"):
    real = load_config(name)
    if name != "viewal/synthetic":  # the release's loop (ViewAL spec, sections 6-7)
      assert (real.optim.name, real.optim.base_lr, real.optim.head_lr_multiplier) == (
          "sgd", 4e-4, 10)
      assert real.optim.momentum == 0.9 and real.optim.weight_decay == 5e-4
      assert real.train.batch_size == 6 and tuple(real.data.target_size) == (240, 320)
      assert real.viewal.budget_frames == 1500 and real.viewal.passes == 20
      assert real.num_steps == 7 * real.active.round_steps[0]
      assert len(real.active.round_steps) == 6
  elif not os.path.basename(name).startswith("demo"):
    real = load_config(name)
    assert real.optim.base_lr == 2.5e-4 and real.optim.max_iter == 62_500
    assert real.num_steps == 40_000 and real.train.batch_size == 2
    assert tuple(real.data.target_size) == (640, 1280)


def test_release_settings_per_config():
  assert load_config("synthia").active.ratio == 0.022
  assert load_config("gtav_v3plus").active.ratio == 0.05
  assert load_config("gtav_v3plus").model.name == "deeplabv3plus"
  pa = load_config("synthia_pa")
  assert (pa.active.kind, pa.active.pixels, pa.active.radius) == ("pa", 40, 32)
  free = load_config("gtav_source_free")
  assert free.train.objective == "source_free"
  assert tuple(free.active.round_steps) == (0, 2_000, 4_000, 6_000, 8_000)
  assert load_config("gtav_source_only").active.kind == "none"
  assert set(config_lib.class_sets(load_config("synthia"))) == {"miou", "miou_13"}
  # The release's network on SYNTHIA has 16 outputs; its frozen BN has no epsilon.
  assert config_lib.num_classes(load_config("synthia")) == 16
  assert config_lib.num_classes(load_config("synthia_source_free")) == 16
  assert config_lib.num_classes(load_config("gtav")) == 19
  assert load_config("gtav").model.kwargs.bn_epsilon == 0.0
  assert "bn_epsilon" not in load_config("demo").model.kwargs


@pytest.mark.parametrize("field, value, message", [
    ("active.ratio", 0.0, "active.ratio"),
    ("active.round_steps", (4, 2), "increasing"),
    ("active.round_steps", (2, 50), "before num_steps"),
    ("active.strategy", "nope", "active.strategy"),
    ("active.kind", "regions", "active.kind"),
    ("data.target_size", (0, 10), "data.target_size"),
    ("train.objective", "other", "train.objective"),
    ("num_steps", 0, "num_steps"),
])
def test_bad_config_values_are_named(field, value, message):
  config = tiny_config()
  group, _, name = field.rpartition(".")
  (config[group] if group else config)[name] = value
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, "/nonexistent/never-created")


def test_batch_not_divisible_by_devices(tmp_path, monkeypatch):
  monkeypatch.setattr(train.sharding, "default_mesh",
                      lambda: type("Mesh", (), {"size": 3, "shape": {"data": 3}})())
  with pytest.raises(ValueError, match="not divisible by the 3 devices"):
    train.Trainer(tiny_config(), str(tmp_path))


def test_missing_data_says_how_to_prepare(tmp_path):
  config = load_config("gtav", "smoke")
  config.data.source = "gtav"
  config.data.data_dir = str(tmp_path / "no-data")
  with pytest.raises(DatasetNotPreparedError) as error:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  text = str(error.value)
  assert "python -m ripu_jax.data.prepare --dataset gtav" in text
  assert "configs/demo.py" in text


def test_missing_pretrained_weights(tmp_path):
  config = tiny_config()
  config.model.pretrained = str(tmp_path / "resnet101.npz")
  with pytest.raises(FileNotFoundError, match="convert_torchvision_resnet"):
    train.Trainer(config, str(tmp_path / "run"))
  config.model.name = "deeplabv3plus_mobilenet"
  config.model.kwargs = ml_collections.ConfigDict(dict(width_multiplier=0.25, channels=16,
                                                       low_channels=8))
  with pytest.raises(FileNotFoundError, match="ImageNet mobilenet_v2 .*with "
                     "scripts/convert_torchvision_mobilenet.py.*pretrained='' to start from "
                     "random weights"):
    train.build_model(config)


def test_smoke_run_rounds_exports_metrics_and_resume(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  config = tiny_config()
  summary = train.train_and_evaluate(config, workdir)
  records = read_metrics(workdir)
  evals = [r for r in records if r["kind"] == "eval"]
  rounds = [r for r in records if r["kind"] == "round"]
  trains = [r for r in records if r["kind"] == "train"]
  # An eval before every round and one at the end, each with the labelled fraction so far.
  assert [r["step"] for r in evals] == [2, 5, 8, 10]
  assert [r["round"] for r in rounds] == [1, 2, 3]
  assert [r["step"] for r in trains] == [2, 4, 6, 8, 10]
  assert {"source_ce", "target_ce", "local_consistency", "negative_learning", "total",
          "learning_rate"} <= set(trains[0])
  assert trains[0]["target_ce"] == 0.0 and trains[-1]["target_ce"] > 0.0
  assert summary["miou"] == evals[-1]["miou"] and set(summary["iou"]) >= {"road", "car"}
  # Budget: 2.2% over 3 rounds of 3x3 regions, never overlapping.
  ledger = ledger_of(workdir)
  assert ledger.rounds_recorded == (1, 2, 3)
  height, width = config.data.synthetic.height, config.data.synthetic.width
  per_round = -(-height * width * config.active.ratio / 3 // 9)
  assert np.all([len(ledger.image_picks(i)) == 3 * per_round for i in range(4)])
  assert ledger.labeled_fraction() == pytest.approx(3 * per_round * 9 / (height * width),
                                                    rel=0.2)
  assert evals[-1]["labelled_fraction"] == pytest.approx(ledger.labeled_fraction())
  # Exports for annotators: per round a mask per image and the picks, plus overlays.
  for number in (1, 2, 3):
    directory = os.path.join(workdir, "rounds", str(number))
    picks = json.load(open(os.path.join(directory, "picks.json")))
    assert picks["round"] == number and len(picks["images"]) == 4
    assert len(glob.glob(os.path.join(directory, "masks", "*.png"))) == 4
    assert len(glob.glob(os.path.join(directory, "overlays", "*.png"))) == 1
    from PIL import Image
    entry = picks["images"][0]
    mask = np.asarray(Image.open(os.path.join(directory, "masks", entry["name"] + ".png")))
    from ripu_jax.ledger import square_union
    np.testing.assert_array_equal(mask > 0, square_union(mask.shape, np.array(entry["picks"]), 1))
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  # Rerunning a finished run changes nothing and reports the same result.
  capsys.readouterr()
  again = train.train_and_evaluate(config, workdir)
  assert again["miou"] == summary["miou"]
  assert (f"holds a finished run: step {config.num_steps}, mIoU {summary['miou']:.1f} on "
          "target val") in capsys.readouterr().out
  assert read_metrics(workdir) == records
  assert ledger_of(workdir) == ledger


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  trainer = train.Trainer(tiny_config(), workdir)
  real_step = trainer.train_step

  def poisoned(state, batch):
    metrics = real_step(state, batch)
    if trainer.step >= 3:
      metrics = dict(metrics, total=np.float32(np.nan))
    return metrics

  trainer.train_step = poisoned
  with pytest.raises(FloatingPointError, match=r"step 4: non-finite.*step 3"):
    trainer.run()
  trainer.close()
  assert Checkpoints(os.path.join(workdir, "checkpoints")).latest_step() == 3


def _run_main(workdir, overrides, env=None):
  args = [sys.executable, "-m", "ripu_jax.main", "--config",
          os.path.join(ROOT, "configs", "demo.py") + ":smoke", "--workdir", workdir,
          "--config.progress_bars=False"] + overrides
  return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


KILL_TEST = ["--config.num_steps=10", "--config.checkpoint_every=3",
             "--config.active.round_steps=(2,5,8)"]


def _wait_for(predicate, process, timeout=240):
  start = time.time()
  while not predicate():
    if process.poll() is not None:
      raise AssertionError(f"process ended before the kill point:\n{process.stdout.read()}")
    if time.time() - start > timeout:
      process.kill()
      raise AssertionError("timed out waiting for the kill point")
    time.sleep(0.05)


def test_sigkill_after_a_round_and_mid_training_resumes_to_the_same_ledger(tmp_path):
  reference = str(tmp_path / "reference")
  process = _run_main(reference, KILL_TEST)
  assert process.wait() == 0, process.stdout.read()

  workdir = str(tmp_path / "killed")
  # Kill 1: right after round 1 has exported its picks (before its checkpoint is saved).
  process = _run_main(workdir, KILL_TEST)
  _wait_for(lambda: os.path.exists(os.path.join(workdir, "rounds", "1", "picks.json")), process)
  process.send_signal(signal.SIGKILL)
  process.wait()
  # Kill 2: mid-training after round 2.
  process = _run_main(workdir, KILL_TEST)
  _wait_for(lambda: any(r["kind"] == "train" and r["step"] >= 6 for r in read_metrics(workdir)),
            process)
  process.send_signal(signal.SIGKILL)
  process.wait()
  process = _run_main(workdir, KILL_TEST)
  assert process.wait() == 0, process.stdout.read()

  assert ledger_of(workdir) == ledger_of(reference)
  for number in (1, 2, 3):
    mine = json.load(open(os.path.join(workdir, "rounds", str(number), "picks.json")))
    theirs = json.load(open(os.path.join(reference, "rounds", str(number), "picks.json")))
    assert mine == theirs
  # The metrics read as one uninterrupted run with the same numbers.
  mine, theirs = read_metrics(workdir), read_metrics(reference)
  assert [(r["step"], r["kind"]) for r in mine] == [(r["step"], r["kind"]) for r in theirs]
  for a, b in zip(mine, theirs):
    if a["kind"] == "train":
      assert a["total"] == pytest.approx(b["total"], rel=1e-5)


def test_one_and_four_devices_give_the_same_losses_and_ledger(tmp_path):
  overrides = KILL_TEST + ["--config.train.batch_size=4", "--config.active.batch_size=4",
                           "--config.eval.batch_size=4"]
  runs = {}
  for devices in (1, 4):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    workdir = str(tmp_path / f"devices{devices}")
    process = _run_main(workdir, overrides, env=env)
    assert process.wait() == 0, process.stdout.read()
    runs[devices] = workdir
  one, four = read_metrics(runs[1]), read_metrics(runs[4])
  assert [(r["step"], r["kind"]) for r in one] == [(r["step"], r["kind"]) for r in four]
  for a, b in zip(one, four):
    if a["kind"] == "train":
      for term in ("source_ce", "target_ce", "total"):
        assert a[term] == pytest.approx(b[term], rel=1e-3, abs=1e-5)
  assert ledger_of(runs[1]) == ledger_of(runs[4])


def test_checkpoint_of_an_earlier_layout_says_to_start_fresh(tmp_path):
  """Before the whole train state was saved, checkpoints held "model" and "optimizer"."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = str(tmp_path / "run" / "checkpoints")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=False), item_handlers={
          "model": ocp.StandardCheckpointHandler(),
          "optimizer": ocp.StandardCheckpointHandler(),
          "progress": ocp.JsonCheckpointHandler()})
  manager.save(3, args=ocp.args.Composite(
      model=ocp.args.StandardSave({"w": np.zeros(2, np.float32)}),
      optimizer=ocp.args.StandardSave({"m": np.zeros(2, np.float32)}),
      progress=ocp.args.JsonSave({"step": 3})))
  manager.close()
  with pytest.raises(ValueError, match="earlier ripu_jax.*fresh --workdir.*init_from"):
    train.Trainer(tiny_config(), str(tmp_path / "run"))


def test_train_metrics_are_averaged_since_the_last_log_step(tmp_path):
  from ripu_jax import hooks as hooks_lib  # pylint: disable=g-import-not-at-top
  totals = {}

  class Recorder(hooks_lib.Hook):

    def after_step(self, trainer, metrics):
      totals[trainer.step] = float(metrics["total"])

  with hooks_lib.HOOKS.temporary("test_totals", lambda config: Recorder()):
    config = tiny_config(num_steps=5, log_every=2, hooks=("test_totals",))
    config.active.round_steps = (2,)
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
  records = {r["step"]: r["total"] for r in read_metrics(workdir) if r["kind"] == "train"}
  assert sorted(records) == [2, 4, 5]
  assert records[2] == pytest.approx((totals[1] + totals[2]) / 2, rel=1e-6)
  assert records[4] == pytest.approx((totals[3] + totals[4]) / 2, rel=1e-6)
  assert records[5] == pytest.approx(totals[5], rel=1e-6)


def test_non_finite_metrics_are_caught_before_a_save_between_log_steps(tmp_path):
  workdir = str(tmp_path / "run")
  trainer = train.Trainer(tiny_config(log_every=100, checkpoint_every=4), workdir)
  real_step = trainer.train_step

  def poisoned(state, batch):
    metrics = real_step(state, batch)
    return dict(metrics, grad_norm=np.float32(np.inf)) if trainer.step == 3 else metrics

  trainer.train_step = poisoned
  with pytest.raises(FloatingPointError, match=r"step 4: non-finite.*grad_norm.*steps 1-4"):
    trainer.run()
  trainer.close()
  # Round checkpoints (steps 2) are kept; nothing was saved at step 4.
  assert Checkpoints(os.path.join(workdir, "checkpoints")).latest_step() == 2
