"""The mmcv plugin: every registered layer through mmcv's build_norm_layer, ConvModule and config files."""
import importlib
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("mmengine")
pytest.importorskip("mmcv.cnn")

from mmcv.cnn import ConvModule, build_norm_layer  # noqa: E402
from mmengine.registry import MODELS, Registry  # noqa: E402

import evonorm_plugins as ep  # noqa: E402
import evonorm_plugins.mmcv as plugin  # noqa: E402
from evonorm_plugins import registry  # noqa: E402
from evonorm_plugins.graph import GraphNormAct, genome_from_ops  # noqa: E402

import reference as ref  # noqa: E402
from support import ROOT, randomize_parameters  # noqa: E402

ROOT = ROOT
# tanh(x) / sqrt(mean(x², over H, W) + eps): an evolved layer with a formula that is easy to restate.
EVOLVED = genome_from_ops([("mean_sq_instance", [0]), ("sqrt", [4]), ("tanh", [0]), ("div", [6, 5])], name="EvolvedTanh")
EXPECTED_ABBR = {"BatchNormReLU": "bn", "BatchNormSiLU": "bn", "GroupNormReLU": "gn", "GroupNormSiLU": "gn"}


@pytest.fixture
def clean_registries():
    """Undo what a test registers in evonorm_plugins and in mmengine's MODELS."""
    models = dict(MODELS._module_dict)
    with registry.REGISTRY.snapshot():
        yield
    MODELS._module_dict.clear()
    MODELS._module_dict.update(models)


def as_numpy(t):
    return t.detach().double().numpy()


@pytest.mark.parametrize("name", ep.list_layers())
def test_every_registered_layer_builds(name):
    abbr, layer = build_norm_layer(dict(type=name), 16, postfix=1)
    assert abbr == EXPECTED_ABBR.get(name, "evonorm") + "1"
    assert type(layer) is ep.get_layer_class(name)  # the real class, not the registered builder
    assert layer.eps == 1e-5
    x = torch.randn(2, 16, 5, 5)
    assert layer(x).shape == x.shape
    assert type(MODELS.build(dict(type=name, num_features=8))) is ep.get_layer_class(name)



def test_sync_types_build_synchronized_layers(clean_registries):
    """``Sync<Name>`` for the layers with batch statistics, as mmcv's ``SyncBN`` for ``BN``; a
    ``sync_stats`` key does the same; genomes registered later get theirs too."""
    for name in ("EvoNormB0", "EvoNormB1", "EvoNormB2", "BatchNormReLU"):
        abbr, layer = build_norm_layer(dict(type="Sync" + name, requires_grad=True), 16, postfix=1)
        assert type(layer) is ep.get_layer_class(name) and layer.sync_stats
        assert abbr == EXPECTED_ABBR.get(name, "evonorm") + "1"
    assert build_norm_layer(dict(type="EvoNormB0", sync_stats=True), 16)[1].sync_stats
    assert MODELS.get("SyncEvoNormS0") is None and MODELS.get("SyncGroupNormReLU") is None
    ep.register_layer("EvolvedBatch", ep.paper_genome("EvoNormB2"))
    ep.register_layer("EvolvedTanh", EVOLVED)  # per-sample statistics only
    assert build_norm_layer(dict(type="SyncEvolvedBatch"), 8)[1].sync_stats
    assert MODELS.get("SyncEvolvedTanh") is None

def test_paper_layers_compute_their_formulas():
    x = torch.randn(3, 16, 5, 5, dtype=torch.float64)
    _, s0 = build_norm_layer(dict(type="EvoNormS0", num_groups=4), 16)
    s0 = s0.double()
    randomize_parameters(s0)
    expected = ref.evonorm_s(0, as_numpy(x), as_numpy(s0.v), as_numpy(s0.weight), as_numpy(s0.bias), 1e-5, groups=4)
    torch.testing.assert_close(s0(x), torch.from_numpy(expected))

    # eps reaches the layer: with a variance of ~1e-4 it changes the result.
    small = x * 0.01
    _, b0 = build_norm_layer(dict(type="EvoNormB0", eps=1e-3, momentum=0.2), 16)
    b0 = b0.double()
    randomize_parameters(b0)
    assert (b0.eps, b0.momentum) == (1e-3, 0.2)
    expected = ref.evonorm_b(0, as_numpy(small), as_numpy(b0.v), as_numpy(b0.weight), as_numpy(b0.bias), 1e-3)
    torch.testing.assert_close(b0(small), torch.from_numpy(expected))


