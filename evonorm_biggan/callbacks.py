"""Side concerns of BigGAN training as Lightning callbacks."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from torchvision.utils import save_image

from .module import BigGANModule


class SampleGrid(pl.Callback):
    """Writes G_ema's fixed-latent grid (one class per row, :meth:`BigGANModule.sample_grid`) every
    ``every_n_steps`` G steps, and once before training starts from scratch, as
    ``<log dir>/samples/step_<G step>.png``; also to the logger when it takes images (TensorBoard).
    ``every_n_steps=0`` writes none. In a multi-process fit every process computes the grid (standing
    statistics may synchronize across them) and the first one writes it."""

    def __init__(self, every_n_steps: int = 1000) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0 (0: no grids), got {every_n_steps}")
        self.every_n_steps = every_n_steps

    def on_train_start(self, trainer: pl.Trainer, module: BigGANModule) -> None:
        if self.every_n_steps and int(module.g_steps) == 0:  # the untrained grid, the reference for later ones
            self.write(trainer, module)

    def on_train_batch_end(self, trainer: pl.Trainer, module: BigGANModule, *args: object) -> None:
        if self.every_n_steps and int(module.g_steps) % self.every_n_steps == 0:
            self.write(trainer, module)

    def write(self, trainer: pl.Trainer, module: BigGANModule) -> Path:
        """Write the grid at the module's current G step; returns the PNG path."""
        grid = module.sample_grid()
        step = int(module.g_steps)
        path = Path(trainer.log_dir or trainer.default_root_dir) / "samples" / f"step_{step:07d}.png"
        if not trainer.is_global_zero:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("samples", grid, step)
        return path
