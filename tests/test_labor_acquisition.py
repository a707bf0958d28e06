"""LabOR's acquisition: the selection math against brute-force numpy oracles, and both
acquirers ("labor_spl", "labor_ppl") over two rounds of a fake pool, checked against the
ledger's invariants and the budgets."""

from fractions import Fraction
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import acquisition_oracles as oracle
from ripu_jax import config_lib
from ripu_jax import sharding
from ripu_jax.acquisition import budgets
from ripu_jax.acquisition.acquirers import ACQUIRERS, RoundPool
from ripu_jax.errors import ConfigError
from ripu_jax.ledger import LabelLedger
from ripu_jax.methods.labor import acquirers as labor_acquirers
from ripu_jax.methods.labor import selection

# ---------------------------------------------------------------------- oracles


def oracle_inconsistency(logits1, logits2, label_size, input_size=None):
  """One image [h, w, C] per head -> (mask, discrepancy), float64, pixel by pixel; through
  `input_size` first when given, as the release's rounds upsample."""
  def upsample(logits):
    if input_size is not None:
      logits = oracle.bilinear_align_corners(logits, *input_size)
    return oracle.bilinear_align_corners(logits, *label_size)
  p1 = oracle.softmax(upsample(logits1))
  p2 = oracle.softmax(upsample(logits2))
  return p1.argmax(-1) != p2.argmax(-1), np.abs(p1 - p2).sum(-1), p1, p2


def oracle_spl(mask, discrepancy, excluded, quota):
  height, width = mask.shape
  candidates = [(i, j) for i in range(height) for j in range(width)
                if mask[i, j] and not excluded[i, j]]
  if quota is not None:
    candidates = sorted(candidates, key=lambda p: (-discrepancy[p], p[0] * width + p[1]))
    candidates = candidates[:quota]
  chosen = np.zeros(mask.shape, bool)
  for p in candidates:
    chosen[p] = True
  return chosen


def oracle_ppl(mask, probs, excluded, quota):
  height, width, num_classes = probs.shape
  groups = {}
  for i in range(height):
    for j in range(width):
      if mask[i, j] and not excluded[i, j]:
        groups.setdefault(int(np.argmax(probs[i, j])), []).append((i, j))
  classes = sorted(groups, key=lambda k: (-len(groups[k]), k))[:quota]
  points = []
  for k in sorted(classes):
    prototype = np.mean([probs[p].astype(np.float64) for p in groups[k]], axis=0)
    best, best_distance = None, math.inf
    for p in groups[k]:  # flat order; a strictly smaller distance replaces the best
      distance = math.sqrt(((probs[p].astype(np.float64) - prototype) ** 2).sum())
      if distance < best_distance:
        best, best_distance = p, distance
    points.append(best)
  del num_classes
  return np.asarray(points, np.int32).reshape(-1, 2)


# ---------------------------------------------------------------------- selection math


@pytest.mark.parametrize("input_size", [None, (5, 8)])
def test_inconsistency_matches_the_oracle_at_the_label_size(input_size):
  rng = np.random.default_rng(0)
  logits1 = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
  logits2 = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
  label_size = (7, 11)
  mask, discrepancy = jax.jit(selection.inconsistency, static_argnums=(2, 3))(
      logits1, logits2, label_size, input_size)
  assert mask.shape == discrepancy.shape == (2, 7, 11)
  assert mask.dtype == jnp.bool_ and discrepancy.dtype == jnp.float32
  for b in range(2):
    want_mask, want_d, p1, p2 = oracle_inconsistency(logits1[b], logits2[b], label_size,
                                                     input_size)
    np.testing.assert_allclose(np.asarray(discrepancy[b]), want_d, atol=1e-5)
    # Compare the arg-max only where neither head is within rounding of a tie.
    clear = np.ones(label_size, bool)
    for p in (p1, p2):
      top2 = np.sort(p, -1)[..., -2:]
      clear &= top2[..., 1] - top2[..., 0] > 1e-5
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(np.asarray(mask[b])[clear], want_mask[clear])
    assert want_mask.any() and not want_mask.all()
  same, zero = selection.inconsistency(logits1, logits1, label_size)
  assert not np.asarray(same).any() and float(jnp.abs(zero).max()) == 0.0
  with pytest.raises(ValueError, match="one shape"):
    selection.inconsistency(logits1, logits2[:1], label_size)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("quota", [None, 0, 1, 5, 40, 1000])
