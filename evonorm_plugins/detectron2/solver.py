"""detectron2's optimizer with the registry's layers treated as norms (``SOLVER.WEIGHT_DECAY_NORM``)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import (
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
    reduce_param_groups,
)
from torch import nn

from .norm import is_norm_layer


def get_evonorm_optimizer_params(
    model: nn.Module,
    *,
    weight_decay_norm: Optional[float] = None,
    weight_decay_bias: Optional[float] = None,
    overrides: Optional[Dict[str, Dict[str, float]]] = None,
    **kwargs: Any,
) -> List[Dict[str, Any]]:
    """detectron2's ``get_default_optimizer_params`` that also gives the registry's layers
    ``weight_decay_norm``.

    detectron2 picks norm parameters by ``isinstance`` against a tuple of torch norm classes built
    inside the function, which EvoNorms are not. As there, a per-name override (``weight_decay_bias``
    for ``bias``, ``overrides``) wins over ``weight_decay_norm``. Drop-in for LazyConfigs:
    ``optimizer.params = L(get_evonorm_optimizer_params)(weight_decay_norm=0.0)``.
    """
    groups = get_default_optimizer_params(
        model, weight_decay_norm=weight_decay_norm, weight_decay_bias=weight_decay_bias, overrides=overrides, **kwargs
    )
    if weight_decay_norm is None:
        return groups
    overridden = {name for name, values in (overrides or {}).items() if "weight_decay" in values}
    if weight_decay_bias is not None:
        overridden.add("bias")
    norm_params = {
        parameter
        for module in model.modules()
        if is_norm_layer(module)
        for name, parameter in module.named_parameters(recurse=False)
        if name not in overridden
    }
    per_parameter = []
    for group in groups:
        for parameter in group["params"]:
            decay = {"weight_decay": weight_decay_norm} if parameter in norm_params else {}
            per_parameter.append({**group, "params": [parameter], **decay})
    return reduce_param_groups(per_parameter)


def build_evonorm_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """detectron2's ``build_optimizer`` (SGD, gradient clipping) with :func:`get_evonorm_optimizer_params`,
    so EvoNorm parameters get ``SOLVER.WEIGHT_DECAY_NORM``."""
    params = get_evonorm_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    optimizer = torch.optim.SGD(
        params,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        foreach=True,
    )
    return maybe_add_gradient_clipping(cfg, optimizer)
