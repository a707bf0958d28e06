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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke(mode, **overrides):
  config = config_lib.load_config(os.path.join(ROOT, "configs", "labor", f"demo_{mode}.py"),
                                  "smoke")
  registry.import_plugins(config.plugins)
  config.num_steps = 6
  config.checkpoint_every = 2
  config.active.round_steps = (2, 4)
  config.progress_bars = False
  for key, value in overrides.items():
    group, _, name = key.rpartition(".")
    (config[group] if group else config)[name] = value
  return config


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


@pytest.mark.parametrize("mode", ["spl", "ppl"])
def test_labor_runs_rounds_exports_and_resumes_exactly(mode, tmp_path):
  config = smoke(mode)
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


def test_labor_config_errors_name_the_field(tmp_path):
  config = smoke("spl", **{"labor.share_backbone": True})
  with pytest.raises(errors.ConfigError, match="labor.share_backbone"):
    config_lib.validate(config)
  config = smoke("spl", **{"labor.adversarial_weight": -1.0})
  with pytest.raises(errors.ConfigError, match="labor.adversarial_weight"):
    config_lib.validate(config)
  config = smoke("spl")
  del config.labor
  with pytest.raises(errors.ConfigError, match="configs/labor"):
    config_lib.validate(config)
