"""Built-in physics simulators: training data and exact references for scidiff.

* :class:`GaussianRandomField`, :class:`LognormalField` -- periodic power-law random
  fields with exact log-densities (and exact noisy marginals/scores of the VP process);
* :class:`HeatEquation` -- linear-Gaussian pairs ``(u0, u(tau))`` with exact posterior;
* :class:`NavierStokes2D` -- Kolmogorov-forced 2-D turbulence (vorticity form);
* :class:`GrayScott` -- reaction-diffusion patterns;
* :class:`AR1Field` -- linear-Gaussian trajectories (AR(1) per Fourier mode) with exact
  scores of every window and an exact (Kalman) smoother;
* :class:`Lorenz96` -- the 1-D chaotic model of data assimilation;
* :func:`available`, :func:`make` -- named generators returning ``xarray.Dataset``s.

Dataset cards: ``datasets/<name>.md``.
"""

from scidiff.simulators.ar1 import AR1Field
from scidiff.simulators.gray_scott import GrayScott, seeded_initial_state
from scidiff.simulators.grf import GaussianRandomField, LognormalField
from scidiff.simulators.heat import HeatEquation, HeatPosterior
from scidiff.simulators.lorenz96 import Lorenz96
from scidiff.simulators.navier_stokes import FlowParameters, NavierStokes2D, resample
from scidiff.simulators.registry import available, make, options, register
from scidiff.simulators.trajectory_makers import TRAJECTORY_MAKERS

register(TRAJECTORY_MAKERS)  # the trajectory simulators ("sample", "time", *spatial) in make()

__all__ = [
    "GaussianRandomField",
    "LognormalField",
    "HeatEquation",
    "HeatPosterior",
    "NavierStokes2D",
    "FlowParameters",
    "GrayScott",
    "AR1Field",
    "Lorenz96",
    "seeded_initial_state",
    "resample",
    "available",
    "make",
    "options",
]
