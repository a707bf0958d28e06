"""LabOR (Labeling Only if Required, ICCV 2021) as a plug-in method.

A pixel selector with two classifier heads, trained to disagree, marks the target pixels
where its heads disagree; SPL ("labor_spl") labels those segments, PPL ("labor_ppl") one
representative point per predicted class. Importing this package registers the objective
"labor" and the two acquirers; the configs under configs/labor/ name it in `plugins`.
Spec, with the choices where the paper is silent: ../shared/docs/labor-method.md.
"""

from ripu_jax.methods.labor import acquirers  # noqa: F401
from ripu_jax.methods.labor import objective  # noqa: F401
from ripu_jax.methods.labor.config import labor_config  # noqa: F401
