"""Loading BigGAN-PyTorch's BigGAN-deep weights, checked against a port of its modules
(``tests/biggan_pytorch.py``: its key names, shapes, init and forward passes)."""
import pytest
import torch

from evonorm_biggan import Discriminator, Generator
from evonorm_biggan.convert_reference import convert_state_dict as convert
from evonorm_biggan.convert_reference import load_reference_state_dict as load

import biggan_pytorch as reference

SETTINGS = [(32, 16), (64, 32), (128, 64)]  # resolution, attention (at 32: after each of D's three stages)
# At 128 the counts of parameters equal the reference's too: a strict load has every key with its shape.
CH, DIM_Z, CLASSES = 8, 8, 5


def _generators(resolution, attention):
    ref = reference.Generator(G_ch=CH, G_depth=2, dim_z=DIM_Z, shared_dim=DIM_Z, resolution=resolution,
                              G_attn=str(attention), n_classes=CLASSES, SN_eps=1e-6)
    ours = Generator(resolution, CLASSES, ch=CH, depth=2, dim_z=DIM_Z, shared_dim=DIM_Z, attention=attention)
    return _trained_looking(ref), ours


def _discriminators(resolution, attention):
    ref = reference.Discriminator(D_ch=CH, D_depth=2, resolution=resolution, D_attn=str(attention),
                                  n_classes=CLASSES, SN_eps=1e-6)
    return _trained_looking(ref), Discriminator(resolution, CLASSES, ch=CH, depth=2, attention=attention)


@torch.no_grad()
def _trained_looking(module):
    """Values that init leaves at identities (BN statistics and gains, attention γ) made generic."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "stored_mean" or leaf == "bias" and "output_layer" in name:
            tensor.normal_(0, 0.3)
        elif leaf == "stored_var" or leaf == "gain" and "output_layer" in name:
            tensor.uniform_(0.5, 2.0)
        elif leaf == "gamma":
            tensor.fill_(0.5)
    return module


@torch.no_grad()
def _converge_power_iterations(module):
    """Each u0 set to its weight's top left singular vector, the power iteration's fixed point."""
    for m in module.modules():
        if isinstance(m, reference.SN):
            m.u0.copy_(torch.linalg.svd(m.weight.flatten(1))[0][:, 0])


def _inputs(resolution, n=4):
    g = torch.Generator().manual_seed(resolution)
    return torch.randn(n, DIM_Z, generator=g), torch.randn(n, 3, resolution, resolution, generator=g), torch.tensor([0, 1, 3, 4])


@pytest.mark.parametrize("resolution, attention", SETTINGS)
def test_generator_computes_the_reference_function(resolution, attention):
    ref, ours = _generators(resolution, attention)
    load(ours, ref.state_dict())
    z, _, y = _inputs(resolution)
    with torch.no_grad():  # eval mode: running statistics, σ from the stored power iteration
        torch.testing.assert_close(ours.eval()(z, y), ref.eval()(z, ref.shared(y)), rtol=0, atol=2e-5)


def test_generator_in_train_mode_once_the_power_iterations_converged():
    ref, ours = _generators(32, 16)
    z, _, y = _inputs(32)
    _converge_power_iterations(ref)
    load(ours, ref.state_dict())
    with torch.no_grad():  # train mode: batch statistics (over 4 samples: float rounding grows), running ones updated alike
        torch.testing.assert_close(ours.train()(z, y), ref.train()(z, ref.shared(y)), rtol=0, atol=1e-4)
    torch.testing.assert_close(ours.blocks[-1].norm4.norm.running_var, ref.blocks[-1][0].bn4.stored_var)
    torch.testing.assert_close(ours.out_norm.running_mean, ref.output_layer[0].stored_mean)


@pytest.mark.parametrize("resolution, attention", SETTINGS)
def test_discriminator_computes_the_reference_function(resolution, attention):
    ref, ours = _discriminators(resolution, attention)
    load(ours, ref.state_dict())
    _, x, y = _inputs(resolution)
    with torch.no_grad():
        expected = ref.eval()(x, y).view(-1)
        torch.testing.assert_close(ours.eval()(x, y), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_weights_land_in_the_matching_modules():
    ref, ours = _generators(32, 16)
    load(ours, ref.state_dict())
    # blocks.<stage>.<block> → blocks.<index>: two blocks per stage, then the attention at 16 (stage 1)
    pairs = [(ref.blocks[0][0], ours.blocks[0]), (ref.blocks[2][0], ours.blocks[2]), (ref.blocks[3][0], ours.blocks[3]),
             (ref.blocks[5][0], ours.blocks[6])]
    for r, o in pairs:
        assert torch.equal(o.conv2.parametrizations.weight.original, r.conv2.weight)
        assert torch.equal(o.norm3.gain.parametrizations.weight.original, r.bn3.gain.weight)
        assert torch.equal(o.norm1.norm.running_mean, r.bn1.stored_mean)
    assert torch.equal(ours.blocks[4].gamma, ref.blocks[3][1].gamma)  # the attention layer
    assert torch.equal(ours.shared.weight, ref.shared.weight)
    assert torch.equal(ours.linear.parametrizations.weight.original, ref.linear.weight)
    assert torch.equal(ours.out_norm.weight, ref.output_layer[0].gain)
    assert torch.equal(ours.out_conv.bias, ref.output_layer[2].bias)
    # the stored u, v are one power iteration from the reference's u0 (its eval-mode σ)
    w, u0 = ref.linear.weight, ref.linear.u0[0]
    v = torch.nn.functional.normalize(w.t() @ u0, dim=0, eps=1e-6)
    torch.testing.assert_close(ours.linear.parametrizations.weight[0]._v, v)
    torch.testing.assert_close(ours.linear.parametrizations.weight[0]._u, torch.nn.functional.normalize(w @ v, dim=0, eps=1e-6))
    # D at 32 with attention at 16: the reference's three attention layers, one after each stage
    ref_d, ours_d = _discriminators(32, 16)
    assert [type(m).__name__ for m in ours_d.blocks].count("SelfAttention") == 3
    load(ours_d, ref_d.state_dict())
    assert torch.equal(ours_d.blocks[8].o.parametrizations.weight.original, ref_d.blocks[2][2].o.weight)
    assert torch.equal(ours_d.embed.parametrizations.weight.original, ref_d.embed.weight)


def test_settings_that_do_not_fit_are_named():
    ref, _ = _generators(32, 16)
    with pytest.raises(ValueError, match=r"missing: blocks.2.g.weight, blocks.2.gamma, .*unexpected: blocks.2.conv1.bias, "):
        convert(ref.state_dict(), Generator(32, CLASSES, ch=CH, depth=2, dim_z=DIM_Z, shared_dim=DIM_Z, attention=8))
    with pytest.raises(ValueError, match=r"shape \(reference vs model\): out_conv.bias \(3,\) vs \(128,\)"):
        convert(ref.state_dict(), Generator(32, CLASSES, ch=CH, depth=2, dim_z=DIM_Z, shared_dim=DIM_Z,
                                                       attention=16, output_channels=128))
    with pytest.raises(ValueError, match="layer='BatchNormReLU'.*EvoNormB0"):
        convert(ref.state_dict(), Generator(32, CLASSES, ch=CH, attention=16, layer="EvoNormB0"))
