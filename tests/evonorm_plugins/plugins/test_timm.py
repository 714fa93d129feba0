"""timm integration: our layers (paper and evolved) by class and by name in real timm architectures."""
import functools

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")
ept = pytest.importorskip("evonorm_plugins.timm")
from timm.layers import create_norm_act_layer, get_norm_act_layer  # noqa: E402

import evonorm_plugins as ep  # noqa: E402
from evonorm_plugins import registry  # noqa: E402
from evonorm_plugins.graph import genome_from_ops  # noqa: E402

ARCHITECTURES = ["resnetv2_18", "regnetx_002", "efficientnet_b0", "regnetz_005"]
TIMM_NORM_ACT = ("BatchNormAct2d", "GroupNormAct", "EvoNorm2dS0", "EvoNorm2dB0")


@pytest.fixture(scope="module")
def evolved(tmp_path_factory):
    """An evolved layer delivered as a JSON file and loaded by name, registered after the plugin import."""
    path = tmp_path_factory.mktemp("genomes") / "evolved_tanh.json"
    genome_from_ops([("mean_sq_instance", [0]), ("sqrt", [4]), ("tanh", [0]), ("mul", [6, 3]), ("div", [7, 5])], name="evolved_tanh").save(path)
    with registry.REGISTRY.snapshot():
        ep.load_genomes(path)
        yield "evolved_tanh"


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("layer", ["EvoNormB0", "EvoNormS0", "evolved"])
def test_architectures_train_with_our_layers(arch, layer, evolved):
    torch.manual_seed(0)
    norm_layer = {"EvoNormB0": ep.EvoNormB0, "EvoNormS0": "evonorm_plugins.EvoNormS0", "evolved": evolved}[layer]
    model = timm.create_model(arch, norm_layer=norm_layer, num_classes=10)
    expected_type = ep.get_layer_class(evolved) if layer == "evolved" else getattr(ep, layer)
    ours = [m for m in model.modules() if isinstance(m, expected_type)]
    assert len(ours) > 10
    assert not [type(m).__name__ for m in model.modules() if type(m).__name__ in TIMM_NORM_ACT]
    # Post-activation blocks end their residual branch with apply_act=False; pre-activation resnetv2 has none.
    assert any(not m.apply_act for m in ours) == (arch != "resnetv2_18")
    # 64×64 keeps the last feature maps above 1×1: with N·H·W = 2, B0's batch std is tiny and
    # gradients explode through the stack (timm's EvoNorm2dB0 does the same).
    y = model(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.square().mean().backward()
    grads = [m.weight.grad for m in ours]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_create_norm_act_layer_with_our_names():
    layer = create_norm_act_layer("evonorm_plugins.EvoNormS0", 64, apply_act=False, act_layer=nn.ReLU, inplace=True)
    assert type(layer) is ep.EvoNormS0 and not layer.apply_act
    assert type(create_norm_act_layer("GroupNormSiLU", 64)) is ep.GroupNormSiLU
    assert type(create_norm_act_layer("group_norm_silu", 64)) is ep.GroupNormSiLU  # timm's own spelling rules
    partial_layer = get_norm_act_layer(functools.partial(ep.EvoNormS0, groups=8))
    assert partial_layer(64).groups == 8
    assert get_norm_act_layer(ep.EvoNormB1) is ep.EvoNormB1



def test_synchronized_layers_through_a_partial_or_convert_sync_evonorm():
    """timm takes norm_layer=partial(EvoNormB0, sync_stats=True); a built model converts with
    convert_sync_evonorm. Either way every B-series layer, activating or not, synchronizes."""
    built = timm.create_model("regnetx_002", norm_layer=functools.partial(ep.EvoNormB0, sync_stats=True), num_classes=10)
    converted = ep.convert_sync_evonorm(timm.create_model("regnetx_002", norm_layer=ep.EvoNormB0, num_classes=10))
    for model in (built, converted):
        layers = [m for m in model.modules() if isinstance(m, ep.EvoNormB0)]
        assert len(layers) > 10 and any(not m.apply_act for m in layers) and all(m.sync_stats for m in layers)

def test_timm_names_are_kept_unless_overridden():
    assert type(create_norm_act_layer("evonorms0", 64)).__name__ == "EvoNorm2dS0"
    try:
        ept.register(override_timm_names=True)
        assert type(create_norm_act_layer("evonorms0", 64)) is ep.EvoNormS0
        assert type(create_norm_act_layer("EvoNormB2", 64)) is ep.EvoNormB2
    finally:
        ept.restore_timm_names()
    assert type(create_norm_act_layer("evonorms0", 64)).__name__ == "EvoNorm2dS0"
    assert type(create_norm_act_layer("evonormb2", 64)).__name__ == "EvoNorm2dB2"


def test_layers_registered_later_are_mirrored(evolved):
    genome = genome_from_ops([("var_instance", [0]), ("sqrt", [4]), ("abs", [0]), ("div", [6, 5])])
    try:
        ep.register_layer("late_layer_7", genome)
        layer = create_norm_act_layer("late_layer_7", 16)
        assert type(layer) is ep.get_layer_class("late_layer_7")
        x = torch.randn(2, 16, 4, 4)
        torch.testing.assert_close(layer(x), x.abs() / torch.sqrt(x.var((2, 3), unbiased=False, keepdim=True) + 1e-5))
    finally:
        registry.unregister_layer("late_layer_7")


def test_drop_layer_is_applied_to_the_output():
    class Halve(nn.Module):
        def forward(self, x):
            return x / 2

    layer = create_norm_act_layer("evonorm_plugins.EvoNormS0", 32, drop_layer=Halve)
    x = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(layer(x), ep.EvoNormS0(32)(x) / 2)
    bn = create_norm_act_layer("BatchNormReLU", 32, drop_layer=Halve)
    torch.testing.assert_close(bn(x - 1), torch.relu(ep.BatchNormReLU(32, apply_act=False)(x - 1) / 2))


@pytest.mark.parametrize("arch", ["resnetv2_18", "efficientnet_b0"])
def test_models_with_our_layers_script(arch):
    """resnetv2_18 scripts with timm's EvoNorm2dS0 too; efficientnet_b0 with it does not (its group_std
    asserts groups divide channels) but does with ours."""
    model = timm.create_model(arch, norm_layer=ep.EvoNormS0, num_classes=10).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 32, 32)
    # scripted models run the reference path, eager ones the lean kernels: float32 rounding differs
    torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-4)


