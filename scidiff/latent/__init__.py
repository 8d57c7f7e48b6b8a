"""Latent diffusion: an autoencoder per dataset, a score model on its latents, a bound on log p(x).

``Autoencoder`` (KL-regularised, convolutional, 1-, 2- and 3-D, periodic or zero padding, a
downsampling factor per axis) with its loss and trainer; ``LatentDiffusion`` samples fields
through the decoder, samples posteriors with the guidance gradient through the decoder, and
gives the evidence lower bound E_q[log p(x | z) + log p(z) - log q(z | x)] <= log p(x) with
log p(z) from the latent model's probability-flow ODE.  See ``docs/latent.md``.
"""

from scidiff.latent.autoencoder import Autoencoder, DiagonalGaussian, check_factor
from scidiff.latent.figures import reconstruction_error_plot, reconstruction_error_spectrum, reconstruction_panels
from scidiff.latent.diffusion import LatentBound, LatentDiffusion, latent_statistics
from scidiff.latent.losses import AutoencoderLoss, autoencoder_loss, shell_power, spectral_distance
from scidiff.latent.train import AutoencoderTrainer, load_autoencoder, save_autoencoder, train_autoencoder

__all__ = [
    "Autoencoder", "DiagonalGaussian", "check_factor", "AutoencoderLoss", "autoencoder_loss", "shell_power",
    "spectral_distance", "AutoencoderTrainer", "train_autoencoder", "save_autoencoder", "load_autoencoder",
    "LatentDiffusion", "LatentBound", "latent_statistics", "reconstruction_error_spectrum", "reconstruction_panels",
    "reconstruction_error_plot",
]
