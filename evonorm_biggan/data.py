"""Data modules for BigGAN training: CIFAR-10 python batches, and any ImageFolder tree (ImageNet).

Both yield ``(images, labels)`` with images as float tensors in [-1, 1] (G's tanh range), drop the
last incomplete batch (a training step splits its batch into equal micro-batches), and check their
root with an error that names the missing path and the expected layout. The validation loader holds
the first ``eval_images`` real images (the FID reference set) in batches of ``eval_batch_size``.

Each exposes ``resolution`` and ``num_classes`` once constructed: the CLI links them to the model's
``resolution`` and ``n_classes``, so model and data cannot disagree.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from evonorm_plugins.datasets import read_cifar10_batches


class BigGANDataModule(pl.LightningDataModule):
    """Shared loaders; subclasses set ``self.train_set`` in :meth:`setup`."""

    def __init__(self, root: str, batch_size: int = 64, num_workers: int = 2, eval_images: int = 10000, eval_batch_size: int = 100) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.eval_images = eval_images
        self.eval_batch_size = eval_batch_size
        self.train_set: Optional[Dataset] = None

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup() runs before the loaders"
        if len(self.train_set) < self.batch_size:
            raise ValueError(f"the training set under {str(self.root)!r} has {len(self.train_set)} images, fewer than one batch ({self.batch_size}); lower data.batch_size")
        return self._loader(self.train_set, self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup() runs before the loaders"
        return self._loader(Subset(self.train_set, range(min(self.eval_images, len(self.train_set)))), self.eval_batch_size, shuffle=False, drop_last=False)


class _ScaledUint8(TensorDataset):
    """uint8 (N, 3, H, W) images → float in [-1, 1], with optional random horizontal flips."""

    def __init__(self, images: Tensor, labels: Tensor, flip: bool) -> None:
        super().__init__(images, labels)
        self.flip = flip

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        image, label = super().__getitem__(index)
        image = image.float() / 127.5 - 1.0
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, label


class CIFAR10DataModule(BigGANDataModule):
    """CIFAR-10 from the python batches (``data_batch_*``), as in the official ``cifar-10-python.tar.gz``.

    Args:
        root: the ``cifar-10-batches-py`` folder, or a folder that contains it. Any subset of the
            ``data_batch_*`` files is used as found.
        flip: random horizontal flips (BigGAN's CIFAR setting does not flip).
    """

    def __init__(
        self, root: str, batch_size: int = 64, num_workers: int = 2, eval_images: int = 10000, eval_batch_size: int = 100, flip: bool = False
    ) -> None:
        super().__init__(root, batch_size, num_workers, eval_images, eval_batch_size)
        self.flip = flip
        self.resolution = 32
        self.num_classes = 10

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        images, labels = read_cifar10_batches(self.root)
        self.train_set = _ScaledUint8(torch.from_numpy(images), torch.from_numpy(labels), self.flip)


class ImageFolderDataModule(BigGANDataModule):
    """Any ``root/<class>/<image>`` tree (ImageNet's train folder): BigGAN's preprocessing, a centre
    crop of the short side resized to ``resolution``.

    Args:
        resolution: output side (must equal ``model.resolution``).
        flip: random horizontal flips.
    """

    def __init__(
        self,
        root: str,
        resolution: int = 128,
        batch_size: int = 64,
        num_workers: int = 8,
        eval_images: int = 50000,
        eval_batch_size: int = 100,
        flip: bool = False,
    ) -> None:
        super().__init__(root, batch_size, num_workers, eval_images, eval_batch_size)
        self.resolution = resolution
        self.flip = flip
        self.num_classes = len(_class_folders(self.root))

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        from torchvision import transforms
        from torchvision.datasets import ImageFolder

        steps: List[Any] = [transforms.Lambda(_center_crop_short_side), transforms.Resize(self.resolution)]
        if self.flip:
            steps.append(transforms.RandomHorizontalFlip())
        steps += [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
        try:
            self.train_set = ImageFolder(str(self.root), transform=transforms.Compose(steps))
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error}; expected root/<class>/<image> under {str(self.root)!r}") from error
        self.num_classes = len(self.train_set.classes)


def _class_folders(root: Path) -> List[str]:
    """The class subfolders of an ImageFolder root (torchvision's rule), or a one-line error."""
    from torchvision.datasets.folder import find_classes

    if not root.is_dir():
        raise FileNotFoundError(
            f"no image folder at {str(root)!r}: expected one subfolder per class with the images "
            f"inside (root/<class>/<image>.JPEG, e.g. ImageNet's train/); set data.root"
        )
    return find_classes(str(root))[0]


def _center_crop_short_side(image: Any) -> Any:
    """BigGAN's CenterCropLongEdge: the largest centred square."""
    from torchvision.transforms.functional import center_crop

    return center_crop(image, min(image.size))