def test_spl_pixels_match_the_oracle_with_ties_and_exclusions(seed, quota):
  rng = np.random.default_rng(seed)
  shape = (9, 13)
  mask = rng.random(shape) < 0.6
  # Few distinct values: many exact ties, which is where the tie rule shows.
  discrepancy = rng.choice(np.float32([0.0, 0.5, 1.0, 1.5]), size=shape)
  excluded = rng.random(shape) < 0.2
  got = selection.spl_pixels(mask, discrepancy, excluded, quota)
  np.testing.assert_array_equal(got, oracle_spl(mask, discrepancy, excluded, quota))
  assert not (got & excluded).any() and (got <= mask).all()
  if quota is not None:
    assert got.sum() == min(quota, (mask & ~excluded).sum())


def test_spl_ties_go_to_the_smallest_flat_index():
  mask = np.ones((2, 3), bool)
  discrepancy = np.float32([[1, 2, 2], [2, 1, 0]])
  excluded = np.zeros((2, 3), bool)
  excluded[0, 1] = True
  got = selection.spl_pixels(mask, discrepancy, excluded, 2)
  np.testing.assert_array_equal(got, [[False, False, True], [True, False, False]])
  with pytest.raises(ValueError, match="quota"):
    selection.spl_pixels(mask, discrepancy, excluded, -1)


def _probs_with_ties(rng, shape, num_classes, distinct=6):
  """Probability maps drawn from a few distinct vectors: repeated rows tie on distance."""
  table = rng.dirichlet(np.ones(num_classes), size=distinct).astype(np.float32)
  return table[rng.integers(0, distinct, size=shape)]


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("quota", [0, 1, 2, 3, 19])
def test_ppl_points_match_the_oracle(seed, quota):
  rng = np.random.default_rng(seed)
  shape, num_classes = (8, 11), 5
  mask = rng.random(shape) < 0.7
  excluded = rng.random(shape) < 0.25
  probs = (_probs_with_ties(rng, shape, num_classes) if seed % 2 else
           rng.dirichlet(np.ones(num_classes), size=shape).astype(np.float32))
  got = selection.ppl_points(mask, probs, excluded, quota)
  want = oracle_ppl(mask, probs, excluded, quota)
  np.testing.assert_array_equal(got, want)
  assert got.dtype == np.int32 and got.shape[1] == 2
  # At most one point per predicted class, on candidates, in increasing class id.
  classes = probs[got[:, 0], got[:, 1]].argmax(-1)
  assert list(classes) == sorted(set(classes.tolist()))
  assert mask[got[:, 0], got[:, 1]].all() and not excluded[got[:, 0], got[:, 1]].any()
  assert len(got) <= quota


def test_ppl_prototype_ties_and_classes_beyond_the_quota():
  # Class 0 owns 3 pixels, class 1 owns 2, class 2 owns 2 (class 1 wins the size tie).
  a, b = [0.8, 0.1, 0.1], [0.6, 0.3, 0.1]
  probs = np.float32([[a, b, [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]],
                      [b, [0.1, 0.1, 0.8], [0.2, 0.1, 0.7], [0.9, 0.05, 0.05]]])
  mask = np.ones((2, 4), bool)
  excluded = np.zeros((2, 4), bool)
  excluded[1, 3] = True  # drops a class-0 pixel from D(0) and from its prototype
  # D(0) = {a at 0, b at 1, b at 4}: the mean is nearest b; the b at flat 1 wins the tie.
  # D(1): two equal rows, the first wins. D(2): rows 5 and 6 tie on distance to their mean.
  np.testing.assert_array_equal(selection.ppl_points(mask, probs, excluded, 3),
                                [[0, 1], [0, 2], [1, 1]])
  np.testing.assert_array_equal(selection.ppl_points(mask, probs, excluded, 2),
                                [[0, 1], [0, 2]])
  np.testing.assert_array_equal(selection.ppl_points(mask, probs, excluded, 1), [[0, 1]])
  assert selection.ppl_points(mask, probs, np.ones((2, 4), bool), 3).shape == (0, 2)
  with pytest.raises(ValueError, match="increasing"):
    selection.prototype_points(np.array([3, 1]), probs.reshape(-1, 3)[:2], width=4, quota=1)


