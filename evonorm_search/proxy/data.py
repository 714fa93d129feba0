"""The proxy task's data: CIFAR-10 from its python batches, or a synthetic stand-in that needs no download."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from evonorm_plugins.datasets import read_cifar10_batches

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


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
