"""An independent float64 reference of the six EvoNorm formulas, written in NumPy from the paper's forms.

It shares no code with the package: statistics are taken per channel / per group with explicit loops.
"""
import numpy as np


def batch_var(x):
    """Biased variance over (N, H, W) per channel: shape (C,)."""
    return np.array([x[:, c].var() for c in range(x.shape[1])])


def instance_var(x):
    return x.var(axis=(2, 3), keepdims=True)


def instance_second_moment(x):
    return (x**2).mean(axis=(2, 3), keepdims=True)


def group_stat(x, groups, second_moment):
    """Per-sample statistic over (C/g, H, W), broadcast back to every channel of its group."""
    n, c = x.shape[:2]
    size = c // groups
    out = np.empty((n, c, 1, 1))
    for i in range(n):
        for g in range(groups):
            block = x[i, g * size:(g + 1) * size]
            out[i, g * size:(g + 1) * size] = (block**2).mean() if second_moment else block.var()
    return out


def per_channel(p):
    return np.asarray(p, dtype=np.float64).reshape(1, -1, 1, 1)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def evonorm_b(variant, x, v, gamma, beta, eps, var_nhw=None, apply_act=True):
    """B0/B1/B2; ``var_nhw`` replaces the batch variance (eval mode with a running variance)."""
    x = np.asarray(x, dtype=np.float64)
    var_nhw = batch_var(x) if var_nhw is None else np.asarray(var_nhw, dtype=np.float64)
    left = np.sqrt(per_channel(var_nhw) + eps)
    if not apply_act:
        return x / left * per_channel(gamma) + per_channel(beta)
    if variant == 0:
        right = per_channel(v) * x + np.sqrt(instance_var(x) + eps)
    elif variant == 1:
        right = (x + 1) * np.sqrt(instance_second_moment(x) + eps)
    else:
        right = np.sqrt(instance_second_moment(x) + eps) - x
    return x / np.maximum(left, right) * per_channel(gamma) + per_channel(beta)


def evonorm_s(variant, x, v, gamma, beta, eps, groups, apply_act=True):
    x = np.asarray(x, dtype=np.float64)
    denominator = np.sqrt(group_stat(x, groups, second_moment=(variant == 2)) + eps)
    if not apply_act:
        numerator = x
    elif variant == 0:
        numerator = x * sigmoid(per_channel(v) * x)
    else:
        numerator = x * sigmoid(x)
    return numerator / denominator * per_channel(gamma) + per_channel(beta)
