"""Inception Score and FID computed as torch-fidelity computes them, with the Inception weights read
from a local file: evaluation never downloads anything.

* **Network:** torch-fidelity's Inception-v3 (``inception-v3-compat``: the TF-Inception of the original
  IS and FID code, ported), fed uint8 images. Images in [-1, 1] become uint8 as a PNG of them would,
  ``round(127.5·(x + 1))`` (:func:`to_uint8`; a real image read from uint8 comes back exactly), and the
  network resizes them to 299×299 with torch-fidelity's TensorFlow-1.x-exact bilinear interpolation
  (no antialiasing; torchmetrics' own IS/FID antialias by default, which changes the scores).
* **FID:** from the 2048-d pool features, each side's mean and covariance (normalized by n − 1, as
  ``np.cov``), accumulated as float64 sums so no features are kept, and torch-fidelity's
  ``fid_statistics_to_metric``.
* **IS:** torch-fidelity's ``isc_features_to_metric`` on the generated images' unbiased logits: 10
  splits after its fixed shuffle (seed 2020).

The test computes both with torch-fidelity's ``calculate_metrics`` on the same images and network.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
FID_FEATURES = {"64": 64, "192": 192, "768": 768, "2048": 2048}  # torch-fidelity's feature layers, by size
IS_FEATURES = "logits_unbiased"
SIDES = ("real", "fake")


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


def to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] as uint8, rounded to the nearest level (torchvision's ``save_image`` rounding)."""
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


class FidelityScores(Metric):
    """IS and FID from Inception features, by torch-fidelity's formulas. Feeds: :meth:`update` with the
    FID features (``dims`` of them) and, for generated images, the logits. States are float64 sums
    (count, Σf, Σffᵀ per side) and the generated images' logits, which torchmetrics sums and gathers
    across processes."""

    full_state_update = False

    def __init__(self, is_splits: int = 10, dims: int = 2048) -> None:
        super().__init__()
        self.is_splits = is_splits
        for side in SIDES:
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(dims, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(dims, dims, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("fake_logits", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool, logits: Optional[Tensor] = None) -> None:
        side = "real" if real else "fake"
        f = features.double()
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + f.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.t() @ f)
        if not real:
            if logits is None:
                raise ValueError("generated images need their logits too (for the Inception Score)")
            self.fake_logits.append(logits.float())

    def _statistics(self, side: str) -> Dict[str, object]:
        n, total, outer = (getattr(self, f"{side}_{k}") for k in ("n", "sum", "outer"))
        mu = total / n
        sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
        return {"mu": mu.cpu().numpy(), "sigma": sigma.cpu().numpy()}

    def compute(self) -> Dict[str, Tensor]:
        """``{"fid", "is_mean", "is_std"}`` as float64 scalars."""
        from torch_fidelity import metric_fid, metric_isc

        fid = metric_fid.fid_statistics_to_metric(self._statistics("real"), self._statistics("fake"), verbose=False)
        isc = metric_isc.isc_features_to_metric(dim_zero_cat(self.fake_logits).cpu(), splits=self.is_splits)
        values = {"fid": fid[metric_fid.KEY_METRIC_FID], "is_mean": isc[metric_isc.KEY_METRIC_ISC_MEAN],
                  "is_std": isc[metric_isc.KEY_METRIC_ISC_STD]}
        return {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in values.items()}


class InceptionMetrics:
    """Streaming IS and FID: feed real images with :meth:`update_real`, generated ones with
    :meth:`update_fake`, then :meth:`compute`. Images are float tensors in [-1, 1], any resolution.

    Not an ``nn.Module`` on purpose: the frozen Inception network is an evaluation tool, not model
    state, so it stays out of checkpoints, optimizers and the EMA.


    Args:
        weights: local path of torch-fidelity's Inception-v3 weights.
        is_splits: splits of the Inception Score.
        fid_features: torch-fidelity's feature layer for FID: ``"2048"`` (the pool features, standard
            FID) or a smaller one, ``"64"``, ``"192"``, ``"768"`` (cheaper, not comparable to published FID).
    """

    def __init__(self, weights: Union[str, Path], is_splits: int = 10, fid_features: str = "2048") -> None:
        if fid_features not in FID_FEATURES:
            raise ValueError(f"fid_features must be one of {sorted(FID_FEATURES, key=int)}, got {fid_features!r}")
        path = str(check_inception_weights(weights))
        from torch_fidelity import feature_extractor_inceptionv3 as fe

        self.inception = fe.FeatureExtractorInceptionV3("inception-v3-compat", [fid_features, IS_FEATURES],
                                                        feature_extractor_weights_path=path)
        self.scores = FidelityScores(is_splits, FID_FEATURES[fid_features])

    def to(self, device: torch.device) -> "InceptionMetrics":
        self.inception.to(device)
        self.scores.to(device)
        return self

    @torch.no_grad()
    def update_real(self, images: Tensor) -> None:
        features, _ = self.inception(to_uint8(images))
        self.scores.update(features, real=True)

    @torch.no_grad()
    def update_fake(self, images: Tensor) -> None:
        features, logits = self.inception(to_uint8(images))
        self.scores.update(features, real=False, logits=logits)

    def compute(self) -> Dict[str, Tensor]:
        """``{"fid", "is_mean", "is_std"}``; then resets the statistics for the next evaluation."""
        result = self.scores.compute()
        self.scores.reset()
        return result
