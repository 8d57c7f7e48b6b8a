"""Networks for diffusion models on gridded fields.

``UNet`` predicts eps (or x_0, v) for 1-, 2- and 3-D fields with zero or
periodic padding in every layer; ``NoisyEncoder`` maps a noisy field and its
time to a vector (time-dependent classifiers and regressors for guidance);
``count_parameters``, ``estimate_flops`` and ``summary`` size a network.
See ``docs/networks.md``.
"""

from scidiff.nets.encoder import NoisyEncoder
from scidiff.nets.sizing import count_parameters, estimate_flops, summary
from scidiff.nets.unet import UNet

__all__ = ["UNet", "NoisyEncoder", "count_parameters", "estimate_flops", "summary"]
