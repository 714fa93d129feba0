"""BigGAN's hinge loss (Lim & Ye 2017; Miyato et al. 2018)."""
from typing import Tuple

import torch.nn.functional as F
from torch import Tensor


def hinge_d(real_logits: Tensor, fake_logits: Tensor) -> Tuple[Tensor, Tensor]:
    """D's hinge loss as its (real, fake) terms: ``E[relu(1 − D(x))]`` and ``E[relu(1 + D(G(z)))]``."""
    return F.relu(1.0 - real_logits).mean(), F.relu(1.0 + fake_logits).mean()


def hinge_g(fake_logits: Tensor) -> Tensor:
    """G's hinge loss ``−E[D(G(z))]``."""
    return -fake_logits.mean()
