"""convert_norm_act: which norms it converts, which it refuses and why, and the state it carries."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import evonorm_plugins as ep
from evonorm_plugins.convert import Conversion, ConversionReport, convert_norm_act
from evonorm_plugins.registry import make_layer_class

ACT_MODULES = (nn.ReLU, nn.SiLU, nn.ReLU6, nn.Hardswish, nn.GELU, nn.LeakyReLU)
ACT_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, F.silu, F.relu6, F.hardswish, F.gelu}
ACT_METHODS = {"relu", "relu_", "sigmoid", "clamp"}


class _LeafTracer(fx.Tracer):
    """Keeps norms and the converted layers as leaves (the layers' forwards are not fx-traceable)."""

    def is_leaf_module(self, m, name):
        return isinstance(m, (ep.EvoNormBase, nn.BatchNorm2d, nn.GroupNorm)) or super().is_leaf_module(m, name)


def _graph(model):
    return _LeafTracer().trace(model)


def _is_activation(node, modules):
    if node.op == "call_module":
        return isinstance(modules[node.target], ACT_MODULES)
    if node.op == "call_function":
        return node.target in ACT_FUNCTIONS
    return node.op == "call_method" and node.target in ACT_METHODS


def _consumers(node, modules):
    out = []
    for user in node.users:
        if user.op == "call_module" and isinstance(modules[user.target], nn.Identity):
            out.extend(_consumers(user, modules))
        else:
            out.append(user)
    return out


def _activation_count(model):
    """Activations applied in forward: activation calls in the graph plus activating norm modules."""
    modules = dict(model.named_modules())
    count = 0
    for node in _graph(model).nodes:
        if _is_activation(node, modules):
            count += 1
        elif node.op == "call_module":
            m = modules[node.target]
            count += bool(getattr(m, "apply_act", False)) or isinstance(getattr(m, "act", None), ACT_MODULES)
    return count


def _assert_no_activation_after_converted(model, report):
    modules = dict(model.named_modules())
    converted = {c.path for c in report.converted}
    nodes = [n for n in _graph(model).nodes if n.op == "call_module" and n.target in converted]
    assert {n.target for n in nodes} == converted
    for node in nodes:
        assert not any(_is_activation(c, modules) for c in _consumers(node, modules)), node.target


def _randomize_bn(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                    m.num_batches_tracked.fill_(7)


def _conv_bn_relu(act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8))


def _forward_backward(model, x):
    model.train()
    model(x).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------------------ exactness and state
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_bn_relu_to_batchnorm_relu_is_exact(mode):
    model = _conv_bn_relu()
    _randomize_bn(model)
    reference = copy.deepcopy(model)
    report = convert_norm_act(model, "BatchNormReLU")
    assert report.converted == [
        Conversion("1", "BatchNorm2d+ReLU", "BatchNormReLU", True, "2",
                   ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
        Conversion("4", "BatchNorm2d", "BatchNormReLU", False, None,
                   ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
    ]
    assert report.refused == []
    assert isinstance(model[1], ep.BatchNormReLU) and isinstance(model[2], nn.Identity)
    getattr(model, mode)(), getattr(reference, mode)()
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    torch.testing.assert_close(model[4].running_var, reference[4].running_var, rtol=0, atol=0)


def test_evonorm_b0_carries_affine_running_var_eps_momentum_and_mode():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8, eps=1e-3, momentum=0.05), nn.ReLU())
    _randomize_bn(model)
    model.eval()
    bn = model[1]
    report = convert_norm_act(model, "EvoNormB0")
    layer = model[1]
    assert isinstance(layer, ep.EvoNormB0) and layer.apply_act and not layer.training
    assert (layer.eps, layer.momentum) == (1e-3, 0.05)
    assert torch.equal(layer.weight, bn.weight) and torch.equal(layer.bias, bn.bias)
    assert torch.equal(layer.running_var, bn.running_var)
    assert report.converted[0].carried == ("weight", "bias", "running_var")
    assert "BatchNorm2d+ReLU -> EvoNormB0" in str(report)



def test_sync_stats_is_asked_for_or_carried_from_a_syncbatchnorm():
    """sync_stats=True synchronizes the B-series; a SyncBatchNorm's replacement synchronizes over its
    process group unasked (the S-series accept and ignore it: no batch statistics)."""
    model = _conv_bn_relu()
    convert_norm_act(model, "EvoNormB0", sync_stats=True)
    assert model[1].sync_stats and model[4].sync_stats and not model[4].apply_act
    model = nn.SyncBatchNorm.convert_sync_batchnorm(_conv_bn_relu())
    convert_norm_act(model, "EvoNormB2")
    assert isinstance(model[1], ep.EvoNormB2) and model[1].sync_stats and model[1].process_group is None
    model = nn.SyncBatchNorm.convert_sync_batchnorm(_conv_bn_relu())
    convert_norm_act(model, "EvoNormS0")
    assert isinstance(model[1], ep.EvoNormS0) and not model[1].synchronized()

def test_groupnorm_gives_its_groups_unless_overridden():
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.GroupNorm(4, 16), nn.SiLU(), nn.Conv2d(16, 16, 1), nn.GroupNorm(8, 16))
    convert_norm_act(model, "EvoNormS0")
    assert (model[1].groups, model[1].apply_act, model[4].groups, model[4].apply_act) == (4, True, 8, False)
    model = nn.Sequential(nn.GroupNorm(4, 16), nn.SiLU())
    wrapped = nn.Sequential(nn.Conv2d(3, 16, 1), model)
    convert_norm_act(wrapped, "EvoNormS0", groups=2, eps=1e-3)
    assert (model[0].groups, model[0].eps) == (2, 1e-3)


