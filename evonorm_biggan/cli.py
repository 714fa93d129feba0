"""``evonorm-biggan fit --config configs/biggan/<file>.yaml``: LightningCLI over the BigGAN module and
the data modules (picked in the config by ``data.class_path``).

* The model's ``resolution`` and ``n_classes`` are linked from the data module (not set in configs).
* The sample grids are a callback configured under ``sample_grid`` (``every_n_steps``).
* Checkpoints: a ``ModelCheckpoint`` under ``checkpoint`` (``save_last`` on) writing to
  ``<trainer.default_root_dir>/checkpoints``, one folder per run directory rather than per logger
  version, so ``--ckpt_path last`` resumes the latest checkpoint of that run.
* Resuming (``--ckpt_path last`` or a path), the checkpoint's model settings replace the configured
  ones, since its weights have their shapes; a setting given differently is named in one warning.
* ``--trainer.sync_batchnorm true`` synchronizes every layer with batch statistics through
  :class:`~evonorm_biggan.distributed.SyncBatchStatistics`, which keeps BatchNormReLU's ReLU and
  covers the EvoNorm B-series too (Lightning's own conversion would do neither).
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from evonorm_plugins.user_errors import run_reporting_user_errors

from .callbacks import SampleGrid
from .data import BigGANDataModule
from .distributed import SyncBatchStatistics
from .module import BigGANModule

LINKED = {"resolution": "resolution", "num_classes": "n_classes"}  # data module attribute -> model setting


def checkpoint_dir(default_root_dir: Optional[str]) -> str:
    """Where a run's checkpoints go: ``<default_root_dir>/checkpoints`` (the working directory's when unset)."""
    return os.path.join(default_root_dir or os.getcwd(), "checkpoints")


class BigGANCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(SampleGrid, "sample_grid")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=checkpoint_dir)
        for source, target in LINKED.items():
            parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The trainer, with :class:`SyncBatchStatistics` as its layer sync when ``sync_batchnorm`` is on."""
        trainer_config = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        if trainer_config.get("sync_batchnorm"):
            plugins = trainer_config.get("plugins") or []
            kwargs["plugins"] = [*(plugins if isinstance(plugins, list) else [plugins]), SyncBatchStatistics()]
        return super().instantiate_trainer(**kwargs)

    def _parse_ckpt_path(self) -> None:
        """Resolve ``last`` to this run's last checkpoint, then take the checkpoint's model settings
        (as LightningCLI does for a path), warning about those that differ from the configured ones."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if config.get("ckpt_path") == "last":
            last = Path(config["checkpoint"]["dirpath"]) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}.ckpt"
            if not last.is_file():
                return  # a first run: Lightning says there is no last checkpoint and starts from scratch
            config["ckpt_path"] = str(last)
        path = config.get("ckpt_path")
        if not path or not Path(path).is_file():
            return
        stored: Dict[str, Any] = torch.load(path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        stored = {k: v for k, v in stored.items() if k not in LINKED.values() and not k.startswith("_")}
        differing = [f"{k}={stored[k]!r} (configured {config['model'].get(k)!r})" for k in sorted(stored)
                     if _plain(config["model"].get(k)) != _plain(stored[k])]
        if differing:
            warnings.warn(f"resuming {path}: the checkpoint's model settings replace the configured ones: "
                          f"{', '.join(differing)}", stacklevel=2)
        self.config = self.parser.parse_object({subcommand: {"model": stored}}, self.config)


def _plain(value: Any) -> Any:
    """Tuples and lists compare equal (YAML gives lists, checkpoints keep tuples)."""
    return list(value) if isinstance(value, tuple) else value


def main(args: Optional[List[str]] = None) -> BigGANCLI:
    """Run the CLI on ``args`` (default: ``sys.argv``), e.g. ``["fit", "--config", "smoke.yaml"]``."""
    return BigGANCLI(
        BigGANModule,
        BigGANDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def command(argv: Optional[List[str]] = None) -> int:
    """The ``evonorm-biggan`` command: :func:`main` with a user's mistakes (a missing dataset, a wrong
    layer name or setting) reported in one line; ``--debug`` keeps the traceback."""
    return run_reporting_user_errors("evonorm-biggan", main, argv)


if __name__ == "__main__":
    sys.exit(command())
