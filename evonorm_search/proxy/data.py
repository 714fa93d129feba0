"""The proxy task's data: CIFAR-10 from its python batches, or a synthetic stand-in that needs no download,
split once into three disjoint parts (:func:`split_indices`):

* ``train``: the images every proxy training learns from;
* ``search``: the search-validation part, on which the search scores candidates (and the quality gate);
* ``heldout``: images no part of the search ever scores on; only ``rerank`` (and the ablation's final
  scores) measure on it, so the layer the search picked is judged on data its choice never saw.

The split depends only on the number of images, the fractions and ``split_seed`` (not on the training
seed), so every search, re-ranking and seed of the same config sees the same three parts.
"""
from __future__ import annotations

import hashlib
from typing import Dict, Optional, Tuple

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from evonorm_plugins.datasets import read_cifar10_batches

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
PARTS = ("train", "search", "heldout")


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


def split_indices(count: int, val_fraction: float, heldout_fraction: float, split_seed: int) -> Dict[str, torch.Tensor]:
    """Image indices of the three parts (``train``, ``search``, ``heldout``): one seeded permutation cut
    in three, so the parts are disjoint and cover every image."""
    if not 0 < val_fraction < 1 or not 0 <= heldout_fraction < 1 or val_fraction + heldout_fraction >= 1:
        raise ValueError(f"val_fraction must be in (0, 1) and heldout_fraction in [0, 1) with a sum below 1, got "
                         f"val_fraction={val_fraction}, heldout_fraction={heldout_fraction}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(split_seed))
    heldout = int(count * heldout_fraction)
    search = int(count * val_fraction)
    return {"heldout": order[:heldout], "search": order[heldout:heldout + search], "train": order[heldout + search:]}


def split_record(parts: Dict[str, torch.Tensor], split_seed: int) -> dict:
    """What identifies a split, for the store: its seed, the size of each part and a digest of its indices."""
    digest = hashlib.sha256(b"".join(parts[name].to(torch.int64).numpy().tobytes() for name in PARTS)).hexdigest()[:16]
    return {"split_seed": split_seed, **{name: int(len(parts[name])) for name in PARTS}, "digest": digest}


class CIFAR10DataModule(pl.LightningDataModule):
    """CIFAR-10 from its python batches (``data_dir``) or synthetic (``data_dir=None``), split into train /
    search-validation / held-out (:func:`split_indices`; CIFAR's test batch is never used). Training
    uses the ``train`` part; validation scores on the part named by ``score_on`` (``search`` or ``heldout``).
    ``seed`` sets the order of the training batches only."""

    def __init__(self, data_dir: Optional[str], batch_size: int = 64, val_fraction: float = 0.2,
                 limit: Optional[int] = None, seed: int = 0, heldout_fraction: float = 0.0, split_seed: int = 0,
                 score_on: str = "search") -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if score_on not in ("search", "heldout"):
            raise ValueError(f"score_on must be 'search' or 'heldout', got {score_on!r}")
        if score_on == "heldout" and heldout_fraction <= 0:
            raise ValueError("scoring on the held-out part needs heldout_fraction > 0 in the evaluation config")
        self.data_dir, self.batch_size, self.val_fraction, self.limit, self.seed = data_dir, batch_size, val_fraction, limit, seed
        self.heldout_fraction, self.split_seed, self.score_on = heldout_fraction, split_seed, score_on
        self.parts: Dict[str, TensorDataset] = {}
        self.split: dict = {}

    @property
    def train_set(self) -> TensorDataset:
        return self.parts["train"]

    @property
    def val_set(self) -> TensorDataset:
        """The part validation scores on: search-validation, or held-out for re-ranking."""
        return self.parts[self.score_on]

    def setup(self, stage: Optional[str] = None) -> None:
        if self.parts:
            return
        if self.data_dir is None:
            images, labels = synthetic_cifar(self.limit or 2000, self.split_seed)
        else:
            images, labels = read_cifar10_batches(self.data_dir, self.limit)
        x = torch.from_numpy(images).float().div_(255)
        x = (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        y = torch.from_numpy(labels)
        indices = split_indices(len(x), self.val_fraction, self.heldout_fraction, self.split_seed)
        self.parts = {name: TensorDataset(x[index], y[index]) for name, index in indices.items()}
        self.split = split_record(indices, self.split_seed)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)
