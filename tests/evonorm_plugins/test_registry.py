"""The named layer registry: built-ins, genomes by API, file, folder and environment variable, errors."""
import json
import os
import subprocess
import sys

import pytest
import torch

import evonorm_plugins as ep
from evonorm_plugins import registry
from evonorm_plugins.graph import GraphNormAct, genome_from_ops

EVOLVED = genome_from_ops([("mean_sq_instance", [0]), ("sqrt", [4]), ("tanh", [0]), ("div", [6, 5])], name="EvolvedTanh")


def test_builtins_are_registered():
    names = ep.list_layers()
    for name in ["EvoNormB0", "EvoNormB1", "EvoNormB2", "EvoNormS0", "EvoNormS1", "EvoNormS2",
                 "BatchNormReLU", "GroupNormReLU", "BatchNormSiLU", "GroupNormSiLU"]:
        assert name in names
    assert isinstance(ep.get_layer("EvoNormS0", 64, groups=16), ep.EvoNormS0)
    assert ep.get_layer("EvoNormS0", 64, groups=16).groups == 16
    assert ep.get_genome("EvoNormB0").formula().startswith("x / max(")
    gn = ep.get_layer("GroupNormSiLU", 80)
    x = torch.randn(2, 80, 3, 3)
    torch.testing.assert_close(gn(x), torch.nn.functional.silu(torch.nn.functional.group_norm(x, 20, eps=1e-5)))
    bn = ep.get_layer("BatchNormReLU", 8, apply_act=False)
    assert set(bn.state_dict()) == set(torch.nn.BatchNorm2d(8).state_dict())


def test_register_genome_and_build(clean_registry):
    cls = ep.register_layer("EvolvedTanh", EVOLVED)
    assert issubclass(cls, GraphNormAct) and cls.__name__ == "EvolvedTanh"
    layer = ep.get_layer("EvolvedTanh", 6, groups=3)
    x = torch.randn(2, 6, 4, 4)
    expected = torch.tanh(x) / torch.sqrt((x * x).mean((2, 3), keepdim=True) + 1e-5)
    torch.testing.assert_close(layer(x), expected)
    assert ep.get_genome("EvolvedTanh").hash() == EVOLVED.hash()
    assert ep.register_layer("EvolvedTanh", EVOLVED) is cls  # same genome again: a no-op


def test_register_conflicts_and_overwrite(clean_registry):
    ep.register_layer("EvolvedTanh", EVOLVED)
    other = genome_from_ops([("var_instance", [0]), ("sqrt", [4]), ("div", [0, 5])])
    with pytest.raises(ValueError, match=r"layer 'EvolvedTanh' is already registered .*overwrite=True"):
        ep.register_layer("EvolvedTanh", other)
    with pytest.raises(ValueError, match=r"layer 'EvoNormS0' is already registered"):
        ep.register_layer("EvoNormS0", other)
    ep.register_layer("EvolvedTanh", other, overwrite=True)
    assert ep.get_genome("EvolvedTanh").hash() == other.hash()
    ep.register_layer("EvoNormS0", ep.EvoNormS0)  # re-registering the same class is safe
    with pytest.raises(ValueError, match=r"layer name 'has space' is not valid"):
        ep.register_layer("has space", other)
    with pytest.raises(TypeError, match=r"takes a Genome or an nn.Module subclass, got int"):
        ep.register_layer("Number", 3)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ep.UnknownLayerError, match=r"unknown layer 'EvoNormSO'; did you mean .*'EvoNormS0'\? names are case-sensitive"):
        ep.get_layer("EvoNormSO", 8)
    with pytest.raises(KeyError, match=r"unknown layer 'evonormb0'; did you mean 'EvoNormB0'\?"):
        ep.get_layer_class("evonormb0")
    with pytest.raises(ValueError, match=r"'BatchNormReLU' is a hand-written module with no genome"):
        ep.get_genome("BatchNormReLU")


