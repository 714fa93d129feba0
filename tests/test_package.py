"""The package itself: light import, both import names, every sub-package declared for installation."""
import subprocess
import sys
import tomllib
from pathlib import Path

import evonorm_plugins

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["timm", "detectron2", "mmcv", "mmengine", "lightning", "pytorch_lightning", "ray", "torchvision"]


def test_import_loads_no_framework():
    code = (
        "import sys, evonorm_plugins, evonorm_plugins.functional\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_search_package_installs_under_its_own_name():
    import evonorm_search

    assert Path(evonorm_search.__file__).resolve().parent == ROOT / "search"
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('search') is not None)"
    assert subprocess.run([sys.executable, "-c", code], cwd="/").returncode == 0, "a top-level `search` module is installed"


def test_every_subpackage_is_declared():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    found = set()
    for top, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join((top, *rel.parts)))
    assert found == declared


def test_public_names():
    for name in ["EvoNormB0", "EvoNormB1", "EvoNormB2", "EvoNormS0", "EvoNormS1", "EvoNormS2"]:
        assert name in evonorm_plugins.__all__
    for name in ["evonorm_b0", "evonorm_b1", "evonorm_b2", "evonorm_s0", "evonorm_s1", "evonorm_s2"]:
        assert callable(getattr(evonorm_plugins.functional, name))
