"""BigGAN-deep with any registered normalization-activation layer in place of G's BN-ReLU.

The networks (:mod:`.model`, :mod:`.conditional_norm`) need torch only and are exported here;
:mod:`.convert_reference` loads BigGAN-PyTorch's weights into them. The Lightning parts load on
demand: :mod:`.module` (training loop), :mod:`.data` (CIFAR-10 and ImageFolder data modules),
:mod:`.metrics` (IS/FID as torch-fidelity computes them) and :mod:`.cli` (``evonorm-biggan fit --config …``).
"""
from .conditional_norm import ConditionalNormAct
from .model import Discriminator, Generator, count_parameters, truncated_z

__all__ = ["ConditionalNormAct", "Discriminator", "Generator", "count_parameters", "truncated_z"]
