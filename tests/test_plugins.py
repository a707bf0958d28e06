"""Contract tests over the registries: every objective, acquirer and strategy keeps the
trainer's guarantees, and a piece registered from outside the package is chosen by name."""

import dataclasses
import os
import shutil
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ripu_jax import config_lib
from ripu_jax import hooks as hooks_lib
from ripu_jax import models
from ripu_jax import optim
from ripu_jax import registry
from ripu_jax import sharding
from ripu_jax import train
from ripu_jax.acquisition import strategies as strategies_lib
from ripu_jax.acquisition.acquirers import ACQUIRERS, RoundPool
from ripu_jax.checkpoints import Checkpoints
from ripu_jax.ledger import LabelLedger
from ripu_jax.methods import eln  # noqa: F401  (ELN's pieces join the contract tests)
from ripu_jax.methods import labor  # noqa: F401  (LabOR's pieces join the contract tests)
from ripu_jax.methods import viewal  # ViewAL's pieces join the contract tests
from ripu_jax.metrics_log import read_metrics
from ripu_jax.objectives import OBJECTIVES, Objective, TrainState, optimizer_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(objective: str) -> ml_collections.ConfigDict:
  """demo:smoke cut to two steps, a checkpoint after each, one round if labels are read."""
  config = config_lib.load_config(os.path.join(ROOT, "configs", "demo.py"), "smoke")
  config.num_steps = 2
  config.log_every = config.checkpoint_every = 1
  config.keep_checkpoints = 5
  config.progress_bars = False
  config.train.objective = objective
  domains = OBJECTIVES.get(objective).domains
  config.active.kind = "ra" if "target" in domains else "none"
  config.active.round_steps = (1,)
  if objective == "labor":  # its own config group, as configs/labor/ set it
    labor.labor_config(config, "spl")
    config.active.kind = "ra"
  if objective in ("eln", "ripu_eln"):  # ELN's demos; stages 2 (or 1) and 3 in two steps
    demo = "demo_semi.py" if objective == "eln" else "demo_ripu_eln.py"
    config = config_lib.load_config(os.path.join(ROOT, "configs", "eln", demo), "smoke")
    config.active.round_steps = (1,)
    config.num_steps = 2
    config.log_every = config.checkpoint_every = 1
    config.keep_checkpoints = 5
    config.progress_bars = False
    config.eln.update(aux_from=0 if objective == "eln" else 1, self_training_from=1)
  if objective == "viewal":  # ViewAL's synthetic multi-view benchmark, one round
    config = config_lib.load_config(os.path.join(ROOT, "configs", "viewal", "synthetic.py"),
                                    "smoke")
    config.active.round_steps = (1,)
    config.num_steps = 2
    config.log_every = config.checkpoint_every = 1
    config.keep_checkpoints = 5
    config.progress_bars = False
  return config


# ---------------------------------------------------------------------- registry


def test_registry_lookup_lists_known_names_and_temporary_entries_go_away():
  things = registry.Registry("widget")
  things.register("b", 2)

  @things.register("a")
  def a():
    return 1

  assert things.names() == ["a", "b"] and "a" in things and things.get("a") is a
  with pytest.raises(ValueError, match=r"unknown widget 'c'; known: a, b.*plugins"):
    things.get("c")
  with pytest.raises(ValueError, match="already registered"):
    things.register("a", 3)
  with things.temporary("c", 3):
    assert things.get("c") == 3
  assert "c" not in things


def test_plugin_module_that_cannot_be_imported_says_how_to_make_it_importable():
  with pytest.raises(ImportError, match="PYTHONPATH"):
    registry.import_plugins(("no_such_plugin_module_xyz",))


def test_every_registry_is_a_registry():
  from ripu_jax.data import catalog  # pylint: disable=g-import-not-at-top
  for table in (strategies_lib.STRATEGIES, models.MODELS, OBJECTIVES, ACQUIRERS,
                hooks_lib.HOOKS, catalog.DATASETS):
    assert isinstance(table, registry.Registry)
  assert {"ripu", "source_only", "source_free"} <= set(OBJECTIVES.names())
  assert {"ra", "pa", "all", "none"} <= set(ACQUIRERS.names())


