"""Parity with timm's EvoNorm2d* for the same parameters and eps.

Intended differences (documented in the README): timm's B-series running variance is unbiased
(multiplied by n/(n-1)) where ours is biased as in the official code; timm's ``apply_act=False`` means
affine-only (our ``affine_only=True``); its S0a/S1a/S2a with ``apply_act=False`` match our ``apply_act=False``.
"""
import pytest
import torch

from support import ALL_LAYERS, randomize_parameters

timm_layers = pytest.importorskip("timm.layers")

TIMM = {
    "B0": timm_layers.EvoNorm2dB0, "B1": timm_layers.EvoNorm2dB1, "B2": timm_layers.EvoNorm2dB2,
    "S0": timm_layers.EvoNorm2dS0, "S1": timm_layers.EvoNorm2dS1, "S2": timm_layers.EvoNorm2dS2,
}
TIMM_NORMALIZING_NO_ACT = {"S0": timm_layers.EvoNorm2dS0a, "S1": timm_layers.EvoNorm2dS1a, "S2": timm_layers.EvoNorm2dS2a}


def _pair(name, **kwargs):
    ours = ALL_LAYERS[name](64, eps=1e-5, groups=32, **kwargs)
    randomize_parameters(ours)
    theirs = TIMM[name](64, eps=1e-5, groups=32, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("name", list(ALL_LAYERS))
def test_forward_backward_parity(name):
    ours, theirs = _pair(name)
    x = torch.randn(4, 64, 8, 8) * 2
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ya)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    for (n, pa), pb in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-4, msg=n)


@pytest.mark.parametrize("name", ["B0", "B1", "B2"])
def test_running_variance_differs_only_by_bessel_correction(name):
    ours, theirs = _pair(name)
    ours.running_var.fill_(1.0)
    theirs.running_var.fill_(1.0)
    x = torch.randn(4, 64, 3, 3) * 3
    ours(x), theirs(x)
    n = 4 * 3 * 3
    batch_var = (ours.running_var - 0.9) / 0.1
    torch.testing.assert_close(theirs.running_var, 0.9 + 0.1 * batch_var * n / (n - 1))
    # With the same buffer, eval outputs agree.
    theirs.running_var.copy_(ours.running_var)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(ALL_LAYERS))
def test_timm_apply_act_false_is_our_affine_only(name):
    ours = ALL_LAYERS[name](64, affine_only=True)
    randomize_parameters(ours)
    theirs = TIMM[name](64, eps=1e-5, apply_act=False)
    theirs.load_state_dict(ours.state_dict(), strict=False)
    x = torch.randn(2, 64, 4, 4)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("name", list(TIMM_NORMALIZING_NO_ACT))
def test_our_apply_act_false_matches_timm_a_variants(name):
    ours = ALL_LAYERS[name](64, apply_act=False)
    randomize_parameters(ours)
    theirs = TIMM_NORMALIZING_NO_ACT[name](64, eps=1e-5, apply_act=False)
    theirs.load_state_dict(ours.state_dict(), strict=False)
    x = torch.randn(2, 64, 4, 4)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
