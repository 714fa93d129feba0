"""Swap the norm-activation pairs of an existing model for a registered layer: :func:`convert_norm_act`.

An EvoNorm is a normalization *and* an activation, so converting a model means replacing each norm
together with the activation applied to its output, and only that activation. Which module follows a
norm cannot be read from the module tree: registration order is not execution order, and one
activation module is often called at several places (torchvision's ``BasicBlock`` applies
``self.relu`` after ``bn1`` and again after the residual addition). So the model is traced with
``torch.fx`` and each norm's consumers are read from the data-flow graph, where functional
activations (``F.relu``, ``x.relu_()``) and shared modules are visible too. A module whose forward
cannot be traced is kept as an opaque leaf, and the norms inside it fall back to a conservative
structural rule (see :func:`convert_norm_act`); whatever cannot be converted safely is refused with
its reason, never guessed.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .graph.genome import X
from .graph.module import GraphNormAct
from .graph.primitives import PRIMITIVES
from .layers.base import EvoNormBase
from .layers.evonorm_b import EvoNormBatch
from .registry import get_layer_class

#: The norms that are converted: every BatchNorm (including SyncBatchNorm and timm's BatchNormAct2d)
#: and GroupNorm (including timm's GroupNormAct and GroupNorm1Act), except BatchNorm1d.
NORM_TYPES: Tuple[Type[nn.Module], ...] = (_BatchNorm, nn.GroupNorm)

#: The activations a converted layer takes over by default: ReLU (the paper's BN-ReLU) and SiLU
#: (the activation of EfficientNet-like nets). Clipped or shaped ones (ReLU6, Hardswish, GELU, ...) are
#: different functions and are refused unless passed in ``activations=``.
DEFAULT_ACTIVATIONS: Tuple[Type[nn.Module], ...] = (nn.ReLU, nn.SiLU)

# Activation modules, recognized so that a norm followed by one that is not replaced is refused
# rather than converted to a form that would then be activated twice.
_ACTIVATION_MODULES: Tuple[Type[nn.Module], ...] = (
    nn.ReLU, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Threshold,
    nn.LogSigmoid,
)
_ACTIVATION_FUNCTIONS = frozenset(
    [getattr(F, name) for name in (
        "relu", "relu_", "relu6", "silu", "gelu", "elu", "elu_", "selu", "celu", "leaky_relu", "leaky_relu_",
        "prelu", "rrelu", "hardswish", "hardsigmoid", "hardtanh", "hardtanh_", "mish", "sigmoid", "tanh",
        "softplus", "threshold",
    )]
    + [getattr(torch, name) for name in (
        "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min", "clamp_min_",
        "selu", "celu", "prelu", "rrelu", "threshold",
    )]
)
_ACTIVATION_METHODS = frozenset(
    {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min", "clamp_min_"}
)
# Never traced into: the norms (their consumers are what matters) and this package's layers (so a
# model converted before traces again).
_LEAF_TYPES: Tuple[Type[nn.Module], ...] = NORM_TYPES + (EvoNormBase,)


class Conversion(NamedTuple):
    """One norm replaced by the new layer."""

    path: str  #: module path of the norm, now holding the new layer
    old: str  #: what was replaced: ``"BatchNorm2d+ReLU"``, ``"BatchNormAct2d(SiLU)"`` or ``"BatchNorm2d"``
    new: str  #: the registered name of the new layer
    apply_act: bool  #: whether the new layer is the activating form
    act_path: Optional[str]  #: the activation module set to ``nn.Identity``, if one was taken over
    carried: Tuple[str, ...]  #: the state copied from the norm, e.g. ``("weight", "bias", "running_var")``


class Refusal(NamedTuple):
    """One norm left as it was, and why."""

    path: str
    reason: str


@dataclass
class ConversionReport:
    """What :func:`convert_norm_act` changed (``converted``) and left alone (``refused``)."""

    layer: str
    converted: List[Conversion] = field(default_factory=list)
    refused: List[Refusal] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"convert_norm_act to {self.layer}: {len(self.converted)} converted, {len(self.refused)} refused"]
        for c in self.converted:
            form = "" if c.apply_act else "(apply_act=False)"
            act = f", {c.act_path} -> Identity" if c.act_path else ""
            carried = ", ".join(c.carried) or "nothing"
            lines.append(f"  converted {c.path}: {c.old} -> {c.new}{form}{act}; carried {carried}")
        lines.extend(f"  refused   {r.path}: {r.reason}" for r in self.refused)
        return "\n".join(lines)


def convert_norm_act(
    model: nn.Module,
    layer: Union[str, Type[nn.Module]],
    *,
    strict: bool = False,
    activations: Sequence[Type[nn.Module]] = DEFAULT_ACTIVATIONS,
    **layer_kwargs: Any,
) -> ConversionReport:
    """Replace, in place, each norm of ``model`` and the activation after it by the registered ``layer``.

    Like ``nn.SyncBatchNorm.convert_sync_batchnorm`` it swaps submodules, but in place (the same
    ``model`` object is modified) and it returns a :class:`ConversionReport` of what it did.

    Per BatchNorm/GroupNorm (BatchNorm1d excepted, its input may lack the spatial dimensions):

    * output consumed only by an activation module of ``activations`` (ReLU, SiLU), itself called
      nowhere else → the activating layer; that activation module becomes ``nn.Identity``.
      ``nn.Identity`` modules in between (timm's unused ``drop_block``) are looked through.
    * no activation among its consumers (e.g. the norm ending a residual branch, before the addition)
      → the non-activating form, ``apply_act=False``.
    * timm's fused norm-act modules (``BatchNormAct2d``, ``GroupNormAct``, ...: a norm subclass with
      its activation as ``.act``) are replaced whole: ReLU/SiLU inside → the activating layer; an
      ``nn.Identity`` inside → treated as a plain norm.
    * refused, with the reason: a functional activation after the norm (``F.relu``, ``x.relu_()``;
      a module swap cannot remove it), an activation not in ``activations`` (ReLU6, Hardswish, ...), an
      activation module also called elsewhere, an activation among several consumers, a norm called
      or registered at several places, and a fused module with a non-Identity ``.drop``.

    When a module's forward cannot be traced, it is kept opaque and the norms inside it (all of them
    when the model's own forward fails) are converted only by a structural rule, which assumes the
    ``nn.Sequential`` is run whole: a norm inside a plain ``nn.Sequential`` feeds the next child, so a
    following activation module is taken over and any other module means no activation. The other
    norms there are refused with the tracing error. With ``strict=False`` the model can end up mixed
    (converted and refused norms side by side); the report says which is which.

    State: ``num_features``, γ and β, ``eps``, device and dtype come from the norm; ``groups`` from a
    GroupNorm; a BatchNorm's ``momentum`` and running statistics go to layers that keep them; an
    ``nn.SyncBatchNorm`` (or a synchronized ``BatchNormReLU``) makes a layer that synchronizes its batch
    statistics over the same process group (``sync_stats``; layers without batch statistics ignore it). The
    BatchNorm baselines get ``running_mean``/``running_var`` as they are (same statistics, so the
    output is unchanged). The EvoNorm-B ``running_var`` is the moving average of the *biased* batch
    variance of the same input over the same (N, H, W) axes, BatchNorm's of the *unbiased* one: they
    differ by the factor n/(n−1), n = N·H·W per channel, negligible next to the estimate's own noise,
    so it is copied (evaluation then uses the data's variance instead of the initial 1). Evolved
    layers get the BatchNorm moments for their batch statistics of x (mean, variance, mean square).

    Args:
        model: the model, modified in place.
        layer: a registered layer name (see :func:`evonorm_plugins.list_layers`), or a class with the
            uniform constructor (e.g. ``make_layer_class("mine", genome)``).
        strict: raise ``ValueError`` listing the refusals, leaving the model unchanged, if any norm
            cannot be converted.
        activations: activation module types the layer takes over.
        **layer_kwargs: constructor keywords of the layer (``groups=``, ``eps=``, ``sync_stats=True`` to
            synchronize the batch statistics of B-series layers across processes, ...); they override
            what is carried from the norm. ``apply_act`` is decided per norm and cannot be passed.

    Returns:
        The report; ``str(report)`` lists every norm with what happened to it.
    """
    for key in ("apply_act", "num_features"):
        if key in layer_kwargs:
            raise TypeError(f"convert_norm_act: {key} is taken from each norm and cannot be passed; remove {key}=")
    layer_cls = _layer_class(layer)
    layer = layer if isinstance(layer, str) else layer_cls.__name__
    acts = tuple(activations)
    if not all(isinstance(a, type) and issubclass(a, nn.Module) for a in acts):
        raise TypeError(
            f"convert_norm_act: activations takes nn.Module classes, e.g. (nn.ReLU, nn.SiLU); got {activations!r}"
        )
    plans, refused = _plan(model, acts, layer)
    if strict and refused:
        listing = "\n".join(f"  {r.path}: {r.reason}" for r in refused)
        raise ValueError(
            f"convert_norm_act(strict=True) to {layer}: {len(refused)} norm(s) cannot be converted safely, so "
            f"nothing was changed:\n{listing}\nFix those places, or pass strict=False to convert the others."
        )
    report = ConversionReport(layer, refused=refused)
    replacements = []
    for plan in plans:  # every layer is built before the model is changed, so a failure changes nothing
        new, carried = _build(layer_cls, model.get_submodule(plan.path), plan.apply_act, layer_kwargs)
        old = _describe_old(model, plan)
        report.converted.append(Conversion(plan.path, old, layer, plan.apply_act, plan.act_path, carried))
        replacements.append((plan, new))
    for plan, new in replacements:
        model.set_submodule(plan.path, new)
        if plan.act_path is not None:
            model.set_submodule(plan.act_path, nn.Identity())
    return report


def _layer_class(layer: Union[str, Type[nn.Module]]) -> Type[nn.Module]:
    if isinstance(layer, str):
        return get_layer_class(layer)
    if isinstance(layer, type) and issubclass(layer, nn.Module):
        return layer
    raise TypeError(f"convert_norm_act: layer must be a registered name or an nn.Module class, got {layer!r}")


# ------------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class _Plan:
    path: str
    apply_act: bool
    act_path: Optional[str] = None  # an activation module after the norm, to become nn.Identity


_Decision = Union[_Plan, str]  # a plan, or the reason for refusing


class _Tracer(fx.Tracer):
    """Keeps norms, this package's layers and the modules in ``opaque`` as leaves, and records the
    innermost module whose forward raised (to make it opaque on the next attempt)."""

    def __init__(self, opaque: Sequence[str]) -> None:
        super().__init__()
        self.opaque = frozenset(opaque)
        self.failed_in: Optional[str] = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            module_qualified_name in self.opaque
            or isinstance(m, _LEAF_TYPES)
            or super().is_leaf_module(m, module_qualified_name)
        )

    def call_module(self, m: nn.Module, forward: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                try:
                    self.failed_in = self.path_of_module(m)
                except NameError:  # a module not registered in the model: its caller is blamed
                    pass
            raise


@dataclass
class _Trace:
    """The traced graph (None when the model's own forward failed) and the opaque modules with the
    error that made them so ("" is the model itself)."""

    graph: Optional[fx.Graph]
    opaque: Dict[str, str]

    def calls(self) -> Dict[str, List[fx.Node]]:
        found: Dict[str, List[fx.Node]] = {}
        for node in self.graph.nodes if self.graph is not None else ():
            if node.op == "call_module":
                found.setdefault(node.target, []).append(node)
        return found

    def untraced_reason(self, path: str) -> Optional[str]:
        """Why the module at ``path`` is not in the graph, when it sits in an opaque module."""
        for prefix in sorted(self.opaque, key=len, reverse=True):
            if prefix == "" or path.startswith(prefix + "."):
                error = self.opaque[prefix]
                return f"model could not be traced ({error})" if prefix == "" else (
                    f"inside {prefix!r}, whose forward could not be traced ({error})"
                )
        return None


def _trace(model: nn.Module) -> _Trace:
    """Trace ``model``, making each module whose forward fails opaque and trying again."""
    opaque: Dict[str, str] = {}
    while True:
        tracer = _Tracer(list(opaque))
        try:
            return _Trace(tracer.trace(model), opaque)
        except Exception as error:
            where = tracer.failed_in
            if where is None or where in opaque:  # the model's own forward
                opaque = {"": _short(error)}
                return _Trace(None, opaque)
            opaque[where] = _short(error)


def _short(error: Exception) -> str:
    """The error's type and first line, for a refusal reason."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _plan(model: nn.Module, activations: Tuple[Type[nn.Module], ...], layer: str) -> Tuple[List[_Plan], List[Refusal]]:
    trace = _trace(model)
    calls = trace.calls()
    modules = dict(model.named_modules())
    names: Dict[int, List[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(path)
    context = _Context(model, modules, names, calls, trace, activations, layer)
    plans: List[_Plan] = []
    refused: List[Refusal] = []
    for path, module in modules.items():
        if isinstance(module, NORM_TYPES):
            decision = context.decide(path, module)
            if isinstance(decision, _Plan):
                plans.append(decision)
            else:
                refused.append(Refusal(path, decision))
    return plans, refused


@dataclass
class _Context:
    """What the per-norm decisions look at; each returns a plan or the reason for refusing."""

    model: nn.Module
    modules: Dict[str, nn.Module]
    names: Dict[int, List[str]]  # every path of each module object
    calls: Dict[str, List[fx.Node]]
    trace: _Trace
    activations: Tuple[Type[nn.Module], ...]
    layer: str

    def decide(self, path: str, norm: nn.Module) -> _Decision:
        if path == "":
            return "the model itself is the norm; build the layer directly with get_layer() instead"
        if isinstance(norm, nn.BatchNorm1d):
            return "BatchNorm1d is not converted: its input is often (N, C), without the spatial dims the layer needs"
        if self.aliased(norm):
            paths = ", ".join(self.names[id(norm)])
            return f"registered under several names ({paths}); converting one would leave the others"
        drop = getattr(norm, "drop", None)
        if isinstance(drop, nn.Module) and not isinstance(drop, nn.Identity):
            return (
                f"has {type(drop).__name__} ({path}.drop) between the norm and its activation, which the conversion "
                f"does not move; build the model with the layer instead (for timm: import evonorm_plugins.timm, "
                f"then timm.create_model(..., norm_layer='evonorm_plugins.{self.layer}') passes drop_layer on)"
            )
        act = getattr(norm, "act", None)
        if isinstance(act, nn.Module) and not isinstance(act, nn.Identity):  # a fused norm-act module
            if isinstance(act, self.activations):
                return _Plan(path, apply_act=True)
            return f"its built-in activation {type(act).__name__} is not one {self.layer} replaces ({self.replaced()})"
        untraced = self.trace.untraced_reason(path)
        if untraced is not None:
            return self.from_structure(path, untraced)
        nodes = self.calls.get(path, [])
        if not nodes:
            return "not called in the traced forward (unused, or called by code the trace does not record)"
        if len(nodes) > 1:
            return f"called {len(nodes)} times in forward; a norm shared by several call sites is not converted"
        return self.from_graph(path, nodes[0])

    def from_graph(self, path: str, node: fx.Node) -> _Decision:
        consumers = _consumers(node, self.modules)
        activations = [c for c in consumers if self.is_activation(c)]
        if not activations:
            return _Plan(path, apply_act=False)
        if len(consumers) > 1:
            return (
                f"its output goes to {len(consumers)} places ({', '.join(map(self.describe, consumers))}), one an "
                f"activation: the layer cannot apply it for one use and not the others"
            )
        (act_node,) = activations
        if act_node.op != "call_module":
            return (
                f"its output goes to the functional activation {self.describe(act_node)}, which a module swap "
                f"cannot remove; call an activation module (e.g. nn.ReLU) there instead, then convert"
            )
        return self.take_over(path, act_node.target, calls=len(self.calls[act_node.target]))

    def from_structure(self, path: str, untraced: str) -> _Decision:
        parent_path, _, name = path.rpartition(".")
        parent = self.model.get_submodule(parent_path)
        if isinstance(parent, nn.Sequential) and type(parent).forward is nn.Sequential.forward:
            keys = list(parent._modules)
            after = [k for k in keys[keys.index(name) + 1:] if not isinstance(parent._modules[k], nn.Identity)]
            if after:
                following = parent._modules[after[0]]
                if not isinstance(following, _ACTIVATION_MODULES + self.activations):
                    return _Plan(path, apply_act=False)
                act_path = f"{parent_path}.{after[0]}" if parent_path else after[0]
                return self.take_over(path, act_path, calls=1)
        return f"{untraced}; untraced, only a norm followed by another child of an nn.Sequential is converted"

    def take_over(self, path: str, act_path: str, calls: int) -> _Decision:
        """Plan to fold the activation module at ``act_path`` (called ``calls`` times) into the layer."""
        act = self.modules[act_path]
        if not isinstance(act, self.activations):
            return (
                f"followed by {type(act).__name__} ({act_path!r}), which {self.layer} does not replace "
                f"({self.replaced()}); pass activations=(..., nn.{type(act).__name__}) to take it over anyway"
            )
        if calls > 1 or self.aliased(act):
            where = f"called {calls} times in forward" if calls > 1 else (
                f"registered under several names ({', '.join(self.names[id(act)])})"
            )
            return (
                f"its activation module {act_path!r} is {where}; replacing it with nn.Identity would remove "
                f"the other activations too. Give this call its own activation module, then convert"
            )
        return _Plan(path, apply_act=True, act_path=act_path)

    def aliased(self, module: nn.Module) -> bool:
        return len(self.names[id(module)]) > 1

    def is_activation(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.modules[node.target], _ACTIVATION_MODULES + self.activations)
        if node.op == "call_function":
            return node.target in _ACTIVATION_FUNCTIONS
        return node.op == "call_method" and node.target in _ACTIVATION_METHODS

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"{type(self.modules[node.target]).__name__} {node.target!r}"
        if node.op == "call_method":
            return f"Tensor.{node.target}()"
        if node.op == "output":
            return "the model's output"
        return f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', node.target)}".lstrip(".")

    def replaced(self) -> str:
        return ", ".join(a.__name__ for a in self.activations)


def _consumers(node: fx.Node, modules: Dict[str, nn.Module]) -> List[fx.Node]:
    """The nodes using ``node``'s output, looking through ``nn.Identity`` modules."""
    found: List[fx.Node] = []
    for user in node.users:
        if user.op == "call_module" and isinstance(modules[user.target], nn.Identity):
            found.extend(_consumers(user, modules))
        else:
            found.append(user)
    return found


def _describe_old(model: nn.Module, plan: _Plan) -> str:
    norm = model.get_submodule(plan.path)
    name = type(norm).__name__
    if plan.act_path is not None:
        return f"{name}+{type(model.get_submodule(plan.act_path)).__name__}"
    act = getattr(norm, "act", None)
    if isinstance(act, nn.Module) and not isinstance(act, nn.Identity):
        return f"{name}({type(act).__name__})"
    return name


# ------------------------------------------------------------------------------------------- building
def _build(
    layer_cls: Type[nn.Module], norm: nn.Module, apply_act: bool, layer_kwargs: Dict[str, Any]
) -> Tuple[nn.Module, Tuple[str, ...]]:
    """The new layer for ``norm``, with the norm's settings and state."""
    kwargs = _inherited_kwargs(norm)
    kwargs.update(layer_kwargs)
    num_features = norm.num_channels if isinstance(norm, nn.GroupNorm) else norm.num_features
    new = layer_cls(num_features, apply_act=apply_act, **kwargs)
    carried = _carry_state(norm, new)
    new.train(norm.training)
    return new, carried


def _inherited_kwargs(norm: nn.Module) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = {"eps": norm.eps}
    tensors = itertools.chain(norm.parameters(recurse=False), norm.buffers(recurse=False))
    reference = next((t for t in tensors if t.is_floating_point()), None)
    if reference is not None:
        kwargs.update(device=reference.device, dtype=reference.dtype)
    if isinstance(norm, nn.GroupNorm):
        kwargs["groups"] = norm.num_groups
    elif norm.momentum is not None:  # a BatchNorm; None (cumulative average) has no equivalent
        kwargs["momentum"] = norm.momentum
    if isinstance(norm, nn.SyncBatchNorm) or getattr(norm, "sync_stats", False):
        kwargs.update(sync_stats=True, process_group=norm.process_group)
    return kwargs


@torch.no_grad()
def _carry_state(norm: nn.Module, new: nn.Module) -> Tuple[str, ...]:
    carried: List[str] = []
    if norm.weight is not None and getattr(new, "weight", None) is not None and getattr(new, "bias", None) is not None:
        new.weight.copy_(norm.weight)
        new.bias.copy_(norm.bias)
        carried += ["weight", "bias"]
    if isinstance(norm, _BatchNorm) and norm.running_var is not None:
        carried += _carry_running_stats(norm, new)
    return tuple(carried)


def _carry_running_stats(norm: _BatchNorm, new: nn.Module) -> List[str]:
    if isinstance(new, _BatchNorm) and new.running_var is not None:  # the BatchNorm baselines
        new.running_mean.copy_(norm.running_mean)
        new.running_var.copy_(norm.running_var)
        new.num_batches_tracked.copy_(norm.num_batches_tracked)
        return ["running_mean", "running_var", "num_batches_tracked"]
    if isinstance(new, EvoNormBatch) and new.running_var is not None:
        new.running_var.copy_(norm.running_var)
        return ["running_var"]
    if isinstance(new, GraphNormAct):
        moments = {
            "mean": norm.running_mean,
            "var": norm.running_var,
            "mean_sq": norm.running_var + norm.running_mean.square(),
        }
        carried = []
        for node, slot in zip(new.program.nodes, new.running_slot):
            if slot >= 0 and node.inputs[0] == X:
                statistic = PRIMITIVES[node.op].statistic
                new.running_stats[slot].copy_(moments[statistic])
                carried.append(f"running_stats[{slot}] ({statistic} of x)")
        return carried
    return []


__all__ = [
    "DEFAULT_ACTIVATIONS",
    "NORM_TYPES",
    "Conversion",
    "ConversionReport",
    "Refusal",
    "convert_norm_act",
]