# ---------------------------------------------------------------------- objectives


class _SelectorObjective(Objective):
  """RIPU's loss on the model plus a second network with its own optimizer (a stand-in
  for LabOR's selector): it learns the source labels on its own."""
  domains = ("source", "target")

  def build_state(self, model):
    config = self.config
    selector = models.build_model(config.model.name, config_lib.num_classes(config),
                                  rngs=nnx.Rngs(7), **config.model.kwargs.to_dict())
    return TrainState(model, optimizer_for(model, config.optim), selector=selector,
                      selector_optimizer=optimizer_for(selector, config.optim))

  def loss(self, model, batch):
    return OBJECTIVES.get("ripu")(self.config).loss(model, batch)

  def train_step(self, state, batch):
    metrics = super().train_step(state, batch)
    from ripu_jax import losses  # pylint: disable=g-import-not-at-top
    from ripu_jax.image_ops import upsample_logits  # pylint: disable=g-import-not-at-top

    def selector_loss(selector):
      logits = upsample_logits(selector(batch["source_images"]), batch["source_labels"].shape[1:3])
      return losses.cross_entropy(logits, batch["source_labels"])

    value, grads = nnx.value_and_grad(selector_loss)(state.selector)
    state.selector_optimizer.update(state.selector, grads)
    return {**metrics, "selector_ce": value}


def _train_records(workdir):
  return [r for r in read_metrics(workdir) if r["kind"] in ("train", "eval")]


@pytest.mark.parametrize("objective", OBJECTIVES.names() + ["test_selector"])
def test_every_objective_runs_two_steps_and_resumes_exactly(objective, tmp_path):
  with OBJECTIVES.temporary("test_selector", _SelectorObjective):
    config = smoke_config(objective)
    config_lib.validate(config)
    workdir = str(tmp_path / "run")
    if objective == "source_free":  # starts from a model of an earlier run
      source = smoke_config("source_only")
      train.train_and_evaluate(source, str(tmp_path / "source"))
      config.model.init_from = str(tmp_path / "source")
    first = train.train_and_evaluate(config, workdir)
    records = _train_records(workdir)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    # Resume from step 1: the redone step 2 gives the same numbers and the same state.
    directory = os.path.join(workdir, "checkpoints")
    shutil.rmtree(os.path.join(directory, "2"))
    again = train.train_and_evaluate(config, workdir)
    assert _train_records(workdir) == records and again["miou"] == first["miou"]
    trainer = train.Trainer(config, workdir)  # the restored whole state after step 2
    state = [np.asarray(x) for x in jax.tree.leaves(nnx.state(trainer.state))
             if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]  # dropout keys
    trainer.close()
    assert all(np.isfinite(x).all() for x in state if np.issubdtype(x.dtype, np.floating))


def test_extra_networks_keep_frozen_batch_norm_and_the_head_learning_rate(tmp_path):
  with OBJECTIVES.temporary("test_selector", _SelectorObjective):
    config = smoke_config("test_selector")
    config.num_steps = 1
    config.active.round_steps = (0,)
    trainer = train.Trainer(config, str(tmp_path / "run"))
    selector = trainer.state.selector
    frozen = jax.tree.map(np.array, nnx.state(selector, models.FrozenStat))
    params = jax.tree.map(np.array, nnx.state(selector, nnx.Param))
    trainer.run()
    for before, after in zip(jax.tree.leaves(frozen),
                             jax.tree.leaves(nnx.state(trainer.state.selector, models.FrozenStat))):
      np.testing.assert_array_equal(before, after)
    # One SGD step from zero momentum: update = lr_group * (grad + wd * param); the
    # selector's head moved with 10x the backbone's rate (checked on the group labels).
    groups = optim.parameter_groups(nnx.state(trainer.state.selector, nnx.Param))
    labels = {g for g in jax.tree.leaves(groups)}
    assert labels == {optim.BACKBONE, optim.HEAD}
    moved = [not np.array_equal(a, np.asarray(b)) for a, b in zip(
        jax.tree.leaves(params), jax.tree.leaves(nnx.state(trainer.state.selector, nnx.Param)))]
    assert all(moved)
    records = [r for r in read_metrics(trainer.workdir) if r["kind"] == "train"]
    assert records[0]["selector_ce"] > 0
    trainer.close()
    # The checkpoint holds the extras whole.
    items = Checkpoints(os.path.join(trainer.workdir, "checkpoints"))._manager.item_metadata(1)
    assert {"selector", "selector_optimizer", "optimizer"} <= set(items["state"].keys())


