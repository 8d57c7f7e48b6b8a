r"""Noise-conditional regressors and classifiers p(theta | x_t), p(label | x_t) for guidance.

A guidance model must read *noisy* states x_t = alpha_t x_0 + sigma_t eps at every t in
(0, 1] (Dhariwal & Nichol 2021, sec. 4; Song et al. 2021, sec. 5).  Both models here put a
head on :class:`scidiff.nets.NoisyEncoder` f(x_t, t):

* :class:`NoisyRegressor`: a Gaussian over the P simulator parameters,
      p(theta | x_t) = N(theta; mu(x_t, t), diag exp(v(x_t, t))),   (mu, v) = f(x_t, t) in R^{2P};
  trained by the Gaussian negative log-likelihood (heteroscedastic regression, Nix & Weigend
  1994), so the predicted variance grows with the noise level.
* :class:`NoisyClassifier`: p(label | x_t) = softmax(f(x_t, t)), trained by cross-entropy.

Training (:func:`train_noisy_regressor`, :func:`train_noisy_classifier`) draws
t ~ U[t_min, 1] and eps ~ N(0, I) for every field at every step.  ``model.log_prob_fn(target)``
is the ``log_prob_fn`` that :class:`~scidiff.guidance.ClassifierGuidance` takes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from scidiff.sde import VPSDE
from scidiff._validate import check_int
from scidiff._progress import progress_bar

__all__ = ["NoisyRegressor", "NoisyClassifier", "train_noisy_regressor", "train_noisy_classifier"]

_LOG_2PI = math.log(2.0 * math.pi)


def _encoder(channels: int, dims: int, out_features: int, encoder_kwargs: dict[str, Any]) -> nn.Module:
    from scidiff.nets import NoisyEncoder

    return NoisyEncoder(channels, dims, out_features, **encoder_kwargs)


class NoisyRegressor(nn.Module):
    """Gaussian regressor of P parameters from a noisy field: N(theta; mu(x_t, t), diag exp(v(x_t, t))).

    Args:
        channels, dims: of the fields [B, channels, *spatial].
        num_params: P.
        log_var_range: the log-variance v is squashed into this interval (numerical safety).
        **encoder_kwargs: options of :class:`scidiff.nets.NoisyEncoder` (base_channels, periodic, ...).

    ``forward(x_t, t)`` returns (mu [B, P], v [B, P]); parameters are in the units the
    regressor was trained on.
    """

    def __init__(
        self,
        channels: int,
        dims: int,
        num_params: int,
        *,
        log_var_range: tuple[float, float] = (-12.0, 6.0),
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__()
        check_int("num_params", num_params)
        lo, hi = (float(v) for v in log_var_range)
        if not lo < hi:
            raise ValueError(f"log_var_range must be (low, high) with low < high, got {log_var_range}")
        self.num_params = num_params
        self.log_var_range = (lo, hi)
        self.encoder = _encoder(channels, dims, 2 * num_params, encoder_kwargs)

    def forward(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, v): mean and log-variance of theta given x_t, each [B, P]."""
        out = self.encoder(x_t, t)
        mu, raw = out.chunk(2, dim=1)
        lo, hi = self.log_var_range
        log_var = lo + (hi - lo) * torch.sigmoid(raw)
        return mu, log_var

    def log_prob(self, x_t: Tensor, t: Tensor, theta: Tensor) -> Tensor:
        """log N(theta; mu, diag exp(v)) = -1/2 sum_p [(theta_p - mu_p)^2 e^-v_p + v_p + log 2 pi]; [B].

        theta: [P] (shared) or [B, P].
        """
        mu, log_var = self(x_t, t)
        theta = _as_params(theta, mu)
        return -0.5 * ((theta - mu).pow(2) * torch.exp(-log_var) + log_var + _LOG_2PI).sum(1)

    def log_prob_fn(self, theta: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """``(x_t, t) -> log p(theta | x_t)`` [B] for :class:`~scidiff.guidance.ClassifierGuidance`."""
        theta = torch.as_tensor(theta).detach().clone()

        def log_prob_fn(x_t: Tensor, t: Tensor) -> Tensor:
            return self.log_prob(x_t, t, theta)

        return log_prob_fn


class NoisyClassifier(nn.Module):
    """Classifier of K labels from a noisy field: p(label | x_t) = softmax(f(x_t, t)).

    Args:
        channels, dims: of the fields.
        num_classes: K >= 2.
        **encoder_kwargs: options of :class:`scidiff.nets.NoisyEncoder`.
    """

    def __init__(self, channels: int, dims: int, num_classes: int, **encoder_kwargs: Any) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.encoder = _encoder(channels, dims, num_classes, encoder_kwargs)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Logits [B, K]."""
        return self.encoder(x_t, t)

    def log_prob(self, x_t: Tensor, t: Tensor, label: Tensor | int) -> Tensor:
        """log softmax(f(x_t, t))[label]; label an int or [B] integers; returns [B]."""
        logits = self(x_t, t)
        label = torch.as_tensor(label, device=logits.device).long()
        if label.ndim == 0:
            label = label.expand(logits.shape[0])
        if bool(((label < 0) | (label >= self.num_classes)).any()):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {label.unique().tolist()}")
        return torch.log_softmax(logits, dim=1).gather(1, label[:, None])[:, 0]

    def log_prob_fn(self, label: Tensor | int) -> Callable[[Tensor, Tensor], Tensor]:
        """``(x_t, t) -> log p(label | x_t)`` [B] for :class:`~scidiff.guidance.ClassifierGuidance`."""

        def log_prob_fn(x_t: Tensor, t: Tensor) -> Tensor:
            return self.log_prob(x_t, t, label)

        return log_prob_fn


def _as_params(theta: Tensor, like: Tensor) -> Tensor:
    theta = torch.as_tensor(theta, dtype=like.dtype, device=like.device)
    if theta.ndim == 1:
        theta = theta[None].expand(like.shape[0], -1)
    if theta.shape != like.shape:
        raise ValueError(f"theta must be [{like.shape[1]}] or [{like.shape[0]}, {like.shape[1]}], got {list(theta.shape)}")
    return theta


def _fit(
    model: nn.Module,
    sde: VPSDE,
    fields: Tensor,
    targets: Tensor,
    loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    t_min: float,
    seed: int,
    progress: bool,
) -> list[float]:
    """AdamW on mean loss_fn(x_t, t, target) with x_t = alpha_t x_0 + sigma_t eps, t ~ U[t_min, 1]."""
    if not isinstance(sde, VPSDE):
        raise TypeError(f"sde must be a scidiff.VPSDE, got {type(sde).__name__}")
    if fields.shape[0] != targets.shape[0]:
        raise ValueError(f"fields hold {fields.shape[0]} samples but targets {targets.shape[0]}")
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    if not (0.0 < t_min < 1.0):
        raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
    param = next(model.parameters())
    fields = fields.to(dtype=param.dtype, device=param.device)
    targets = targets.to(device=param.device)
    gen = torch.Generator(device=param.device).manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    bar = progress_bar(steps, f"training {type(model).__name__}", enabled=progress, leave=False)
    model.train()
    n = fields.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen, device=param.device)
        x0 = fields[idx]
        t = t_min + (1.0 - t_min) * torch.rand(x0.shape[0], generator=gen, dtype=torch.float64, device=param.device)
        x_t, _ = sde.perturb(x0, t, eps=torch.randn(x0.shape, generator=gen, dtype=x0.dtype, device=param.device))
        loss = loss_fn(x_t, t.to(x0.dtype), targets[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.update()
        if progress:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    opt.zero_grad(set_to_none=True)
    model.eval()
    return losses


def train_noisy_regressor(
    regressor: NoisyRegressor,
    sde: VPSDE,
    fields: Tensor,
    params: Tensor,
    *,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    t_min: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Fit p(theta | x_t) by the Gaussian negative log-likelihood; returns the loss per step.

    Args:
        regressor: the model (updated in place, left in eval mode).
        sde: the VP-SDE whose noisy states x_t the regressor must read.
        fields: clean fields x_0 [N, C, *spatial].
        params: their simulator parameters theta [N, P] (or [N] for P = 1).
        steps, batch_size, lr, weight_decay: AdamW options.
        t_min: times are drawn from U[t_min, 1].
        seed: the generator of batches, times and noise.
        progress: show a progress bar.
    """
    params = params[:, None] if params.ndim == 1 else params
    if params.ndim != 2 or params.shape[1] != regressor.num_params:
        raise ValueError(f"params must be [N, {regressor.num_params}], got {list(params.shape)}")
    if not torch.is_floating_point(params) or not bool(torch.isfinite(params).all()):
        raise ValueError("params must be finite floating-point numbers")

    def nll(x_t: Tensor, t: Tensor, theta: Tensor) -> Tensor:
        return -regressor.log_prob(x_t, t, theta.to(x_t.dtype))

    return _fit(regressor, sde, fields, params, nll, steps=steps, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, t_min=t_min, seed=seed, progress=progress)


def train_noisy_classifier(
    classifier: NoisyClassifier,
    sde: VPSDE,
    fields: Tensor,
    labels: Tensor | Sequence[int],
    *,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    t_min: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Fit p(label | x_t) by cross-entropy; returns the loss per step.  Arguments as for
    :func:`train_noisy_regressor`, with integer ``labels`` [N] in [0, K)."""
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be integers [N], got dtype {labels.dtype} and shape {list(labels.shape)}")

    def ce(x_t: Tensor, t: Tensor, label: Tensor) -> Tensor:
        return -classifier.log_prob(x_t, t, label)

    return _fit(classifier, sde, fields, labels.long(), ce, steps=steps, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, t_min=t_min, seed=seed, progress=progress)
