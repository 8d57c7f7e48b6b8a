r"""A network seen as a score: the parameterisations eps, x_0 and v.

With x_t = alpha_t x_0 + sigma_t eps, a network output o(x_t, t) is read as one of

    "eps":  eps-hat = o
    "x0":   x0-hat = o,            eps-hat = (x_t - alpha_t x0-hat) / sigma_t
    "v":    v-hat = o (v = alpha_t eps - sigma_t x_0; Salimans & Ho 2022),
            eps-hat = sigma_t x_t + alpha_t v-hat,  x0-hat = alpha_t x_t - sigma_t v-hat

and in every case the score and the Tweedie denoiser are

    s(x_t, t) = -eps-hat / sigma_t,     x0-hat = (x_t + sigma_t^2 s) / alpha_t = E[x_0 | x_t].
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from scidiff.parameterisation import batch_time, convert
from scidiff.sde import VPSDE, expand_like

__all__ = ["ScoreModel", "Prediction"]

Prediction = Literal["eps", "x0", "v"]
_PREDICTIONS = ("eps", "x0", "v")


class ScoreModel(nn.Module):
    """Wraps a network ``net(x, t, cond=None) -> Tensor like x`` into a score model.

    Args:
        net: the network; called as ``net(x_t, t)`` or ``net(x_t, t, cond=cond)``.
        sde: the VP-SDE the network is trained on (gives alpha_t and sigma_t).
        prediction: what the network outputs, "eps", "x0" or "v".

    ``model.score`` is the callable every sampler and the likelihood take.  A model trained
    on the discrete DDPM is used with ``ddpm.sde``: step n sits at t = n / N.
    """

    def __init__(self, net: nn.Module, sde: VPSDE, prediction: Prediction = "eps") -> None:
        super().__init__()
        if prediction not in _PREDICTIONS:
            raise ValueError(f"prediction must be one of {_PREDICTIONS}, got {prediction!r}")
        if not isinstance(sde, VPSDE):
            raise TypeError(f"sde must be a scidiff.VPSDE, got {type(sde).__name__}")
        self.net = net
        self.sde = sde
        self.prediction: Prediction = prediction

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, **kwargs: Any) -> Tensor:
        """The raw network output o(x_t, t [, cond]); shape of ``x``."""
        t = batch_time(t, x).to(x.dtype)
        if cond is None:
            return self.net(x, t, **kwargs)
        return self.net(x, t, cond=cond, **kwargs)

    def eps(self, x: Tensor, t: Tensor, cond: Tensor | None = None, **kwargs: Any) -> Tensor:
        """eps-hat(x_t, t): the predicted noise; shape of ``x``."""
        out = self(x, t, cond, **kwargs)
        if self.prediction == "eps":
            return out
        c = self.sde.coefficients(batch_time(t, x)).like(x)
        return convert(out, source=self.prediction, target="eps", x_t=x, alpha=c.alpha, sigma=c.sigma)

    def score(self, x: Tensor, t: Tensor, cond: Tensor | None = None, **kwargs: Any) -> Tensor:
        """s(x_t, t) = -eps-hat / sigma_t ~= grad_x log p_t(x); shape of ``x``."""
        t = batch_time(t, x)
        if self.prediction != "eps":
            c = self.sde.coefficients(t).like(x)
            out = self(x, t, cond, **kwargs)
            return convert(out, source=self.prediction, target="score", x_t=x, alpha=c.alpha, sigma=c.sigma)
        # the hot path of every sampler: sigma_t alone (float64, then x's dtype)
        sigma = expand_like(self.sde.schedule.sigma(t.double()), x)
        return self(x, t, cond, **kwargs).div(sigma).neg_()

    def denoise(self, x: Tensor, t: Tensor, cond: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Tweedie's x0-hat = E[x_0 | x_t] = (x_t - sigma_t eps-hat) / alpha_t; shape of ``x``."""
        out = self(x, t, cond, **kwargs)
        if self.prediction == "x0":
            return out
        c = self.sde.coefficients(batch_time(t, x)).like(x)
        return convert(out, source=self.prediction, target="x0", x_t=x, alpha=c.alpha, sigma=c.sigma)

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """What the network should output at x_t = alpha_t x_0 + sigma_t eps: eps, x_0 or v."""
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        c = self.sde.coefficients(batch_time(t, x0)).like(x0)
        return c.alpha * eps - c.sigma * x0

    def extra_repr(self) -> str:
        return f"prediction={self.prediction!r}, sde={self.sde!r}"

