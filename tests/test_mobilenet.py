"""Tests for MobileNetV2, "deeplabv3plus_mobilenet" and Monte-Carlo channel dropout:
torchvision parity (tests/golden/mobilenet_v2_tiny.npz, from make_mobilenet_golden.py),
weight conversion and loading, shapes and dilations, MC-dropout semantics under jit and
scan, and the same option on the ResNet DeepLab-v3+."""

from __future__ import annotations

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ripu_jax import models
from ripu_jax.models import mobilenet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden", "mobilenet_v2_tiny.npz")
# golden case -> (output_stride, dilation_rule)
CASES = {"os32": (32, "stage"), "os16": (16, "stage"), "os16_block": (16, "block"),
         "os8": (8, "stage"), "os8_block": (8, "block")}
TINY = dict(width_multiplier=0.25, channels=16, low_channels=8)
RESNET_TINY = dict(depth=18, blocks=(1, 1, 1, 1), width_multiplier=1 / 8, channels=16,
                   low_channels=8)


def _golden():
  golden = np.load(GOLDEN)
  state_dict = {key[len("state_dict/"):]: golden[key]
                for key in golden.files if key.startswith("state_dict/")}
  return golden, state_dict


def _converter():
  spec = importlib.util.spec_from_file_location(
      "convert_torchvision_mobilenet",
      os.path.join(ROOT, "scripts", "convert_torchvision_mobilenet.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _close(got, expected, tolerance=2e-4):
  got = np.asarray(got)
  assert got.shape == expected.shape
  relative_error = np.abs(got - expected).max() / np.abs(expected).max()
  assert relative_error <= tolerance, relative_error


@functools.partial(jax.jit, static_argnums=0)
def _probe(graphdef, state, images, keys):
  model = nnx.merge(graphdef, state)
  step = lambda carry, key: (carry, models.mc_logits(model, images, key))
  passes = jax.lax.scan(step, None, keys)[1]
  features = model.backbone(images)
  dropped = model.feature_dropout(features, keys[0])
  named = model(images, outputs=("logits", "features"), dropout_key=keys[0])
  plain = model.outputs_from_features(features, ("logits",))["logits"]  # no key
  return {"mc": passes, "plain": plain, "features": features, "dropped": dropped,
          "head_on_dropped": model.head(dropped), "named_logits": named["logits"],
          "named_features": named["features"]}


def probe(model, images, keys):
  """What the MC tests compare, from one compiled program (eager runs are slow): MC passes
  under `jax.jit` and `lax.scan`, one per key (three keys, one compilation), and keys[0]'s
  pass taken apart. Models of one structure share the compilation."""
  assert len(keys) == 3
  graphdef, state = nnx.split(model)
  return _probe(graphdef, state, images, jnp.stack(keys))


def _keys(*seeds):
  return [jax.random.key(seed) for seed in seeds]


@pytest.fixture(scope="module")
def golden():
  return _golden()


@pytest.fixture(scope="module")
def viewal_model():
  model = models.build_model("deeplabv3plus_mobilenet", 5, rngs=nnx.Rngs(0), **TINY)
  model.eval()
  return model


@pytest.fixture(scope="module")
def images():
  return jax.random.normal(jax.random.key(7), (2, 32, 32, 3))


def _assert_channel_mask(kept, got, rate=0.25):
  """`got` is `kept` with whole (image, channel) maps zeroed and the rest scaled up."""
  kept, got = np.asarray(kept), np.asarray(got)
  zeroed = np.all(got == 0, axis=(1, 2), keepdims=True) & np.any(kept != 0, axis=(1, 2),
                                                                 keepdims=True)
  assert 0 < zeroed.sum() < zeroed.size
  np.testing.assert_allclose(got, np.where(zeroed, 0, kept / (1 - rate)), rtol=1e-5,
                             atol=1e-6)


# ---------------------------------------------------------------------------- backbone


@pytest.mark.parametrize("case", sorted(CASES))
def test_torchvision_golden_parity(golden, case):
  golden, state_dict = golden
  output_stride, rule = CASES[case]
  model = models.mobilenet_from_torchvision(
      state_dict, width_multiplier=float(golden["width_multiplier"]),
      output_stride=output_stride, dilation_rule=rule)
  features = jax.jit(lambda x: model(x))(jnp.asarray(golden["inputs"]))
  _close(features["low"], golden["expected_low"])
  _close(features["out"], golden[f"expected_out_{case}"])
  np.testing.assert_allclose(features["out"], golden[f"expected_out_{case}"], atol=1e-4)


def test_converter_output_loads_into_build_model(golden, tmp_path):
  golden, state_dict = golden
  extra = dict(state_dict)
  extra["features.18.0.weight"] = np.zeros((1280, 80, 1, 1), np.float32)
  extra["classifier.1.weight"] = np.zeros((1000, 1280), np.float32)
  path = _converter().convert(extra, str(tmp_path / "mobilenet"), width_multiplier=0.25)
  assert path.endswith(".npz")
  written = models.load_mobilenet_npz(path)
  assert set(written) == set(state_dict)  # features.18 and the classifier are dropped
  model = models.build_model("deeplabv3plus_mobilenet", 3, rngs=nnx.Rngs(0), pretrained=path,
                             width_multiplier=0.25, channels=8, low_channels=8)
  model.eval()
  np.testing.assert_array_equal(
      model.backbone.features[14].depthwise_conv.kernel[...],
      state_dict["features.14.conv.1.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(model.backbone.features[1].project_bn.running_var[...],
                                state_dict["features.1.conv.2.running_var"])
  # Every variable as in the backbone the parity test checks against torch.
  reference = models.mobilenet_from_torchvision(state_dict, width_multiplier=0.25)
  loaded = dict(nnx.to_flat_state(nnx.state(model.backbone)))
  for path, value in nnx.to_flat_state(nnx.state(reference)):
    np.testing.assert_array_equal(loaded[path][...], value[...])
  with pytest.raises(ValueError, match="convert_torchvision_mobilenet"):
    models.build_model("deeplabv3plus_mobilenet", 3, rngs=nnx.Rngs(0),
                       pretrained=str(tmp_path / "missing.npz"), width_multiplier=0.25)
  with pytest.raises(ValueError, match=r"features\.0\.0\.weight.*width_multiplier"):
    _converter().convert(state_dict, str(tmp_path / "wide.npz"), width_multiplier=1.0)


def test_state_dict_errors_name_the_key(golden):
  _, state_dict = golden
  load = lambda sd, **kw: models.mobilenet_from_torchvision(sd, width_multiplier=0.25, **kw)
  missing = dict(state_dict)
  del missing["features.7.conv.1.1.running_mean"]
  with pytest.raises(ValueError, match=r"missing.*features\.7\.conv\.1\.1\.running_mean"):
    load(missing)
  unexpected = dict(state_dict, **{"features.19.conv.0.weight": np.zeros(1, np.float32)})
  with pytest.raises(ValueError, match=r"features\.19\.conv\.0\.weight"):
    load(unexpected)
  with pytest.raises(ValueError, match=r"features\.0\.0\.weight.*keep_random"):
    load(state_dict, in_channels=4)
  model = load(state_dict, in_channels=4, keep_random=("features.0.0",))
  assert model.features[0].conv.kernel.shape == (3, 3, 4, 8)
  np.testing.assert_array_equal(model.features[0].bn.weight[...],
                                state_dict["features.0.1.weight"])
  with pytest.raises(ValueError, match="keep_random"):
    load(state_dict, keep_random=("features.99",))


def test_layout_channels_and_dilations():
  full = nnx.eval_shape(lambda: models.MobileNetV2(rngs=nnx.Rngs(0)))
  assert (full.low_features, full.out_features, full.output_stride) == (24, 320, 16)
  assert len(full.features) == 18  # stem + 17 blocks; torchvision's 1280 conv is left out
  assert full.dilations[-4:] == (1, 1, 1, 2)  # ViewAL's rule: the 320 stage at dilation 2
  block = nnx.eval_shape(lambda: models.MobileNetV2(dilation_rule="block", rngs=nnx.Rngs(0)))
  assert block.dilations[-4:] == (1, 2, 2, 2)
  assert [mobilenet.make_divisible(c * 0.25) for c in (32, 16, 24, 320)] == [8, 8, 8, 80]
  with pytest.raises(ValueError, match="output_stride"):
    models.MobileNetV2(output_stride=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="dilation_rule"):
    models.MobileNetV2(dilation_rule="layer", rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------- network


def test_deeplabv3plus_mobilenet_shapes(viewal_model, images):
  assert "deeplabv3plus_mobilenet" in models.model_names()
  model = viewal_model
  outputs = probe(model, images, _keys(1, 2, 3))
  features, logits = outputs["features"], outputs["plain"]
  assert features["low"].shape == (2, 8, 8, model.backbone.low_features)
  assert features["out"].shape == (2, 2, 2, model.backbone.out_features)  # output stride 16
  assert logits.shape == (2, 8, 8, 5) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  head = model.head
  assert [branch.conv.dilation for branch in head.aspp_branches] == [6, 12, 18]
  assert head.bottleneck.conv.kernel.shape[:2] == (1, 1)  # 1x1 projection after the ASPP
  assert isinstance(head.decoder1, type(head.bottleneck))  # plain 3x3 convs, not separable
  assert head.aspp_dropout.rate == 0.5 and head.decoder_dropout.rate == 0.5
  assert head.dropout.rate == 0.25 and head.dropout.broadcast_dims == ()
  assert model.feature_dropout.names == ("out", "low")
  assert all(layer.rate == 0.25 for layer in model.feature_dropout.layers)
  assert isinstance(head.bottleneck.bn, models.BatchNorm)
  assert isinstance(model.backbone.features[5].depthwise_bn.weight, nnx.Param)


def test_mc_passes_follow_the_key(viewal_model, images):
  keys = _keys(1, 2, 1)
  outputs = probe(viewal_model, images, keys)
  passes = outputs["mc"]
  assert passes.shape == (3, 2, 8, 8, 5)
  np.testing.assert_array_equal(passes[0], passes[2])
  assert not np.allclose(passes[0], passes[1])
  # Without a key the eval-mode network is deterministic and has no channel dropout.
  again = probe(viewal_model, images, _keys(2, 3, 4))
  np.testing.assert_array_equal(outputs["plain"], again["plain"])
  np.testing.assert_allclose(again["mc"][0], passes[1], rtol=1e-5, atol=1e-5)
  assert not np.allclose(outputs["plain"], passes[0])
  # The channel dropout sits between backbone and head, on "out" and "low", and nothing
  # else is random in a pass (the pass in the scan equals the one taken apart outside).
  for name in ("out", "low"):
    _assert_channel_mask(outputs["features"][name], outputs["dropped"][name])
  np.testing.assert_allclose(passes[0], outputs["head_on_dropped"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outputs["named_logits"], passes[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outputs["named_features"], outputs["dropped"]["out"], rtol=1e-6,
                             atol=1e-6)


def test_channel_dropout_drops_whole_channels():
  layer = models.ChannelDropout(0.25, rngs=nnx.Rngs(0))
  layer.eval()
  x = jnp.ones((4, 5, 6, 64))
  np.testing.assert_array_equal(layer(x), x)  # eval mode, no key: identity
  y = np.asarray(layer(x, jax.random.key(0)))
  # One value per image and channel, constant over H and W: 0 or 1 / (1 - p).
  np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1, :1, :], y.shape))
  assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
  assert 0.1 < float(np.mean(y == 0)) < 0.4
  features = {"low": jnp.ones((2, 8, 8, 32)), "out": jnp.ones((2, 2, 2, 32))}
  dropped = models.FeatureDropout(0.25, rngs=nnx.Rngs(0))(features, jax.random.key(1))
  low, out = np.asarray(dropped["low"]), np.asarray(dropped["out"])
  np.testing.assert_array_equal(low, np.broadcast_to(low[:, :1, :1], low.shape))
  assert not np.array_equal(low[:, 0, 0] == 0, out[:, 0, 0] == 0)  # independent masks


def test_training_dropouts_only_in_training_mode(viewal_model, images):
  model = viewal_model
  key = jax.random.key(4)
  reference = probe(model, images, [key, key, key])  # eval mode
  model.train()
  try:
    # mc_logits runs the eval-mode network (running statistics, no training dropouts)
    # whatever the model's mode, and leaves the mode as it was.
    mc = nnx.jit(models.mc_logits)(model, images, key)
    np.testing.assert_allclose(mc, reference["mc"][0], rtol=1e-5, atol=1e-5)
    head = model.head
    assert head.dropout.deterministic is False and head.aspp_dropout.deterministic is False
    assert model.backbone.features[1].project_bn.use_running_average is False
    # In training mode the element-wise head dropouts draw fresh masks on every call...
    x = jnp.ones((2, 4, 4, 16))
    for layer in (head.aspp_dropout, head.decoder_dropout, head.dropout):
      first, second = np.asarray(layer(x)), np.asarray(layer(x))
      assert not np.array_equal(first, second)
      assert not np.array_equal(first[:, :1, :1], first[:, 1:2, 1:2])  # element-wise
    # ... and without a key the channel dropouts follow the mode: active in training.
    features = {name: jnp.abs(value) + 1 for name, value in reference["features"].items()}
    dropped = model.feature_dropout(features)
    for name in ("out", "low"):
      _assert_channel_mask(features[name], dropped[name])
  finally:
    model.eval()
  assert model.feature_dropout(features)["out"] is features["out"]


def test_dropout_key_needs_channel_dropout(images):
  model = models.build_model("deeplabv3plus_mobilenet", 5, rngs=nnx.Rngs(0),
                             channel_dropout=0.0, **TINY)
  assert model.feature_dropout is None
  with pytest.raises(ValueError, match="channel dropout"):
    models.mc_logits(model, images, jax.random.key(0))
  with pytest.raises(ValueError, match="channel_dropout"):
    models.build_model("deeplabv3plus_mobilenet", 5, rngs=nnx.Rngs(0), channel_dropout=1.0,
                       **TINY)


# ---------------------------------------------------------------------------- ResNet


def test_resnet_deeplabv3plus_channel_dropout_option(images):
  plain = models.build_model("deeplabv3plus", 4, rngs=nnx.Rngs(0), **RESNET_TINY)
  model = models.build_model("deeplabv3plus", 4, rngs=nnx.Rngs(0), channel_dropout=0.25,
                             **RESNET_TINY)
  assert plain.feature_dropout is None
  # The dropout layers are built after the heads: every weight is as without them.
  plain_params = nnx.to_flat_state(nnx.state(plain, nnx.Param))
  params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  assert len(plain_params) == len(params)
  for path, value in plain_params:
    np.testing.assert_array_equal(value[...], params[path][...])
  model.eval()
  key = jax.random.key(5)
  first = probe(model, images, [key, jax.random.key(6), key])
  np.testing.assert_array_equal(first["mc"][0], first["mc"][2])
  assert not np.allclose(first["mc"][0], first["mc"][1])
  # layer4 ("out") and layer1 ("low") are dropped by whole channels before the head.
  for name in ("out", "low"):
    _assert_channel_mask(first["features"][name], first["dropped"][name])
  np.testing.assert_allclose(first["mc"][0], first["head_on_dropped"], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="channel dropout"):
    models.mc_logits(plain, images, key)
