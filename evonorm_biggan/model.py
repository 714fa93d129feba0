"""BigGAN-deep generator and discriminator (Brock et al. 2019, appendix B), with a swappable G norm.

Follows the reference BigGAN-PyTorch ``BigGANdeep.py`` (ajbrock/BigGAN-PyTorch, run with
``scripts/launch_BigGAN_deep.sh``: ``--G_shared --hier``): bottleneck residual blocks (1×1 → 3×3 → 3×3 →
1×1, channel ratio 4), ``depth`` blocks per resolution, G skips that drop channels, D skips that
concatenate a learned 1×1 projection, the shared class embedding concatenated *before* the whole z
(``[shared(y), z]``, no chunking), self-attention at one stage label, spectral norm on every G and D
weight, orthogonal init, a 3-channel output conv and a projection discriminator. With BN-ReLU and the
same weights, G and D compute the reference's functions (:mod:`.convert_reference` loads its state
dicts; tested against a port of its modules). Every class-conditional BN-ReLU of G is a
:class:`~.conditional_norm.ConditionalNormAct` around the registry layer named by ``layer``; the
output BN-ReLU is that layer unconditionally (with its own affine, like BigGAN's output BN).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from evonorm_plugins.registry import get_layer

from .conditional_norm import ConditionalNormAct

SN_EPS = 1e-6  # BigGAN-deep's SN_eps

# Channel multipliers of ch per stage and the stage labels that ``attention`` selects (BigGAN-PyTorch's
# G_arch/D_arch of BigGAN-deep). G stages go from bottom_width=4 upward; D stages are labelled with their
# output resolution, except at 32, where the reference labels all three D stages 16 although the last
# two run at 8×8: ``attention=16`` there puts self-attention after each of the three D stages, as the
# reference does (so its checkpoints load and compute the same function).
G_ARCH: Dict[int, Dict[str, List[int]]] = {
    32: {"in": [4, 4, 4], "out": [4, 4, 4], "resolution": [8, 16, 32]},
    64: {"in": [16, 16, 8, 4], "out": [16, 8, 4, 2], "resolution": [8, 16, 32, 64]},
    128: {"in": [16, 16, 8, 4, 2], "out": [16, 8, 4, 2, 1], "resolution": [8, 16, 32, 64, 128]},
}
D_ARCH: Dict[int, Dict[str, List[int]]] = {
    32: {"in": [4, 4, 4], "out": [4, 4, 4], "downsample": [1, 1, 0], "resolution": [16, 16, 16]},
    64: {"in": [1, 2, 4, 8], "out": [2, 4, 8, 16], "downsample": [1, 1, 1, 1], "resolution": [32, 16, 8, 4]},
    128: {"in": [1, 2, 4, 8, 16], "out": [2, 4, 8, 16, 16], "downsample": [1, 1, 1, 1, 1], "resolution": [64, 32, 16, 8, 4]},
}
BOTTOM_WIDTH = 4
IMAGE_CHANNELS = 3


def _check_resolution(resolution: int, attention: Optional[int], stages: List[int], who: str) -> None:
    if resolution not in G_ARCH:
        raise ValueError(f"{who}: resolution {resolution} is not supported; choose one of {sorted(G_ARCH)}")
    if attention is not None and attention not in stages:
        raise ValueError(
            f"{who}: attention resolution {attention} is not one of this network's stage resolutions "
            f"{sorted(set(stages))}; pick one of them or null for no attention"
        )


def _sn(module: nn.Module) -> nn.Module:
    """Orthogonal init, then spectral norm (one power iteration per step, as BigGAN)."""
    nn.init.orthogonal_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return spectral_norm(module, eps=SN_EPS)


def sn_conv(cin: int, cout: int, kernel_size: int = 3, bias: bool = True) -> nn.Module:
    return _sn(nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=bias))


def sn_linear(cin: int, cout: int, bias: bool = True) -> nn.Module:
    return _sn(nn.Linear(cin, cout, bias=bias))


def sn_linear_no_bias(cin: int, cout: int) -> nn.Module:
    """The conditional gain/bias maps of G (BigGAN's ``bn_linear``: SNLinear without bias)."""
    return sn_linear(cin, cout, bias=False)


class SelfAttention(nn.Module):
    """SAGAN self-attention as in BigGAN: keys and values max-pooled 2×, output scaled by γ (init 0)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.theta = sn_conv(ch, ch // 8, 1, bias=False)
        self.phi = sn_conv(ch, ch // 8, 1, bias=False)
        self.g = sn_conv(ch, ch // 2, 1, bias=False)
        self.o = sn_conv(ch // 2, ch, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        theta = self.theta(x).view(n, c // 8, h * w)
        phi = F.max_pool2d(self.phi(x), 2).view(n, c // 8, h * w // 4)
        g = F.max_pool2d(self.g(x), 2).view(n, c // 2, h * w // 4)
        beta = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)
        o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(n, c // 2, h, w))
        return x + self.gamma * o


class GBlock(nn.Module):
    """BigGAN-deep G block: four conditional norm-acts, bottleneck convs, a channel-dropping skip."""

    def __init__(self, cin: int, cout: int, cond_dim: int, layer: str, layer_kwargs: Dict[str, Any], upsample: bool) -> None:
        super().__init__()
        hidden = cin // 4
        self.cout = cout
        self.upsample = upsample

        def norm(c: int) -> ConditionalNormAct:
            return ConditionalNormAct(layer, c, cond_dim, sn_linear_no_bias, layer_kwargs)

        self.norm1, self.norm2, self.norm3, self.norm4 = norm(cin), norm(hidden), norm(hidden), norm(hidden)
        self.conv1 = sn_conv(cin, hidden, 1)
        self.conv2 = sn_conv(hidden, hidden)
        self.conv3 = sn_conv(hidden, hidden)
        self.conv4 = sn_conv(hidden, cout, 1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.conv1(self.norm1(x, cond))
        h = self.norm2(h, cond)
        x = x[:, : self.cout]
        if self.upsample:
            h = F.interpolate(h, scale_factor=2)
            x = F.interpolate(x, scale_factor=2)
        h = self.conv3(self.norm3(self.conv2(h), cond))
        return self.conv4(self.norm4(h, cond)) + x


class DBlock(nn.Module):
    """BigGAN-deep D block: pre-activation bottleneck, average-pool downsampling, and a skip that
    concatenates a learned 1×1 projection when the channel count grows."""

    def __init__(self, cin: int, cout: int, downsample: bool) -> None:
        super().__init__()
        hidden = cout // 4
        self.downsample = downsample
        self.conv1 = sn_conv(cin, hidden, 1)
        self.conv2 = sn_conv(hidden, hidden)
        self.conv3 = sn_conv(hidden, hidden)
        self.conv4 = sn_conv(hidden, cout, 1)
        self.conv_sc = sn_conv(cin, cout - cin, 1) if cout > cin else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.relu(x))
        h = self.conv2(F.relu(h))
        h = F.relu(self.conv3(F.relu(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
            x = F.avg_pool2d(x, 2)
        if self.conv_sc is not None:
            x = torch.cat([x, self.conv_sc(x)], dim=1)
        return self.conv4(h) + x


class Generator(nn.Module):
    """BigGAN-deep G: ``G(z, y)`` maps z ~ N(0, I) and class labels y to images in [-1, 1].

    Args:
        resolution: 32, 64 or 128.
        n_classes: number of classes of the shared embedding.
        ch: channel width multiplier (BigGAN-deep: 128).
        depth: blocks per resolution (BigGAN-deep: 2).
        dim_z: latent size (BigGAN-deep: 128).
        shared_dim: size of the shared class embedding (BigGAN-deep: 128).
        attention: stage resolution with self-attention, or None.
        layer: registry name replacing every BN-ReLU (``"BatchNormReLU"`` is BigGAN-deep itself).
        layer_kwargs: extra constructor keywords of that layer.
        output_channels: output channels of the last conv, of which the first 3 are the image: 3 as in
            BigGAN-PyTorch, or 128 as in the TF-Hub BigGAN-deep modules. Not the same function with the
            same first 3 rows: spectral norm divides by the largest singular value of all rows.
    """

    def __init__(
        self,
        resolution: int = 128,
        n_classes: int = 1000,
        ch: int = 128,
        depth: int = 2,
        dim_z: int = 128,
        shared_dim: int = 128,
        attention: Optional[int] = 64,
        layer: str = "BatchNormReLU",
        layer_kwargs: Optional[Dict[str, Any]] = None,
        output_channels: int = IMAGE_CHANNELS,
    ) -> None:
        super().__init__()
        arch = G_ARCH.get(resolution, {"resolution": []})
        _check_resolution(resolution, attention, arch["resolution"], "Generator")
        if output_channels < IMAGE_CHANNELS:
            raise ValueError(f"Generator: output_channels must be at least {IMAGE_CHANNELS} (3: BigGAN-PyTorch, 128: TF-Hub), got {output_channels}")
        layer_kwargs = dict(layer_kwargs or {})
        self.dim_z = dim_z
        self.n_classes = n_classes
        cond_dim = dim_z + shared_dim
        self.shared = nn.Embedding(n_classes, shared_dim)
        nn.init.orthogonal_(self.shared.weight)
        self.first_ch = arch["in"][0] * ch
        self.linear = sn_linear(cond_dim, self.first_ch * BOTTOM_WIDTH**2)
        blocks: List[nn.Module] = []
        for cin, cout, res in zip(arch["in"], arch["out"], arch["resolution"]):
            for i in range(depth):
                last = i == depth - 1
                blocks.append(GBlock(cin * ch, (cout if last else cin) * ch, cond_dim, layer, layer_kwargs, upsample=last))
            if res == attention:
                blocks.append(SelfAttention(cout * ch))
        self.blocks = nn.ModuleList(blocks)
        self.out_norm = get_layer(layer, arch["out"][-1] * ch, **layer_kwargs)
        self.out_conv = sn_conv(arch["out"][-1] * ch, output_channels)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        cond = torch.cat([self.shared(y), z], dim=1)  # the reference's order (its ``--hier``)
        h = self.linear(cond).view(z.shape[0], self.first_ch, BOTTOM_WIDTH, BOTTOM_WIDTH)
        for block in self.blocks:
            h = block(h, cond) if isinstance(block, GBlock) else block(h)
        return torch.tanh(self.out_conv(self.out_norm(h))[:, :IMAGE_CHANNELS])


class Discriminator(nn.Module):
    """BigGAN-deep projection D: ``D(x, y) = ψ(φ(x)) + ⟨embed(y), φ(x)⟩`` (one logit per image).

    Args: as :class:`Generator` (``resolution``, ``n_classes``, ``ch``, ``depth``, ``attention``).
    """

    def __init__(
        self, resolution: int = 128, n_classes: int = 1000, ch: int = 128, depth: int = 2, attention: Optional[int] = 64
    ) -> None:
        super().__init__()
        arch = D_ARCH.get(resolution, {"resolution": []})
        _check_resolution(resolution, attention, arch["resolution"], "Discriminator")
        self.input_conv = sn_conv(3, arch["in"][0] * ch)
        blocks: List[nn.Module] = []
        for cin, cout, down, res in zip(arch["in"], arch["out"], arch["downsample"], arch["resolution"]):
            for i in range(depth):
                blocks.append(DBlock((cin if i == 0 else cout) * ch, cout * ch, downsample=bool(down) and i == 0))
            if res == attention:
                blocks.append(SelfAttention(cout * ch))
        self.blocks = nn.Sequential(*blocks)
        self.linear = sn_linear(arch["out"][-1] * ch, 1)
        self.embed = nn.Embedding(n_classes, arch["out"][-1] * ch)
        nn.init.orthogonal_(self.embed.weight)
        self.embed = spectral_norm(self.embed, eps=SN_EPS)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = torch.sum(F.relu(self.blocks(self.input_conv(x))), dim=[2, 3])
        return (self.linear(h) + torch.sum(self.embed(y) * h, dim=1, keepdim=True)).view(-1)


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (spectral-norm u/v vectors and running statistics are buffers)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def truncated_z(n: int, dim_z: int, truncation: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """The truncation trick: z from N(0, I) truncated to [-t, t] (t = ``truncation``; BigGAN resamples
    values outside the range, which is what a truncated normal is). ``truncation <= 0`` is an error."""
    if truncation <= 0:
        raise ValueError(f"truncation must be positive (e.g. 0.5, or a large value such as 1e3 for none), got {truncation}")
    z = torch.empty(n, dim_z)
    return nn.init.trunc_normal_(z, 0.0, 1.0, -truncation, truncation, generator=generator)