# ---------------------------------------------------------------------- acquirers


def _pool(round_number, num_images=4, size=(24, 40), num_classes=5, batch_size=2):
  rng = np.random.default_rng(round_number)
  logits = rng.normal(size=(num_images, size[0] // 4, size[1] // 4, num_classes)).astype(
      np.float32)
  mesh = sharding.default_mesh()

  # Frames of one multi-view scene, for acquirers that read depth, poses and superpixels.
  frames = viewal.datasets.ViewalSyntheticSplit(viewal.datasets.scenes.ViewalSyntheticConfig(
      height=size[0], width=size[1], train_scenes=1, val_scenes=1, test_scenes=1,
      frames_per_scene=num_images))

  def batches(with_labels=False):
    for start in range(0, num_images, batch_size):
      index = np.arange(start, start + batch_size)
      batch = {"image": index.astype(np.float32)[:, None, None, None] * np.ones((1, 8, 8, 3)),
               "index": index, "label_size": np.tile(size, (batch_size, 1)),
               "valid": np.ones(batch_size, bool)}
      for key in ("depth", "pose", "intrinsics", "superpixels") + (
          ("label",) if with_labels else ()):
        batch[key] = np.stack([frames[i][key] for i in index])
      yield batch

  def predict_mc(images, key, passes, label_size, network="model"):
    del key, passes
    index = np.asarray(images[:, 0, 0, 0], int)
    probs = jax.nn.softmax(jnp.asarray(output(network, "logits")[index]), axis=-1)
    return jax.image.resize(probs, (len(index), *label_size, num_classes), "nearest")

  def output(network, name):
    """The model's logits; every other output (a second head, ...) its own noise."""
    if (network, name) == ("model", "logits"):
      return logits
    seed = zlib.crc32(f"{network}/{name}".encode())
    return np.random.default_rng((round_number, seed)).normal(size=logits.shape).astype(
        np.float32)

  def predict(images, outputs, network="model"):
    index = np.asarray(images[:, 0, 0, 0], int)
    return {name: jnp.asarray(output(network, name)[index]) for name in outputs}

  return RoundPool(round_number=round_number, seed=round_number, batches=batches,
                   num_batches=num_images // batch_size, name=lambda i: f"img{i}",
                   predict=predict, mesh=mesh, num_overlays=1, predict_mc=predict_mc,
                   groups=frames.scene_ids)


@pytest.mark.parametrize("kind", ACQUIRERS.names())
def test_every_acquirer_runs_a_round_and_keeps_the_ledger_invariants(kind):
  config = config_lib.base_config()
  config.num_steps = 10
  config.active.kind = kind
  config.active.round_steps = (0, 5)
  config.active.radius = 1
  config.active.labelled_fraction = 0.5
  config.viewal = viewal.viewal_group(budget_frames=0.3)
  acquirer_class = ACQUIRERS.get(kind)
  acquirer_class.validate(config)
  acquirer = acquirer_class(config)
  shapes = [(24, 40)] * 4
  label_radius, suppress_radius = acquirer.ledger_radii(shapes[0])
  ledger = LabelLedger(shapes, label_radius=label_radius, suppress_radius=suppress_radius)
  acquirer.start(ledger, lambda i: f"image_{i}")
  for number, _ in enumerate(acquirer.round_steps, start=1):
    excluded_before = [ledger.excluded_mask(i) for i in range(4)]
    labelled_before = ledger.labeled_pixels()
    result = acquirer.run_round(_pool(number), ledger)
    assert ledger.rounds_recorded[-1] == number
    assert ledger.labeled_pixels() > labelled_before
    for image in result.images:
      # Bought this round: inside the ledger's labels, outside what was excluded before.
      assert image.labeled.shape == shapes[image.index]
      assert not (image.labeled & excluded_before[image.index]).any()
      assert (image.labeled <= ledger.labeled_mask(image.index)).all()
    assert len(result.overlays) == 1 and result.overlays[0].score.shape == shapes[0]
    with pytest.raises(ValueError, match="already recorded"):
      acquirer.run_round(_pool(number), ledger)
  for index in range(4):
    assert (ledger.labeled_mask(index) <= ledger.excluded_mask(index)).all()
  restored = LabelLedger.from_state(ledger.state())
  assert restored == ledger
  if kind == "all":
    assert ledger.labeled_fraction() == 1.0
  if kind == "none":
    assert ledger.labeled_fraction() == 0.0 and not acquirer.round_steps


# ---------------------------------------------------------------------- strategies


@pytest.mark.parametrize("name", strategies_lib.available_strategies())
@pytest.mark.parametrize("mode", ["region", "pixel"])
def test_every_strategy_is_traceable_and_shape_correct(name, mode):
  strategy = strategies_lib.get_strategy(name)
  inputs = [jax.random.normal(jax.random.key(i), (2, 12, 16, 5))
            for i, _ in enumerate(strategies_lib.model_outputs(strategy))]
  keys = jax.vmap(jax.random.key)(jnp.arange(2))
  score = jax.jit(lambda *x: strategy(*x, radius=1, mode=mode, keys=keys))(*inputs)
  assert score.shape == (2, 12, 16)
  assert jnp.issubdtype(score.dtype, jnp.floating)
  assert not bool(jnp.isnan(score).any())


def test_strategy_reading_named_outputs_gets_them_in_order():
  seen = {}

  @dataclasses.dataclass
  class Disagreement:
    model_outputs = ("aux/0", "aux/1")

    def __call__(self, first, second, *, radius, mode, keys):
      seen["shapes"] = (first.shape, second.shape)
      return jnp.abs(jax.nn.softmax(first) - jax.nn.softmax(second)).sum(-1)

  with strategies_lib.STRATEGIES.temporary("test_disagreement", Disagreement()):
    from ripu_jax import acquisition  # pylint: disable=g-import-not-at-top
    plan = acquisition.plan_round("pa", 24, 40, radius=2, rounds=5, pixels=40)
    outputs = {"aux/0": np.zeros((2, 6, 10, 3), np.float32),
               "aux/1": np.random.default_rng(0).normal(size=(2, 6, 10, 3)).astype(np.float32)}
    selection = acquisition.select_round(outputs, plan=plan, strategy="test_disagreement",
                                         label_size=(24, 40))
    assert seen["shapes"] == ((2, 24, 40, 3), (2, 24, 40, 3))
    assert selection.picks.shape[:2] == (2, plan.num_picks)
    with pytest.raises(ValueError, match=r"missing \['aux/1'\]"):
      acquisition.select_round({"aux/0": outputs["aux/0"]}, plan=plan,
                               strategy="test_disagreement", label_size=(24, 40))
    with pytest.raises(ValueError, match="mapping of named outputs"):
      acquisition.select_round(outputs["aux/0"], plan=plan, strategy="test_disagreement")


# ---------------------------------------------------------------------- hooks


def test_hooks_run_at_their_points_and_see_the_trainer(tmp_path):
  calls = []

  class Recorder(hooks_lib.Hook):

    def after_step(self, trainer, metrics):
      calls.append(("step", trainer.step))

    def after_round(self, trainer, result):
      calls.append(("round", trainer.step, result.count > 0))

    def after_eval(self, trainer, summary):
      calls.append(("eval", trainer.step, "miou" in summary))

  with hooks_lib.HOOKS.temporary("test_recorder", lambda config: Recorder()):
    config = smoke_config("ripu")
    config.hooks = ("test_recorder",)
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert calls == [("step", 1), ("eval", 1, True), ("round", 1, True), ("step", 2),
                   ("eval", 2, True)]
  config.hooks = ("nope",)
  with pytest.raises(ValueError, match="hooks"):
    config_lib.validate(config)


# ---------------------------------------------------------------------- datasets


class _WithDepth:
  """A synthetic split whose examples also carry a constant depth map (a "depth" feature)."""

  def __init__(self, split, depth):
    self._split, self._depth = split, depth

  def __len__(self):
    return len(self._split)

  def __getitem__(self, index):
    example = dict(self._split[index])
    example["depth"] = np.full(example["label"].shape, self._depth, np.float32)
    return example

  encoded = __getitem__  # what the loaders read

  def __getattr__(self, name):
    return getattr(self._split, name)


class _DepthObjective(Objective):
  """RIPU's loss; also reports the mean of the target depth the batch carried."""
  domains = ("source", "target")

  def loss(self, model, batch):
    return OBJECTIVES.get("ripu")(self.config).loss(model, batch)

  def train_step(self, state, batch):
    return {**super().train_step(state, batch), "depth_mean": batch["target_depth"].mean()}


def test_a_registered_dataset_with_extra_features_reaches_the_objective(tmp_path):
  from ripu_jax.data import catalog  # pylint: disable=g-import-not-at-top
  from ripu_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  synthetic_spec = catalog.get("synthetic")

  def opener(spec, split, *, data_dir, **fields):
    del spec, data_dir
    return _WithDepth(synthetic.SyntheticSplit(synthetic.SyntheticConfig(**fields), split), 2.5)

  spec = catalog.DatasetSpec(
      name="toy_rgbd", splits=synthetic_spec.splits, roles=dict(synthetic_spec.roles),
      label_space=synthetic_spec.label_space, stored_space=synthetic_spec.stored_space,
      opener=opener, features={"depth": "depth"})
  with catalog.DATASETS.temporary("toy_rgbd", spec), \
       OBJECTIVES.temporary("test_depth", _DepthObjective):
    config = smoke_config("test_depth")
    config.data.source = config.data.target = "toy_rgbd"
    config.data.sampling = "uniform"
    fields = {k: v for k, v in config.data.synthetic.items() if k != "prepared"}
    config.data.toy_rgbd = ml_collections.ConfigDict(fields)
    train.train_and_evaluate(config, str(tmp_path / "run"))
  records = [r for r in read_metrics(str(tmp_path / "run")) if r["kind"] == "train"]
  assert [r["depth_mean"] for r in records] == [2.5, 2.5]


def test_a_synthia_sourced_run_trains_and_evaluates_in_the_16_class_space(tmp_path):
  """SYNTHIA's space end to end (as the release): 16 outputs, mIoU over 16 and 13 classes."""
  from ripu_jax.data import catalog  # pylint: disable=g-import-not-at-top
  from ripu_jax.data import labels  # pylint: disable=g-import-not-at-top
  from ripu_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  synthetic_spec = catalog.get("synthetic")

  def opener(spec, split, *, data_dir, **fields):
    del spec, data_dir
    return synthetic.SyntheticSplit(synthetic.SyntheticConfig(**fields), split)

  spec = catalog.DatasetSpec(
      name="toy_synthia", splits=synthetic_spec.splits, roles={"source": "source_train"},
      label_space="synthia16", stored_space="cityscapes19", opener=opener)
  with catalog.DATASETS.temporary("toy_synthia", spec):
    config = smoke_config("ripu")
    config.data.source = "toy_synthia"
    config.data.sampling = "uniform"
    fields = {k: v for k, v in config.data.synthetic.items() if k != "prepared"}
    config.data.toy_synthia = ml_collections.ConfigDict(fields)
    assert config_lib.num_classes(config) == 16
    workdir = str(tmp_path / "run")
    summary = train.train_and_evaluate(config, workdir)
    trainer = train.Trainer(config, workdir)
    assert trainer.state.model(jnp.zeros((1, 64, 128, 3))).shape[-1] == 16
    trainer.close()
  assert {"miou", "miou_13"} <= set(summary)
  synthia_names = [labels.CLASS_NAMES[c] for c in labels.SYNTHIA_CLASSES]
  assert set(summary["iou"]) <= set(synthia_names) and "terrain" not in summary["iou"]
