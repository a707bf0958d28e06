"""Tests for ripu_jax.optim and RIPU's objectives' training step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ripu_jax import config_lib, models, optim
from ripu_jax.objectives import OBJECTIVES, TrainState

TINY = {"blocks": (1, 1, 1, 1), "width_multiplier": 1 / 16}


def make_train_step(objective="ripu", **train_fields):
  """`step(model, optimizer, batch)` of a registered objective with config.train fields."""
  config = config_lib.base_config()
  config.train.update(train_fields)
  step = OBJECTIVES.get(objective)(config).make_step()
  return lambda model, optimizer, batch: step(TrainState(model, optimizer), batch)


def test_poly_schedule_values():
  schedule = optim.poly_schedule(2.5e-4, 62_500)
  np.testing.assert_allclose(schedule(0), 2.5e-4, rtol=1e-6)
  np.testing.assert_allclose(schedule(10_000), 2.5e-4 * (1 - 10_000 / 62_500) ** 0.9, rtol=1e-5)
  np.testing.assert_allclose(schedule(40_000), 2.5e-4 * (1 - 40_000 / 62_500) ** 0.9, rtol=1e-5)
  assert float(schedule(62_500)) == 0.0
  assert float(schedule(70_000)) == 0.0
  rates = optim.learning_rates(31_250)
  np.testing.assert_allclose(rates["backbone"], 2.5e-4 * 0.5**0.9, rtol=1e-5)
  np.testing.assert_allclose(rates["head"], 10 * rates["backbone"], rtol=1e-6)
  with pytest.raises(ValueError, match="max_iter"):
    optim.poly_schedule(1e-3, 0)


def test_ripu_sgd_matches_torch_semantics():
  """Oracle: torch.optim.SGD(momentum=0.9, weight_decay=5e-4), poly lr, head x10."""
  rng = np.random.default_rng(0)
  params = {"backbone": {"w": rng.standard_normal((3, 2))}, "head": {"w": rng.standard_normal(4)}}
  grads = [{"backbone": {"w": rng.standard_normal((3, 2))}, "head": {"w": rng.standard_normal(4)}}
           for _ in range(4)]
  base_lr, max_iter = 0.1, 10
  tx = optim.ripu_sgd(base_lr, max_iter)
  state = tx.init(jax.tree.map(jnp.asarray, params))
  current = jax.tree.map(jnp.asarray, params)
  expected = {name: value["w"].copy() for name, value in params.items()}
  buffers = {}
  for step, grad in enumerate(grads):
    updates, state = tx.update(jax.tree.map(jnp.asarray, grad), state, current)
    current = optax.apply_updates(current, updates)
    for name in ("backbone", "head"):
      lr = base_lr * (1 - step / max_iter) ** 0.9 * (10.0 if name == "head" else 1.0)
      g = grad[name]["w"] + 5e-4 * expected[name]
      buffers[name] = g if step == 0 else 0.9 * buffers[name] + g
      expected[name] = expected[name] - lr * buffers[name]
  for name in ("backbone", "head"):
    np.testing.assert_allclose(current[name]["w"], expected[name], rtol=1e-5, atol=1e-7)


def _run(tx, params, grads):
  state = tx.init(jax.tree.map(jnp.asarray, params))
  current = jax.tree.map(jnp.asarray, params)
  for grad in grads:
    updates, state = tx.update(jax.tree.map(jnp.asarray, grad), state, current)
    current = optax.apply_updates(current, updates)
  return current


def _params_and_grads(seed, steps=4):
  rng = np.random.default_rng(seed)
  draw = lambda: {"backbone": {"w": rng.standard_normal((3, 2))},  # noqa: E731
                  "head": {"w": rng.standard_normal(4)}}
  return draw(), [draw() for _ in range(steps)]


def test_the_default_optim_config_is_ripu_sgd():
  config = config_lib.base_config().optim
  config.base_lr, config.max_iter = 0.1, 10
  params, grads = _params_and_grads(1)
  got = _run(optim.from_config(config), params, grads)
  want = _run(optim.ripu_sgd(0.1, 10), params, grads)
  for name in ("backbone", "head"):
    np.testing.assert_array_equal(got[name]["w"], want[name]["w"])
  assert optim.learning_rates_from_config(3, config) == optim.learning_rates(3, 0.1, 10)


def test_cosine_restarts_schedule_values():
  schedule = optim.cosine_restarts_schedule(2e-5, 100)
  for step in (0, 1, 25, 50, 99, 100, 150, 250):
    want = 2e-5 * (1 + np.cos(np.pi * (step % 100) / 100)) / 2
    np.testing.assert_allclose(schedule(step), want, rtol=1e-5, atol=1e-12)
  with pytest.raises(ValueError, match="period"):
    optim.cosine_restarts_schedule(1e-3, 0)


def test_adam_with_cosine_restarts_matches_torch_semantics():
  """Oracle: torch.optim.Adam(weight_decay=wd) (L2 in the gradient, bias-corrected moments,
  eps outside the root) under CosineAnnealingWarmRestarts(T_0=3), head lr x2."""
  config = config_lib.base_config().optim
  config.update(name="adam", schedule="cosine_restarts", restart_every=3, base_lr=0.01,
                head_lr_multiplier=2.0, weight_decay=1e-2, betas=(0.8, 0.95))
  params, grads = _params_and_grads(2, steps=7)
  got = _run(optim.from_config(config), params, grads)
  for name in ("backbone", "head"):
    w = params[name]["w"].copy()
    m = v = 0.0
    for step, grad in enumerate(grads):
      lr = 0.01 * (2.0 if name == "head" else 1.0) * (1 + np.cos(np.pi * (step % 3) / 3)) / 2
      g = grad[name]["w"] + 1e-2 * w
      m = 0.8 * m + 0.2 * g
      v = 0.95 * v + 0.05 * g**2
      m_hat, v_hat = m / (1 - 0.8**(step + 1)), v / (1 - 0.95**(step + 1))
      w = w - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(got[name]["w"], w, rtol=1e-5, atol=1e-7)
  rates = optim.learning_rates_from_config(4, config)
  np.testing.assert_allclose(rates["backbone"], 0.01 * (1 + np.cos(np.pi / 3)) / 2, rtol=1e-5)
  np.testing.assert_allclose(rates["head"], 2 * rates["backbone"], rtol=1e-6)


def test_adamw_with_constant_rate_matches_torch_semantics():
  """Oracle: torch.optim.AdamW (decay decoupled: w -= lr * wd * w, then the Adam step) at a
  constant rate, head lr x10 (ELN's optimiser)."""
  config = config_lib.base_config().optim
  config.update(name="adamw", schedule="constant", base_lr=1e-3, head_lr_multiplier=10.0,
                weight_decay=0.5, betas=(0.9, 0.999))
  params, grads = _params_and_grads(3, steps=5)
  got = _run(optim.from_config(config), params, grads)
  for name in ("backbone", "head"):
    lr = 1e-3 * (10.0 if name == "head" else 1.0)
    w = params[name]["w"].copy()
    m = v = 0.0
    for step, grad in enumerate(grads):
      g = grad[name]["w"]
      m = 0.9 * m + 0.1 * g
      v = 0.999 * v + 0.001 * g**2
      m_hat, v_hat = m / (1 - 0.9**(step + 1)), v / (1 - 0.999**(step + 1))
      w = w - lr * 0.5 * w - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(got[name]["w"], w, rtol=1e-5, atol=1e-7)
  assert optim.learning_rates_from_config(1234, config) == {"backbone": 1e-3, "head": 1e-2}


@pytest.mark.parametrize("field, value, match", [
    ("name", "rmsprop", "optim.name must be one of"),
    ("schedule", "step", "optim.schedule must be one of"),
    ("restart_every", 0, "optim.restart_every must be >= 1"),
    ("betas", (0.9, 1.0), "optim.betas must be two values"),
])
def test_bad_optim_fields_name_the_field(field, value, match):
  from ripu_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.optim[field] = value
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(config)


def test_parameter_groups_split_backbone_from_head():
  model = models.DeepLabV2(3, **TINY, rngs=nnx.Rngs(0))
  labels = optim.parameter_groups(nnx.state(model, nnx.Param))
  assert labels["backbone"]["conv1"]["kernel"].get_value() == "backbone"
  assert labels["backbone"]["layer4"][0]["conv2"]["kernel"].get_value() == "backbone"
  assert labels["head"]["branches"][0]["bias"].get_value() == "head"
  assert set(jax.tree.leaves(labels)) == {"backbone", "head"}


def _batch(seed, size=(24, 24), num_classes=4, batch=1):
  """Four colour-coded quadrants; the target copy is flipped and sparsely labelled."""
  rng = np.random.default_rng(seed)
  height, width = size
  labels = np.zeros((batch, height, width), np.int32)
  labels[:, :, width // 2:] = 1
  labels[:, height // 2:, :] += 2
  colours = 1.5 * rng.standard_normal((num_classes, 3)).astype(np.float32)
  images = colours[labels] + 0.3 * rng.standard_normal((batch, height, width, 3)).astype(np.float32)
  target_labels = np.full_like(labels, 255)
  target_labels[:, ::3, ::3] = labels[:, ::3, ::3]
  return {
      "source_images": images,
      "source_labels": labels,
      "target_images": images[:, ::-1].copy(),
      "target_labels": target_labels[:, ::-1].copy(),
  }


def test_frozen_batch_norm_is_bit_identical_after_a_step():
  model = models.DeepLabV2(4, **TINY, rngs=nnx.Rngs(0))
  frozen_before = jax.tree.map(np.array, nnx.state(model, models.FrozenStat))
  params_before = jax.tree.map(np.array, nnx.state(model, nnx.Param))
  optimizer = optim.create_optimizer(model, base_lr=1e-2, max_iter=100)
  step = make_train_step()
  metrics = step(model, optimizer, _batch(0))
  assert np.isfinite(float(metrics["total"]))
  frozen_after = jax.tree.map(np.array, nnx.state(model, models.FrozenStat))
  for before, after in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen_after)):
    np.testing.assert_array_equal(before, after)
  params_after = nnx.state(model, nnx.Param)
  changed = [not np.array_equal(a, np.asarray(b))
             for a, b in zip(jax.tree.leaves(params_before), jax.tree.leaves(params_after))]
  assert all(changed)
  assert int(optimizer.step[...]) == 1


def test_tiny_model_overfits_one_batch():
  # Adam: SGD at a rate that learns this fast is erratic on a tiny net without
  # normalisation; the point here is that the step's gradients and updates are right.
  model = models.DeepLabV2(4, **TINY, rngs=nnx.Rngs(0))
  optimizer = optim.create_optimizer(model, optax.adam(2e-3))
  step = make_train_step()
  batch = _batch(1)
  history = [float(step(model, optimizer, batch)["total"]) for _ in range(40)]
  assert all(np.isfinite(history))
  assert history[-1] <= history[0] / 10, history


def test_source_free_step_and_mismatched_sizes():
  model = models.DeepLabV2(4, **TINY, rngs=nnx.Rngs(0))
  optimizer = optim.create_optimizer(model, base_lr=1e-3, max_iter=100)
  batch = _batch(2)
  source_free = make_train_step(objective="source_free")
  target_only = {k: v for k, v in batch.items() if k.startswith("target")}
  metrics = source_free(model, optimizer, target_only)
  assert set(metrics) == {"target_ce", "negative_learning", "total", "grad_norm"}
  # Source and target at different sizes take two forward passes.
  mixed = dict(batch)
  small = _batch(3, size=(16, 20))
  mixed["target_images"], mixed["target_labels"] = small["target_images"], small["target_labels"]
  metrics = make_train_step()(model, optimizer, mixed)
  assert {"source_ce", "target_ce", "local_consistency", "negative_learning"} <= set(metrics)
  assert all(np.isfinite(float(v)) for v in metrics.values())


def test_train_step_rejects_bad_batches():
  model = models.DeepLabV2(4, **TINY, rngs=nnx.Rngs(0))
  optimizer = optim.create_optimizer(model)
  step = make_train_step()
  batch = _batch(4)
  with pytest.raises(ValueError, match="missing"):
    step(model, optimizer, {k: v for k, v in batch.items() if k != "source_labels"})
  bad = dict(batch)
  bad["target_labels"] = bad["target_labels"][:, :, :, None]
  with pytest.raises(ValueError, match="labels"):
    step(model, optimizer, bad)
  with pytest.raises(ValueError, match="either tx"):
    optim.create_optimizer(model, optax.sgd(0.1), base_lr=0.1)


def test_deeplabv3plus_train_step_advances_dropout_rng():
  model = models.DeepLabV3Plus(
      4, **TINY, channels=16, low_channels=8, rngs=nnx.Rngs(0, dropout=1))
  optimizer = optim.create_optimizer(model, base_lr=1e-3, max_iter=100)
  step = make_train_step()
  model.train()
  count_before = int(model.head.dropout.rngs.count[...])
  metrics = step(model, optimizer, _batch(5, size=(20, 28)))
  assert np.isfinite(float(metrics["total"]))
  assert int(model.head.dropout.rngs.count[...]) > count_before


def test_source_only_step_uses_only_source_keys():
  model = models.DeepLabV2(4, **TINY, rngs=nnx.Rngs(0))
  optimizer = optim.create_optimizer(model, base_lr=1e-3, max_iter=100)
  batch = {k: v for k, v in _batch(5).items() if k.startswith("source")}
  metrics = make_train_step(objective="source_only", consistency_weight=0.0)(
      model, optimizer, batch)
  assert set(metrics) == {"source_ce", "local_consistency", "total", "grad_norm"}
  assert float(metrics["total"]) == pytest.approx(float(metrics["source_ce"]))
  with pytest.raises(ValueError, match="objective"):
    make_train_step(objective="target_only")
