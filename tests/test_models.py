"""Tests for ripu_jax.models: shapes, torchvision parity, weight loading, conv kernels."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ripu_jax import models
from ripu_jax.models import layers, resnet

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "resnet_tiny.npz")
TINY = {"blocks": (1, 1, 2, 1), "width_multiplier": 1 / 16}


def _stride2(size: int) -> int:
  """Output size of a torch stride-2 conv/pool with "same"-style padding."""
  return (size - 1) // 2 + 1


def _load_golden():
  golden = np.load(GOLDEN)
  state_dict = {
      key[len("state_dict/"):]: golden[key]
      for key in golden.files if key.startswith("state_dict/")
  }
  return golden, state_dict


def _golden_resnet(state_dict, golden):
  return models.resnet_from_torchvision(
      state_dict,
      blocks=tuple(int(b) for b in golden["blocks"]),
      width_multiplier=float(golden["width_multiplier"]),
      replace_stride_with_dilation=tuple(bool(r) for r in golden["replace_stride_with_dilation"]),
  )


@pytest.mark.parametrize("height,width", [(33, 47), (32, 32), (17, 9)])
def test_resnet_feature_shapes_output_stride_8(height, width):
  model = models.ResNet(**TINY, rngs=nnx.Rngs(0))
  features = nnx.jit(lambda m, x: m(x))(model, jnp.zeros((2, height, width, 3)))
  low_h, low_w = _stride2(_stride2(height)), _stride2(_stride2(width))
  assert features["low"].shape == (2, low_h, low_w, model.low_features)
  assert features["out"].shape == (2, _stride2(low_h), _stride2(low_w), model.out_features)
  assert model.low_features == 16 and model.out_features == 128


@pytest.mark.parametrize("name", ["deeplabv2", "deeplabv3plus"])
def test_deeplab_logit_shapes_and_upsample(name):
  kwargs = dict(TINY)
  if name == "deeplabv3plus":
    kwargs.update(channels=16, low_channels=8)
  model = models.build_model(name, 7, rngs=nnx.Rngs(0), **kwargs)
  images = jax.random.normal(jax.random.key(1), (2, 33, 47, 3))
  logits = nnx.jit(lambda m, x: m(x))(model, images)
  low_h, low_w = _stride2(_stride2(33)), _stride2(_stride2(47))
  if name == "deeplabv2":
    assert logits.shape == (2, _stride2(low_h), _stride2(low_w), 7)
  else:
    assert logits.shape == (2, low_h, low_w, 7)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  full = models.upsample(logits, (33, 47))
  assert full.shape == (2, 33, 47, 7)
  # align_corners: the corners of the upsampled map are the corners of the logits.
  np.testing.assert_allclose(full[:, 0, 0], logits[:, 0, 0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(full[:, -1, -1], logits[:, -1, -1], rtol=1e-6, atol=1e-6)


def test_registry():
  assert {"deeplabv2", "deeplabv3plus"} <= set(models.model_names())
  with pytest.raises(ValueError, match="unknown model"):
    models.build_model("segformer", 19, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="already registered"):
    models.register_model("deeplabv2")(models.DeepLabV2)


def test_bad_arguments_raise_value_errors():
  with pytest.raises(ValueError, match="depth"):
    models.ResNet(34, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="blocks"):
    models.ResNet(blocks=(1, 1, 1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="dtype"):
    models.DeepLabV2(3, **TINY, dtype="float16", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_classes"):
    models.DeepLabV2(0, **TINY, rngs=nnx.Rngs(0))
  model = models.DeepLabV2(3, **TINY, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="NHWC"):
    model(jnp.zeros((1, 3, 32, 32)))
  with pytest.raises(ValueError, match="height, width"):
    models.upsample(jnp.zeros((1, 4, 4, 3)), (8,))


def test_torchvision_golden_parity():
  golden, state_dict = _load_golden()
  model = _golden_resnet(state_dict, golden)
  features = jax.jit(lambda x: model(x))(jnp.asarray(golden["inputs"]))
  for name in ("low", "out"):
    expected = golden[f"expected_{name}"]
    got = np.asarray(features[name])
    assert got.shape == expected.shape
    relative_error = np.abs(got - expected).max() / np.abs(expected).max()
    assert relative_error <= 2e-4, (name, relative_error)


def test_torchvision_npz_round_trip(tmp_path):
  golden, state_dict = _load_golden()
  path = tmp_path / "weights.npz"
  np.savez(path, **state_dict)
  loaded = models.load_torchvision_npz(path)
  assert set(loaded) == set(state_dict)
  model = _golden_resnet(loaded, golden)
  np.testing.assert_array_equal(
      np.asarray(model.conv1.kernel[...]), state_dict["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      np.asarray(model.layer3[1].bn2.running_var[...]), state_dict["layer3.1.bn2.running_var"])
  with pytest.raises(ValueError, match="does not exist"):
    models.load_torchvision_npz(tmp_path / "missing.npz")


def test_build_model_loads_pretrained_backbone(tmp_path):
  golden, state_dict = _load_golden()
  path = tmp_path / "weights.npz"
  np.savez(path, **state_dict)
  model = models.build_model(
      "deeplabv2", 5, rngs=nnx.Rngs(0), pretrained=str(path),
      blocks=tuple(int(b) for b in golden["blocks"]),
      width_multiplier=float(golden["width_multiplier"]))
  np.testing.assert_array_equal(
      np.asarray(model.backbone.layer4[1].conv3.kernel[...]),
      state_dict["layer4.1.conv3.weight"].transpose(2, 3, 1, 0))


def test_state_dict_errors_name_the_key():
  golden, state_dict = _load_golden()
  kwargs = {"blocks": tuple(int(b) for b in golden["blocks"]),
            "width_multiplier": float(golden["width_multiplier"])}
  missing = dict(state_dict)
  del missing["layer2.0.downsample.1.running_mean"]
  with pytest.raises(ValueError, match=r"missing.*layer2\.0\.downsample\.1\.running_mean"):
    models.resnet_from_torchvision(missing, **kwargs)
  misshaped = dict(state_dict)
  misshaped["layer3.1.conv2.weight"] = np.zeros((3, 3, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"layer3\.1\.conv2\.weight.*shape"):
    models.resnet_from_torchvision(misshaped, **kwargs)
  extra = dict(state_dict)
  extra["layer4.5.conv1.weight"] = np.zeros((1,), np.float32)
  with pytest.raises(ValueError, match=r"layer4\.5\.conv1\.weight"):
    models.resnet_from_torchvision(extra, **kwargs)
  # fc.* and num_batches_tracked are ignored, not errors.
  assert any(key.startswith("fc.") for key in state_dict)
  assert any(key.endswith("num_batches_tracked") for key in state_dict)


def test_frozen_batch_norm_is_not_a_param():
  model = models.DeepLabV2(3, **TINY, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  frozen = nnx.state(model, models.FrozenStat)
  param_paths = {path for path, _ in nnx.to_flat_state(params)}
  frozen_paths = {path for path, _ in nnx.to_flat_state(frozen)}
  assert frozen_paths and not param_paths & frozen_paths
  assert all(path[-1] in ("weight", "bias", "running_mean", "running_var") for path in frozen_paths)
  assert ("backbone", "bn1", "running_var") in frozen_paths
  assert ("backbone", "conv1", "kernel") in param_paths
  grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 16, 16, 3))))))(model)
  grad_paths = {path for path, _ in nnx.to_flat_state(nnx.state(grads))}
  assert not grad_paths & frozen_paths


def test_frozen_batch_norm_matches_formula():
  bn = models.FrozenBatchNorm(4)
  bn.weight.set_value(jnp.asarray([1.0, 2.0, 0.5, 1.0]))
  bn.bias.set_value(jnp.asarray([0.0, 1.0, -1.0, 0.5]))
  bn.running_mean.set_value(jnp.asarray([0.0, 0.5, 1.0, -2.0]))
  bn.running_var.set_value(jnp.asarray([1.0, 4.0, 0.25, 2.0]))
  x = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)
  mean, var = np.array([0.0, 0.5, 1.0, -2.0]), np.array([1.0, 4.0, 0.25, 2.0])
  weight, bias = np.array([1.0, 2.0, 0.5, 1.0]), np.array([0.0, 1.0, -1.0, 0.5])
  expected = (x - mean) / np.sqrt(var + 1e-5) * weight + bias
  np.testing.assert_allclose(bn(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  f32 = models.DeepLabV2(5, **TINY, rngs=nnx.Rngs(0))
  bf16 = models.DeepLabV2(5, **TINY, dtype="bfloat16", rngs=nnx.Rngs(0))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
  images = jax.random.normal(jax.random.key(3), (1, 24, 24, 3))
  forward = nnx.jit(lambda m, x: m(x))
  low_precision = forward(bf16, images)
  assert low_precision.dtype == jnp.float32
  reference = forward(f32, images)
  scale = float(jnp.abs(reference).max())
  assert float(jnp.abs(low_precision - reference).max()) <= 0.05 * scale


def test_deeplabv3plus_dropout_follows_train_eval_mode():
  model = models.DeepLabV3Plus(
      4, **TINY, channels=16, low_channels=8, dropout_rate=0.5, rngs=nnx.Rngs(0))
  images = jax.random.normal(jax.random.key(4), (1, 20, 20, 3))
  forward = nnx.jit(lambda m, x: m(x))
  model.eval()
  np.testing.assert_array_equal(forward(model, images), forward(model, images))
  model.train()
  assert not np.array_equal(np.asarray(forward(model, images)), np.asarray(forward(model, images)))


def test_random_init_resnet50_activations_stay_finite():
  model = models.ResNet(50, width_multiplier=1 / 8, rngs=nnx.Rngs(0))
  out = jax.jit(lambda x: model(x)["out"])(jax.random.normal(jax.random.key(5), (1, 32, 32, 3)))
  assert bool(jnp.all(jnp.isfinite(out)))
  assert 1e-3 < float(jnp.std(out)) < 1e3


def test_max_pool_matches_reduce_window():
  x = jax.random.normal(jax.random.key(6), (2, 11, 8, 3))
  expected = jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
  np.testing.assert_array_equal(layers.max_pool_3x3_stride2(x), expected)


def _lax_conv(x, kernel, dilation):
  pad = dilation * (kernel.shape[0] - 1) // 2
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("dilation", [1, 2, 4, 9])
def test_gemm_weight_gradient_conv_matches_xla_conv(dilation):
  x = jax.random.normal(jax.random.key(7), (2, 7, 9, 5))
  kernel = jax.random.normal(jax.random.key(8), (3, 3, 5, 6))
  weights = jax.random.normal(jax.random.key(9), (2, 7, 9, 6))

  def loss(conv):
    return lambda x, k: jnp.sum(weights * jnp.tanh(conv(x, k)))

  value, grads = jax.jit(jax.value_and_grad(
      loss(lambda x, k: layers.conv_gemm_weight_grad(x, k, dilation)), (0, 1)))(x, kernel)
  expected_value, expected_grads = jax.jit(jax.value_and_grad(
      loss(lambda x, k: _lax_conv(x, k, dilation)), (0, 1)))(x, kernel)
  np.testing.assert_allclose(value, expected_value, rtol=1e-5)
  for got, expected in zip(grads, expected_grads):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_summed_dilated_convs_match_separate_convs():
  x = jax.random.normal(jax.random.key(10), (2, 6, 11, 4))
  kernels = [jax.random.normal(jax.random.key(11 + i), (3, 3, 4, 3)) for i in range(3)]
  dilations = [1, 4, 12]  # 12 exceeds the image: only the centre tap contributes.

  def separate(x, kernels):
    return sum(_lax_conv(x, k, d) for k, d in zip(kernels, dilations))

  def fused(x, kernels):
    return layers.summed_dilated_convs(x, kernels, dilations)

  np.testing.assert_allclose(
      jax.jit(fused)(x, kernels), jax.jit(separate)(x, kernels), rtol=1e-4, atol=1e-4)
  got = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(fused(x, k))), (0, 1)))(x, kernels)
  expected = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(separate(x, k))), (0, 1)))(x, kernels)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_aspp_v2_init_and_sum():
  head = models.ASPPV2(64, 5, rngs=nnx.Rngs(0))
  kernels = np.stack([np.asarray(branch.kernel[...]) for branch in head.branches])
  assert kernels.shape == (4, 3, 3, 64, 5)
  assert abs(kernels.std() - 0.01) < 0.001
  assert [branch.dilation for branch in head.branches] == [6, 12, 18, 24]
  x = jax.random.normal(jax.random.key(20), (1, 9, 10, 64))
  expected = nnx.jit(lambda h, x: sum(branch(x) for branch in h.branches))(head, x)
  np.testing.assert_allclose(nnx.jit(lambda h, x: h(x))(head, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dilation", [1, 6])
def test_depthwise_conv_matches_grouped_xla_conv(dilation):
  conv = models.Conv(6, 6, 3, dilation=dilation, groups=6, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(21), (2, 7, 10, 6))
  pad = dilation

  def reference(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6,
        precision=jax.lax.Precision.HIGHEST)

  kernel = conv.kernel[...]
  np.testing.assert_allclose(
      nnx.jit(lambda c, x: c(x))(conv, x), reference(x, kernel), rtol=1e-5, atol=1e-5)
  got = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(layers.depthwise_conv(x, k, dilation))),
                         (0, 1)))(x, kernel)
  expected = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(reference(x, k))), (0, 1)))(x, kernel)
  for a, b in zip(got, expected):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
