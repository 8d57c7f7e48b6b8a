r"""Guidance: a guided score is itself a score.

For an observation y of x_0, Bayes' rule at every noise level gives

    grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p(y | x_t = x),

so adding ``scale * grad_x log p(y | x_t)`` to a prior score gives a score that every sampler
(ancestral, Euler-Maruyama, predictor-corrector, PF-ODE) and the likelihood take unchanged:

* :class:`ClassifierGuidance` -- log p(y | x_t) from any differentiable function, e.g. a
  noise-conditional classifier or regressor (Dhariwal & Nichol 2021; Song et al. 2021), or
  the exact likelihood of a linear-Gaussian problem.
* :class:`DPSGuidance` -- y = A(x_0) + N(0, sigma_y^2 I) through Tweedie's x0-hat
  (Chung et al. 2023), optionally with the variance-inflated Gaussian likelihood of
  score-based data assimilation (Rozet & Louppe 2023).
* :class:`MMPSGuidance` -- moment-matching posterior sampling for a linear A: the likelihood
  N(y; A x0-hat, sigma_y^2 I + A Cov[x_0 | x_t] A^T) with the Tweedie covariance from the
  score's Jacobian, solved by conjugate gradients (Rozet et al. 2024); exact for Gaussian priors
  (module ``mmps``).
* :class:`ClassifierFreeGuidance` -- s_w = (1 + w) s(x, t | theta) - w s(x, t) of a model
  trained with condition dropout (Ho & Salimans 2021), and the conditioning convention
  c = [theta, 1] (:func:`condition`, :func:`conditional_score`; module ``cfg``).
* the observation operators A of y = A(x) + noise (module ``operators``: :class:`SparseSensors`,
  :class:`Mask`, :class:`Subsample`, :class:`CoarseGrain`, :class:`MatrixOperator`, :class:`Lambda`).
* :class:`NoisyRegressor`, :class:`NoisyClassifier` and their trainers
  :func:`train_noisy_regressor`, :func:`train_noisy_classifier` -- time-dependent models of
  p(theta | x_t) or p(label | x_t) on :class:`scidiff.nets.NoisyEncoder`.

Gradients are taken with ``torch.autograd.grad`` with respect to a detached copy of x only:
no network parameter ever receives a ``.grad``, the returned score carries no graph, and
callers under ``torch.no_grad`` or ``torch.inference_mode`` are served.  See ``docs/guidance.md``.
"""

from scidiff.guidance.base import GuidedScore
from scidiff.guidance.cfg import ClassifierFreeGuidance, condition, conditional_score, null_condition
from scidiff.guidance.classifier import ClassifierGuidance
from scidiff.guidance.dps import DPSGuidance
from scidiff.guidance.mmps import MMPSGuidance, conjugate_gradient
from scidiff.guidance.noisy import NoisyClassifier, NoisyRegressor, train_noisy_classifier, train_noisy_regressor
from scidiff.guidance import operators as _operators
from scidiff.guidance.operators import *  # noqa: F403 - the names of _operators.__all__

__all__ = [
    "GuidedScore",
    "ClassifierGuidance",
    "DPSGuidance",
    "MMPSGuidance",
    "conjugate_gradient",
    "ClassifierFreeGuidance",
    "condition",
    "null_condition",
    "conditional_score",
    *_operators.__all__,
    "NoisyRegressor",
    "NoisyClassifier",
    "train_noisy_regressor",
    "train_noisy_classifier",
]
