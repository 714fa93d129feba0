"""The evaluator: one candidate in, per-architecture scores or a rejection with its reason out.

Protocols run cheapest first, each switchable in the config: stability (gradient ascent, no data), then
quality (a short training of the first architecture; the paper rejects below 20% CIFAR-10 validation
accuracy after 100 steps), then the full proxy training on every architecture. A non-finite loss or
any exception rejects the candidate with the reason; nothing raised by a candidate escapes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Annotated, Literal, Optional, Tuple, Type

import torch
from pydantic import Field
from torch import nn

from evonorm_plugins.graph import Genome
from evonorm_plugins.registry import make_layer_class

from .proxy import ArchitectureConfig, CIFAR10DataModule, train_and_validate
from .schema import config_class
from .stability import stability_test

Positive = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


@config_class
class EvaluationConfig:
    architectures: Annotated[Tuple[ArchitectureConfig, ...], Field(min_length=1)] = field(
        default_factory=lambda: (ArchitectureConfig("resnet50v2"), ArchitectureConfig("mobilenetv2"), ArchitectureConfig("efficientnet_b0"))
    )
    data_dir: Optional[str] = None  # None: synthetic CIFAR-like data (no download)
    data_limit: Optional[Positive] = None
    batch_size: Positive = 64
    val_fraction: Fraction = 0.2  # the search-validation part, which the search scores on
    heldout_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2  # the held-out part, scored only by rerank and the ablation (proxy/data.py)
    split_seed: Annotated[int, Field(ge=0)] = 0  # the split of the images into train / search-validation / held-out
    score_on: Literal["search", "heldout"] = "search"  # the part validation accuracy is measured on (heldout: rerank)
    train_steps: Positive = 500
    lr: Annotated[float, Field(gt=0)] = 0.05
    stability: bool = True
    stability_steps: Positive = 100
    stability_threshold: Annotated[float, Field(gt=0)] = 1e8
    quality: bool = True
    quality_steps: Positive = 100
    quality_threshold: Annotated[float, Field(ge=0, lt=1)] = 0.2  # validation accuracy, a fraction
    seed: Annotated[int, Field(ge=0)] = 0
    # Lightning's accelerator for the proxy training ('auto' picks a GPU where there is one)
    accelerator: Literal["cpu", "cuda", "gpu", "mps", "tpu", "xla", "auto"] = "cpu"
    devices: Positive = 1  # devices one proxy training uses (workers share devices: execution.workers_per_device)

    def __post_init__(self) -> None:
        if self.val_fraction + self.heldout_fraction >= 1:
            raise ValueError(f"val_fraction + heldout_fraction must leave images to train on, got "
                             f"{self.val_fraction} + {self.heldout_fraction}")


@dataclass(frozen=True)
class Outcome:
    """Scores (one per architecture) or the protocol that rejected the candidate and why; ``retries``:
    the cause of each earlier attempt that produced nothing (its worker died), set by the executor."""

    scores: Optional[Tuple[float, ...]]
    protocol: Optional[str] = None
    reason: str = ""
    wall_time: float = 0.0
    retries: Tuple[str, ...] = ()


def prepare(config: EvaluationConfig) -> dict:
    """Load the proxy data once, raising on a missing or malformed dataset: a problem of the run,
    which must stop it rather than reject every candidate. Returns the split's record (seed, sizes,
    digest of the indices), which the store keeps."""
    return proxy_data(config).split


@lru_cache(maxsize=4)
def proxy_data(config: EvaluationConfig) -> CIFAR10DataModule:
    """The evaluation's data, loaded and split (cached: a worker loads it once for many candidates)."""
    data = CIFAR10DataModule(config.data_dir, config.batch_size, config.val_fraction, config.data_limit, config.seed,
                             config.heldout_fraction, config.split_seed, config.score_on)
    data.setup()
    return data


def scale_steps(config: EvaluationConfig, factor: float) -> EvaluationConfig:
    """The same proxy training with every architecture's steps times ``factor`` and no rejection gates
    (a layer trained longer has passed them already): multi-fidelity promotions and re-ranking."""
    architectures = tuple(
        replace(a, steps=max(1, round((a.steps or config.train_steps) * factor))) for a in config.architectures
    )
    return replace(config, architectures=architectures, quality=False, stability=False)


def evaluate(genome: Genome, config: EvaluationConfig) -> Outcome:
    """Run the protocols on a genome: stability first, then :func:`evaluate_layer`."""
    start = time.perf_counter()
    try:
        if config.stability:
            verdict = stability_test(genome, config.stability_steps, config.stability_threshold, seed=config.seed)
            if not verdict.passed:
                return Outcome(None, "stability", verdict.reason, time.perf_counter() - start)
        outcome = evaluate_layer(make_layer_class("Candidate", genome), config)
    except Exception as error:  # a candidate must never crash the search; the reason is recorded
        return Outcome(None, "error", f"{type(error).__name__}: {error}", time.perf_counter() - start)
    return Outcome(outcome.scores, outcome.protocol, outcome.reason, time.perf_counter() - start)


def _build(architecture: ArchitectureConfig, layer: Type[nn.Module], seed: int) -> nn.Module:
    """The architecture with its initialization drawn from ``seed``: built before the trainer seeds
    anything, it would otherwise depend on whatever the process drew before (another candidate, in a
    worker), and a seed would not set the initialization."""
    torch.manual_seed(seed)
    return architecture.build(layer)


def evaluate_layer(layer: Type[nn.Module], config: EvaluationConfig) -> Outcome:
    """Quality gate and proxy training of a layer class (a candidate, or a baseline such as
    ``BatchNormReLU`` trained the same way for comparison)."""
    start = time.perf_counter()

    def rejected(protocol: str, reason: str) -> Outcome:
        return Outcome(None, protocol, reason, time.perf_counter() - start)

    try:
        data = proxy_data(config)
        known = {}  # architecture index -> accuracy already measured with train_steps

        def steps_and_lr(architecture: ArchitectureConfig) -> Tuple[int, float]:
            return architecture.steps or config.train_steps, architecture.lr or config.lr

        if config.quality:
            first = config.architectures[0]
            accuracy, nonfinite = train_and_validate(_build(first, layer, config.seed), data, config.quality_steps, steps_and_lr(first)[1], config.seed,
                                                     config.accelerator, config.devices)
            if nonfinite:
                return rejected("nonfinite", f"non-finite loss within {config.quality_steps} steps on {first.name}")
            if accuracy < config.quality_threshold:
                return rejected(
                    "quality", f"quality: {accuracy:.3f} validation accuracy on {first.name} after "
                    f"{config.quality_steps} steps < {config.quality_threshold}"
                )
            if config.quality_steps == steps_and_lr(first)[0]:  # the gate's training is the full one
                known[0] = accuracy
        scores = []
        for index, architecture in enumerate(config.architectures):
            if index in known:
                scores.append(known[index])
                continue
            accuracy, nonfinite = train_and_validate(_build(architecture, layer, config.seed), data, *steps_and_lr(architecture), config.seed,
                                                     config.accelerator, config.devices)
            if nonfinite:
                return rejected("nonfinite", f"non-finite loss while training {architecture.name}")
            scores.append(accuracy)
        return Outcome(tuple(scores), wall_time=time.perf_counter() - start)
    except Exception as error:  # a candidate must never crash the search; the reason is recorded
        return rejected("error", f"{type(error).__name__}: {error}")
