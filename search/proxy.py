"""The proxy task: the K architectures a candidate layer is trained in, the CIFAR-10 data, and the
Lightning module that trains one of them (Lightning's Trainer owns the loop).

Architectures (the paper's, width-reduced and adapted to 32×32 inputs by a stride-1 stem), built with
timm with the candidate in place of every norm + activation pair:

* ``resnet50v2``: pre-activation ResNet-50 (timm ``ResNetV2``), channels × ``width``, depths configurable;
* ``mobilenetv2``: MobileNetV2, channels × ``width``;
* ``efficientnet_b0``: EfficientNet-B0, channels × ``width``, depth × ``depth``.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Type

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from evonorm_plugins.datasets import read_cifar10_batches

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# ------------------------------------------------------------------------------------------ models
def _resnet50v2(layer: Callable[..., nn.Module], width: float, depth: Sequence[int], num_classes: int) -> nn.Module:
    from timm.layers import create_conv2d
    from timm.models.resnetv2 import ResNetV2

    channels = tuple(max(8, int(c * width)) for c in (256, 512, 1024, 2048))
    stem = max(8, int(64 * width))
    model = ResNetV2(
        layers=list(depth), channels=channels, stem_chs=stem, num_classes=num_classes,
        norm_layer=layer, conv_layer=create_conv2d, preact=True,
    )
    model.stem = nn.Conv2d(3, stem, 3, padding=1, bias=False)  # 32×32: no 4× downsampling stem
    return model


def _timm_efficientnet_family(generator: str, variant: str, **kwargs) -> nn.Module:
    from timm.models import efficientnet

    build = getattr(efficientnet, generator, None)
    if build is None:
        raise RuntimeError(f"timm.models.efficientnet.{generator} is missing in this timm; install timm>=1.0,<2")
    model = build(variant, **kwargs)
    model.conv_stem.stride = (1, 1)  # 32×32: keep resolution in the stem
    return model


def _mobilenetv2(layer: Callable[..., nn.Module], width: float, depth: Sequence[int], num_classes: int) -> nn.Module:
    return _timm_efficientnet_family("_gen_mobilenet_v2", "mobilenetv2_100", channel_multiplier=width,
                                     num_classes=num_classes, norm_layer=layer)


def _efficientnet_b0(layer: Callable[..., nn.Module], width: float, depth: Sequence[int], num_classes: int) -> nn.Module:
    depth_multiplier = depth[0] if depth else 1.0
    return _timm_efficientnet_family("_gen_efficientnet", "efficientnet_b0", channel_multiplier=width,
                                     depth_multiplier=depth_multiplier, num_classes=num_classes, norm_layer=layer)


ARCHITECTURES: Dict[str, Callable[..., nn.Module]] = {
    "resnet50v2": _resnet50v2,
    "mobilenetv2": _mobilenetv2,
    "efficientnet_b0": _efficientnet_b0,
}


@dataclass(frozen=True)
class ArchitectureConfig:
    """One proxy architecture: ``name`` from :data:`ARCHITECTURES`, a width multiplier, and depths
    (resnet50v2: blocks per stage; efficientnet_b0: ``[depth_multiplier]``; mobilenetv2: unused).
    ``steps`` and ``lr`` override the evaluation's ``train_steps`` and ``lr`` for this architecture
    (depthwise networks want a lower rate than ResNets)."""

    name: str
    width: float = 0.25
    depth: Tuple[float, ...] = ()
    steps: Optional[int] = None
    lr: Optional[float] = None

    @classmethod
    def from_dict(cls, data: dict) -> "ArchitectureConfig":
        unknown = set(data) - {"name", "width", "depth", "steps", "lr"}
        if unknown or "name" not in data:
            raise ValueError(f"an architecture takes name, width, depth, steps and lr; got {sorted(data)}")
        return cls(
            str(data["name"]), float(data.get("width", 0.25)), tuple(float(d) for d in data.get("depth", ())),
            None if data.get("steps") is None else int(data["steps"]), None if data.get("lr") is None else float(data["lr"]),
        )

    def build(self, layer: Type[nn.Module], num_classes: int = 10) -> nn.Module:
        if self.name not in ARCHITECTURES:
            raise ValueError(f"unknown proxy architecture {self.name!r}; choose from {', '.join(ARCHITECTURES)}")
        depth = self.depth or ((3, 4, 6, 3) if self.name == "resnet50v2" else ())
        if self.name == "resnet50v2":
            depth = tuple(int(d) for d in depth)

        def norm_layer(num_features: int, **kwargs) -> nn.Module:
            # timm takes a plain function as a norm-act factory, so unregistered candidates need no registration
            return layer(num_features, **kwargs)

        return ARCHITECTURES[self.name](norm_layer, self.width, depth, num_classes)


# -------------------------------------------------------------------------------------------- data
def synthetic_cifar(count: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """A learnable stand-in for CIFAR-10 that needs no download: each class is a colour and stripe
    orientation plus noise, so short training reaches well above chance."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    grid = np.linspace(0, 2 * np.pi, 32)
    images = np.empty((count, 3, 32, 32), dtype=np.float32)
    for i, label in enumerate(labels):
        angle = label * np.pi / 10
        stripes = np.sin(3 * (np.cos(angle) * grid[None, :] + np.sin(angle) * grid[:, None]))
        colour = np.array([np.cos(label), np.sin(label), np.cos(2 * label)])[:, None, None]
        images[i] = 0.5 + 0.25 * stripes[None] * colour + 0.15 * rng.standard_normal((3, 32, 32))
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels.astype(np.int64)


