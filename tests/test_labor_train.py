"""LabOR through the trainer: its configs, state, rounds, exports and exact resume."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from ripu_jax import config_lib
from ripu_jax import errors
from ripu_jax import registry
from ripu_jax import train
from ripu_jax.checkpoints import Checkpoints
from ripu_jax.metrics_log import read_metrics

from tiny_runs import with_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke(mode, **overrides):
  config = config_lib.load_config(os.path.join(ROOT, "configs", "labor", f"demo_{mode}.py"),
                                  "smoke")
  registry.import_plugins(config.plugins)
  config.num_steps = 6
  config.checkpoint_every = 2
  config.active.round_steps = (2, 4)
  config.progress_bars = False
  return with_overrides(config, overrides)


def test_the_selector_starts_from_the_model_and_the_state_holds_every_network(tmp_path):
  trainer = train.Trainer(smoke("spl"), str(tmp_path / "run"))
  state = trainer.state
  assert {"selector", "selector_optimizer", "discriminator", "discriminator_optimizer",
          "thresholds"} <= set(state.extra_names)
  same = jax.tree.map(np.array_equal, nnx.state(state.model.backbone, nnx.Param),
                      nnx.state(state.selector.backbone, nnx.Param))
  assert all(jax.tree.leaves(same))
  same_head = jax.tree.map(np.array_equal, nnx.state(state.model.head, nnx.Param),
                           nnx.state(state.selector.head, nnx.Param))
  assert all(jax.tree.leaves(same_head))
  # C2 starts different from C1: otherwise the heads never disagree.
  first = jax.tree.leaves(nnx.state(state.selector.head, nnx.Param))
  second = jax.tree.leaves(nnx.state(state.selector.aux_heads[0], nnx.Param))
  assert not all(np.array_equal(a, b) for a, b in zip(first, second))
  np.testing.assert_allclose(np.asarray(state.thresholds.value[...]), 0.9)
  trainer.close()


@pytest.mark.parametrize("mode, shared", [("spl", False), ("ppl", False), ("spl", True)])
def test_labor_runs_rounds_exports_and_resumes_exactly(mode, shared, tmp_path):
  config = smoke(mode, **{"labor.share_backbone": shared})
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(config, workdir)
  records = read_metrics(workdir)
  trains = [r for r in records if r["kind"] == "train"]
  assert {"source_ce", "target_ce", "adversarial", "discriminator", "selector_ce",
          "discrepancy", "pseudo_labelled", "total"} <= set(trains[0])
  assert all(np.isfinite(r["total"]) for r in trains)
  rounds = [r for r in records if r["kind"] == "round"]
  assert [r["round"] for r in rounds] == [1, 2]
  assert summary["labelled_fraction"] > 0
  picks = json.load(open(os.path.join(workdir, "rounds", "1", "picks.json")))
  assert picks["strategy"] == f"labor_{mode}" and picks["kind"] == f"labor_{mode}"
  ledger = Checkpoints(os.path.join(workdir, "checkpoints")).restore_ledger()
  assert ledger.rounds_recorded == (1, 2)
  # Resume from step 4: the redone steps give the same numbers (thresholds and Adam state
  # included in the checkpoint).
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  os.remove(os.path.join(workdir, "final.json"))
  train.train_and_evaluate(config, workdir)
  assert read_metrics(workdir) == records


def _plain_source_run(workdir):
  """A finished source-only run of the demo's smoke network (no auxiliary heads)."""
  config = config_lib.load_config(os.path.join(ROOT, "configs", "demo.py"), "smoke")
  config.train.objective, config.active.kind = "source_only", "none"
  config.num_steps, config.progress_bars = 2, False
  train.train_and_evaluate(config, workdir)
  return Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True)


def _params(module):
  return jax.tree.leaves(nnx.state(module, nnx.Param))


def test_shared_backbone_puts_the_heads_on_the_model_and_starts_from_a_plain_run(tmp_path):
  source = _plain_source_run(str(tmp_path / "source"))
  config = smoke("spl", **{"labor.share_backbone": True,
                           "model.init_from": str(tmp_path / "source")})
  trainer = train.Trainer(config, str(tmp_path / "run"))
  state = trainer.state
  assert "selector" not in state.extra_names and len(state.model.aux_heads) == 2
  assert state.model.aux_stop_gradient
  plain = train.build_model(smoke("spl"))
  source.restore_model(plain)
  source.close()
  # A is the source run's model; C1 starts as its head, C2 fresh (so the heads disagree).
  for got, want in ((state.model.backbone, plain.backbone), (state.model.head, plain.head),
                    (state.model.aux_heads[0], plain.head)):
    assert all(np.array_equal(a, b) for a, b in zip(_params(got), _params(want)))
  assert not all(np.array_equal(a, b) for a, b in
                 zip(_params(state.model.aux_heads[0]), _params(state.model.aux_heads[1])))
  trainer.close()


