"""GraphNormAct: the nn.Module that runs any genome, searched or hand-written."""
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .._ops import affine, check_channels, check_input, update_running_stat
from ..kernels.common import compute_dtype
from ..kernels.distributed import synchronized_statistic
from ..layers.base import EvoNormBase, num_groups_for
from .genome import Genome, X, genome_from_ops
from .primitives import FIRST_AGGREGATION, PRIMITIVES, elementwise, statistic

# Initial value of a batch statistic's running estimate: mean 0, variance 1, second moment 1.
_RUNNING_INIT = {"mean": 0.0, "var": 1.0, "mean_sq": 1.0}


def default_no_act_genome(genome: Genome) -> Genome:
    """The non-activating form used for ``apply_act=False`` when a genome names none: x divided by its
    batch std (batch-dependent genomes) or its group std (batch-independent ones)."""
    statistic_op = "var_batch" if genome.batch_dependent else "var_group"
    return genome_from_ops([(statistic_op, [X]), ("sqrt", [4]), ("div", [X, 5])])


def _as_genome(genome: Union[Genome, str, Path]) -> Genome:
    if isinstance(genome, Genome):
        return genome
    if isinstance(genome, (str, Path)):
        return Genome.load(genome)
    raise TypeError(f"genome must be a Genome or the path of a genome JSON file, got {type(genome).__name__}")