def test_unsupported_timm_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(timm, "__version__", "0.6.13")
    with pytest.raises(RuntimeError, match=r"supports timm >= 0.9 .* timm 0.6.13 does not.*pip install 'timm>=1.0'"):
        ept.register()


def test_unknown_name_is_one_line_with_did_you_mean(evolved):
    # timm used to raise a bare KeyError: 'evonormplugins.evonorms9'
    with pytest.raises(ep.UnknownLayerError, match=r"^unknown timm norm-act layer 'evonormplugins.evonorms9' \(timm lower-cases "
                       r"names and drops '_'\); did you mean .*'evonorm_plugins.EvoNormS0'.*\? evonorm_plugins layers are "
                       r"'evonorm_plugins.<Name>' with Name one of .*; timm's own are .*evonorms0") as error:
        timm.create_model("resnetv2_18", norm_layer="evonorm_plugins.EvoNormS9")
    assert isinstance(error.value, KeyError) and "\n" not in str(error.value)
    with pytest.raises(KeyError, match=r"did you mean 'evonorm_plugins.evolved_tanh'[,?]"):  # the closest first
        create_norm_act_layer("evolved_tahn", 8)
    with pytest.raises(KeyError, match=r"^unknown timm norm-act layer 'nolayer' \(.*\); evonorm_plugins layers are"):
        get_norm_act_layer("no_layer")
    assert get_norm_act_layer("evonorm_plugins.EvoNormS0") is ep.EvoNormS0  # known names unchanged