def test_gn_config_switches_by_type_only():
    gn_cfg = dict(type="GN", num_groups=4, requires_grad=True)
    _, gn = build_norm_layer(gn_cfg, 16)
    abbr, gn_relu = build_norm_layer({**gn_cfg, "type": "GroupNormReLU"}, 16)
    assert abbr == "gn" and gn_relu.num_groups == 4
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-0.5, 0.5)
    gn_relu.load_state_dict(gn.state_dict())  # same state dict layout as mmcv's GN
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(gn_relu(x), F.relu(gn(x)))

    _, s0 = build_norm_layer({**gn_cfg, "type": "EvoNormS0"}, 16)
    assert s0.groups == 4
    _, s0 = build_norm_layer(dict(type="EvoNormS0", num_groups=4, groups=4), 16)
    assert s0.groups == 4
    _, s0 = build_norm_layer(dict(type="EvoNormS0", num_groups=4, groups=8), 16)  # e.g. num_groups from a GN base
    assert s0.groups == 8
    with pytest.raises(TypeError, match=r"EvoNormS0 got unexpected keyword argument\(s\) \['affine'\]"):
        build_norm_layer(dict(type="EvoNormS0", affine=True), 16)


@pytest.mark.parametrize("name", ["EvoNormB0", "EvoNormS0", "GroupNormReLU"])
def test_requires_grad_false_freezes(name):
    _, layer = build_norm_layer(dict(type=name, requires_grad=False), 8)
    assert len(list(layer.parameters())) >= 2
    assert not any(p.requires_grad for p in layer.parameters())
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    layer(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in layer.parameters())


def test_conv_module_runs_the_layer_after_the_conv():
    block = ConvModule(3, 8, 3, norm_cfg=dict(type="EvoNormB0"), act_cfg=None)
    assert block.norm_name == "evonorm" and isinstance(block.norm, ep.EvoNormB0)
    assert block.conv.bias is None  # mmcv drops the conv bias before a norm
    randomize_parameters(block.norm)
    x = torch.randn(4, 3, 9, 9)
    y = block(x)
    conv = F.conv2d(x.double(), block.conv.weight.double())
    norm = block.norm
    expected = ref.evonorm_b(0, as_numpy(conv), as_numpy(norm.v), as_numpy(norm.weight), as_numpy(norm.bias), 1e-5)
    torch.testing.assert_close(y.double(), torch.from_numpy(expected), rtol=1e-4, atol=1e-5)

    y.square().mean().backward()
    for p in (block.conv.weight, norm.v, norm.weight, norm.bias):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_every_registry_layer_is_a_norm_to_mmcv_mmengine_and_their_weight_decay_rules():
    from mmcv.cnn import is_norm as mmcv_is_norm
    from mmcv.cnn.bricks.norm import infer_abbr
    from mmengine.optim import DefaultOptimWrapperConstructor
    from mmengine.utils.dl_utils import is_norm as mmengine_is_norm

    layers = [ep.get_layer(name, 8, groups=4) for name in ("EvoNormB0", "EvoNormS0", "GroupNormReLU")]
    layers.append(ep.GraphNormAct(8, ep.paper_genome("EvoNormS1"), groups=4))
    assert all(mmcv_is_norm(layer) and mmengine_is_norm(layer) for layer in layers)
    assert not mmcv_is_norm(torch.nn.Conv2d(3, 8, 1)) and infer_abbr(torch.nn.InstanceNorm2d) == "in"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), *layers)
    constructor = DefaultOptimWrapperConstructor(
        dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.1, weight_decay=1e-4)),
        paramwise_cfg=dict(norm_decay_mult=0.0),
    )
    decay = {id(p): group["weight_decay"] for group in constructor(model).optimizer.param_groups for p in group["params"]}
    norm_parameters = [p for layer in layers for p in layer.parameters()]
    assert len(norm_parameters) == 3 + 3 + 2 + 2  # v, γ, β of B0 and S0; γ, β of GN-ReLU and of the S1 graph
    assert all(decay[id(p)] == 0.0 for p in norm_parameters)
    assert decay[id(model[0].weight)] == 1e-4


