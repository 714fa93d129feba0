"""Checks a search config against the data and the proxies before anything is written or started:
the dataset is there and splits, and every proxy architecture builds and trains one step with a
known-good layer at the configured batch size. A config that fails here would otherwise fail every
candidate (and be found only after the first few were recorded as errors)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from evonorm_plugins.registry import get_layer_class

from .config import ConfigError
from .evaluator import EvaluationConfig, prepare, proxy_data

KNOWN_GOOD_LAYER = "GroupNormReLU"  # batch-independent, so it trains in either search space
GPU_ACCELERATORS = ("cuda", "gpu")


def check_evaluation(config: EvaluationConfig, source: str = "search config") -> None:
    """Raise a one-line :class:`ConfigError` (or the dataset's own ``FileNotFoundError``) if the
    evaluation cannot train; returns quietly when one training step runs on every architecture."""
    if config.accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        raise ConfigError(f"{source}: evaluation.accelerator is {config.accelerator!r} but torch sees no GPU here; "
                          f"use 'cpu', or 'auto' to take a GPU where there is one")
    prepare(config)  # a missing or malformed dataset says so itself
    data = proxy_data(config)
    if len(data.train_set) < config.batch_size:
        raise ConfigError(f"{source}: evaluation.batch_size {config.batch_size} exceeds the {len(data.train_set)} "
                          f"training images; lower it, or raise data_limit")
    images, labels = next(iter(data.train_dataloader()))
    layer = get_layer_class(KNOWN_GOOD_LAYER)
    for index, architecture in enumerate(config.architectures):
        try:
            torch.manual_seed(config.seed)
            model = architecture.build(layer)
            F.cross_entropy(model(images), labels).backward()
        except Exception as error:  # the architecture's settings, not a candidate, are at fault
            raise ConfigError(f"{source}: evaluation.architectures.{index} ({architecture.name}, width {architecture.width:g}, "
                              f"depth {list(architecture.depth) or 'default'}) cannot train one step with "
                              f"{KNOWN_GOOD_LAYER}: {type(error).__name__}: {error}") from None
