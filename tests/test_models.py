"""Tests for ripu_jax.models: shapes, torchvision parity, weight loading, conv kernels,
composition (named outputs, auxiliary heads), batch-norm epsilon."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ripu_jax import image_ops, models, optim
from ripu_jax.models import layers, resnet

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")
GOLDEN = os.path.join(GOLDEN_DIR, "resnet_tiny.npz")
# Written by tests/golden/make_resnet_golden.py: bottleneck OS8, ResNet-18 blocks (OS32),
# ResNet-34 blocks at OS16 without dilation, bottleneck OS16 with multi-grid.
GOLDEN_NAMES = ("resnet_tiny", "resnet18_tiny", "resnet34_tiny", "resnet_multigrid_tiny")
TINY = {"blocks": (1, 1, 2, 1), "width_multiplier": 1 / 16}
V3_TINY = dict(TINY, channels=16, low_channels=8)


def _stride2(size: int) -> int:
  """Output size of a torch stride-2 conv/pool with "same"-style padding."""
  return (size - 1) // 2 + 1


def _load_golden(name: str = "resnet_tiny"):
  golden = np.load(os.path.join(GOLDEN_DIR, f"{name}.npz"))
  state_dict = {
      key[len("state_dict/"):]: golden[key]
      for key in golden.files if key.startswith("state_dict/")
  }
  return golden, state_dict


def _golden_kwargs(golden) -> dict:
  """ResNet keyword arguments of a golden file (older files lack the newer keys)."""
  kwargs = {
      "blocks": tuple(int(b) for b in golden["blocks"]),
      "width_multiplier": float(golden["width_multiplier"]),
      "replace_stride_with_dilation": tuple(
          bool(r) for r in golden["replace_stride_with_dilation"]),
  }
  if "depth" in golden.files:
    multi_grid = tuple(int(m) for m in golden["multi_grid"])
    kwargs.update(depth=int(golden["depth"]),
                  drop_stride=tuple(bool(d) for d in golden["drop_stride"]),
                  multi_grid=multi_grid or None)
  return kwargs


def _golden_resnet(state_dict, golden, **overrides):
  return models.resnet_from_torchvision(state_dict, **dict(_golden_kwargs(golden), **overrides))


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
    models.ResNet(35, rngs=nnx.Rngs(0))
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


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_torchvision_golden_parity(name):
  golden, state_dict = _load_golden(name)
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


# ---------------------------------------------------------------------------------------
# Composition: Segmentor, named outputs, auxiliary heads


def _leaves(model):
  """(path, value) of every state leaf, dropout keys as their raw data."""
  leaves = []
  for path, variable in nnx.to_flat_state(nnx.state(model)):
    value = variable.get_value()
    if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
      value = jax.random.key_data(value)
    leaves.append((path, np.asarray(value)))
  return leaves


def _assert_same_state(a, b):
  leaves_a, leaves_b = _leaves(a), _leaves(b)
  assert [path for path, _ in leaves_a] == [path for path, _ in leaves_b]
  for (path, value_a), (_, value_b) in zip(leaves_a, leaves_b):
    assert value_a.dtype == value_b.dtype and np.array_equal(value_a, value_b), path


def test_segmentor_assembled_by_hand_equals_deeplab():
  # Same Rngs, backbone then head: parameter values identical to the DeepLab classes,
  # which is what keeps every seed's numbers unchanged.
  images = jax.random.normal(jax.random.key(30), (1, 21, 27, 3))
  rngs = nnx.Rngs(0)
  backbone = models.ResNet(**TINY, rngs=rngs)
  by_hand = models.Segmentor(backbone, models.ASPPV2(backbone.out_features, 7, rngs=rngs))
  deeplab = models.DeepLabV2(7, **TINY, rngs=nnx.Rngs(0))
  _assert_same_state(by_hand, deeplab)
  np.testing.assert_array_equal(by_hand(images), deeplab(images))

  rngs = nnx.Rngs(0)
  backbone = models.ResNet(**TINY, rngs=rngs)
  head = models.DeepLabV3PlusHead(backbone.out_features, backbone.low_features, 7,
                                  channels=16, low_channels=8, rngs=rngs)
  by_hand = models.Segmentor(backbone, head)
  deeplab = models.DeepLabV3Plus(7, **V3_TINY, rngs=nnx.Rngs(0))
  assert isinstance(deeplab, models.Segmentor)
  _assert_same_state(by_hand, deeplab)
  by_hand.eval()
  deeplab.eval()
  np.testing.assert_array_equal(by_hand(images), deeplab(images))


def test_named_outputs():
  model = models.DeepLabV3Plus(5, **V3_TINY, aux_heads=2, rngs=nnx.Rngs(0))
  model.eval()
  assert model.output_names == ("logits", "aux/0", "aux/1", "features")
  images = jax.random.normal(jax.random.key(31), (2, 33, 41, 3))
  names = ("features", "aux/1", "logits", "aux/0")
  outputs = nnx.jit(lambda m, x: m(x, outputs=names))(model, images)
  assert set(outputs) == set(names)
  low_h, low_w = _stride2(_stride2(33)), _stride2(_stride2(41))
  for name in ("logits", "aux/0", "aux/1"):
    assert outputs[name].shape == (2, low_h, low_w, 5) and outputs[name].dtype == jnp.float32
  assert outputs["features"].shape == (
      2, _stride2(low_h), _stride2(low_w), model.backbone.out_features)
  logits = nnx.jit(lambda m, x: m(x))(model, images)
  np.testing.assert_allclose(outputs["logits"], logits, rtol=1e-6, atol=1e-6)
  # The auxiliary heads are separate random copies, not the main head again.
  assert float(jnp.abs(outputs["aux/0"] - outputs["logits"]).max()) > 1e-4
  assert float(jnp.abs(outputs["aux/1"] - outputs["aux/0"]).max()) > 1e-4
  assert set(model(images, outputs=("aux/0",))) == {"aux/0"}
  with pytest.raises(ValueError, match=r"unknown output.*aux/2.*'logits', 'aux/0', 'aux/1'"):
    model(images, outputs=("logits", "aux/2"))
  with pytest.raises(ValueError, match="sequence of names"):
    model(images, outputs="logits")
  plain = models.DeepLabV2(5, **TINY, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"\['logits', 'features'\]"):
    plain(images, outputs=("aux/0",))


@pytest.mark.parametrize("name", ["deeplabv2", "deeplabv3plus"])
def test_aux_heads_keep_main_parameters_and_train_at_head_rate(name):
  extra = {"channels": 16, "low_channels": 8} if name == "deeplabv3plus" else {}
  plain = models.build_model(name, 4, rngs=nnx.Rngs(0), **TINY, **extra)
  with_aux = models.build_model(name, 4, rngs=nnx.Rngs(0), aux_heads=2, **TINY, **extra)
  assert len(with_aux.aux_heads) == 2 and len(plain.aux_heads) == 0
  main = dict(_leaves(plain))
  for path, value in _leaves(with_aux):
    if path[0] == "aux_heads" or path[-2:] in (("rngs", "count"),):
      continue  # Dropout's stream counts the extra draws; its key is unchanged.
    np.testing.assert_array_equal(value, main[path], err_msg=str(path))
  # Auxiliary heads sit outside `backbone`, so the optimizer gives them the head rate.
  labels = optim.parameter_groups(nnx.state(with_aux, nnx.Param))
  assert set(jax.tree.leaves(labels["aux_heads"])) == {optim.HEAD}
  assert set(jax.tree.leaves(labels["backbone"])) == {optim.BACKBONE}
  with pytest.raises(ValueError, match="aux_heads"):
    models.build_model(name, 4, rngs=nnx.Rngs(0), aux_heads=-1, **TINY, **extra)


@pytest.mark.parametrize("stop", [False, True])
def test_aux_stop_gradient(stop):
  model = models.DeepLabV2(3, **TINY, aux_heads=1, aux_stop_gradient=stop, rngs=nnx.Rngs(0))
  images = jax.random.normal(jax.random.key(32), (1, 16, 16, 3))

  def loss(m):
    return jnp.sum(jnp.sin(m(images, outputs=("aux/0",))["aux/0"]))

  grads = nnx.jit(nnx.grad(loss))(model)
  backbone = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["backbone"]))
  aux = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["aux_heads"]))
  assert aux > 0
  assert (backbone == 0) == stop


# ---------------------------------------------------------------------------------------
# Backbone options: basic blocks, output stride 16, input channels


@pytest.mark.parametrize("depth,counts", [(18, (2, 2, 2, 2)), (34, (3, 4, 6, 3))])
def test_basic_block_resnet_shapes(depth, counts):
  model = models.ResNet(depth, width_multiplier=1 / 16, rngs=nnx.Rngs(0))
  layers_ = (model.layer1, model.layer2, model.layer3, model.layer4)
  assert tuple(len(layer) for layer in layers_) == counts
  assert all(isinstance(block, models.BasicBlock) for layer in layers_ for block in layer)
  assert model.low_features == 4 and model.out_features == 32 and model.output_stride == 8
  assert model.layer1[0].downsample_conv is None  # expansion 1: no projection in layer1.
  features = nnx.jit(lambda m, x: m(x))(model, jnp.ones((1, 33, 47, 3)))
  low_h, low_w = _stride2(_stride2(33)), _stride2(_stride2(47))
  assert features["low"].shape == (1, low_h, low_w, 4)
  assert features["out"].shape == (1, _stride2(low_h), _stride2(low_w), 32)
  assert bool(jnp.all(jnp.isfinite(features["out"])))


def test_os16_multi_grid_dilations_and_shape():
  kwargs = dict(blocks=(1, 1, 1, 3), width_multiplier=1 / 16,
                replace_stride_with_dilation=(False, False, True))
  model = models.ResNet(**kwargs, multi_grid=(1, 2, 4), rngs=nnx.Rngs(0))
  assert [block.conv2.dilation for block in model.layer4] == [2, 4, 8]
  assert [block.conv2.stride for block in model.layer4] == [1, 1, 1]
  assert model.layer3[0].conv2.stride == 2 and model.output_stride == 16
  out = nnx.jit(lambda m, x: m(x)["out"])(model, jnp.ones((1, 65, 49, 3)))
  assert out.shape == (1, 5, 4, model.out_features)  # ceil(65 / 16), ceil(49 / 16)
  # Without multi-grid, torchvision's rule: the first block keeps the previous dilation.
  plain = models.ResNet(**kwargs, rngs=nnx.Rngs(0))
  assert [block.conv2.dilation for block in plain.layer4] == [1, 2, 2]
  # Output stride 16 without dilation (ELN's ResNet-34).
  eln = models.ResNet(34, blocks=(1, 1, 1, 3), width_multiplier=1 / 16,
                      replace_stride_with_dilation=(False, False, False),
                      drop_stride=(False, False, True), rngs=nnx.Rngs(0))
  assert eln.output_stride == 16
  assert {block.conv1.dilation for block in eln.layer4} == {1}
  assert eln.layer4[0].downsample_conv is not None and eln.layer4[0].conv1.stride == 1
  v3 = models.DeepLabV3Plus(3, blocks=(1, 1, 1, 3), width_multiplier=1 / 16, channels=16,
                            low_channels=8, replace_stride_with_dilation=(False, False, True),
                            multi_grid=(1, 2, 4), rngs=nnx.Rngs(0))
  assert [block.conv2.dilation for block in v3.backbone.layer4] == [2, 4, 8]
  with pytest.raises(ValueError, match="multi_grid"):
    models.ResNet(**kwargs, multi_grid=(1, 2), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="both"):
    models.ResNet(drop_stride=(False, False, True), rngs=nnx.Rngs(0))


def test_in_channels():
  model = models.DeepLabV2(3, **TINY, in_channels=6, rngs=nnx.Rngs(0))
  assert model.backbone.conv1.kernel.shape[2] == 6
  logits = nnx.jit(lambda m, x: m(x))(model, jnp.ones((1, 17, 19, 6)))
  assert logits.shape == (1, 3, 3, 3)
  with pytest.raises(ValueError, match="6 channels"):
    model(jnp.ones((1, 17, 19, 3)))
  with pytest.raises(ValueError, match="in_channels"):
    models.ResNet(in_channels=0, rngs=nnx.Rngs(0))


def test_imagenet_weights_into_a_wider_stem():
  golden, state_dict = _load_golden("resnet18_tiny")
  with pytest.raises(ValueError, match=r"conv1\.weight.*6 input channels.*keep_random"):
    _golden_resnet(state_dict, golden, in_channels=6)
  model = _golden_resnet(state_dict, golden, in_channels=6, keep_random=("conv1",))
  random_stem = models.ResNet(18, **{k: v for k, v in _golden_kwargs(golden).items()
                                     if k != "depth"}, in_channels=6, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(model.conv1.kernel[...], random_stem.conv1.kernel[...])
  np.testing.assert_array_equal(model.bn1.running_var[...], state_dict["bn1.running_var"])
  np.testing.assert_array_equal(
      model.layer4[1].conv2.kernel[...], state_dict["layer4.1.conv2.weight"].transpose(2, 3, 1, 0))
  # Keys under keep_random may be absent; a prefix that names nothing is an error.
  partial = {k: v for k, v in state_dict.items() if not k.startswith("layer2.0.downsample")}
  _golden_resnet(partial, golden, keep_random=("layer2.0.downsample",))
  with pytest.raises(ValueError, match="keep_random names no variable"):
    _golden_resnet(state_dict, golden, keep_random=("conv9",))


def test_basic_block_weights_need_a_basic_block_model():
  golden, state_dict = _load_golden("resnet18_tiny")
  kwargs = _golden_kwargs(golden)
  kwargs["depth"] = 50
  with pytest.raises(ValueError, match="missing"):
    models.resnet_from_torchvision(state_dict, **kwargs)


# ---------------------------------------------------------------------------------------
# Batch-norm epsilon


@pytest.mark.parametrize("eps", [0.0, 1e-5, 1e-3])
def test_frozen_batch_norm_epsilon_matches_numpy(eps):
  rng = np.random.default_rng(1)
  weight, bias = rng.uniform(0.5, 1.5, 6), rng.normal(size=6)
  mean, var = rng.normal(size=6), np.array([1e-6, 1e-4, 0.01, 0.5, 1.0, 3.0])
  bn = models.FrozenBatchNorm(6, eps=eps)
  for name, value in dict(weight=weight, bias=bias, running_mean=mean, running_var=var).items():
    getattr(bn, name).set_value(jnp.asarray(value, jnp.float32))
  x = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
  # The release's frozen BN (eps 0): scale = weight / sqrt(running_var), shift = bias -
  # running_mean * scale; torchvision's adds eps under the root.
  scale = weight / np.sqrt(var + eps)
  expected = x * scale + (bias - mean * scale)
  np.testing.assert_allclose(bn(jnp.asarray(x)), expected, rtol=2e-5, atol=2e-5)


def test_bn_epsilon_reaches_every_batch_norm():
  def epsilons(model):
    return {node.eps for _, node in nnx.iter_graph(model)
            if isinstance(node, models.FrozenBatchNorm)}

  assert epsilons(models.DeepLabV3Plus(3, **V3_TINY, rngs=nnx.Rngs(0))) == {1e-5}
  assert epsilons(models.DeepLabV3Plus(3, **V3_TINY, bn_epsilon=0.0, aux_heads=1,
                                       rngs=nnx.Rngs(0))) == {0.0}
  assert epsilons(models.build_model("deeplabv2", 3, rngs=nnx.Rngs(0), bn_epsilon=0.0,
                                     **TINY)) == {0.0}
  assert epsilons(models.ResNet(18, width_multiplier=1 / 16, bn_epsilon=0.0,
                                rngs=nnx.Rngs(0))) == {0.0}
  # Parameters do not depend on epsilon; with the head's default statistics (variance 1)
  # eps 0 makes every head batch norm an exact identity.
  _assert_same_state(models.DeepLabV2(3, **TINY, rngs=nnx.Rngs(0)),
                     models.DeepLabV2(3, **TINY, bn_epsilon=0.0, rngs=nnx.Rngs(0)))
  x = jax.random.normal(jax.random.key(33), (1, 4, 4, 5))
  np.testing.assert_array_equal(models.FrozenBatchNorm(5, eps=0.0)(x), x)
  with pytest.raises(ValueError, match="bn_epsilon"):
    models.ResNet(**TINY, bn_epsilon=-1e-5, rngs=nnx.Rngs(0))


def test_golden_parity_with_release_epsilon():
  golden, state_dict = _load_golden()
  model = _golden_resnet(state_dict, golden, bn_epsilon=0.0)
  features = jax.jit(lambda x: model(x))(jnp.asarray(golden["inputs"]))
  # The golden features use eps 1e-5 and running variances >= 0.5: eps 0 moves them by
  # well under 1e-4 relative, but not by nothing.
  expected = golden["expected_out"]
  relative_error = np.abs(np.asarray(features["out"]) - expected).max() / np.abs(expected).max()
  assert 0 < relative_error < 1e-3


# ---------------------------------------------------------------------------------------
# upsample_logits


def test_upsample_logits_is_the_one_upsample():
  assert models.upsample is image_ops.upsample_logits
  assert models.upsample_logits is image_ops.upsample_logits
  logits = jax.random.normal(jax.random.key(34), (1, 3, 4, 2)).astype(jnp.bfloat16)
  full = image_ops.upsample_logits(logits, (5, 7))
  assert full.shape == (1, 5, 7, 2) and full.dtype == jnp.float32
  expected = image_ops.resize_bilinear(logits.astype(jnp.float32), (5, 7))
  np.testing.assert_array_equal(full, expected)
  with pytest.raises(ValueError, match="rank 4"):
    image_ops.upsample_logits(jnp.zeros((3, 4, 2)), (5, 7))
  with pytest.raises(ValueError, match="height, width"):
    image_ops.upsample_logits(logits, 5)
  with pytest.raises(ValueError, match="positive"):
    image_ops.upsample_logits(logits, (0, 7))
