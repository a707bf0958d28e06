"""A selection round gives the same picks and masks on 1 and on 4 (forced CPU) devices."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json
    import jax
    import numpy as np
    from ripu_jax import acquisition

    assert jax.device_count() == 4, jax.devices()
    mesh4 = acquisition.default_mesh()
    mesh1 = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1],
                          axis_types=(jax.sharding.AxisType.Auto,))
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(8, 6, 10, 5)) * 3).astype(np.float32)
    excluded = rng.random((8, 24, 40)) < 0.05
    ids = np.arange(100, 108)
    report = {}
    for kind, strategy in [("ra", "ripu"), ("pa", "ripu"), ("ra", "random"), ("ra", "confidence")]:
      plan = acquisition.plan_round(kind, 24, 40, radius=1 if kind == "ra" else 3, rounds=5,
                                    ratio=0.2, pixels=40)
      results = [acquisition.select_round(logits, plan=plan, strategy=strategy,
                                          label_size=(24, 40), excluded=excluded,
                                          image_ids=ids, seed=3, mesh=mesh)
                 for mesh in (mesh1, mesh4)]
      report[f"{kind}-{strategy}"] = {
          "same": all(np.array_equal(a, b) for a, b in zip(*results)),
          "picks": int((results[0].picks[..., 0] >= 0).sum()),
      }
    try:
      acquisition.select_round(logits[:6], plan=plan, label_size=(24, 40), mesh=mesh4)
    except ValueError as error:
      report["error"] = str(error)
    print("REPORT" + json.dumps(report))
""")


def test_one_and_four_devices_agree():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.split("REPORT", 1)[1])
  for name in ("ra-ripu", "pa-ripu", "ra-random", "ra-confidence"):
    assert report[name]["same"], name
    assert report[name]["picks"] >= 8, name  # at least one pick per image
  assert "batch of 6 images does not split over 4 devices" in report["error"]