def test_load_file_and_folder(tmp_path, clean_registry):
    folder = tmp_path / "evolved"
    folder.mkdir()
    EVOLVED.save(folder / "a.json")
    unnamed = genome_from_ops([("abs", [0]), ("var_group", [0]), ("sqrt", [5]), ("div", [4, 6])])
    unnamed.save(folder / "layer_0042.json")
    (folder / "notes.txt").write_text("not a genome")
    assert ep.load_genomes(folder) == ["EvolvedTanh", "layer_0042"]
    assert isinstance(ep.get_layer("layer_0042", 8), GraphNormAct)
    assert ep.load_genomes(folder / "a.json") == ["EvolvedTanh"]  # loading again is safe
    with pytest.raises(FileNotFoundError, match=r"no genome file or folder at '.*missing'"):
        ep.load_genomes(tmp_path / "missing")
    (folder / "broken.json").write_text(json.dumps({"nodes": [{"op": "add", "inputs": [0]}], "output": 4}))
    with pytest.raises(ep.GenomeError, match=r"broken.json: node 4 \(add\) takes 2 input\(s\), got 1"):
        ep.load_genomes(folder)


@pytest.mark.slow
def test_environment_variable_makes_a_dropped_file_usable_by_name(tmp_path):
    """A fresh interpreter, as a config-driven job would be: no code registers the layer."""
    folder = tmp_path / "genomes"
    folder.mkdir()
    EVOLVED.save(folder / "evolved_tanh.json")
    code = (
        "import torch, evonorm_plugins as ep\n"
        "layer = ep.get_layer('EvolvedTanh', 4)\n"
        "print(type(layer).__name__, tuple(layer(torch.randn(2, 4, 3, 3)).shape))\n"
    )
    env = {**os.environ, registry.ENV_VAR: f"{tmp_path / 'nothing-here'}"}
    failed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "EVONORM_GENOMES names" in failed.stderr and "does not exist" in failed.stderr
    env[registry.ENV_VAR] = str(folder)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "EvolvedTanh (2, 4, 3, 3)"


def test_environment_variable_is_read_when_it_changes(tmp_path, monkeypatch, clean_registry):
    EVOLVED.save(tmp_path / "e.json")
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path / "e.json"))
    assert "EvolvedTanh" in ep.list_layers()


def test_the_layers_our_searches_found_ship_registered():
    files = sorted(f.name for f in registry.EVOLVED_GENOMES.iterdir() if f.name.endswith(".json"))
    assert files == ["evolved_cpu0.json"]
    assert ep.get_genome("EvolvedCPU0").formula() == "tanh(x)"  # the README's formula
    layer = ep.get_layer("EvolvedCPU0", 6)
    assert isinstance(layer, GraphNormAct) and type(layer).__name__ == "EvolvedCPU0"
    with torch.no_grad():
        layer.weight.fill_(2.0), layer.bias.fill_(0.5)
    x = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(layer(x), torch.tanh(x) * 2.0 + 0.5)


def test_paper_genome_rejects_other_names():
    with pytest.raises(ValueError, match=r"'EvoNormS3' is not a paper layer"):
        ep.paper_genome("EvoNormS3")


def test_a_snapshot_forgets_what_was_registered_inside_it():
    genome = registry.paper_genome("EvoNormS0")
    before = ep.list_layers()
    with registry.REGISTRY.snapshot() as layers:
        cls = ep.register_layer("SnapshotOnly", genome)
        assert layers.get_class("SnapshotOnly") is cls and "SnapshotOnly" in ep.list_layers()
    assert ep.list_layers() == before
    with pytest.raises(registry.UnknownLayerError, match="unknown layer 'SnapshotOnly'"):
        ep.get_layer_class("SnapshotOnly")


def test_a_separate_registry_shares_nothing_with_the_global_one():
    private = registry.LayerRegistry()
    private.register("Mine", ep.EvoNormS0)
    assert private.names() == ["Mine"] and "Mine" not in ep.list_layers()
    with pytest.raises(ValueError, match="no genome"):  # a class registered without one
        private.genome("Mine")
