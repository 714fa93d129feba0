"""Imports flow one way: the library <- its plugins <- the search and BigGAN (contracts in pyproject.toml's
``[tool.importlinter]``, checked with import-linter)."""
from importlinter.cli import lint_imports

from support import ROOT


def test_import_contracts_are_kept(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0, (
        "an import crosses the architecture's layers: run `lint-imports` in the repository for the path"
    )
