"""ScoreModel: the eps, x0 and v parameterisations give the same score and Tweedie denoiser."""

import pytest
import torch

import scidiff as sd
from scidiff.analytic import GaussianMixture


class _ExactNet(torch.nn.Module):
    """Outputs the exact eps, x0 or v of a Gaussian mixture (a stand-in for a perfect network)."""

    def __init__(self, gm, prediction):
        super().__init__()
        self.gm, self.prediction = gm, prediction

    def forward(self, x, t):
        coef = self.gm.sde.coefficients(t).like(x)
        alpha, sigma = coef.alpha, coef.sigma
        eps = -sigma * self.gm.score(x, t)
        x0 = (x - sigma * eps) / alpha
        return {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[self.prediction]


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_parameterisations_agree_with_closed_form(prediction):
    sde = sd.VPSDE()
    gm = GaussianMixture([0.4, 0.6], [[0.0, 1.0], [2.0, -1.0]], [0.3, 0.5], sde=sde)
    model = sd.ScoreModel(_ExactNet(gm, prediction), sde, prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64) * 2
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.98 + 0.01
    torch.testing.assert_close(model.score(x, t), gm.score(x, t), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.denoise(x, t), gm.denoise(x, t), rtol=1e-10, atol=1e-10)
    # Tweedie: x0-hat = (x + sigma^2 s) / alpha
    coef = sde.coefficients(t).like(x)
    alpha, sigma = coef.alpha, coef.sigma
    torch.testing.assert_close(model.denoise(x, t), (x + sigma**2 * model.score(x, t)) / alpha)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_target_is_what_a_perfect_network_outputs_at_the_noise(prediction):
    sde = sd.VPSDE.cosine()
    x0 = torch.randn(16, 3, dtype=torch.float64)
    eps = torch.randn(16, 3, dtype=torch.float64)
    t = torch.rand(16, dtype=torch.float64) * 0.9 + 0.05
    x_t, _ = sde.perturb(x0, t, eps=eps)

    class Oracle(torch.nn.Module):
        def forward(self, x, t_):
            return model.target(x0, eps, t)

    model = sd.ScoreModel(Oracle(), sde, prediction=prediction)
    torch.testing.assert_close(model.eps(x_t, t), eps, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.denoise(x_t, t), x0, rtol=1e-9, atol=1e-9)


def test_bad_prediction_and_cond_passing():
    with pytest.raises(ValueError, match="prediction"):
        sd.ScoreModel(torch.nn.Identity(), sd.VPSDE(), prediction="score")
    net = sd.UNet(channels=1, dims=1, cond_dim=2, base_channels=8, groups=4, channel_mults=(1, 2))
    model = sd.ScoreModel(net, sd.VPSDE())
    out = model.score(torch.randn(3, 1, 8), torch.full((3,), 0.5), cond=torch.randn(3, 2))
    assert out.shape == (3, 1, 8)
