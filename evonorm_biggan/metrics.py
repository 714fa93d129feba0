"""Inception Score and FID through torchmetrics (which runs torch-fidelity's Inception-v3), with the
Inception weights read from a local file: evaluation never downloads anything."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import torch
from torch import Tensor

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"


def check_inception_weights(path: Union[str, Path]) -> Path:
    """The weights path as a ``Path``, or a ``FileNotFoundError`` that says where to get the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {str(path)!r}. IS/FID need torch-fidelity's Inception-v3 "
            f"weights ({WEIGHTS_FILE}, from {WEIGHTS_URL}) on local disk: download the file once and set "
            f"model.inception_weights to its path, or set model.inception_weights to null (and "
            f"trainer.limit_val_batches to 0) to train without evaluation."
        )
    return path


class InceptionMetrics:
    """Streaming IS and FID: feed real images with :meth:`update_real`, generated ones with
    :meth:`update_fake`, then :meth:`compute`. Images are float tensors in [-1, 1], any resolution
    (torch-fidelity resizes to 299×299 as the reference implementations do).

    Not an ``nn.Module`` on purpose: the frozen Inception network is an evaluation tool, not model
    state, so it stays out of checkpoints, optimizers and the EMA.
    """

    def __init__(self, weights: Union[str, Path], is_splits: int = 10) -> None:
        path = str(check_inception_weights(weights))
        from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
        from torchmetrics.image.inception import InceptionScore

        self.fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=path)
        logits = NoTrainInceptionV3(name="inception-v3-compat", features_list=["logits_unbiased"], feature_extractor_weights_path=path)
        self.inception_score = InceptionScore(feature=logits, splits=is_splits, normalize=True)

    def to(self, device: torch.device) -> "InceptionMetrics":
        self.fid.to(device)
        self.inception_score.to(device)
        return self

    @staticmethod
    def _unit(images: Tensor) -> Tensor:
        return ((images.float() + 1) / 2).clamp(0, 1)

    def update_real(self, images: Tensor) -> None:
        self.fid.update(self._unit(images), real=True)

    def update_fake(self, images: Tensor) -> None:
        images = self._unit(images)
        self.fid.update(images, real=False)
        self.inception_score.update(images)

    def compute(self) -> Dict[str, Tensor]:
        """``{"fid", "is_mean", "is_std"}``; then resets all states for the next evaluation."""
        is_mean, is_std = self.inception_score.compute()
        result = {"fid": self.fid.compute(), "is_mean": is_mean, "is_std": is_std}
        self.fid.reset()
        self.inception_score.reset()
        return result