def test_a_checkpoint_lacking_a_part_not_named_is_still_refused(tmp_path):
  source = _plain_source_run(str(tmp_path / "source"))
  with_heads = train.build_model(smoke("spl", **{"model.kwargs.aux_heads": 2}))
  with pytest.raises(errors.StateMismatchError, match="does not fit"):
    source.restore_model(with_heads)
  with pytest.raises(errors.StateMismatchError, match="does not fit"):
    source.restore_model(with_heads, may_lack=("head",))
  source.restore_model(with_heads, may_lack=("aux_heads",))
  source.close()


def test_shared_heads_do_not_move_the_backbone():
  """B's loss reaches C1 and C2 only: A's backbone and head get no gradient from it."""
  from ripu_jax.methods.labor.objective import _forward_with_heads  # pylint: disable=g-import-not-at-top
  config = smoke("spl", **{"labor.share_backbone": True})
  model = train.build_model(config)
  images = jax.random.normal(jax.random.key(0), (1, 32, 64, 3))

  def heads_only(model):
    _, _, (head1, head2) = _forward_with_heads(model, images, images)
    return (head1**2).sum() + (head2**2).sum()

  grads = nnx.grad(heads_only)(model)
  for part in ("backbone", "head"):
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads[part]))
  assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["aux_heads"]))


@pytest.mark.parametrize("dataset, weight", [("gtav", 0.05), ("synthia", 0.001)])
def test_the_iast_variant_of_the_real_configs(dataset, weight):
  config = config_lib.load_config(
      os.path.join(ROOT, "configs", "labor", f"{dataset}_ppl.py"), "iast")
  assert (config.optim.name, config.optim.schedule, config.optim.base_lr) == (
      "adam", "cosine_restarts", 2e-5)
  assert config.optim.restart_every == config.num_steps == 40_000
  assert (config.labor.gan_loss, config.labor.adversarial_weight) == ("lsgan", weight)
  assert config_lib.load_config(
      os.path.join(ROOT, "configs", "labor", f"{dataset}_spl.py")).optim.name == "sgd"
  with pytest.raises(ValueError, match=r"choose from \['iast', 'smoke'\]"):
    config_lib.load_config(os.path.join(ROOT, "configs", "labor", f"{dataset}_spl.py"), "isat")


def test_the_iast_variant_trains_with_adam_cosine_and_lsgan(tmp_path):
  config = config_lib.load_config(os.path.join(ROOT, "configs", "labor", "gtav_spl.py"),
                                  "iast,smoke")
  registry.import_plugins(config.plugins)
  config.num_steps, config.progress_bars, config.optim.restart_every = 4, False, 3
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  trains = [r for r in read_metrics(str(tmp_path / "run")) if r["kind"] == "train"]
  for record in trains:
    want = 2e-5 * (1 + np.cos(np.pi * (record["step"] % 3) / 3)) / 2
    np.testing.assert_allclose(record["learning_rate"]["backbone"], want, rtol=1e-5)
    assert record["learning_rate"]["head"] == record["learning_rate"]["backbone"]
    assert np.isfinite(record["adversarial"]) and np.isfinite(record["discriminator"])
  assert summary["labelled_fraction"] > 0


def test_labor_config_errors_name_the_field(tmp_path):
  config = smoke("spl", **{"labor.share_backbone": True, "model.kwargs.aux_heads": 1})
  with pytest.raises(errors.ConfigError, match="model.kwargs.aux_heads"):
    config_lib.validate(config)
  config = smoke("spl", **{"labor.gan_loss": "wgan"})
  with pytest.raises(errors.ConfigError, match="labor.gan_loss must be one of"):
    config_lib.validate(config)
  config = smoke("spl", **{"labor.adversarial_weight": -1.0})
  with pytest.raises(errors.ConfigError, match="labor.adversarial_weight"):
    config_lib.validate(config)
  config = smoke("spl")
  del config.labor
  with pytest.raises(errors.ConfigError, match="configs/labor"):
    config_lib.validate(config)
