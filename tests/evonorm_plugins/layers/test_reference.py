"""Each layer against the independent float64 reference, in float32 and float64, train and eval."""
import numpy as np
import pytest
import torch

import evonorm_plugins as ep
from evonorm_plugins import functional as F

import reference as ref
from support import ALL_LAYERS, B_LAYERS, S_LAYERS, randomize_parameters


def _params(layer):
    v = layer.v.detach().double().numpy() if layer.v is not None else None
    return v, layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()


@pytest.mark.parametrize("name", list(B_LAYERS))
@pytest.mark.parametrize("apply_act", [True, False])
@pytest.mark.parametrize("shape", [(4, 16, 8, 8), (3, 5, 7, 6)])
def test_b_series_matches_reference(name, apply_act, shape):
    layer = B_LAYERS[name](shape[1], apply_act=apply_act)
    randomize_parameters(layer)
    x = torch.randn(shape) * 2 + 0.3
    v, g, b = _params(layer)
    variant = int(name[1])

    expected_train = ref.evonorm_b(variant, x.double().numpy(), v, g, b, 1e-5, apply_act=apply_act)
    running_before = layer.running_var.double().numpy().copy()
    np.testing.assert_allclose(layer.train()(x).detach().numpy(), expected_train, rtol=1e-5, atol=1e-5)

    expected_running = 0.9 * running_before + 0.1 * ref.batch_var(x.double().numpy())
    np.testing.assert_allclose(layer.running_var.double().numpy(), expected_running, rtol=1e-6)

    expected_eval = ref.evonorm_b(variant, x.double().numpy(), v, g, b, 1e-5, var_nhw=expected_running, apply_act=apply_act)
    np.testing.assert_allclose(layer.eval()(x).detach().numpy(), expected_eval, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(S_LAYERS))
@pytest.mark.parametrize("apply_act", [True, False])
@pytest.mark.parametrize("channels, groups, used_groups", [(64, 32, 32), (24, 32, 24), (80, 32, 20), (12, 8, 6), (7, 4, 1)])
def test_s_series_matches_reference(name, apply_act, channels, groups, used_groups):
    layer = S_LAYERS[name](channels, groups=groups, apply_act=apply_act)
    assert layer.groups == used_groups
    randomize_parameters(layer)
    x = torch.randn(3, channels, 5, 4) * 3 - 0.5
    v, g, b = _params(layer)
    expected = ref.evonorm_s(int(name[1]), x.double().numpy(), v, g, b, 1e-5, used_groups, apply_act=apply_act)
    for mode in (layer.train(), layer.eval()):
        np.testing.assert_allclose(mode(x).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(ALL_LAYERS))
def test_float64_matches_reference_tightly(name):
    layer = ALL_LAYERS[name](8, groups=4).double()
    randomize_parameters(layer)
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    v, g, b = _params(layer)
    variant = int(name[1])
    if name.startswith("B"):
        expected = ref.evonorm_b(variant, x.numpy(), v, g, b, 1e-5)
    else:
        expected = ref.evonorm_s(variant, x.numpy(), v, g, b, 1e-5, 4)
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(ALL_LAYERS))
def test_affine_only_is_the_official_nonlinearity_false(name):
    layer = ALL_LAYERS[name](6, affine_only=True)
    randomize_parameters(layer)
    assert layer.v is None
    assert getattr(layer, "running_var", None) is None
    x = torch.randn(2, 6, 3, 3)
    expected = x * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected)


def test_functional_forms_equal_modules():
    x = torch.randn(4, 16, 6, 6)
    b0, s0 = ep.EvoNormB0(16), ep.EvoNormS0(16, groups=8)
    randomize_parameters(b0)
    randomize_parameters(s0)
    running = b0.running_var.clone()
    torch.testing.assert_close(b0(x), F.evonorm_b0(x, running, b0.v, b0.weight, b0.bias, training=True))
    torch.testing.assert_close(b0.running_var, running)
    torch.testing.assert_close(s0(x), F.evonorm_s0(x, 8, s0.v, s0.weight, s0.bias))
    # Parameters left out act as their initial values v = 1, γ = 1, β = 0.
    torch.testing.assert_close(F.evonorm_s1(x, 8), ep.EvoNormS1(16, groups=8)(x))
    torch.testing.assert_close(F.evonorm_b2(x, None, training=True), ep.EvoNormB2(16)(x))


def test_five_dimensional_input_uses_all_spatial_axes():
    layer = ep.EvoNormS0(8, groups=2)
    x = torch.randn(2, 8, 3, 4, 5)
    torch.testing.assert_close(layer(x), layer(x.reshape(2, 8, 3, 20)).reshape(x.shape))


def test_channels_last_input_gives_the_same_values():
    for layer in (ep.EvoNormB0(16), ep.EvoNormS0(16, groups=4)):
        x = torch.randn(2, 16, 5, 5)
        torch.testing.assert_close(layer(x.to(memory_format=torch.channels_last)), layer(x))
