"""Built-in physics simulators: training data and exact references for scidiff.

* :class:`GaussianRandomField`, :class:`LognormalField` -- periodic power-law random
  fields with exact log-densities (and exact noisy marginals/scores of the VP process);
* :class:`HeatEquation` -- linear-Gaussian pairs ``(u0, u(tau))`` with exact posterior;
* :class:`NavierStokes2D` -- Kolmogorov-forced 2-D turbulence (vorticity form);
* :class:`GrayScott` -- reaction-diffusion patterns;
* :func:`available`, :func:`make` -- named generators returning ``xarray.Dataset``s.

Dataset cards: ``datasets/<name>.md``.
"""

from scidiff.simulators.gray_scott import GrayScott, seeded_initial_state
from scidiff.simulators.grf import GaussianRandomField, LognormalField
from scidiff.simulators.heat import HeatEquation, HeatPosterior
from scidiff.simulators.navier_stokes import FlowParameters, NavierStokes2D, resample
from scidiff.simulators.registry import available, make, options

__all__ = [
    "GaussianRandomField",
    "LognormalField",
    "HeatEquation",
    "HeatPosterior",
    "NavierStokes2D",
    "FlowParameters",
    "GrayScott",
    "seeded_initial_state",
    "resample",
    "available",
    "make",
    "options",
]
