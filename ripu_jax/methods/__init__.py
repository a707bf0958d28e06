"""Methods hosted by ripu_jax; importing this package registers their pieces.

Each method is a package that registers what it brings (objectives, models, acquirers,
strategies, hooks, datasets) under names a config chooses; nothing outside it names it.
"""

from ripu_jax.methods import ripu  # noqa: F401  (registers RIPU's objectives)
