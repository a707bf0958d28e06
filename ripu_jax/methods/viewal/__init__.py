"""ViewAL (multi-view active learning over superpixels, CVPR 2020) as a plug-in method.

Where a model's predictions of one surface disagree across the views of an RGB-D sequence,
ViewAL asks for labels: superpixels ranked by view entropy, the view with the largest view
divergence labelled. Importing this package registers the multi-view datasets
(`viewal_synthetic`, `scannet`, `scenenet_rgbd`, `matterport3d`), the objective "viewal"
(training restarted each round, the round's best-val model kept for selection) and the
acquirer "viewal" (seed frames, then superpixel rounds; "entropy" and "random" baselines),
and the acquirer "ra_superpixels" (RIPU's score pooled over superpixels, on any dataset);
the configs under configs/viewal/ name it in `plugins`. Spec:
../shared/docs/viewal-method.md.
"""

from ripu_jax.methods.viewal import datasets
from ripu_jax.methods.viewal import acquirer  # noqa: F401  (registers "viewal")
from ripu_jax.methods.viewal import objective  # noqa: F401  (registers "viewal")
from ripu_jax.methods.viewal import superpixel_rounds  # noqa: F401  ("ra_superpixels")
from ripu_jax.methods.viewal.config import viewal_config, viewal_group  # noqa: F401

datasets.register_datasets()