# ---------------------------------------------------------------------- acquirers

SHAPE = (24, 40)  # label size of every pool image
INPUT_SIZE = (8, 8)  # the images the network sees: logits reach SHAPE through it
NUM_IMAGES, NUM_CLASSES = 4, 5


def _network_outputs(seed):
  """{network: {output: logits [N, 6, 10, C]}}: a selector with two disagreeing heads and a
  model with two auxiliary heads (for share_backbone)."""
  rng = np.random.default_rng(seed)

  def draw():
    return rng.normal(size=(NUM_IMAGES, SHAPE[0] // 4, SHAPE[1] // 4, NUM_CLASSES)).astype(
        np.float32)

  return {"model": {"logits": draw(), "aux/0": draw(), "aux/1": draw()},
          "selector": {"logits": draw(), "aux/0": draw()}}


def _pool(round_number, networks, *, batch_size=2, num_overlays=1, calls=None,
          sizes=None):
  mesh = sharding.default_mesh()

  def batches():
    for start in range(0, NUM_IMAGES, batch_size):
      index = np.arange(start, start + batch_size) % NUM_IMAGES
      label_size = np.tile(SHAPE, (batch_size, 1)) if sizes is None else sizes[index]
      yield {"image": index.astype(np.float32)[:, None, None, None] * np.ones((1, *INPUT_SIZE, 3)),
             "index": index, "label_size": label_size,
             "valid": np.arange(start, start + batch_size) < NUM_IMAGES}

  def predict(images, outputs, network="model"):
    if calls is not None:
      calls.append((network, tuple(outputs)))
    if network not in networks:
      raise ValueError(f"the train state has no network {network!r}")
    unknown = [name for name in outputs if name not in networks[network]]
    if unknown:  # as Segmentor.check_outputs
      raise ValueError(f"unknown output(s) {unknown}; this model has {list(networks[network])}")
    index = np.asarray(images[:, 0, 0, 0], int)
    return {name: jnp.asarray(networks[network][name][index]) for name in outputs}

  return RoundPool(round_number=round_number, seed=round_number, batches=batches,
                   num_batches=-(-NUM_IMAGES // batch_size), name=lambda i: f"img{i}",
                   predict=predict, mesh=mesh, num_overlays=num_overlays)


def _config(kind, **labor):
  config = config_lib.base_config()
  config.num_steps = 10
  config.active.kind = kind
  config.active.round_steps = (0, 5)
  config.labor = ml_collections.ConfigDict(dict(
      share_backbone=False, spl_cap=ml_collections.config_dict.placeholder(float),
      prototype_probs="model"))
  for key, value in labor.items():
    config.labor[key] = value
  if config.labor.share_backbone:
    config.model.kwargs.aux_heads = 2
  return config


def _expected_maps(networks, options, probs_from):
  """Host-side mask [N, H, W] and probabilities [N, H, W, C] the purchase must read."""
  network, (first, second) = options.heads
  heads = networks[network]
  mask, _ = selection.inconsistency(heads[first], heads[second], SHAPE, INPUT_SIZE)
  if probs_from == "heads":
    probs = (selection.probabilities(heads[first], SHAPE, INPUT_SIZE)
             + selection.probabilities(heads[second], SHAPE, INPUT_SIZE)) / 2
  else:
    probs = selection.probabilities(networks["model"]["logits"], SHAPE, INPUT_SIZE)
  return np.asarray(mask), np.asarray(probs)


def _run_two_rounds(config, networks):
  acquirer_class = ACQUIRERS.get(config.active.kind)
  acquirer_class.validate(config)
  acquirer = acquirer_class(config)
  assert acquirer.round_steps == (0, 5) and acquirer.ledger_radii(SHAPE) == (0, 0)
  ledger = LabelLedger([SHAPE] * NUM_IMAGES, label_radius=0, suppress_radius=0)
  acquirer.start(ledger, lambda i: f"image_{i}")
  rounds = []
  for number in (1, 2):
    excluded_before = [ledger.excluded_mask(i) for i in range(NUM_IMAGES)]
    labelled_before = [ledger.labeled_mask(i).sum() for i in range(NUM_IMAGES)]
    result = acquirer.run_round(_pool(number, networks), ledger)
    assert ledger.rounds_recorded[-1] == number
    assert sorted(r.index for r in result.images) == list(range(NUM_IMAGES))
    for image in result.images:
      assert image.name == f"img{image.index}" and image.labeled.shape == SHAPE
      assert not (image.labeled & excluded_before[image.index]).any()  # never bought twice
      assert (image.labeled <= ledger.labeled_mask(image.index)).all()
      assert (ledger.labeled_mask(image.index).sum()
              == labelled_before[image.index] + image.labeled.sum())
    assert result.strategy == config.active.kind and result.label_radius == 0
    assert len(result.overlays) == 1
    overlay = result.overlays[0]
    assert overlay.score.shape == overlay.prediction.shape == SHAPE
    np.testing.assert_array_equal(overlay.labeled, result.images[0].labeled)
    with pytest.raises(ValueError, match="already recorded"):
      acquirer.run_round(_pool(number, networks), ledger)
    rounds.append((result, excluded_before))
  assert LabelLedger.from_state(ledger.state()) == ledger
  return acquirer, ledger, rounds


@pytest.mark.parametrize("cap", [None, 0.05, 0.5])
@pytest.mark.parametrize("share_backbone", [False, True])
def test_spl_buys_the_inconsistent_pixels_within_the_cumulative_cap(cap, share_backbone):
  networks = _network_outputs(1)
  config = _config("labor_spl", spl_cap=cap, share_backbone=share_backbone)
  acquirer, ledger, rounds = _run_two_rounds(config, networks)
  mask, _ = _expected_maps(networks, acquirer.options, None)
  assert mask.mean() > 0.3  # random heads disagree on many pixels
  for number, (result, excluded_before) in enumerate(rounds, start=1):
    assert result.unit == "pixels"
    assert result.count == sum(int(r.labeled.sum()) for r in result.images)
    for image in result.images:
      assert image.picks is None
      candidates = mask[image.index] & ~excluded_before[image.index]
      assert (image.labeled <= candidates).all()
      if cap is None:  # the paper: every inconsistent pixel not yet labelled
        np.testing.assert_array_equal(image.labeled, candidates)
      else:  # the most discrepant ones, up to ceil(cap * H * W * r / R) in all
        # Decimal caps are exact: 0.05 * 960 / 2 is 24, not float's 24.000000000000004.
        allowed = math.ceil(Fraction(str(cap)) * SHAPE[0] * SHAPE[1] * number / 2)
        before = rounds[0][0].images[image.index].labeled.sum() if number == 2 else 0
        assert image.labeled.sum() == min(candidates.sum(), allowed - before)
        assert ledger.labeled_mask(image.index).sum() <= math.ceil(
            Fraction(str(cap)) * SHAPE[0] * SHAPE[1])
  if cap is None:  # the mask is bought whole in round 1; round 2 finds nothing left
    assert rounds[1][0].count == 0 and ledger.labeled_pixels() == mask.sum()


def test_spl_cap_keeps_the_most_discrepant_pixels():
  networks = _network_outputs(2)
  config = _config("labor_spl", spl_cap=0.05)
  acquirer, _, rounds = _run_two_rounds(config, networks)
  network, (first, second) = acquirer.options.heads
  mask, discrepancy = (np.asarray(x) for x in selection.inconsistency(
      networks[network][first], networks[network][second], SHAPE, INPUT_SIZE))
  for image in rounds[0][0].images:
    want = selection.spl_pixels(mask[image.index], discrepancy[image.index],
                                np.zeros(SHAPE, bool), 24)  # ceil(0.05 * 960 * 1 / 2)
    np.testing.assert_array_equal(image.labeled, want)


@pytest.mark.parametrize("pixels", [5_000, 100_000])  # 3 points per round; more than C
@pytest.mark.parametrize("prototype_probs", ["model", "heads"])
def test_ppl_buys_one_prototype_point_per_class_within_the_quota(pixels, prototype_probs):
  networks = _network_outputs(3)
  config = _config("labor_ppl", prototype_probs=prototype_probs)
  config.active.pixels = pixels
  acquirer, ledger, rounds = _run_two_rounds(config, networks)
  quota = budgets.pixels_per_round(*SHAPE, pixels, 2)
  assert acquirer.quota(SHAPE) == quota
  mask, probs = _expected_maps(networks, acquirer.options, prototype_probs)
  for result, excluded_before in rounds:
    assert result.unit == "points"
    assert result.count == sum(len(r.picks) for r in result.images) > 0
    for image in result.images:
      i, picks = image.index, image.picks
      assert picks.dtype == np.int32 and len(picks) <= min(quota, NUM_CLASSES)
      assert mask[i][picks[:, 0], picks[:, 1]].all()
      assert not excluded_before[i][picks[:, 0], picks[:, 1]].any()
      classes = probs[i][picks[:, 0], picks[:, 1]].argmax(-1)
      assert len(set(classes.tolist())) == len(classes)  # one point per class
      assert image.labeled.sum() == len(picks) and image.labeled[picks[:, 0], picks[:, 1]].all()
      # The device-gathered candidates give exactly the numpy function's points.
      np.testing.assert_array_equal(
          picks, selection.ppl_points(mask[i], probs[i], excluded_before[i], quota))
  if pixels == 5_000:
    assert all(len(r.picks) == 3 for r in rounds[0][0].images)
  np.testing.assert_array_equal(ledger.picks[:, 2:], np.concatenate(
      [r.picks for i in range(NUM_IMAGES) for result, _ in rounds for r in result.images
       if r.index == i]))


def test_the_selector_and_the_model_are_asked_for_exactly_the_outputs_they_have():
  networks = _network_outputs(4)
  calls = []
  config = _config("labor_spl")
  acquirer = ACQUIRERS.get("labor_spl")(config)
  ledger = LabelLedger([SHAPE] * NUM_IMAGES, label_radius=0, suppress_radius=0)
  acquirer.run_round(_pool(1, networks, calls=calls, num_overlays=1), ledger)
  # A's logits only for the batch that draws the overlay.
  assert calls == [("selector", ("logits", "aux/0")), ("model", ("logits",)),
                   ("selector", ("logits", "aux/0"))]
  calls.clear()
  config = _config("labor_ppl", share_backbone=True)
  acquirer = ACQUIRERS.get("labor_ppl")(config)
  ledger = LabelLedger([SHAPE] * NUM_IMAGES, label_radius=0, suppress_radius=0)
  acquirer.run_round(_pool(1, networks, calls=calls, num_overlays=0), ledger)
  assert calls == [("model", ("aux/0", "aux/1", "logits"))] * 2


def test_padding_rows_are_skipped_and_the_config_without_a_labor_group_runs():
  networks = _network_outputs(5)
  config = config_lib.base_config()
  config.num_steps = 10
  config.active.kind = "labor_ppl"
  config.active.round_steps = (0, 5)
  ACQUIRERS.get("labor_ppl").validate(config)
  acquirer = ACQUIRERS.get("labor_ppl")(config)
  assert acquirer.options == labor_acquirers.LaborOptions()
  ledger = LabelLedger([SHAPE] * NUM_IMAGES, label_radius=0, suppress_radius=0)
  result = acquirer.run_round(_pool(1, networks, batch_size=3), ledger)  # 2nd batch padded
  assert sorted(r.index for r in result.images) == list(range(NUM_IMAGES))


def test_a_selector_without_a_second_head_names_the_fix():
  networks = _network_outputs(6)
  del networks["selector"]["aux/0"]
  ledger = LabelLedger([SHAPE] * NUM_IMAGES, label_radius=0, suppress_radius=0)
  acquirer = ACQUIRERS.get("labor_spl")(_config("labor_spl"))
  with pytest.raises(ConfigError, match=r"unknown output.*'aux/0'.*train.objective=labor"):
    acquirer.run_round(_pool(1, networks), ledger)
  del networks["selector"]
  with pytest.raises(ConfigError, match="no network 'selector'.*train.objective=labor"):
    acquirer.run_round(_pool(1, networks), ledger)
  networks = _network_outputs(6)
  del networks["model"]["aux/1"]
  acquirer = ACQUIRERS.get("labor_ppl")(_config("labor_ppl", share_backbone=True))
  with pytest.raises(ConfigError, match=r"unknown output.*'aux/1'.*model.kwargs.aux_heads=2"):
    acquirer.run_round(_pool(1, networks), ledger)
  pool = _pool(1, _network_outputs(6))
  predict = pool.predict
  pool.predict = lambda images, outputs, network="model": {
      k: v for k, v in predict(images, outputs, network).items() if k != "aux/1"}
  with pytest.raises(ConfigError, match=r"returned no \['aux/1'\].*aux_heads=2"):
    acquirer.run_round(pool, ledger)
  assert not ledger.rounds_recorded


def test_a_batch_of_mixed_label_sizes_is_refused():
  sizes = np.array([SHAPE, (24, 48), SHAPE, SHAPE])
  acquirer = ACQUIRERS.get("labor_spl")(_config("labor_spl"))
  ledger = LabelLedger([SHAPE] * NUM_IMAGES, label_radius=0, suppress_radius=0)
  with pytest.raises(ValueError, match="different label sizes"):
    acquirer.run_round(_pool(1, _network_outputs(7), sizes=sizes), ledger)


@pytest.mark.parametrize("kind, change, match", [
    ("labor_spl", dict(spl_cap=0.0), r"labor.spl_cap must lie in \(0, 1\] or be None, got 0.0"),
    ("labor_spl", dict(spl_cap=1.5), r"labor.spl_cap must lie in \(0, 1\]"),
    ("labor_ppl", dict(prototype_probs="mean"), "labor.prototype_probs must be one of"),
    ("labor_spl", dict(share_backbone=True, aux_heads=1), "model.kwargs.aux_heads=2"),
    ("labor_ppl", dict(pixels=1), "below one point per round"),
    ("labor_spl", dict(round_steps=()), "at least one step"),
    ("labor_ppl", dict(round_steps=(5, 0)), "distinct, increasing"),
    ("labor_spl", dict(round_steps=(0, 10)), "before num_steps"),
    ("labor_spl", dict(batch_size=0), "active.batch_size"),
])
def test_validation_names_the_field(kind, change, match):
  config = _config(kind)
  for key, value in change.items():
    if key in ("spl_cap", "prototype_probs", "share_backbone"):
      config.labor[key] = value
    elif key == "aux_heads":
      config.model.kwargs.aux_heads = value
    else:
      config.active[key] = value
  with pytest.raises(ConfigError, match=match):
    ACQUIRERS.get(kind).validate(config)


def test_valid_configs_pass_validation():
  for kind in ("labor_spl", "labor_ppl"):
    ACQUIRERS.get(kind).validate(_config(kind, spl_cap=1.0))
    ACQUIRERS.get(kind).validate(_config(kind, share_backbone=True, prototype_probs="heads"))
    config = _config(kind)
    config.active.round_steps = (3,)  # one round: the "ask once" reading
    config.active.pixels = 1
    ACQUIRERS.get(kind).validate(config)