class CIFAR10DataModule(pl.LightningDataModule):
    """CIFAR-10 from its python batches (``data_dir``) or synthetic (``data_dir=None``), with a held-out
    validation split of the training images (CIFAR's test batch is never used by the search)."""

    def __init__(self, data_dir: Optional[str], batch_size: int = 64, val_fraction: float = 0.2,
                 limit: Optional[int] = None, seed: int = 0) -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.data_dir, self.batch_size, self.val_fraction, self.limit, self.seed = data_dir, batch_size, val_fraction, limit, seed
        self.train_set: Optional[TensorDataset] = None
        self.val_set: Optional[TensorDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        if self.data_dir is None:
            images, labels = synthetic_cifar(self.limit or 2000, self.seed)
        else:
            images, labels = read_cifar10_batches(self.data_dir, self.limit)
        x = torch.from_numpy(images).float().div_(255)
        x = (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        split = int(len(x) * (1 - self.val_fraction))
        self.train_set = TensorDataset(x[order[:split]], torch.from_numpy(labels)[order[:split]])
        self.val_set = TensorDataset(x[order[split:]], torch.from_numpy(labels)[order[split:]])

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


# ------------------------------------------------------------------------------------------ module
class ProxyClassifier(pl.LightningModule):
    """Trains one architecture with the candidate layer; reports validation accuracy as ``val_acc``.

    SGD with momentum and a cosine schedule over ``max_steps``, with the layers' parameters free of
    weight decay (the official code excludes EvoNorm variables from it). A non-finite loss stops
    training: the evaluator reads ``nonfinite`` and rejects the candidate.
    """

    def __init__(self, model: nn.Module, max_steps: int, lr: float = 0.1, weight_decay: float = 5e-4) -> None:
        super().__init__()
        self.model, self.max_steps, self.lr, self.weight_decay = model, max_steps, lr, weight_decay
        self.nonfinite = False
        self.correct = 0
        self.seen = 0

    def training_step(self, batch, batch_index):
        images, labels = batch
        loss = F.cross_entropy(self.model(images), labels)
        if not torch.isfinite(loss):
            self.nonfinite = True
            self.trainer.should_stop = True
        return loss

    def on_validation_epoch_start(self) -> None:
        self.correct = self.seen = 0

    def validation_step(self, batch, batch_index) -> None:
        images, labels = batch
        self.correct += int((self.model(images).argmax(1) == labels).sum())
        self.seen += len(labels)

    def on_validation_epoch_end(self) -> None:
        self.log("val_acc", self.correct / max(self.seen, 1))

    def configure_optimizers(self):
        from evonorm_plugins.layers.base import EvoNormBase

        norm_params = {id(p) for m in self.model.modules() if isinstance(m, (EvoNormBase, nn.modules.batchnorm._NormBase, nn.GroupNorm)) for p in m.parameters(recurse=False)}
        decay = [p for p in self.model.parameters() if id(p) not in norm_params]
        no_decay = [p for p in self.model.parameters() if id(p) in norm_params]
        optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr, momentum=0.9, nesterov=True,
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.max_steps, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def train_and_validate(model: nn.Module, data: CIFAR10DataModule, steps: int, lr: float, seed: int) -> Tuple[float, bool]:
    """(validation accuracy, whether the loss went non-finite) after ``steps`` training steps."""
    with _quiet_lightning():
        return _train_and_validate(model, data, steps, lr, seed)


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning logs its device summary at every Trainer; a search builds thousands of them."""
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _train_and_validate(model: nn.Module, data: CIFAR10DataModule, steps: int, lr: float, seed: int) -> Tuple[float, bool]:
    pl.seed_everything(seed, workers=True, verbose=False)
    module = ProxyClassifier(model, steps, lr=lr)
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=1.0, val_check_interval=None, check_val_every_n_epoch=None,
    )
    trainer.fit(module, datamodule=data)
    if module.nonfinite:
        return 0.0, True
    result = trainer.validate(module, datamodule=data, verbose=False)
    return float(result[0]["val_acc"]), False
