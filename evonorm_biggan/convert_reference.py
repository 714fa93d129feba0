"""Load BigGAN-PyTorch's BigGAN-deep weights (ajbrock/BigGAN-PyTorch, ``BigGANdeep.py``) into
:class:`~.model.Generator` and :class:`~.model.Discriminator`.

The reference saves ``G.pth``, ``G_ema.pth`` and ``D.pth`` as plain state dicts. Build the network with
the reference run's settings (``launch_BigGAN_deep.sh`` at 128: ``Generator(128)`` and
``Discriminator(128)``, the defaults here) and BN-ReLU, then::

    G = Generator(128)
    load_reference_state_dict(G, torch.load("weights/G_ema.pth", map_location="cpu"))

Names: the reference nests its blocks per stage (``blocks.<stage>.<block>.``, an attention layer being
the last block of its stage), here they are one list (``blocks.<index>.``, the same order); its
conditional BNs ``bn1…bn4`` (``gain``/``bias`` linear maps, ``stored_mean``/``stored_var``) are
``norm1…norm4`` (``gain``/``bias``, ``norm.running_mean``/``norm.running_var``); its output
``output_layer.0`` (BN) and ``output_layer.2`` (conv) are ``out_norm`` and ``out_conv``.

Spectral norm: the reference keeps one vector ``u0`` per weight and, in eval mode too, runs one power
iteration from it (without storing the result) to get σ; torch's parametrization keeps ``_u`` and ``_v``
and in eval mode uses them as they are. The converter stores the result of that one iteration, so in
eval mode σ — and the outputs — are the reference's. In train mode each runs one more iteration, ours
starting one iteration further on: the same σ once the power iteration has converged, as it has in a
trained network. The reference's ``sv0`` buffers (σ kept for logging) are dropped.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from evonorm_plugins import BatchNormReLU

from .model import SN_EPS, Discriminator, Generator

_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.")
_RENAMES: List[Tuple[re.Pattern, str]] = [(re.compile(p), r) for p, r in [
    (r"\.bn(\d)\.(gain|bias)\.", r".norm\1.\2."),            # G's conditional gain/bias maps
    (r"\.bn(\d)\.stored_(mean|var)$", r".norm\1.norm.running_\2"),
    (r"^output_layer\.0\.gain$", "out_norm.weight"),
    (r"^output_layer\.0\.bias$", "out_norm.bias"),
    (r"^output_layer\.0\.stored_(mean|var)$", r"out_norm.running_\1"),
    (r"^output_layer\.2\.", "out_conv."),
]]


def _flat_block_keys(reference: Mapping[str, Tensor]) -> Dict[str, str]:
    """``blocks.<stage>.<block>.`` prefixes → ``blocks.<index>.``, in the reference's order."""
    pairs = sorted({(int(m[1]), int(m[2])) for m in map(_BLOCK.match, reference) if m})
    return {f"blocks.{i}.{j}.": f"blocks.{k}." for k, (i, j) in enumerate(pairs)}


def _rename(key: str, blocks: Dict[str, str]) -> str:
    m = _BLOCK.match(key)
    if m:
        key = blocks[m[0]] + key[m.end():]
    for pattern, replacement in _RENAMES:
        key = pattern.sub(replacement, key)
    return key


def _spectral_norm_vectors(weight: Tensor, u: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """The reference's eval-mode power iteration from ``u``: ``(u', v')`` with σ = u'·W v'."""
    w = weight.detach().flatten(1).float()
    v = F.normalize(w.t() @ u.detach().flatten().float(), dim=0, eps=eps)
    return F.normalize(w @ v, dim=0, eps=eps).to(weight.dtype), v.to(weight.dtype)


def _name(key: str) -> str:
    """A state-dict key as the user knows it: a spectrally normalized weight as ``<module>.weight``."""
    return re.sub(r"\.parametrizations\.weight\.(original|0\._[uv])$", ".weight", key)


def _names(keys: Iterable[str]) -> List[str]:
    return sorted({_name(k) for k in keys})


def convert_state_dict(
    reference: Mapping[str, Tensor], model: Union[Generator, Discriminator], eps: float = SN_EPS
) -> Dict[str, Tensor]:
    """A BigGAN-PyTorch BigGAN-deep G or D state dict as ``model``'s state dict (``eps``: the reference's
    ``SN_eps``, 1e-6 in its BigGAN-deep script). Raises ``ValueError`` naming the keys that do not match,
    which means ``model`` was built with settings other than the reference run's."""
    if isinstance(model, Generator) and not isinstance(model.out_norm, BatchNormReLU):
        raise ValueError(f"BigGAN-PyTorch's G uses BN-ReLU: build the Generator with layer='BatchNormReLU' "
                         f"(it has {type(model.out_norm).__name__}) to load its weights")
    blocks = _flat_block_keys(reference)
    target = model.state_dict()
    converted: Dict[str, Tensor] = {}
    for key, value in reference.items():
        name = _rename(key, blocks)
        module, _, leaf = name.rpartition(".")
        if leaf in ("u0", "sv0"):
            continue  # u0 goes with its weight below; sv0 is σ kept for logging
        u0 = key[: -len(leaf)] + "u0"
        if leaf == "weight" and u0 in reference:
            u, v = _spectral_norm_vectors(value, reference[u0], eps)
            prefix = f"{module}.parametrizations.weight"
            converted.update({f"{prefix}.original": value, f"{prefix}.0._u": u, f"{prefix}.0._v": v})
        else:
            converted[name] = value
    for key, value in target.items():  # torch's BN counter, which the reference does not keep
        if key.endswith("num_batches_tracked") and key not in converted:
            converted[key] = value
    missing, unexpected = _names(target.keys() - converted.keys()), _names(converted.keys() - target.keys())
    wrong = [f"{_name(k)} {tuple(converted[k].shape)} vs {tuple(target[k].shape)}"
             for k in sorted(target.keys() & converted.keys()) if converted[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        problems = [f"{what}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}" for what, keys in
                    (("missing", missing), ("unexpected", unexpected), ("shape (reference vs model)", wrong)) if keys]
        raise ValueError(f"the reference state dict does not fit this {type(model).__name__} ({'; '.join(problems)}); "
                         f"build it with the reference run's resolution, n_classes, ch, depth, dim_z, shared_dim, attention "
                         f"(and output_channels=3)")
    return converted


@torch.no_grad()
def load_reference_state_dict(
    model: Union[Generator, Discriminator], reference: Mapping[str, Tensor], eps: float = SN_EPS
) -> Union[Generator, Discriminator]:
    """Load a BigGAN-PyTorch state dict (``G.pth``, ``G_ema.pth`` or ``D.pth``) into ``model``; returns it."""
    model.load_state_dict(convert_state_dict(reference, model, eps))
    return model
