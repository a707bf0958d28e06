"""ELN's networks: the output-stride-16 student with projection and auxiliary heads, and the
error-localisation network over image, entropy and logits."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ripu_jax import models
from ripu_jax.methods.eln import losses
from ripu_jax.methods.eln import networks

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")
STUDENT = dict(depth=50, blocks=(1, 1, 1, 3), width_multiplier=1 / 16, channels=16,
               low_channels=8, projection_channels=8)
ELN = dict(blocks=(1, 1, 1, 1), width_multiplier=1 / 16, channels=16, low_channels=8)


def test_student_outputs_stride_and_heads():
  model = models.build_model("eln_deeplabv3plus", 5, rngs=nnx.Rngs(0), aux_heads=2,
                             aux_stop_gradient=True, **STUDENT)
  assert model.backbone.output_stride == 16
  assert [block.conv2.dilation for block in model.backbone.layer4] == [2, 4, 8]
  assert model.output_names == ("logits", "aux/0", "aux/1", "features", "projection")
  model.eval()
  images = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
  outputs = nnx.jit(lambda m, x: m(x, outputs=("projection", "aux/1", "logits")),
                    )(model, images)
  assert set(outputs) == {"projection", "aux/1", "logits"}
  assert outputs["logits"].shape == (2, 16, 24, 5)
  assert outputs["aux/1"].shape == (2, 16, 24, 5)
  assert outputs["projection"].shape == (2, 16, 24, 8)
  # The logits from the joint pass equal the plain call's.
  np.testing.assert_allclose(outputs["logits"], model(images), rtol=1e-5, atol=1e-5)
  # Auxiliary heads read stop-gradient features: their loss leaves the backbone alone.
  grads = nnx.grad(lambda m: jnp.sum(m(images, outputs=("aux/0",))["aux/0"]))(model)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(nnx.state(grads.backbone)))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(nnx.state(grads.aux_heads)))


def test_student_batch_norm_kinds():
  batch = networks.ElnDeepLab(3, **STUDENT, rngs=nnx.Rngs(0))
  assert isinstance(batch.backbone.bn1, models.BatchNorm)
  assert isinstance(batch.head.decoder.fuse1.bn, models.BatchNorm)
  # "batch": scale and shift are not parameters (the release leaves them out).
  params = nnx.state(batch, nnx.Param)
  assert "bn1" not in params["backbone"]
  frozen = networks.ElnDeepLab(3, **STUDENT, norm="frozen", rngs=nnx.Rngs(0))
  assert isinstance(frozen.head.decoder.fuse1.bn, models.FrozenBatchNorm)


def test_eln_input_and_output():
  num_classes = 4
  eln = networks.ErrorLocalizationNet(num_classes, **ELN, rngs=nnx.Rngs(0))
  assert eln.backbone.in_channels == 4 + num_classes and eln.backbone.output_stride == 16
  images = jax.random.normal(jax.random.key(1), (2, 32, 48, 3))
  logits = jax.random.normal(jax.random.key(2), (2, 8, 12, num_classes))
  inputs = eln.inputs(images, logits)
  assert inputs.shape == (2, 32, 48, 4 + num_classes)
  np.testing.assert_array_equal(inputs[..., :3], images)
  upsampled = models.upsample_logits(logits, (32, 48))
  np.testing.assert_allclose(inputs[..., 4:], upsampled, rtol=1e-6)
  np.testing.assert_allclose(inputs[..., 3], losses.entropy_map(upsampled), rtol=1e-5)
  eln.eval()
  out = eln(images, logits)
  assert out.shape == (2, 8, 12) and out.dtype == jnp.float32
  # Inputs are detached: no gradient reaches the prediction being judged.
  grad = jax.grad(lambda z: jnp.sum(eln(images, z)))(logits)
  assert float(jnp.abs(grad).max()) == 0.0
  with pytest.raises(ValueError, match="expected logits"):
    eln(images, logits[..., :3])


def test_eln_backbone_takes_imagenet_weights_but_its_stem_and_shortcuts():
  golden = np.load(os.path.join(GOLDEN_DIR, "resnet34_tiny.npz"))
  state_dict = {key[len("state_dict/"):]: golden[key]
                for key in golden.files if key.startswith("state_dict/")}
  blocks = tuple(int(b) for b in golden["blocks"])
  eln = networks.ErrorLocalizationNet(3, blocks=blocks,
                                      width_multiplier=float(golden["width_multiplier"]),
                                      channels=16, low_channels=8, rngs=nnx.Rngs(0))
  stem = np.asarray(eln.backbone.conv1.kernel[...]).copy()
  shortcut = np.asarray(eln.backbone.layer2[0].downsample_conv.kernel[...]).copy()
  models.load_torchvision_weights(eln.backbone, state_dict,
                                  keep_random=networks.ELN_RANDOM_KEYS)
  np.testing.assert_array_equal(eln.backbone.conv1.kernel[...], stem)
  np.testing.assert_array_equal(eln.backbone.layer2[0].downsample_conv.kernel[...], shortcut)
  np.testing.assert_array_equal(eln.backbone.layer3[0].conv1.kernel[...],
                                state_dict["layer3.0.conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(eln.backbone.layer1[0].bn2.running_var[...],
                                state_dict["layer1.0.bn2.running_var"])
