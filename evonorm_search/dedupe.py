"""Duplicates: two graphs that compute the same function waste an evaluation. The canonical hash
(``Genome.hash``) catches identical expressions; the *functional* hash here catches different
expressions of one function (``x + x`` and ``2·x`` ...), by hashing the layer's outputs on fixed
random inputs, as AutoML-Zero does."""
from __future__ import annotations

import hashlib

import torch

from evonorm_plugins.graph import Genome, GraphNormAct


def _probe_inputs(seed: int, channels: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Different scales and offsets per sample, so that scale-invariant or mean-sensitive layers differ.
    base = torch.randn(4, channels, 5, 5, generator=generator, dtype=torch.float64)
    scale = torch.tensor([0.1, 1.0, 3.0, 10.0], dtype=torch.float64).view(4, 1, 1, 1)
    return base * scale + torch.tensor([0.0, 0.5, -1.0, 2.0], dtype=torch.float64).view(4, 1, 1, 1)


def functional_hash(genome: Genome, seed: int = 0, channels: int = 8, groups: int = 4, digits: int = 6) -> str:
    """16 hex digits identifying what the layer computes on fixed inputs (train mode, float64, outputs
    rounded to ``digits`` significant digits).

    v0 and v1 are set to fixed random values rather than their initial 0 and 1: at initialization
    EvoNorm-S0 (x·σ(v1·x)/std) and S1 (x·σ(x)/std) compute the same function, but they train apart.
    """
    layer = GraphNormAct(channels, genome, groups=groups).double().train()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for vector in (layer.v0, layer.v1):
            if vector is not None:
                vector.copy_(torch.rand(channels, generator=generator, dtype=torch.float64) * 2 - 0.5)
        out = layer(_probe_inputs(seed, channels))
    finite = torch.isfinite(out)
    values = torch.where(finite, out, torch.zeros_like(out)).flatten()
    # ``digits`` significant digits, vectorized: an integer mantissa and a decimal exponent per value
    exponent = torch.floor(torch.log10(values.abs().clamp_min(1e-300))) - (digits - 1)
    mantissa = torch.round(values / torch.pow(10.0, exponent))
    exponent = torch.where(mantissa == 0, torch.zeros_like(exponent), exponent)
    record = torch.stack([mantissa, exponent, finite.flatten().double(), torch.sign(out.flatten()).nan_to_num()])
    return hashlib.sha256(record.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