def test_conv_module_warns_once_about_a_second_activation_after_an_evonorm():
    with pytest.warns(UserWarning, match=r"ConvModule with norm_cfg type EvoNormS0 also applies act_cfg \(ReLU\).*act_cfg=None"):
        ConvModule(3, 8, 3, norm_cfg=dict(type="EvoNormS0", groups=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ConvModule(3, 8, 3, norm_cfg=dict(type="EvoNormS0", groups=4), act_cfg=None)
        ConvModule(3, 8, 3, norm_cfg=dict(type="EvoNormS0", groups=4, apply_act=False))
        ConvModule(3, 8, 3, norm_cfg=dict(type="GN", num_groups=4))


def test_custom_keys_target_the_evonorm_parameters():
    """The stable abbreviation lets mmengine's paramwise_cfg single out the layers' parameters."""
    from mmengine.optim import build_optim_wrapper

    model = torch.nn.Sequential(
        ConvModule(3, 8, 3, norm_cfg=dict(type="EvoNormS0", groups=4)),
        ConvModule(8, 8, 1, norm_cfg=dict(type="GroupNormReLU", num_groups=4)),
    )
    cfg = dict(
        optimizer=dict(type="SGD", lr=0.1, weight_decay=1e-4),
        paramwise_cfg=dict(custom_keys={"evonorm": dict(decay_mult=0.0)}),
    )
    groups = build_optim_wrapper(model, cfg).optimizer.param_groups
    decay = {id(p): group["weight_decay"] for group in groups for p in group["params"]}
    names = {name: decay[id(p)] for name, p in model.named_parameters()}
    assert names == {
        "0.conv.weight": 1e-4, "0.evonorm.v": 0.0, "0.evonorm.weight": 0.0, "0.evonorm.bias": 0.0,
        "1.conv.weight": 1e-4, "1.gn.weight": 1e-4, "1.gn.bias": 1e-4,
    }


def test_evolved_genome_from_json(tmp_path, clean_registries):
    path = tmp_path / "evolved_tanh.json"
    EVOLVED.save(path)
    assert ep.load_genomes(path) == ["EvolvedTanh"]
    assert MODELS.get("EvolvedTanh") is not None  # registered after the plugin's import: mirrored at once
    assert "EvolvedTanh" in plugin.register_all()

    abbr, layer = build_norm_layer(dict(type="EvolvedTanh", num_groups=2), 6, postfix=2)
    assert abbr == "evonorm2"
    assert isinstance(layer, GraphNormAct) and type(layer) is ep.get_layer_class("EvolvedTanh")
    randomize_parameters(layer)
    x = torch.randn(2, 6, 4, 4)
    y = torch.tanh(x) / torch.sqrt(x.square().mean((2, 3), keepdim=True) + 1e-5)
    torch.testing.assert_close(layer(x), y * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1))


def test_reimport_and_register_all_are_idempotent(clean_registries):
    builder = MODELS.get("EvoNormS0")
    importlib.reload(plugin)
    assert plugin.register_all() == plugin.register_all()
    assert MODELS.get("EvoNormS0") is builder  # unchanged entries are left alone

    ep.register_layer("EvolvedTanh", EVOLVED)
    plugin.register_all()
    replacement = genome_from_ops([("var_instance", [0]), ("sqrt", [4]), ("div", [0, 5])])
    ep.register_layer("EvolvedTanh", replacement, overwrite=True)  # an overwrite is mirrored too
    assert build_norm_layer(dict(type="EvolvedTanh"), 4)[1].genome.hash() == replacement.hash()


def test_unknown_norm_type_is_one_line_with_did_you_mean():
    # mmcv's own message was "Cannot find None in registry under scope name mmengine"
    message = (r"^unknown norm_cfg type 'EvoNormSO': not registered in mmengine's MODELS \(scope 'mmengine'\); did you "
               r"mean .*'EvoNormS0'.*\? evonorm_plugins layers: .*EvoNormB0.*; mmcv's own norm types include BN.*EVONORM_GENOMES")
    with pytest.raises(ep.UnknownLayerError, match=message) as error:
        build_norm_layer(dict(type="EvoNormSO"), 8)
    assert isinstance(error.value, KeyError) and "\n" not in str(error.value)
    with pytest.raises(KeyError, match=r"unknown norm_cfg type 'evonorm_s0'.*did you mean .*'EvoNormS0'.*\?"):
        ConvModule(3, 8, 3, norm_cfg=dict(type="evonorm_s0"))
    assert build_norm_layer(dict(type="GN", num_groups=2), 8)[0] == "gn"  # found types are untouched


def test_reimport_keeps_one_norm_type_lookup(clean_registries):
    from mmcv.cnn.bricks import norm

    importlib.reload(plugin)
    assert type(norm.MODELS).__name__ == "NormTypeLookup" and norm.MODELS.models is MODELS
    with pytest.raises(KeyError, match=r"did you mean .*'EvoNormB0'.*\?"):
        build_norm_layer(dict(type="EvoNormB9"), 8)


def test_foreign_entry_with_the_same_name_is_an_error(clean_registries):
    MODELS.register_module(name="EvolvedTanh", module=torch.nn.Identity)
    message = r"'EvolvedTanh' is already registered in the 'model' registry by torch\.nn\.modules\.linear\.Identity"
    with pytest.warns(UserWarning, match=message):  # register_layer itself succeeds; mmcv gets a warning
        ep.register_layer("EvolvedTanh", EVOLVED)
    with pytest.raises(ValueError, match=message):
        plugin.register_all()


def test_dotted_names_are_skipped_with_a_warning(clean_registries):
    ep.register_layer("evolved.v2", EVOLVED)
    with pytest.warns(UserWarning, match=r"'evolved.v2' is not registered with mmcv: .* \(e\.g\. 'evolved_v2'\)"):
        names = plugin.register_all()
    assert "evolved.v2" not in names and "EvoNormB0" in names


def test_downstream_scopes_find_the_layers():
    child = Registry("model", parent=MODELS, scope="evonorm_test_scope")
    try:
        assert child.get("EvoNormS0") is MODELS.get("EvoNormS0")
    finally:
        MODELS._children.pop("evonorm_test_scope")


def test_missing_mmengine_names_the_install_command(monkeypatch):
    for name in ["mmengine", "mmengine.registry", "mmcv", "mmcv.cnn"]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    monkeypatch.delitem(sys.modules, "evonorm_plugins.mmcv")
    with pytest.raises(ImportError, match=r'needs mmengine .* pip install "evonorm-plugins\[mmcv\]"'):
        importlib.import_module("evonorm_plugins.mmcv")


@pytest.mark.slow
def test_config_custom_imports_in_a_fresh_process(tmp_path):
    genome_file = tmp_path / "evolved_tanh.json"
    EVOLVED.save(genome_file)
    config = tmp_path / "model.py"
    config.write_text(textwrap.dedent("""\
        custom_imports = dict(imports=["evonorm_plugins.mmcv"], allow_failed_imports=False)
        norm_cfg = dict(type="EvoNormS0", num_groups=8, requires_grad=True)
        evolved_cfg = dict(type="EvolvedTanh")
    """))
    script = textwrap.dedent(f"""\
        import sys
        from mmengine.config import Config
        assert "evonorm_plugins.mmcv" not in sys.modules
        cfg = Config.fromfile({str(config)!r})
        from mmcv.cnn import build_norm_layer
        name, layer = build_norm_layer(cfg.norm_cfg, 32, postfix=1)
        assert (name, type(layer).__name__, layer.groups) == ("evonorm1", "EvoNormS0", 8), (name, layer)
        name, layer = build_norm_layer(cfg.evolved_cfg, 32)
        assert (name, type(layer).__name__) == ("evonorm", "EvolvedTanh"), (name, layer)
        print("built")
    """)
    env = {**os.environ, "EVONORM_GENOMES": str(genome_file)}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "built"
