"""Class-conditional normalization-activation: any registered layer with BigGAN's conditional affine.

BigGAN's conditional BatchNorm is ``ReLU(BN(x)·(1 + W_g·e) + W_b·e)``: the per-channel γ, β of BN
become per-sample functions of the conditioning vector ``e`` (shared class embedding ⊕ z). To swap
that block for a registered layer we replace the layer's *own* γ, β with the conditional ones, at the
place where the layer applies them:

* layers that expose their activation as an ``act`` submodule applied after the affine
  (``BatchNormReLU``, ``GroupNormReLU`` …) get ``act(norm(x)·gain + bias)`` — exactly BigGAN's
  conditional BN-ReLU;
* EvoNorms and evolved genomes compute their non-linearity inside the normalization and end with
  ``·γ + β``, so the conditional affine is their last operation: ``norm_act(x)·gain + bias``. This is
  how the EvoNorm paper swaps BN-ReLU in BigGAN-deep: the whole "BN + ReLU" pair is the layer, and the
  class-conditional γ, β are the layer's γ, β.

The layer's own ``weight``/``bias`` are removed (set to ``None``; every registered layer accepts that),
so there is no redundant per-channel affine and no frozen parameters in the optimizer or the counts.
Running statistics (BatchNorm, B-series EvoNorms, batch aggregations of genomes) stay inside the
wrapped layer and behave as in the unconditional layer.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from torch import Tensor, nn

from evonorm_plugins.registry import get_layer


def strip_affine(layer: nn.Module) -> nn.Module:
    """Remove a registered layer's own γ, β (its ``weight``/``bias``): the caller supplies the affine."""
    for name in ("weight", "bias"):
        if not isinstance(getattr(layer, name, None), nn.Parameter):
            raise TypeError(
                f"{type(layer).__name__} has no per-channel parameter {name!r}; a conditional layer needs a "
                f"registered norm-act layer that ends with its own affine γ, β"
            )
        setattr(layer, name, None)
    return layer


class ConditionalNormAct(nn.Module):
    """A registered norm-act layer whose affine is ``gain = 1 + W_g·e``, ``bias = W_b·e`` per sample.

    Args:
        layer: registry name (``"BatchNormReLU"``, ``"EvoNormB0"``, ``"EvoNormS0"``, an evolved genome …).
        num_features: channels C of the input.
        cond_dim: size of the conditioning vector ``e``.
        linear: factory ``(in_features, out_features) -> nn.Module`` for ``W_g`` and ``W_b`` (BigGAN: a
            spectrally normalized linear map without bias).
        layer_kwargs: extra constructor keywords of the layer (``eps``, ``groups``, ``momentum`` …).
    """

    def __init__(
        self,
        layer: str,
        num_features: int,
        cond_dim: int,
        linear: Callable[[int, int], nn.Module],
        layer_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.norm = strip_affine(get_layer(layer, num_features, **(layer_kwargs or {})))
        act = getattr(self.norm, "act", None)
        # Split off an activation that follows the affine, so the conditional affine precedes it.
        self.act: nn.Module = act if isinstance(act, nn.Module) else nn.Identity()
        if isinstance(act, nn.Module):
            self.norm.act = nn.Identity()
        self.gain = linear(cond_dim, num_features)
        self.bias = linear(cond_dim, num_features)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shape = (cond.shape[0], -1, 1, 1)
        gain = 1 + self.gain(cond).view(shape)
        return self.act(self.norm(x) * gain + self.bias(cond).view(shape))
