"""``evonorm-biggan fit --config configs/biggan/<file>.yaml``: LightningCLI over the BigGAN module and
the data modules (picked in the config by ``data.class_path``)."""
from __future__ import annotations

from typing import List, Optional

from pytorch_lightning.cli import LightningCLI

from .data import BigGANDataModule
from .module import BigGANModule


def main(args: Optional[List[str]] = None) -> None:
    """Run the CLI on ``args`` (default: ``sys.argv``), e.g. ``["fit", "--config", "smoke.yaml"]``."""
    LightningCLI(
        BigGANModule,
        BigGANDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
