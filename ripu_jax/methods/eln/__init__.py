"""ELN (error-localisation network for self-training, CVPR 2022) as a plug-in method.

A small network learns, per pixel, whether the segmentation network's prediction is right;
self-training then learns only from the EMA teacher's pseudo labels it trusts. Importing
this package registers the model "eln_deeplabv3plus" and the objectives "eln" (semi-supervised:
a labelled and an unlabelled stream, split by the acquirer "split") and "ripu_eln" (an ELN
stage after RIPU's rounds); the configs under configs/eln/ name it in `plugins`. Spec, with
the release-vs-paper options:
../shared/docs/eln-method.md.
"""

from ripu_jax.methods.eln import networks  # noqa: F401  (registers the model)
from ripu_jax.methods.eln import adaptation  # noqa: F401  (registers "ripu_eln")
from ripu_jax.methods.eln import objective  # noqa: F401  (registers "eln")
from ripu_jax.methods.eln.config import (  # noqa: F401
    after_ripu_config, eln_group, semi_supervised_config)