class GraphNormAct(EvoNormBase):
    """Runs a genome on ``(N, C, H, W)`` input (or ``(N, C, *spatial)``), then the affine ``γ, β``.

    Args:
        num_features: channels C.
        genome: a :class:`Genome` or the path of a genome JSON file; subclasses made by the registry
            carry their own (``default_genome``) and need none.
        apply_act: ``False`` runs the genome's ``no_act_output`` node, or when it names none, x divided
            by its batch std (batch-dependent genomes) or group std (the others) — the form hosts need
            at the end of residual branches.
        groups, group_size: channel groups of the ``*_group`` aggregations (same rule as EvoNorm-S).
        momentum: update of the running estimate kept for every batch aggregation in the program.
        compile: run the program through ``torch.compile`` (built on the first forward; needs a C++
            compiler on CPU, Triton on GPU): one fused kernel instead of one op per node. TorchScript
            ignores it and interprets the program.
        sync_stats, process_group: in training, take the batch aggregations over the concatenated batch
            of the group's processes (differentiable all-reduces; the program then runs interpreted,
            outside ``torch.compile`` and ``compile=True``); a genome without batch aggregations
            ignores them.
        eps, affine_only, device, dtype, host keywords: as for the EvoNorm layers.

    The trainable vectors ``v0`` (init 0) and ``v1`` (init 1) exist only when the program uses them.
    Each batch aggregation keeps a running estimate of its statistic (row of the float32
    ``running_stats`` buffer; mean 0, variance and second moment 1 at init), updated without autograd
    in training and used in eval, with the same NaN/inf guards as the B-series running variance.
    Inputs in fp16/bf16 are computed in float32 and returned in their own dtype.
    """

    default_genome: Optional[Genome] = None
    float32_buffers = ("running_stats",)

    def __init__(
        self,
        num_features: int,
        genome: Optional[Union[Genome, str, Path]] = None,
        *,
        groups: int = 32,
        group_size: Optional[int] = None,
        momentum: float = 0.1,
        compile: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_features, groups=groups, group_size=group_size, momentum=momentum, **kwargs)
        self.compile_program = bool(compile)
        name = type(self).__name__
        if genome is None:
            genome = self.default_genome
        if genome is None:
            raise TypeError(f"{name} needs a genome: GraphNormAct(num_features, genome) with a Genome or a JSON path")
        self.genome = _as_genome(genome)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.groups = num_groups_for(name, num_features, groups, group_size)

        program = self._select_program(self.genome)
        self.program = program
        self.ops: List[int] = [PRIMITIVES[n.op].code for n in program.nodes]
        self.first_input: List[int] = [n.inputs[0] for n in program.nodes]
        self.second_input: List[int] = [n.inputs[1] if len(n.inputs) == 2 else -1 for n in program.nodes]
        self.output_index: int = program.output
        self.first_aggregation: int = FIRST_AGGREGATION
        slots: List[int] = []
        running_init: List[float] = []
        for node in program.nodes:
            primitive = PRIMITIVES[node.op]
            if primitive.axes == "batch":
                slots.append(len(running_init))
                running_init.append(_RUNNING_INIT[primitive.statistic])
            else:
                slots.append(-1)
        self.running_slot: List[int] = slots
        self.batch_statistics = not self.affine_only and any(slot >= 0 for slot in slots)

        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        used = program.ancestors(program.output) if not self.affine_only else set()
        self.v0: Optional[nn.Parameter] = nn.Parameter(torch.zeros(num_features, **factory)) if 2 in used else None
        self.v1: Optional[nn.Parameter] = nn.Parameter(torch.ones(num_features, **factory)) if 3 in used else None
        self._running_init = running_init
        self.register_buffer(
            "running_stats", torch.tensor(running_init, dtype=torch.float32, device=self.weight.device)
            .view(-1, 1).repeat(1, num_features)
        )

    def _select_program(self, genome: Genome) -> Genome:
        """The pruned, canonical graph this instance runs (its activating or non-activating form)."""
        if self.apply_act:
            return Genome(genome.nodes, genome.output).canonical()
        if genome.no_act_output is not None:
            return Genome(genome.nodes, genome.no_act_output).canonical()
        return default_no_act_genome(genome).canonical()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.v0 is not None:
            nn.init.zeros_(self.v0)
        if self.v1 is not None:
            nn.init.ones_(self.v1)

    def reset_running_stats(self) -> None:
        self.running_stats.copy_(torch.tensor(self._running_init).view(-1, 1).expand_as(self.running_stats))

    def _aggregate(self, code: int, t: Tensor, slot: int, n: int, c: int, length: int, synchronized: bool) -> Tensor:
        stat = (code - self.first_aggregation) // 3
        axes = (code - self.first_aggregation) % 3
        t = t.expand(n, c, length)
        if axes == 0:  # batch: per channel over (N, H, W), running estimate in eval
            if self.training:
                if synchronized:
                    value, count = self._synchronized_statistic(t, stat)
                else:
                    value, count = statistic(t, stat, [0, 2]), n * length
                update_running_stat(self.running_stats[slot], value.view(c), self.momentum, count)
                return value
            return self.running_stats[slot].to(t.dtype).view(1, c, 1)
        if axes == 1:  # instance: per sample and channel over (H, W)
            return statistic(t, stat, [2])
        g = self.groups
        grouped = statistic(t.reshape(n, g, c // g, length), stat, [2, 3])
        return grouped.expand(n, g, c // g, 1).reshape(n, c, 1)

    @torch.jit.unused
    @torch.compiler.disable
    def _synchronized_statistic(self, t: Tensor, stat: int) -> Tuple[Tensor, int]:
        return synchronized_statistic(t, stat, self.process_group)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and self.synchronized():
            return self._run(x, True)
        if self.compile_program and not torch.jit.is_scripting():
            return self._compiled_run(x)
        return self._run(x, False)

    @torch.jit.unused
    def _compiled_run(self, x: Tensor) -> Tensor:
        """``_run`` through ``torch.compile``, built on first use (Inductor fuses the whole program)."""
        compiled = self.__dict__.get("_compiled")
        if compiled is None:
            compiled = torch.compile(self._run)
            self.__dict__["_compiled"] = compiled
        return compiled(x)

    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_compiled", None)  # compiled code does not pickle or deepcopy; rebuilt on use
        return state

    def _run(self, x: Tensor, synchronized: bool = False) -> Tensor:
        """Interpret the program on x: the TorchScript-compatible reference of this layer.

        ``synchronized``: take batch aggregations over the process group; then an empty input runs the
        program too, because its collectives are this process's share of its peers' statistics.
        """
        check_input(x, self.layer_name)
        n, c = x.shape[0], x.shape[1]
        check_channels(self.weight, "weight", c, self.layer_name)
        dtype = compute_dtype(x)
        x3 = x.to(dtype).flatten(2)
        shape = [1, c, 1]
        if self.affine_only or (x3.numel() == 0 and not synchronized):
            return self.drop(affine(x3, self.weight, self.bias, shape).reshape(x.shape).to(x.dtype))
        length = x3.shape[2]
        zero = torch.zeros((1, 1, 1), dtype=dtype, device=x.device)
        v0 = self.v0
        v1 = self.v1
        values: List[Tensor] = [
            x3,
            zero,
            zero if v0 is None else v0.to(dtype).view(shape),
            zero if v1 is None else v1.to(dtype).view(shape),
        ]
        for i in range(len(self.ops)):
            code = self.ops[i]
            a = values[self.first_input[i]]
            if code >= self.first_aggregation:
                values.append(self._aggregate(code, a, self.running_slot[i], n, c, length, synchronized))
            else:
                b = values[self.second_input[i]] if self.second_input[i] >= 0 else a
                values.append(elementwise(code, a, b, self.eps))
        y = values[self.output_index].expand(n, c, length)
        return self.drop(affine(y, self.weight, self.bias, shape).reshape(x.shape).to(x.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}, momentum={self.momentum}, genome={self.program.hash()}: {self.program.formula()}"
