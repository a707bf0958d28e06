"""RIPU (region impurity x prediction uncertainty, CVPR 2022).

Its acquisition (the "ripu" strategy and the RA/PA greedy rounds) is the engine in
`ripu_jax.acquisition`; this package registers its three training objectives.
"""

from ripu_jax.methods.ripu import objectives  # noqa: F401
