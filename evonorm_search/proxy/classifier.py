"""The Lightning module that trains one proxy architecture with a candidate layer, and the function that
runs it under a Trainer (which owns the loop) for a number of steps on a given accelerator."""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from evonorm_plugins.layers.base import EvoNormBase

from .data import CIFAR10DataModule


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
        norm_params = {id(p) for m in self.model.modules() if isinstance(m, (EvoNormBase, nn.modules.batchnorm._NormBase, nn.GroupNorm)) for p in m.parameters(recurse=False)}
        decay = [p for p in self.model.parameters() if id(p) not in norm_params]
        no_decay = [p for p in self.model.parameters() if id(p) in norm_params]
        optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr, momentum=0.9, nesterov=True,
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.max_steps, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def train_and_validate(model: nn.Module, data: CIFAR10DataModule, steps: int, lr: float, seed: int,
                       accelerator: str = "cpu", devices: int = 1) -> Tuple[float, bool]:
    """(validation accuracy, whether the loss went non-finite) after ``steps`` training steps on
    ``accelerator`` (Lightning's names: ``cpu``, ``gpu``/``cuda``, ``auto``...)."""
    with _quiet_lightning():
        return _train_and_validate(model, data, steps, lr, seed, accelerator, devices)


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning logs its device summary at every Trainer, and some versions a deprecation warning of
    their own internals (``LeafSpec``); a search builds thousands of Trainers."""
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _train_and_validate(model: nn.Module, data: CIFAR10DataModule, steps: int, lr: float, seed: int,
                        accelerator: str, devices: int) -> Tuple[float, bool]:
    pl.seed_everything(seed, workers=True, verbose=False)
    module = ProxyClassifier(model, steps, lr=lr)
    trainer = pl.Trainer(
        max_steps=steps, accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=1.0, val_check_interval=None, check_val_every_n_epoch=None,
    )
    trainer.fit(module, datamodule=data)
    if module.nonfinite:
        return 0.0, True
    result = trainer.validate(module, datamodule=data, verbose=False)
    return float(result[0]["val_acc"]), False
