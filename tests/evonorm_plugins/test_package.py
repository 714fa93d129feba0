"""The package itself: light import, every package folder installed, the public names."""
import subprocess
import sys

import pytest

import evonorm_plugins

from support import ROOT

HEAVY = ["timm", "detectron2", "mmcv", "mmengine", "lightning", "pytorch_lightning", "ray", "torchvision"]


@pytest.mark.slow
def test_import_loads_no_framework():
    code = (
        "import sys, evonorm_plugins, evonorm_plugins.functional\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_package_folder_is_a_package():
    """Packages are found automatically (``packages.find``): a folder of modules without an
    ``__init__.py`` would silently not be installed."""
    for top in ("evonorm_plugins", "evonorm_search", "evonorm_biggan"):
        for module in (ROOT / top).rglob("*.py"):
            assert (module.parent / "__init__.py").is_file(), f"{module.parent} has modules but no __init__.py"


def test_public_names():
    for name in ["EvoNormB0", "EvoNormB1", "EvoNormB2", "EvoNormS0", "EvoNormS1", "EvoNormS2"]:
        assert name in evonorm_plugins.__all__
    for name in ["evonorm_b0", "evonorm_b1", "evonorm_b2", "evonorm_s0", "evonorm_s1", "evonorm_s2"]:
        assert callable(getattr(evonorm_plugins.functional, name))
