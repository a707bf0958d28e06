"""Tests for batch norm with batch statistics (models.BatchNorm) and ResNet's `norm` option:
numpy oracles for the normalisation and torch's running-statistics rule, train/eval
switching, which variables an optimizer moves, torchvision loading, errors, bfloat16."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ripu_jax import models

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "resnet_tiny.npz")
TINY = {"blocks": (1, 1, 2, 1), "width_multiplier": 1 / 16}
EPS = 1e-5


def _numpy_batch_norm(x, mean, var, weight, bias, eps=EPS):
  return (x - mean) / np.sqrt(var + eps) * weight + bias


def _numpy_stats(x):
  """Per-channel mean, biased and unbiased variance over (N, H, W), float64."""
  flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
  return flat.mean(0), flat.var(0), flat.var(0, ddof=1)


def _batch_norms(model):
  return [module for _, module in nnx.iter_modules(model)
          if isinstance(module, models.BatchNorm)]


def _filled_batch_norm(momentum=0.1):
  bn = models.BatchNorm(4, momentum=momentum)
  weight = np.array([1.0, 2.0, 0.5, 1.5], np.float32)
  bias = np.array([0.0, 1.0, -1.0, 0.5], np.float32)
  bn.weight.set_value(jnp.asarray(weight))
  bn.bias.set_value(jnp.asarray(bias))
  return bn, weight, bias


def test_batch_norm_matches_numpy_in_train_and_eval_mode():
  bn, weight, bias = _filled_batch_norm(momentum=0.1)
  assert bn.use_running_average is False
  assert isinstance(bn.weight, nnx.Param) and isinstance(bn.running_mean, nnx.BatchStat)
  rng = np.random.default_rng(0)
  x1 = (3.0 * rng.standard_normal((2, 3, 5, 4)) + 1.5).astype(np.float32)
  x2 = (0.5 * rng.standard_normal((3, 2, 4, 4)) - 2.0).astype(np.float32)

  # One update: batch statistics normalise, running ones follow torch's rule.
  mean1, biased1, unbiased1 = _numpy_stats(x1)
  out = bn(jnp.asarray(x1))
  np.testing.assert_allclose(out, _numpy_batch_norm(x1, mean1, biased1, weight, bias),
                             rtol=1e-5, atol=1e-5)
  running_mean = 0.9 * 0.0 + 0.1 * mean1
  running_var = 0.9 * 1.0 + 0.1 * unbiased1
  np.testing.assert_allclose(bn.running_mean[...], running_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.running_var[...], running_var, rtol=1e-5, atol=1e-6)

  # Second update, this time inside nnx.jit.
  mean2, biased2, unbiased2 = _numpy_stats(x2)
  out = nnx.jit(lambda m, x: m(x))(bn, jnp.asarray(x2))
  np.testing.assert_allclose(out, _numpy_batch_norm(x2, mean2, biased2, weight, bias),
                             rtol=1e-5, atol=1e-5)
  running_mean = 0.9 * running_mean + 0.1 * mean2
  running_var = 0.9 * running_var + 0.1 * unbiased2
  np.testing.assert_allclose(bn.running_mean[...], running_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.running_var[...], running_var, rtol=1e-5, atol=1e-6)

  # Evaluation: running statistics normalise and stay put.
  bn.eval()
  assert bn.use_running_average is True
  out = bn(jnp.asarray(x1))
  np.testing.assert_allclose(out, _numpy_batch_norm(x1, running_mean, running_var, weight, bias),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(bn.running_mean[...], running_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.running_var[...], running_var, rtol=1e-5, atol=1e-6)


def test_batch_norm_gradient_goes_through_the_batch_statistics():
  bn, weight, _ = _filled_batch_norm()
  rng = np.random.default_rng(3)
  x = (2.0 * rng.standard_normal((2, 3, 3, 4)) + 1.0).astype(np.float32)
  g = rng.standard_normal(x.shape).astype(np.float32)
  grad_x = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x) * g), argnums=1))(bn, jnp.asarray(x))
  # Training-mode batch norm backward: dx = w / sigma * (g - mean(g) - x_hat * mean(g x_hat)).
  mean, biased, _ = _numpy_stats(x)
  x_hat = (x - mean) / np.sqrt(biased + EPS)
  flat = lambda a: a.reshape(-1, 4)
  expected = weight / np.sqrt(biased + EPS) * (
      g - flat(g).mean(0) - x_hat * flat(g * x_hat).mean(0))
  np.testing.assert_allclose(grad_x, expected, rtol=1e-4, atol=1e-5)


def test_batch_norm_momentum_and_frozen_affine():
  bn = models.BatchNorm(3, momentum=0.5, trainable_affine=False, weight_init=0.25)
  assert isinstance(bn.weight, models.FrozenStat) and isinstance(bn.bias, models.FrozenStat)
  x = np.random.default_rng(1).standard_normal((4, 2, 2, 3)).astype(np.float32)
  mean, biased, unbiased = _numpy_stats(x)
  out = bn(jnp.asarray(x))
  np.testing.assert_allclose(out, _numpy_batch_norm(x, mean, biased, 0.25, 0.0),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(bn.running_mean[...], 0.5 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.running_var[...], 0.5 + 0.5 * unbiased, rtol=1e-5, atol=1e-6)


def test_bfloat16_input_gives_bfloat16_output():
  bn, weight, bias = _filled_batch_norm()
  x = np.random.default_rng(2).standard_normal((2, 4, 4, 4)).astype(np.float32)
  x_bf16 = jnp.asarray(x, jnp.bfloat16)
  out = nnx.jit(lambda m, x: m(x))(bn, x_bf16)
  assert out.dtype == jnp.bfloat16
  assert bn.running_mean[...].dtype == jnp.float32
  x_rounded = np.asarray(x_bf16.astype(jnp.float32))
  mean, biased, _ = _numpy_stats(x_rounded)
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             _numpy_batch_norm(x_rounded, mean, biased, weight, bias),
                             rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(bn.running_mean[...], 0.1 * mean, rtol=1e-5, atol=1e-6)
  # A whole bfloat16 ResNet with batch statistics runs and stays finite.
  model = models.ResNet(**TINY, norm="batch_affine", dtype="bfloat16", rngs=nnx.Rngs(0))
  features = nnx.jit(lambda m, x: m(x))(model, jnp.ones((2, 16, 16, 3)))
  assert features["out"].dtype == jnp.bfloat16
  assert bool(jnp.all(jnp.isfinite(features["out"].astype(jnp.float32))))


def test_train_and_eval_switch_every_batch_norm_of_a_resnet():
  model = models.ResNet(**TINY, norm="batch", rngs=nnx.Rngs(0))
  norms = _batch_norms(model)
  # Stem, 3 per bottleneck, one per downsampling shortcut.
  assert len(norms) == 1 + 3 * sum(TINY["blocks"]) + 4
  assert all(not bn.use_running_average for bn in norms)
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  forward = nnx.jit(lambda m, x: m(x)["out"])
  before = nnx.clone(nnx.state(model, nnx.BatchStat))
  forward(model, images)
  after = nnx.state(model, nnx.BatchStat)
  assert not np.allclose(before["bn1"]["running_mean"][...], after["bn1"]["running_mean"][...])
  model.eval()
  assert all(bn.use_running_average for bn in norms)
  frozen = nnx.clone(nnx.state(model, nnx.BatchStat))
  first = forward(model, images)
  for (_, a), (_, b) in zip(nnx.to_flat_state(frozen),
                            nnx.to_flat_state(nnx.state(model, nnx.BatchStat))):
    np.testing.assert_array_equal(a[...], b[...])
  np.testing.assert_array_equal(first, forward(model, images))
  # Evaluation on one image per channel value is fine; training on it is an error.
  single = models.BatchNorm(2)
  single.eval()
  single(jnp.ones((1, 1, 1, 2)))
  single.train()
  with pytest.raises(ValueError, match="more than one value per channel"):
    single(jnp.ones((1, 1, 1, 2)))


@pytest.mark.parametrize("norm", ["batch", "batch_affine"])
def test_optimizer_step_moves_what_the_norm_option_trains(norm):
  model = models.ResNet(**TINY, norm=norm, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  targets = jax.random.normal(jax.random.key(2), (2, 2, 2, model.out_features))

  @nnx.jit
  def step(model, optimizer, images):
    def loss_fn(model):
      return jnp.mean(jnp.square(model(images)["out"] - targets))

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss, grads

  bn = model.layer1[0].bn2
  before = {name: np.asarray(getattr(bn, name)[...])
            for name in ("weight", "bias", "running_mean", "running_var")}
  kernel_before = np.asarray(model.layer1[0].conv2.kernel[...])
  loss, grads = step(model, optimizer, images)
  assert np.isfinite(float(loss))
  grad_leaves = {path[-1] for path, _ in nnx.to_flat_state(nnx.state(grads))}
  assert not grad_leaves & {"running_mean", "running_var"}
  assert not np.allclose(model.layer1[0].conv2.kernel[...], kernel_before)
  # The running statistics update survives jit and value_and_grad.
  assert not np.allclose(bn.running_mean[...], before["running_mean"])
  assert not np.allclose(bn.running_var[...], before["running_var"])
  for name in ("weight", "bias"):
    if norm == "batch":
      np.testing.assert_array_equal(getattr(bn, name)[...], before[name])
    else:
      assert not np.allclose(getattr(bn, name)[...], before[name]), name


@pytest.mark.parametrize("norm", ["batch", "batch_affine"])
def test_torchvision_weights_load_into_batch_norm(norm):
  golden = np.load(GOLDEN)
  state_dict = {key[len("state_dict/"):]: golden[key]
                for key in golden.files if key.startswith("state_dict/")}
  kwargs = {
      "blocks": tuple(int(b) for b in golden["blocks"]),
      "width_multiplier": float(golden["width_multiplier"]),
      "replace_stride_with_dilation": tuple(
          bool(r) for r in golden["replace_stride_with_dilation"]),
  }
  frozen = models.resnet_from_torchvision(state_dict, **kwargs)
  learned = models.resnet_from_torchvision(state_dict, norm=norm, **kwargs)
  assert learned.norm == norm and isinstance(learned.layer3[1].bn2, models.BatchNorm)
  for key in ("weight", "bias", "running_mean", "running_var"):
    np.testing.assert_array_equal(
        getattr(learned.layer3[1].bn2, key)[...], state_dict[f"layer3.1.bn2.{key}"])
    np.testing.assert_array_equal(
        getattr(learned.layer2[0].downsample_bn, key)[...],
        state_dict[f"layer2.0.downsample.1.{key}"])
  learned.eval()
  images = jnp.asarray(golden["inputs"])
  forward = nnx.jit(lambda m, x: m(x))
  want, got = forward(frozen, images), forward(learned, images)
  for name in ("low", "out"):
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    # And torch's eval-mode outputs for the same weights.
    expected = golden[f"expected_{name}"]
    assert np.abs(np.asarray(got[name]) - expected).max() <= 2e-4 * np.abs(expected).max()


def test_make_norm_and_bad_norm_values():
  assert models.NORMS == ("frozen", "batch", "batch_affine")
  assert isinstance(models.make_norm("frozen", 3), models.FrozenBatchNorm)
  fixed = models.make_norm("batch", 3, weight_init=0.5, eps=0.0)
  assert isinstance(fixed, models.BatchNorm) and not fixed.trainable_affine
  assert isinstance(fixed.weight, models.FrozenStat) and fixed.eps == 0.0
  np.testing.assert_array_equal(fixed.weight[...], np.full(3, 0.5, np.float32))
  assert isinstance(models.make_norm("batch_affine", 3).weight, nnx.Param)
  # residual_gamma is the initial weight of each block's last norm.
  model = models.ResNet(**TINY, norm="batch_affine", residual_gamma=0.3, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(model.layer2[0].bn3.weight[...], 0.3)
  np.testing.assert_allclose(model.layer2[0].bn2.weight[...], 1.0)
  message = r"norm must be one of \('frozen', 'batch', 'batch_affine'\), got 'sync'"
  with pytest.raises(ValueError, match=message):
    models.make_norm("sync", 3)
  with pytest.raises(ValueError, match=message):
    models.ResNet(**TINY, norm="sync", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=message):
    models.BasicBlock(4, 4, stride=1, dilation=1, downsample=False, residual_gamma=1.0,
                      norm="sync", dtype=jnp.float32, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=message):
    models.resnet_from_torchvision({}, **TINY, norm="sync")
  with pytest.raises(ValueError, match="momentum"):
    models.BatchNorm(3, momentum=1.5)
  with pytest.raises(ValueError, match="bn_epsilon"):
    models.BatchNorm(3, eps=-1.0)
  with pytest.raises(ValueError, match="3 channels"):
    models.BatchNorm(3)(jnp.ones((2, 2, 2, 4)))
