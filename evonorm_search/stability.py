"""Stability rejection: a layer whose gradients can be made to explode is rejected. Starting from a
small network that uses the layer, gradient *ascent* on the weights maximizes the gradient norm for up
to ``max_steps`` steps, and the layer fails when the norm passes ``threshold`` or stops being finite
(paper: 100 steps, 1e8; many bad layers blow up within 5 steps). Quality rejection (accuracy after a
short training) lives with the evaluator, which trains."""
from __future__ import annotations

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