def test_evolved_layer_class_gets_the_batchnorm_moments():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
    _randomize_bn(model)
    running_var = model[1].running_var.clone()
    report = convert_norm_act(model, make_layer_class("ConvertTestB0", ep.paper_genome("EvoNormB0")))
    layer = model[1]
    assert type(layer).__name__ == report.converted[0].new == "ConvertTestB0"
    assert report.converted[0].carried == ("weight", "bias", "running_stats[0] (var of x)")
    torch.testing.assert_close(layer.running_stats[0], running_var)


def test_fused_baseline_converts_again_as_norm_with_builtin_act():
    model = _conv_bn_relu()
    convert_norm_act(model, "BatchNormSiLU")
    report = convert_norm_act(model, "EvoNormB1")
    assert [(c.old, c.apply_act, c.act_path) for c in report.converted] == [
        ("BatchNormSiLU(SiLU)", True, None), ("BatchNormSiLU", False, None)
    ]


# ------------------------------------------------------------------------------------ refusals
class _FunctionalRelu(nn.Module):
    def __init__(self, method=False):
        super().__init__()
        self.conv, self.bn, self.method = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), method

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x.relu_() if self.method else F.relu(x)


@pytest.mark.parametrize("method, shown", [(False, "torch.nn.functional.relu"), (True, "Tensor.relu_()")])
def test_functional_activation_is_refused(method, shown):
    model = _FunctionalRelu(method)
    report = convert_norm_act(model, "EvoNormB0")
    assert report.converted == [] and [r.path for r in report.refused] == ["bn"]
    assert "functional activation" in report.refused[0].reason and shown in report.refused[0].reason
    assert type(model.bn) is nn.BatchNorm2d


