"""``evonorm-biggan fit --config configs/biggan/<file>.yaml``: LightningCLI over the BigGAN module and
the data modules (picked in the config by ``data.class_path``).

The model's ``resolution`` and ``n_classes`` are linked from the data module (not set in configs), and
the sample grids are a callback configured under ``sample_grid`` (``every_n_steps``).
"""
from __future__ import annotations

from typing import List, Optional

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from .callbacks import SampleGrid
from .data import BigGANDataModule
from .module import BigGANModule


class BigGANCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(SampleGrid, "sample_grid")
        parser.link_arguments("data.resolution", "model.resolution", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.n_classes", apply_on="instantiate")


def main(args: Optional[List[str]] = None) -> None:
    """Run the CLI on ``args`` (default: ``sys.argv``), e.g. ``["fit", "--config", "smoke.yaml"]``."""
    BigGANCLI(
        BigGANModule,
        BigGANDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
