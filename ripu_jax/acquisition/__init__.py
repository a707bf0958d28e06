"""RIPU's acquisition engine: feed logits, get the regions (or pixels) to label.

  scores = ripu_scores(logits, radius=1, mode="region")
  selection = greedy_select(scores.score, num_picks=1026, label_radius=1, suppress_radius=2)

or, for a whole round on a device mesh, `select_round(logits, plan=plan_round(...))`. Both
take `impl`: "cpu" (code tuned for XLA on CPU), "reduce_window" (for GPU/TPU) or "auto" (the
default: the one for the platform they run on).
"""

from ripu_jax.acquisition.budgets import pixels_per_round, regions_per_round
from ripu_jax.acquisition.greedy import Selection, greedy_select
from ripu_jax.acquisition.scores import Scores, pixel_stats, ripu_scores
from ripu_jax.acquisition.selection_round import RoundPlan, plan_round, select_round
from ripu_jax.acquisition.strategies import (available_strategies, get_strategy,
                                             register_strategy)
from ripu_jax.image_ops import upsample_logits
from ripu_jax.sharding import default_mesh

__all__ = [
    "RoundPlan", "Scores", "Selection", "available_strategies", "default_mesh", "get_strategy",
    "greedy_select", "pixel_stats", "pixels_per_round", "plan_round", "regions_per_round",
    "register_strategy", "ripu_scores", "select_round", "upsample_logits",
]