class _TwoUsers(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn, self.relu = nn.BatchNorm2d(3), nn.ReLU()

    def forward(self, x):
        y = self.bn(x)
        return self.relu(y) + y


def test_norm_feeding_an_activation_and_more_is_refused():
    report = convert_norm_act(_TwoUsers(), "EvoNormB0")
    assert report.converted == [] and "goes to 2 places" in report.refused[0].reason


class _Block(nn.Module):
    """A torchvision-style residual block: one ReLU module called twice."""

    def __init__(self, c=8, own_relu=False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.relu1 = nn.ReLU(inplace=True) if own_relu else self.relu

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def test_residual_branch_end_gets_the_non_activating_form():
    model = _Block(own_relu=True)
    before = _activation_count(model)
    report = convert_norm_act(model, "EvoNormS0")
    assert [(c.path, c.apply_act, c.act_path) for c in report.converted] == [("bn1", True, "relu1"), ("bn2", False, None)]
    assert isinstance(model.relu, nn.ReLU) and isinstance(model.relu1, nn.Identity)
    assert _activation_count(model) == before
    _assert_no_activation_after_converted(model, report)


def test_shared_activation_module_is_refused():
    report = convert_norm_act(_Block(), "EvoNormS0")
    assert [c.path for c in report.converted] == ["bn2"]
    assert report.refused[0].path == "bn1" and "called 2 times" in report.refused[0].reason


def test_unreplaced_activation_is_refused_unless_asked_for():
    report = convert_norm_act(_conv_bn_relu(nn.ReLU6), "EvoNormB0")
    assert [r.path for r in report.refused] == ["1"] and "ReLU6" in report.refused[0].reason
    model = _conv_bn_relu(nn.ReLU6)
    report = convert_norm_act(model, "EvoNormB0", activations=(nn.ReLU, nn.ReLU6))
    assert report.refused == [] and isinstance(model[2], nn.Identity)


def test_aliased_norm_is_refused():
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(bn, nn.ReLU(), bn)
    report = convert_norm_act(model, "EvoNormB0")
    assert report.converted == [] and "several names" in report.refused[0].reason


def test_strict_raises_and_changes_nothing():
    model = nn.Sequential(_Block(), nn.Conv2d(8, 3, 1), _conv_bn_relu())
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"nothing was changed:\n  0\.bn1: its activation module"):
        convert_norm_act(model, "EvoNormB0", strict=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_bad_arguments_change_nothing():
    model = _conv_bn_relu()
    with pytest.raises(TypeError, match="apply_act"):
        convert_norm_act(model, "EvoNormB0", apply_act=False)
    with pytest.raises(ep.UnknownLayerError, match="EvoNormB0"):
        convert_norm_act(model, "EvoNormb0")
    with pytest.raises(TypeError, match="registered name or an nn.Module class"):
        convert_norm_act(model, ep.EvoNormB0(8))
    with pytest.raises(TypeError, match="unexpected keyword"):
        convert_norm_act(model, "EvoNormB0", grups=4)
    assert type(model[1]) is nn.BatchNorm2d and type(model[2]) is nn.ReLU


# ------------------------------------------------------------------------------- tracing fallback
class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = _conv_bn_relu()
        self.bn, self.relu = nn.BatchNorm2d(8), nn.ReLU()

    def forward(self, x):
        x = self.seq(x)
        if x.mean() > 0:  # data-dependent control flow: fx cannot trace it
            x = -x
        return self.relu(self.bn(x))


def test_untraceable_model_uses_the_sequential_rule_and_refuses_the_rest():
    model = _Untraceable()
    report = convert_norm_act(model, "EvoNormB0")
    assert [(c.path, c.apply_act, c.act_path) for c in report.converted] == [("seq.1", True, "seq.2")]
    reasons = dict(report.refused)
    assert set(reasons) == {"seq.4", "bn"}
    assert all(r.startswith("model could not be traced (TraceError") for r in reasons.values())
    _forward_backward(model, torch.randn(2, 3, 8, 8))


def test_untraceable_submodule_is_kept_opaque():
    model = nn.Sequential(_Untraceable(), nn.BatchNorm2d(8), nn.ReLU())
    report = convert_norm_act(model, "EvoNormB0")
    assert [(c.path, c.act_path) for c in report.converted] == [("0.seq.1", "0.seq.2"), ("1", "2")]
    reasons = dict(report.refused)
    assert set(reasons) == {"0.seq.4", "0.bn"}
    assert reasons["0.bn"].startswith("inside '0', whose forward could not be traced (TraceError")
    _forward_backward(model, torch.randn(2, 3, 8, 8))


# ----------------------------------------------------------------------------------- real models
def test_torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    _randomize_bn(model)
    reference = copy.deepcopy(model).eval()
    baseline = copy.deepcopy(model)
    before = _activation_count(model)
    report = convert_norm_act(model, "EvoNormB0")
    # stem pair, 8 residual-branch ends and 3 downsample norms; each block's bn1 is refused because
    # torchvision calls its `relu` module again after the residual addition.
    assert (len(report.converted), len(report.refused)) == (12, 8)
    assert sum(c.apply_act for c in report.converted) == 1
    assert all("called 2 times in forward" in r.reason for r in report.refused)
    assert _activation_count(model) == before
    _assert_no_activation_after_converted(model, report)
    _forward_backward(model, torch.randn(2, 3, 32, 32))
    # the same plumbing to the BatchNorm baseline keeps the outputs exactly
    convert_norm_act(baseline, "BatchNormReLU")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(baseline.eval()(x), reference(x), rtol=0, atol=0)


def test_torchvision_efficientnet_silu():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.efficientnet_b0(weights=None, num_classes=10)
    before = _activation_count(model)
    report = convert_norm_act(model, "EvoNormS0")
    assert report.refused == [] and len(report.converted) == 49
    assert {c.old for c in report.converted} == {"BatchNorm2d+SiLU", "BatchNorm2d"}
    assert sum(not c.apply_act for c in report.converted) == 16  # the 16 blocks' projection norms
    assert _activation_count(model) == before
    _assert_no_activation_after_converted(model, report)
    _forward_backward(model, torch.randn(2, 3, 32, 32))


def test_timm_fused_norm_act_and_identity_look_through():
    timm = pytest.importorskip("timm")
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10)
    report = convert_norm_act(model, "EvoNormS0")
    kinds = {(c.old, c.apply_act, c.act_path) for c in report.converted}
    assert kinds == {("BatchNormAct2d(ReLU)", True, None), ("BatchNormAct2d", False, None)}
    assert (len(report.converted), len(report.refused)) == (16, 18)
    assert all("built-in activation Hardswish" in r.reason for r in report.refused)
    _assert_no_activation_after_converted(model, report)
    _forward_backward(model, torch.randn(2, 3, 32, 32))
    # timm's ResNet has an nn.Identity (drop_block) between bn1 and act1, and its own act modules
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    before = _activation_count(model)
    report = convert_norm_act(model, "EvoNormS0")
    assert (len(report.converted), len(report.refused)) == (20, 0)
    assert report.converted[1][:5] == ("layer1.0.bn1", "BatchNorm2d+ReLU", "EvoNormS0", True, "layer1.0.act1")
    assert _activation_count(model) == before
    _assert_no_activation_after_converted(model, report)
    # a drop layer between the fused norm and its activation is not moved
    model = nn.Sequential(nn.Conv2d(3, 8, 1), timm.layers.BatchNormAct2d(8, drop_layer=nn.Dropout2d))
    report = convert_norm_act(model, "EvoNormB0")
    assert report.converted == [] and report.refused[0].reason.startswith("has Dropout2d (1.drop) between")


def test_report_str_lists_everything():
    report = convert_norm_act(_Block(), "EvoNormS0")
    assert isinstance(report, ConversionReport)
    text = str(report)
    assert text.splitlines()[0] == "convert_norm_act to EvoNormS0: 1 converted, 1 refused"
    assert "converted bn2: BatchNorm2d -> EvoNormS0(apply_act=False)" in text and "refused   bn1:" in text
