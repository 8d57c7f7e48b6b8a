r"""Trajectories: fields in time, window scores composed into trajectory scores, assimilation.

A trajectory is a tensor ``x`` [B, L, *state] with ``state = (C, *spatial)``; files hold
``(sample, time, *spatial)`` variables with a time coordinate and its units.

* windows -- :func:`unfold_windows`, :func:`compose_windows`: the Markov-blanket composition
  of order ``k = (W - 1) / 2`` (Rozet & Louppe, NeurIPS 2023);
* scores -- :class:`MarkovBlanketScore` (the trajectory score from a window score, all windows
  in one batched call), :class:`StackedWindowScore` / :class:`AxisWindowScore` (a window score
  from a snapshot network), :class:`ExactScore` (closed forms, e.g.
  :class:`~scidiff.simulators.AR1Field`);
* training data -- :class:`WindowDataset`, :func:`window_fields`;
* assimilation -- :class:`StateObservation` (a state operator at chosen times),
  :class:`MMPSGuidance` (moment-matching posterior guidance, exact for Gaussian priors), and
  :class:`scidiff.DPSGuidance`; the exact reference :func:`kalman_smoother` (Rauch-Tung-Striebel);
* emulation -- :func:`sample_trajectories` (joint), :func:`autoregressive_rollout`;
* files -- :func:`open_trajectories`, :func:`write_trajectories`, :func:`trajectories_to_dataset`;
* the file-to-file path (``scidiff trajectory ...``) -- :func:`train_window_model`,
  :func:`load_window_run`, :func:`sample_window_run`, :func:`assimilate_window_run`.

See ``docs/trajectories.md``.
"""

from scidiff.trajectories.data import WindowDataset, from_layout, to_layout, window_fields
from scidiff.trajectories.emulation import Identity, autoregressive_rollout, sample_trajectories
from scidiff.trajectories.io import (
    Trajectories, open_trajectories, trajectories_layout, trajectories_to_dataset, write_trajectories,
)
from scidiff.trajectories.kalman import LinearObservation, SmootherResult, gaussian_conditional, kalman_smoother
from scidiff.guidance.mmps import MMPSGuidance, conjugate_gradient
from scidiff.trajectories.observe import StateObservation, every_nth
from scidiff.trajectories.score import AxisWindowScore, ExactScore, MarkovBlanketScore, StackedWindowScore
from scidiff.trajectories.windows import check_window, compose_windows, num_windows, unfold_windows
from scidiff.trajectories.workflow import (
    WindowRun, WindowRunInfo, assimilate_window_run, load_window_run, read_observations, sample_window_run,
    train_window_model,
)

__all__ = [
    "check_window", "num_windows", "unfold_windows", "compose_windows",
    "MarkovBlanketScore", "StackedWindowScore", "AxisWindowScore", "ExactScore",
    "WindowDataset", "window_fields", "to_layout", "from_layout",
    "StateObservation", "every_nth", "MMPSGuidance", "conjugate_gradient",
    "LinearObservation", "SmootherResult", "kalman_smoother", "gaussian_conditional",
    "sample_trajectories", "autoregressive_rollout", "Identity",
    "Trajectories", "open_trajectories", "write_trajectories", "trajectories_to_dataset", "trajectories_layout",
    "WindowRun", "WindowRunInfo", "train_window_model", "load_window_run", "sample_window_run", "read_observations",
    "assimilate_window_run",
]
