"""ViewAL's rounds on 4 (forced CPU) devices: scenes side by side, the same bits as one device."""

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import dataclasses
    import json
    import sys

    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, "tests")
    import viewal_oracles as oracle
    from ripu_jax import config_lib, sharding
    from ripu_jax.acquisition.acquirers import ACQUIRERS, RoundPool
    from ripu_jax.data import pipeline
    from ripu_jax.ledger import LabelLedger
    from ripu_jax.methods import viewal  # noqa: F401
    from ripu_jax.methods.viewal import datasets, scene_scores, scoring, selection

    assert jax.device_count() == 4, jax.devices()
    mesh4 = sharding.default_mesh()
    mesh1 = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1],
                          axis_types=(jax.sharding.AxisType.Auto,))
    report = {}

    # 1. Five scenes of 2-4 frames and 6-20 superpixels: two groups on 4 devices, padded.
    rng = np.random.default_rng(0)
    scenes = []
    for k, (frames, rows, cols) in enumerate([(3, 2, 3), (4, 4, 5), (2, 3, 3), (4, 2, 4),
                                              (3, 3, 4)]):
      centres, yaws = oracle.camera_path(frames)
      room = oracle.room_scene(24, 32, centres, yaws, seed=k)
      scenes.append(scene_scores.Scene(
          depth=room["depth"], intrinsics=room["intrinsics"], pose=room["pose"],
          superpixels=oracle.grid_superpixels(frames, 24, 32, rows, cols),
          ignore=rng.random((frames, 24, 32)) < 0.05,
          probs=oracle.smooth_probs(rng, frames, 24, 32, 5)))
    alone = []
    for scene in scenes:
      s = scene.num_superpixels
      ve, vd = scoring.view_scores(scene.probs, scene.depth, scene.intrinsics, scene.pose,
                                   scene.ignore)
      cov = scoring.coverage_table(scene.depth, scene.intrinsics, scene.pose,
                                   scene.superpixels, s)
      entropy = scoring.predictive_entropy(scene.probs, scene.ignore)
      alone.append(dict(
          ve=scoring.superpixel_means(ve, scene.superpixels, s),
          vd=scoring.superpixel_means(vd, scene.superpixels, s),
          sizes=scoring.superpixel_sizes(scene.superpixels, s),
          overlaps=scoring.overlaps(cov), pixel=ve,
          entropy=scoring.superpixel_means(entropy, scene.superpixels, s)))
    viewal4 = scene_scores.score_scenes(scenes, kind="viewal", mesh=mesh4, pixel_scores=True)
    entropy4 = scene_scores.score_scenes(scenes, kind="entropy", mesh=mesh4)
    with_tables = [dataclasses.replace(scene, coverage=np.asarray(scoring.coverage_table(
        scene.depth, scene.intrinsics, scene.pose, scene.superpixels, scene.num_superpixels)))
                   for scene in scenes]
    stored4 = scene_scores.score_scenes(with_tables, kind="viewal", mesh=mesh4)
    same = lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b)))
    report["scores_bitwise"] = all(
        same(got.region_ve, want["ve"]) and same(got.region_vd, want["vd"])
        and same(got.sizes, want["sizes"]) and same(got.overlaps, want["overlaps"])
        and same(got.pixel_score, want["pixel"]) and same(ent.region_ve, want["entropy"])
        and same(stored.overlaps, want["overlaps"]) and same(stored.region_ve, want["ve"])
        for got, ent, stored, want in zip(viewal4, entropy4, stored4, alone))
    report["padded_shapes_cut"] = [list(r.overlaps.shape) for r in viewal4]
    report["overlaps_found"] = int(sum(r.overlaps.sum() for r in viewal4))

    # Each device computes one scene of a group.
    program = scene_scores._group_program(mesh4, "sizes", 4)
    sp = sharding.put_global_batch(np.zeros((4, 2, 8, 8), np.int32), mesh4)
    out = program(None, *(sharding.put_global_batch(np.zeros(shape, dtype), mesh4)
                          for shape, dtype in [((4, 2, 8, 8), np.float32),
                                               ((4, 2, 3, 3), np.float32),
                                               ((4, 2, 4, 4), np.float32),
                                               ((4, 2, 8, 8), bool)]),
                  sp, None, jnp.float32(1.0), jnp.float32(0.25))
    report["devices"] = sorted(d.id for d in out["sizes"].sharding.device_set)
    report["rows_per_device"] = sorted({s.data.shape[0] for s in out["sizes"].addressable_shards})

    # 2. A whole round through the acquirer: 5 scenes, one cut to 3 of its 5 frames.
    config = config_lib.load_config("configs/viewal/synthetic.py", "smoke")
    generator = dataclasses.replace(datasets.scenes.ViewalSyntheticConfig(**{
        k: v for k, v in config.data.viewal_synthetic.items() if k != "prepared"}),
        train_scenes=5, frames_per_scene=5)
    split = datasets.ViewalSyntheticSplit(generator, datasets.TRAIN)
    scene_of = np.asarray(split.scene_ids)
    keep = [i for i in range(len(split)) if not (scene_of[i] == scene_of[5] and i % 5 >= 3)]
    frames = [split[i] for i in keep]
    groups, n, size = scene_of[keep], len(keep), frames[0]["label"].shape
    probs = np.asarray(jax.nn.softmax(jax.random.normal(jax.random.key(0), (n, *size, 9)) * 3))
    rows = 3

    def batches(with_labels=False):
      for start in range(0, n, rows):
        index = np.arange(start, min(start + rows, n))
        pad = rows - len(index)
        chosen = [frames[i] for i in index] + [frames[index[0]]] * pad
        yield {"image": np.stack([pipeline.normalize_image(f["image"]) for f in chosen]),
               "index": np.concatenate([index, np.zeros(pad, int)]),
               "label_size": np.tile(size, (rows, 1)), "valid": np.arange(rows) < len(index),
               "label": np.stack([f["label"] for f in chosen]),
               **{k: np.stack([f[k] for f in chosen])
                  for k in ("depth", "pose", "intrinsics", "superpixels")}}

    def table(scene, distance_threshold):
      members = np.flatnonzero(groups == scene)
      stack = {k: np.stack([frames[i][k] for i in members])
               for k in ("depth", "intrinsics", "pose", "superpixels")}
      return np.asarray(scoring.coverage_table(
          stack["depth"], stack["intrinsics"], stack["pose"], stack["superpixels"],
          int(stack["superpixels"].max()) + 1, distance_threshold=distance_threshold))

    def run(strategy, mesh, coverage):
      config.viewal.strategy = strategy
      config.viewal.budget_frames = 1.5
      queue = [probs[b["index"]] for b in batches()]
      pool = RoundPool(round_number=1, seed=0, batches=batches, num_batches=-(-n // rows),
                       name=lambda i: f"frame{i}", predict=None, mesh=mesh,
                       predict_mc=lambda *args, **kwargs: jnp.asarray(queue.pop(0)),
                       groups=groups, num_overlays=4, coverage=coverage)
      ledger = LabelLedger([size] * n, label_radius=0, suppress_radius=0)
      ledger.record_frame(0, 0)
      result = ACQUIRERS.get("viewal")(config).run_round(pool, ledger)
      return result, ledger

    for strategy, coverage in [("viewal", None), ("viewal", table), ("entropy", None),
                               ("random", None)]:
      (one, ledger1), (four, ledger4) = [run(strategy, mesh, coverage)
                                         for mesh in (mesh1, mesh4)]
      name = strategy + ("_stored" if coverage else "")
      report[name] = {
          "count": [one.count, four.count],
          "frames": [[r.index for r in one.images], [r.index for r in four.images]],
          "masks": all(same(a.labeled, b.labeled) for a, b in zip(one.images, four.images)),
          "scores": all(same(a.score, b.score) for a, b in zip(one.overlays, four.overlays)),
          "ledger": all(same(ledger1.labeled_mask(i), ledger4.labeled_mask(i))
                        for i in range(n)),
          "scenes_bought": len({int(groups[r.index]) for r in four.images}),
      }

    # 3. The walk alone, 6 scenes over 4 devices, chunks of one scene per device and of more.
    ve = rng.random((24, 6)).astype(np.float32)
    vd = (rng.random((24, 6)) * 3).astype(np.float32)
    scene_ids = np.repeat(np.arange(6), 4)
    tables = [oracle.overlaps(rng.random((4, 6, 4, 6)) * (rng.random((4, 6, 4, 6)) < 0.2))
              for _ in range(6)]
    counts = rng.integers(1, 30, (24, 6))
    labelled = rng.random((24, 6)) < 0.1
    walks = [selection.select_superpixels(ve, vd, scene_ids, tables, counts, labelled, 600,
                                          mode=mode, mesh=mesh, max_chunk_bytes=limit).picks
             for mode in ("paper", "release") for mesh, limit in [(None, 1 << 28),
                                                                  (mesh4, 1), (mesh4, 1 << 28)]]
    report["walk_same"] = [same(walks[0], w) for w in walks[1:3]] + [
        same(walks[3], w) for w in walks[4:]]
    report["walk_picks"] = len(walks[0])
    print("REPORT" + json.dumps(report))
""")


def test_four_devices_score_scenes_and_pick_exactly_as_one():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=900, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.split("REPORT", 1)[1])
  # Padded groups split over the devices give each scene's scores bit for bit, cut to its size.
  assert report["scores_bitwise"]
  assert report["padded_shapes_cut"] == [[3, 6, 3, 6], [4, 20, 4, 20], [2, 9, 2, 9],
                                         [4, 8, 4, 8], [3, 12, 3, 12]]
  assert report["overlaps_found"] > 0
  assert report["devices"] == [0, 1, 2, 3] and report["rows_per_device"] == [1]
  # A round picks the same superpixels, records the same ledger and draws the same scores.
  for name in ("viewal", "viewal_stored", "entropy", "random"):
    got = report[name]
    assert got["count"][0] == got["count"][1] > 0, name
    assert got["frames"][0] == got["frames"][1], name
    assert got["masks"] and got["scores"] and got["ledger"], name
    assert got["scenes_bought"] >= 2, name
  assert report["walk_same"] == [True] * 4 and report["walk_picks"] > 10
