"""A port of BigGAN-PyTorch's BigGAN-deep (ajbrock/BigGAN-PyTorch, MIT licence: ``BigGANdeep.py`` and
the parts of ``layers.py`` it uses), for testing :mod:`evonorm_biggan.convert_reference` without a
download: the same module names (so the same state-dict keys and shapes), the same initialization and
the same forward passes, for the configuration of ``scripts/launch_BigGAN_deep.sh`` (``--G_shared
--hier``, spectral norm with one singular value and one power iteration, the plain ``ccbn``/``bn``
batch norms, ReLU). Condensed: options that script does not use (other norms, fp16, optimizers,
other inits) are left out. ``G(z, G.shared(y))`` and ``D(x, y)`` as in the reference's ``G_D``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


def power_iteration(W, u_, update=True, eps=1e-12):  # one singular value: no Gram-Schmidt terms
    u = u_[0]
    with torch.no_grad():
        v = F.normalize(torch.matmul(u, W), eps=eps)
        u = F.normalize(torch.matmul(v, W.t()), eps=eps)
        if update:
            u_[0][:] = u
    return [torch.squeeze(torch.matmul(torch.matmul(v, W.t()), u.t()))]


class SN:
    def __init__(self, num_outputs, eps=1e-12):
        self.eps = eps
        self.register_buffer("u0", torch.randn(1, num_outputs))
        self.register_buffer("sv0", torch.ones(1))

    def W_(self):
        W_mat = self.weight.view(self.weight.size(0), -1)
        svs = power_iteration(W_mat, [self.u0], update=self.training, eps=self.eps)
        if self.training:
            with torch.no_grad():
                self.sv0[:] = svs[0]
        return self.weight / svs[0]


class SNConv2d(nn.Conv2d, SN):
    def __init__(self, in_channels, out_channels, kernel_size, padding=0, bias=True, eps=1e-12):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, 1, padding, bias=bias)
        SN.__init__(self, out_channels, eps=eps)

    def forward(self, x):
        return F.conv2d(x, self.W_(), self.bias, self.stride, self.padding)


class SNLinear(nn.Linear, SN):
    def __init__(self, in_features, out_features, bias=True, eps=1e-12):
        nn.Linear.__init__(self, in_features, out_features, bias)
        SN.__init__(self, out_features, eps=eps)

    def forward(self, x):
        return F.linear(x, self.W_(), self.bias)


class SNEmbedding(nn.Embedding, SN):
    def __init__(self, num_embeddings, embedding_dim, eps=1e-12):
        nn.Embedding.__init__(self, num_embeddings, embedding_dim)
        SN.__init__(self, num_embeddings, eps=eps)

    def forward(self, x):
        return F.embedding(x, self.W_())


class Attention(nn.Module):
    def __init__(self, ch, which_conv):
        super().__init__()
        self.ch = ch
        self.theta = which_conv(ch, ch // 8, kernel_size=1, padding=0, bias=False)
        self.phi = which_conv(ch, ch // 8, kernel_size=1, padding=0, bias=False)
        self.g = which_conv(ch, ch // 2, kernel_size=1, padding=0, bias=False)
        self.o = which_conv(ch // 2, ch, kernel_size=1, padding=0, bias=False)
        self.gamma = nn.Parameter(torch.tensor(0.0), requires_grad=True)

    def forward(self, x, y=None):
        theta = self.theta(x)
        phi = F.max_pool2d(self.phi(x), [2, 2])
        g = F.max_pool2d(self.g(x), [2, 2])
        theta = theta.view(-1, self.ch // 8, x.shape[2] * x.shape[3])
        phi = phi.view(-1, self.ch // 8, x.shape[2] * x.shape[3] // 4)
        g = g.view(-1, self.ch // 2, x.shape[2] * x.shape[3] // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
        o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(-1, self.ch // 2, x.shape[2], x.shape[3]))
        return self.gamma * o + x


class ccbn(nn.Module):
    def __init__(self, output_size, input_size, which_linear, eps=1e-5, momentum=0.1):
        super().__init__()
        self.gain = which_linear(input_size, output_size)
        self.bias = which_linear(input_size, output_size)
        self.eps, self.momentum = eps, momentum
        self.register_buffer("stored_mean", torch.zeros(output_size))
        self.register_buffer("stored_var", torch.ones(output_size))

    def forward(self, x, y):
        gain = (1 + self.gain(y)).view(y.size(0), -1, 1, 1)
        bias = self.bias(y).view(y.size(0), -1, 1, 1)
        out = F.batch_norm(x, self.stored_mean, self.stored_var, None, None, self.training, 0.1, self.eps)
        return out * gain + bias


class bn(nn.Module):
    def __init__(self, output_size, eps=1e-5, momentum=0.1):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(output_size), requires_grad=True)
        self.bias = nn.Parameter(torch.zeros(output_size), requires_grad=True)
        self.eps, self.momentum = eps, momentum
        self.register_buffer("stored_mean", torch.zeros(output_size))
        self.register_buffer("stored_var", torch.ones(output_size))

    def forward(self, x, y=None):
        return F.batch_norm(x, self.stored_mean, self.stored_var, self.gain, self.bias, self.training, self.momentum, self.eps)


class GBlock(nn.Module):
    def __init__(self, in_channels, out_channels, which_conv, which_bn, activation, upsample=None, channel_ratio=4):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden_channels = in_channels // channel_ratio
        self.activation = activation
        self.conv1 = which_conv(in_channels, self.hidden_channels, kernel_size=1, padding=0)
        self.conv2 = which_conv(self.hidden_channels, self.hidden_channels)
        self.conv3 = which_conv(self.hidden_channels, self.hidden_channels)
        self.conv4 = which_conv(self.hidden_channels, out_channels, kernel_size=1, padding=0)
        self.bn1 = which_bn(in_channels)
        self.bn2 = which_bn(self.hidden_channels)
        self.bn3 = which_bn(self.hidden_channels)
        self.bn4 = which_bn(self.hidden_channels)
        self.upsample = upsample

    def forward(self, x, y):
        h = self.conv1(self.activation(self.bn1(x, y)))
        h = self.activation(self.bn2(h, y))
        if self.in_channels != self.out_channels:
            x = x[:, : self.out_channels]
        if self.upsample:
            h = self.upsample(h)
            x = self.upsample(x)
        h = self.conv2(h)
        h = self.conv3(self.activation(self.bn3(h, y)))
        h = self.conv4(self.activation(self.bn4(h, y)))
        return h + x


def _attention_at(attention, powers):
    return {2**i: 2**i in [int(item) for item in attention.split("_")] for i in powers}


def G_arch(ch=64, attention="64"):
    def stages(ins, outs, resolutions):
        return {"in_channels": [ch * i for i in ins], "out_channels": [ch * o for o in outs],
                "upsample": [True] * len(ins), "resolution": resolutions,
                "attention": _attention_at(attention, range(3, 3 + len(ins)))}

    return {128: stages([16, 16, 8, 4, 2], [16, 8, 4, 2, 1], [8, 16, 32, 64, 128]),
            64: stages([16, 16, 8, 4], [16, 8, 4, 2], [8, 16, 32, 64]),
            32: stages([4, 4, 4], [4, 4, 4], [8, 16, 32])}


class Generator(nn.Module):
    def __init__(self, G_ch=64, G_depth=2, dim_z=128, bottom_width=4, resolution=128, G_attn="64", n_classes=1000,
                 shared_dim=0, BN_eps=1e-5, SN_eps=1e-12):
        super().__init__()
        self.dim_z, self.bottom_width, self.G_depth = dim_z, bottom_width, G_depth
        self.shared_dim = shared_dim if shared_dim > 0 else dim_z
        self.activation = nn.ReLU(inplace=False)
        self.arch = G_arch(G_ch, G_attn)[resolution]
        self.which_conv = functools.partial(SNConv2d, kernel_size=3, padding=1, eps=SN_eps)
        self.which_linear = functools.partial(SNLinear, eps=SN_eps)
        bn_linear = functools.partial(self.which_linear, bias=False)
        self.which_bn = functools.partial(ccbn, which_linear=bn_linear, input_size=self.shared_dim + dim_z, eps=BN_eps)
        self.shared = nn.Embedding(n_classes, self.shared_dim)
        self.linear = self.which_linear(dim_z + self.shared_dim, self.arch["in_channels"][0] * bottom_width**2)
        self.blocks = []
        for index in range(len(self.arch["out_channels"])):
            self.blocks += [[GBlock(self.arch["in_channels"][index],
                                    self.arch["in_channels"][index] if g_index == 0 else self.arch["out_channels"][index],
                                    self.which_conv, self.which_bn, self.activation,
                                    upsample=(functools.partial(F.interpolate, scale_factor=2)
                                              if self.arch["upsample"][index] and g_index == G_depth - 1 else None))]
                            for g_index in range(G_depth)]
            if self.arch["attention"][self.arch["resolution"][index]]:
                self.blocks[-1] += [Attention(self.arch["out_channels"][index], self.which_conv)]
        self.blocks = nn.ModuleList([nn.ModuleList(block) for block in self.blocks])
        self.output_layer = nn.Sequential(bn(self.arch["out_channels"][-1]), self.activation,
                                          self.which_conv(self.arch["out_channels"][-1], 3))
        for module in self.modules():  # G_init ortho
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
                nn.init.orthogonal_(module.weight)

    def forward(self, z, y):
        z = torch.cat([y, z], 1)  # hier
        y = z
        h = self.linear(z)
        h = h.view(h.size(0), -1, self.bottom_width, self.bottom_width)
        for blocklist in self.blocks:
            for block in blocklist:
                h = block(h, y)
        return torch.tanh(self.output_layer(h))


class DBlock(nn.Module):
    def __init__(self, in_channels, out_channels, which_conv, activation, downsample=None, channel_ratio=4):
        super().__init__()
        self.hidden_channels = out_channels // channel_ratio
        self.activation, self.downsample = activation, downsample
        self.conv1 = which_conv(in_channels, self.hidden_channels, kernel_size=1, padding=0)
        self.conv2 = which_conv(self.hidden_channels, self.hidden_channels)
        self.conv3 = which_conv(self.hidden_channels, self.hidden_channels)
        self.conv4 = which_conv(self.hidden_channels, out_channels, kernel_size=1, padding=0)
        self.learnable_sc = in_channels != out_channels
        if self.learnable_sc:
            self.conv_sc = which_conv(in_channels, out_channels - in_channels, kernel_size=1, padding=0)

    def shortcut(self, x):
        if self.downsample:
            x = self.downsample(x)
        if self.learnable_sc:
            x = torch.cat([x, self.conv_sc(x)], 1)
        return x

    def forward(self, x):
        h = self.conv1(F.relu(x))
        h = self.conv2(self.activation(h))
        h = self.conv3(self.activation(h))
        h = self.activation(h)
        if self.downsample:
            h = self.downsample(h)
        h = self.conv4(h)
        return h + self.shortcut(x)


def D_arch(ch=64, attention="64"):
    def stages(ins, outs, downsample, resolutions, powers):
        return {"in_channels": [ch * i for i in ins], "out_channels": [ch * o for o in outs], "downsample": downsample,
                "resolution": resolutions, "attention": _attention_at(attention, powers)}

    return {128: stages([1, 2, 4, 8, 16], [2, 4, 8, 16, 16], [True] * 5 + [False], [64, 32, 16, 8, 4, 4], range(2, 8)),
            64: stages([1, 2, 4, 8], [2, 4, 8, 16], [True] * 4 + [False], [32, 16, 8, 4, 4], range(2, 7)),
            32: stages([4, 4, 4], [4, 4, 4], [True, True, False, False], [16, 16, 16, 16], range(2, 6))}


class Discriminator(nn.Module):
    def __init__(self, D_ch=64, D_depth=2, resolution=128, D_attn="64", n_classes=1000, SN_eps=1e-12, output_dim=1):
        super().__init__()
        self.activation = nn.ReLU(inplace=False)
        self.arch = D_arch(D_ch, D_attn)[resolution]
        self.which_conv = functools.partial(SNConv2d, kernel_size=3, padding=1, eps=SN_eps)
        self.which_linear = functools.partial(SNLinear, eps=SN_eps)
        self.which_embedding = functools.partial(SNEmbedding, eps=SN_eps)
        self.input_conv = self.which_conv(3, self.arch["in_channels"][0])
        self.blocks = []
        for index in range(len(self.arch["out_channels"])):
            self.blocks += [[DBlock(self.arch["in_channels"][index] if d_index == 0 else self.arch["out_channels"][index],
                                    self.arch["out_channels"][index], self.which_conv, self.activation,
                                    downsample=nn.AvgPool2d(2) if self.arch["downsample"][index] and d_index == 0 else None)
                             for d_index in range(D_depth)]]
            if self.arch["attention"][self.arch["resolution"][index]]:
                self.blocks[-1] += [Attention(self.arch["out_channels"][index], self.which_conv)]
        self.blocks = nn.ModuleList([nn.ModuleList(block) for block in self.blocks])
        self.linear = self.which_linear(self.arch["out_channels"][-1], output_dim)
        self.embed = self.which_embedding(n_classes, self.arch["out_channels"][-1])
        for module in self.modules():  # D_init ortho
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
                nn.init.orthogonal_(module.weight)

    def forward(self, x, y=None):
        h = self.input_conv(x)
        for blocklist in self.blocks:
            for block in blocklist:
                h = block(h)
        h = torch.sum(self.activation(h), [2, 3])
        out = self.linear(h)
        return out + torch.sum(self.embed(y) * h, 1, keepdim=True)
