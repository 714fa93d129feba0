"""torch.autograd.gradcheck in float64 for every layer, with respect to the input and every parameter."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from evonorm_plugins import functional as F

from support import ALL_LAYERS, randomize_parameters


@pytest.fixture(params=["eager", "reference"])
def kernels(request):
    """Run each check through the lean kernels and through the reference implementation."""
    with F.kernel_mode(request.param):
        yield request.param


@pytest.mark.parametrize("name", list(ALL_LAYERS))
@pytest.mark.parametrize("apply_act", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(name, apply_act, training, kernels):
    layer = ALL_LAYERS[name](6, groups=3, apply_act=apply_act).double().train(training)
    randomize_parameters(layer)
    x = torch.randn(3, 6, 4, 3, dtype=torch.float64, requires_grad=True)
    params = [p for p in (layer.v, layer.weight, layer.bias) if p is not None]
    running_var = getattr(layer, "running_var", None)

    def run(x, *params):
        values = dict(zip([n for n in ("v", "weight", "bias") if getattr(layer, n) is not None], params))
        if name.startswith("B"):
            # A copy of the running variance so gradcheck's repeated calls all see the same state.
            state = running_var.clone()
            kwargs = dict(training=training, eps=layer.eps, apply_act=apply_act)
            if name == "B0":
                return F.evonorm_b0(x, state, values.get("v"), values["weight"], values["bias"], **kwargs)
            fn = F.evonorm_b1 if name == "B1" else F.evonorm_b2
            return fn(x, state, values["weight"], values["bias"], **kwargs)
        kwargs = dict(eps=layer.eps, apply_act=apply_act)
        if name == "S0":
            return F.evonorm_s0(x, 3, values.get("v"), values["weight"], values["bias"], **kwargs)
        fn = F.evonorm_s1 if name == "S1" else F.evonorm_s2
        return fn(x, 3, values["weight"], values["bias"], **kwargs)

    inputs = (x, *[p.detach().clone().requires_grad_(True) for p in params])
    assert gradcheck(run, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["B0", "S0"])
def test_gradgradcheck(name, kernels):
    """Second derivatives (used by gradient-penalty GAN losses and the stability rejection test)."""
    layer = ALL_LAYERS[name](4, groups=2).double()
    randomize_parameters(layer)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    if name == "B0":
        assert gradgradcheck(lambda x: F.evonorm_b0(x, None, layer.v, training=True), (x,))
    else:
        assert gradgradcheck(lambda x: F.evonorm_s0(x, 2, layer.v), (x,))
