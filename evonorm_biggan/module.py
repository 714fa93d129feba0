"""The BigGAN-deep training loop as a ``LightningModule`` with manual optimization.

One ``training_step`` is one BigGAN iteration: ``d_steps`` discriminator steps, then one generator
step, each accumulating gradients over ``accumulate`` micro-batches (BigGAN-deep: 2 D steps, 8
accumulations of 256 = batch 2048). The loader batch therefore holds ``d_steps · accumulate``
micro-batches of real images, consumed by the D steps; the G step only needs z and labels. Adam with
BigGAN's betas (0, 0.999) and eps 1e-6, and two-timescale learning rates (G 1e-4, D 4e-4).

The EMA generator ``G_ema`` copies G until ``ema_start`` G steps, then averages with ``ema_decay``;
its running statistics are re-estimated ("standing statistics", see :mod:`.ema`) from latents of the
distribution about to be sampled, before sample grids and evaluation. Sampling uses ``G_ema`` in eval
mode: sample grids with truncated z (``truncation``), IS/FID with untruncated z ~ N(0, I) as the
reference's training-time scores, or truncated at ``eval_truncation`` (then named in the log keys).

Many processes (Lightning's ``ddp`` strategy): each backward reaches only what its step trains — a D
step does not run G with gradients, a G step runs D with its parameters frozen — so one DDP wrapper
over G and D would wait for the gradients the other half never gets ("parameters that were not used in
producing the loss"). Lightning's wrapper therefore covers G only (D's parameters and buffers are in
DDP's ignore list) and D gets a DDP wrapper of its own for its step. Every process draws its own z and
labels from a generator seeded by its rank, so the fake batches (and the fakes behind IS/FID) differ
across processes; the fixed grid latents are the same everywhere.
"""
from __future__ import annotations

import copy
from itertools import chain
from typing import Any, Dict, List, Optional, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torchvision.utils import make_grid

from .distributed import check_activations_kept
from .ema import ema_update, standing_stats
from .losses import hinge_d, hinge_g
from .metrics import InceptionMetrics
from .model import Discriminator, Generator, truncated_z


