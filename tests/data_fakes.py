"""Fakes shared by the data-pipeline tests."""

import numpy as np


class RandomMasks:
  """A read-only stand-in for the trainer's label ledger: random labelled masks."""

  def __init__(self, count, shape, seed=0):
    rng = np.random.default_rng(seed)
    self.masks = [rng.random(shape) < 0.3 for _ in range(count)]

  def __len__(self):
    return len(self.masks)

  def __getitem__(self, index):
    return self.masks[index]
