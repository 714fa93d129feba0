"""Cheap ways to kill a candidate before (or instead of) training it.

* **Duplicates.** Two graphs that compute the same function waste an evaluation. The canonical hash
  (``Genome.hash``) catches identical expressions; the *functional* hash catches different expressions
  of one function (``x + x`` and ``2·x`` ...), by hashing the layer's outputs on fixed random inputs, as
  AutoML-Zero does.
* **Stability.** A layer whose gradients can be made to explode is rejected: starting from a small
  network that uses the layer, gradient *ascent* on the weights maximizes the gradient norm for up to
  ``max_steps`` steps, and the layer fails when the norm passes ``threshold`` or stops being finite
  (paper: 100 steps, 1e8; many bad layers blow up within 5 steps).
* **Quality** (accuracy after a short training) lives with the proxy task, which trains.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from evonorm_plugins.graph import Genome, GraphNormAct


@dataclass(frozen=True)
class Verdict:
    """Whether a candidate passed a protocol, and if not, why (recorded with the candidate)."""

    passed: bool
    reason: str = ""
    value: Optional[float] = None  # the measured quantity, e.g. the largest gradient norm


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


class _ProbeNet(nn.Module):
    """conv → layer → conv → layer → pool → linear: small, but with two layers in sequence."""

    def __init__(self, genome: Genome, channels: int, groups: int, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.norm1 = GraphNormAct(channels, genome, groups=groups)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = GraphNormAct(channels, genome, groups=groups)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm2(self.conv2(self.norm1(self.conv1(x))))
        return self.head(x.mean(dim=(2, 3)))


def stability_test(
    genome: Genome,
    max_steps: int = 100,
    threshold: float = 1e8,
    step_size: float = 0.1,
    channels: int = 16,
    groups: int = 4,
    seed: int = 0,
) -> Verdict:
    """Gradient ascent on the probe network's weights to maximize the gradient norm of a
    cross-entropy loss; fails when the norm exceeds ``threshold`` or is not finite.

    Each step moves the weights by ``step_size`` times the unit direction that increases the gradient
    norm fastest (a second-order gradient), relative to the weights' own norm so the step is
    scale-free.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = _ProbeNet(genome, channels, groups)
    images = torch.randn(8, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    params = [p for p in net.parameters() if p.requires_grad]
    largest = 0.0
    for step in range(max_steps):
        loss = F.cross_entropy(net(images), labels)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        value = float(norm.detach())
        if not torch.isfinite(norm):
            return Verdict(False, f"stability: gradient norm not finite at ascent step {step}", value)
        largest = max(largest, value)
        if value > threshold:
            return Verdict(False, f"stability: gradient norm {value:.3g} > {threshold:.3g} at ascent step {step}", value)
        ascent = torch.autograd.grad(norm, params, allow_unused=True)
        direction = [a if a is not None else torch.zeros_like(p) for a, p in zip(ascent, params)]
        direction_norm = torch.sqrt(sum((d * d).sum() for d in direction))
        if not torch.isfinite(direction_norm):
            return Verdict(False, f"stability: ascent direction not finite at step {step}", largest)
        if direction_norm == 0:
            break
        weights_norm = torch.sqrt(sum((p.detach() * p.detach()).sum() for p in params))
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(d, alpha=float(step_size * weights_norm / direction_norm))
    return Verdict(True, "", largest)