class BigGANModule(pl.LightningModule):
    """BigGAN-deep with the G normalization-activation chosen by registry name (``layer``).

    Args:
        resolution, n_classes, depth, dim_z, shared_dim, layer, layer_kwargs, output_channels: see
            :class:`.Generator`.
        g_ch, d_ch: channel multipliers of G and D.
        g_attention, d_attention: self-attention resolution in G and D (None: none).
        g_lr, d_lr, betas, adam_eps: Adam settings (two time-scale learning rates).
        d_steps: D steps per G step.
        accumulate: micro-batches accumulated per optimizer step.
        ema_decay, ema_start: EMA of G's weights, starting after ``ema_start`` G steps.
        standing_stats_batches, standing_stats_batch_size: batches that re-estimate G_ema's running
            statistics before it samples.
        truncation: truncation threshold of z for the sample grids.
        eval_truncation: truncation threshold of z for IS/FID; None (default): untruncated z, logged as
            ``eval/fid``, ``eval/is_mean``, ``eval/is_std``; a threshold t is named in the keys
            (``eval/fid_trunc0.5`` …).
        sample_classes, sample_per_class: the grid's rows (classes spread over all of them) and columns.
        inception_weights: local path of torch-fidelity's Inception-v3 weights for IS/FID in
            validation; None disables evaluation.
        seed: seed of the fixed grid latents.
        sync_stats: synchronize the batch statistics of G's layers (EvoNorm B-series, batch-dependent
            genomes, BatchNormReLU) across the training processes (``sync_stats=True`` in the layers of G
            and G_ema; no effect in one process). ``--trainer.sync_batchnorm true`` does the same for
            the duration of a fit.
    """

    def __init__(
        self,
        resolution: int = 32,
        n_classes: int = 10,
        g_ch: int = 32,
        d_ch: int = 32,
        depth: int = 2,
        dim_z: int = 128,
        shared_dim: int = 128,
        g_attention: Optional[int] = 16,
        d_attention: Optional[int] = 16,
        layer: str = "BatchNormReLU",
        layer_kwargs: Optional[Dict[str, Any]] = None,
        output_channels: int = 3,
        g_lr: float = 1e-4,
        d_lr: float = 4e-4,
        betas: Tuple[float, float] = (0.0, 0.999),
        adam_eps: float = 1e-6,
        d_steps: int = 2,
        accumulate: int = 1,
        ema_decay: float = 0.9999,
        ema_start: int = 20000,
        standing_stats_batches: int = 16,
        standing_stats_batch_size: int = 64,
        truncation: float = 1.0,
        eval_truncation: Optional[float] = None,
        sample_classes: int = 10,
        sample_per_class: int = 8,
        inception_weights: Optional[str] = None,
        seed: int = 0,
        sync_stats: bool = False,
    ) -> None:
        super().__init__()
        if d_steps < 1 or accumulate < 1:
            raise ValueError(f"d_steps and accumulate must be >= 1, got d_steps={d_steps}, accumulate={accumulate}")
        if eval_truncation is not None and eval_truncation <= 0:
            raise ValueError(f"eval_truncation must be positive, or null for untruncated z, got {eval_truncation}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        g_layer_kwargs = {**(layer_kwargs or {}), **({"sync_stats": True} if sync_stats else {})}
        self.G = Generator(resolution, n_classes, g_ch, depth, dim_z, shared_dim, g_attention, layer, g_layer_kwargs, output_channels)
        self.D = Discriminator(resolution, n_classes, d_ch, depth, d_attention)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
        # Lightning's DDP wrapper leaves D to D's own (see the module docstring).
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, [f"D.{name}" for name, _ in chain(self.D.named_parameters(), self.D.named_buffers())]
        )
        self.register_buffer("g_steps", torch.zeros((), dtype=torch.long))
        generator = torch.Generator().manual_seed(seed)
        classes = torch.linspace(0, n_classes - 1, min(sample_classes, n_classes)).round().long()
        self.register_buffer("fixed_y", classes.repeat_interleave(sample_per_class))
        self.register_buffer("fixed_z", truncated_z(len(self.fixed_y), dim_z, truncation, generator))
        # Kept out of the module tree on purpose (see InceptionMetrics); built now so a wrong weights
        # path fails when the CLI starts, not at the first validation.
        self._metrics: Optional[InceptionMetrics] = InceptionMetrics(inception_weights) if inception_weights else None

    # -- sampling --------------------------------------------------------------------------------

    def noise_generator(self) -> torch.Generator:
        """The generator of this process's z and labels, made on first use: seeded by the global seed
        (``seed_everything``) and the process's rank, so each process of a multi-process fit draws
        its own fake batches. (CPU: draws are copied to the device, which keeps them device-independent.)"""
        generator = self.__dict__.get("_noise_generator")
        if generator is None:
            seed = (torch.initial_seed() + 1_000_003 * self.global_rank) % 2**64
            generator = self.__dict__["_noise_generator"] = torch.Generator().manual_seed(seed)
        return generator

    def random_labels(self, n: int) -> Tensor:
        return torch.randint(0, self.hparams.n_classes, (n,), generator=self.noise_generator()).to(self.device)

    def random_z(self, n: int, truncation: Optional[float] = None) -> Tensor:
        """z ~ N(0, I), or truncated to [-t, t] when ``truncation`` is given."""
        if truncation is None:
            return torch.randn(n, self.hparams.dim_z, generator=self.noise_generator()).to(self.device)
        return truncated_z(n, self.hparams.dim_z, truncation, self.noise_generator()).to(self.device)

    @torch.no_grad()
    def refresh_ema_stats(self, truncation: Optional[float] = None) -> None:
        """Re-estimate G_ema's running statistics from its own outputs (standing statistics) for latents
        z ~ N(0, I), or truncated at ``truncation``: the distribution that will be sampled."""
        n = self.hparams.standing_stats_batch_size
        standing_stats(self.G_ema, self.hparams.standing_stats_batches,
                       lambda: self.G_ema(self.random_z(n, truncation), self.random_labels(n)))

    @torch.no_grad()
    def sample(self, n: int, y: Optional[Tensor] = None, truncation: Optional[float] = None, z: Optional[Tensor] = None) -> Tensor:
        """``n`` images in [-1, 1] from G_ema in eval mode (its running statistics as they stand; call
        :meth:`refresh_ema_stats` first after changing G_ema). ``y`` defaults to random classes, ``z`` to
        fresh latents z ~ N(0, I), or truncated at ``truncation`` when it is given."""
        y = self.random_labels(n) if y is None else y.to(self.device)
        z = self.random_z(n, truncation) if z is None else z.to(self.device)
        self.G_ema.eval()
        return self.G_ema(z, y)

    # -- training --------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        check_activations_kept(self)
        self.__dict__.pop("_noise_generator", None)  # seeded again, by this process's rank in the fit
        if isinstance(self.trainer.model, DistributedDataParallel):  # Lightning's wrapper, which covers G only
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.__dict__["_d_parallel"] = DistributedDataParallel(self.D, device_ids=device_ids)

    def on_fit_end(self) -> None:
        self.__dict__.pop("_d_parallel", None)

    def _d_step_discriminator(self) -> nn.Module:
        """D for its own step: its DDP wrapper in a multi-process fit, which reduces D's gradients."""
        return self.__dict__.get("_d_parallel", self.D)

    def configure_optimizers(self) -> List[torch.optim.Optimizer]:
        hp = self.hparams
        opt_g = torch.optim.Adam(self.G.parameters(), lr=hp.g_lr, betas=tuple(hp.betas), eps=hp.adam_eps)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=hp.d_lr, betas=tuple(hp.betas), eps=hp.adam_eps)
        return [opt_g, opt_d]

    def _micro_batches(self, x: Tensor, y: Tensor) -> List[Tuple[Tensor, Tensor]]:
        parts = self.hparams.d_steps * self.hparams.accumulate
        res = self.hparams.resolution
        if x.shape[1:] != (3, res, res):
            raise ValueError(f"images of shape {tuple(x.shape[1:])} do not match model.resolution={res}; set the data module's resolution to {res}")
        if x.shape[0] % parts:
            raise ValueError(
                f"the loader batch ({x.shape[0]}) must hold d_steps × accumulate = {parts} equal micro-batches; "
                f"set data.batch_size to a multiple of {parts} (micro-batch × {parts})"
            )
        return list(zip(x.chunk(parts), y.chunk(parts)))

    def training_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        hp = self.hparams
        micro = self._micro_batches(*batch)
        self.G.train()
        self.D.train()
        discriminator = self._d_step_discriminator()

        self.D.requires_grad_(True)
        for step in range(hp.d_steps):
            opt_d.zero_grad(set_to_none=True)
            for x_real, y_real in micro[step * hp.accumulate : (step + 1) * hp.accumulate]:
                n = x_real.shape[0]
                y_fake = self.random_labels(n)
                with torch.no_grad():
                    x_fake = self.G(self.random_z(n), y_fake)
                logits = discriminator(torch.cat([x_real, x_fake]), torch.cat([y_real, y_fake]))
                loss_real, loss_fake = hinge_d(logits[:n], logits[n:])
                self.manual_backward((loss_real + loss_fake) / hp.accumulate)
            opt_d.step()

        self.D.requires_grad_(False)  # G's step needs no D gradients (and D's DDP wrapper is not used)
        opt_g.zero_grad(set_to_none=True)
        n = micro[0][0].shape[0]
        for _ in range(hp.accumulate):
            y_fake = self.random_labels(n)
            loss_g = hinge_g(self.D(self.G(self.random_z(n), y_fake), y_fake))
            self.manual_backward(loss_g / hp.accumulate)
        opt_g.step()
        self.D.requires_grad_(True)

        self.g_steps += 1
        g_steps = int(self.g_steps)
        ema_update(self.G_ema, self.G, hp.ema_decay if g_steps > hp.ema_start else 0.0)
        self.log_dict({"loss/d_real": loss_real, "loss/d_fake": loss_fake, "loss/g": loss_g, "g_steps": float(g_steps)}, prog_bar=True)

    # -- grids and evaluation --------------------------------------------------------------------

    @torch.no_grad()
    def sample_grid(self) -> Tensor:
        """G_ema's images for the fixed latents and classes (after standing statistics), tiled one class
        per row in [0, 1]; :class:`~evonorm_biggan.callbacks.SampleGrid` writes it during training."""
        self.refresh_ema_stats(self.hparams.truncation)
        images = self.sample(len(self.fixed_y), self.fixed_y, z=self.fixed_z)
        return make_grid(images, nrow=self.hparams.sample_per_class, normalize=True, value_range=(-1, 1))

    def on_validation_epoch_start(self) -> None:
        if self._metrics is not None:
            self._metrics.to(self.device)
            self.refresh_ema_stats(self.hparams.eval_truncation)

    def validation_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Real images of the batch against as many G_ema samples (random classes; z untruncated, or
        truncated at ``eval_truncation``)."""
        if self._metrics is None:
            return
        x, _ = batch
        self._metrics.update_real(x)
        self._metrics.update_fake(self.sample(x.shape[0], truncation=self.hparams.eval_truncation))

    def on_validation_epoch_end(self) -> None:
        if self._metrics is not None:
            t = self.hparams.eval_truncation
            suffix = "" if t is None else f"_trunc{t:g}"
            self.log_dict({f"eval/{k}{suffix}": v for k, v in self._metrics.compute().items()})
