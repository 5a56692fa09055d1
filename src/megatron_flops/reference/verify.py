"""Count the FLOPs of one training step of the reference GPT and compare with the formulas.

``verify(model, seq_length, ...)`` builds :class:`ReferenceGPT` at the given shape (real
tensors for small shapes, meta tensors for large ones), runs one forward and one backward
pass under :class:`torch.utils.flop_counter.FlopCounterMode` inside
``set_checkpoint_early_stop(False)`` (so checkpointed layers re-run their *whole* forward),
attributes every counted FLOP to a core component and a phase, and compares each
``(component, phase)`` with :func:`megatron_flops.flops.flops_breakdown`.

How a counted FLOP finds its component and phase:

* every matmul of the model lives in one *leaf module* (``query_key_value``, ``query_key``,
  ``probs_value``, ``dense``, ``up``, ``down``, ``router``, ``output_layer``) that declares,
  where the model builds it (:func:`megatron_flops.reference.model.carries`), the components
  its output columns belong to; the verifier only reads those declarations, and forward hooks
  keep the module running now;
* an op run inside a leaf module while the forward pass runs is **forward**; one run inside a
  leaf module while the backward pass runs is **recompute** (checkpointing calls the module's
  forward again);
* an op run by the backward pass outside any module's forward is **backward**: it belongs to
  the autograd node being executed (``torch._C._current_autograd_node()``), and every node a
  leaf module created was tagged with that module when its forward ended;
* a fused layer (the QKV projection, a GLU's first dense) is split by output columns: every
  matmul it takes part in — forward, grad of input, grad of weight — is linear in the number
  of output columns, so the query's share of the fused QKV count is exactly ``n·d / (n+2g)·d``.

The sum of the attributed FLOPs must also equal FlopCounterMode's own total: a matmul outside
every leaf module would show as ``unattributed`` and fail the check.
"""

import time
from collections import defaultdict
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..components import component_names
from ..flops import flops_breakdown
from ..memory import check_training_step_fits
from ..params import parameter_count
from ..shapes import NO_RECOMPUTE, ModelShape, Recompute, ShapeError
from .model import CARRIES, ReferenceGPT

__all__ = ["VerifyResult", "count_flops", "verify"]

PHASES = ("forward", "backward", "recompute")
UNATTRIBUTED = "unattributed"
_TAG = "megatron_flops_unit"

# Above either limit the model is built on meta tensors (no memory, no arithmetic).
REAL_MAX_HARDWARE_FLOPS = 2e10
REAL_MAX_PARAMETERS = 50_000_000


def component_units(gpt: nn.Module) -> Dict[nn.Module, Tuple[Tuple[str, int], ...]]:
    """Each leaf module that runs matmuls -> the components its output columns belong to.

    ``((component, columns), ...)``: one entry for a plain layer, two for a fused one, as the
    module declared it when the model was built.
    """
    return {module: getattr(module, CARRIES) for module in gpt.modules() if hasattr(module, CARRIES)}


def _grad_fns(tensors):
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.grad_fn is not None:
            yield t.grad_fn


class ComponentFlopCounter(FlopCounterMode):
    """``FlopCounterMode`` that also files every counted FLOP under (component, phase).

    Use as a context manager around one forward and one backward of ``gpt``; set
    ``counter.phase = "backward"`` before calling ``backward()``.
    """

    def __init__(self, gpt: Optional[ReferenceGPT] = None,
                 units: Optional[Dict[nn.Module, Tuple[Tuple[str, int], ...]]] = None):
        # ``units`` instead of ``gpt``: another model's leaf modules (the counting mode)
        super().__init__(display=False)
        self.units = component_units(gpt) if units is None else units
        self.phase = "forward"
        self.counted: Dict[Tuple[str, str], int] = defaultdict(int)
        self.problems: List[str] = []
        self._running: List[Tuple[Tuple[str, int], ...]] = []
        self._handles = []
        for module, unit in self.units.items():
            self._handles.append(module.register_forward_pre_hook(self._enter(unit)))
            self._handles.append(module.register_forward_hook(self._leave(unit)))

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _enter(self, unit):
        def hook(module, args):
            self._running.append(unit)
        return hook

    def _leave(self, unit):
        def hook(module, args, output):
            self._running.pop()
            if self.phase == "forward":
                self._tag_graph(unit, args, output)
        return hook

    @staticmethod
    def _tag_graph(unit, args, output) -> None:
        """Tag the autograd nodes this module's forward created (between its inputs and output)."""
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        boundary = set(_grad_fns(args))
        stack = [node for node in _grad_fns(outputs) if node not in boundary]
        while stack:
            node = stack.pop()
            if node is None or node in boundary or _TAG in node.metadata:
                continue
            node.metadata[_TAG] = unit
            stack.extend(next_node for next_node, _ in node.next_functions)

    def _current_unit_and_phase(self):
        if self._running:
            return self._running[-1], ("recompute" if self.phase == "backward" else "forward")
        if self.phase == "backward":
            node = torch._C._current_autograd_node()
            if node is not None:
                return node.metadata.get(_TAG), "backward"
        return None, self.phase

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet in self.flop_registry:
            flops = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
            unit, phase = self._current_unit_and_phase()
            if unit is None:
                self.counted[(UNATTRIBUTED, phase)] += flops
            else:
                self._split(unit, phase, flops, func_packet)
        return super()._count_flops(func_packet, out, args, kwargs)

    def _split(self, unit, phase, flops, op) -> None:
        total_columns = sum(columns for _, columns in unit)
        for component, columns in unit:
            share, remainder = divmod(flops * columns, total_columns)
            if remainder:
                self.problems.append(f"{op} in a fused layer counted {flops} FLOPs, not a multiple "
                                     f"of its {total_columns} output columns")
            self.counted[(component, phase)] += share


class Row(NamedTuple):
    """Counted and analytic FLOPs of one component, per phase."""

    name: str
    counted: Dict[str, int]
    analytic: Dict[str, int]

    @property
    def counted_total(self) -> int:
        return sum(self.counted.values())

    @property
    def analytic_total(self) -> int:
        return sum(self.analytic.values())

    @property
    def exact(self) -> bool:
        return self.counted == self.analytic

    def to_dict(self) -> dict:
        out = {"name": self.name, "counted": self.counted_total, "analytic": self.analytic_total,
               "difference": self.counted_total - self.analytic_total, "exact": self.exact}
        for phase in PHASES:
            out[phase] = {"counted": self.counted[phase], "analytic": self.analytic[phase]}
        return out


def compare_rows(counted: Dict[Tuple[str, str], int], breakdown) -> Tuple[Row, ...]:
    """Counted ``(component, phase) -> FLOPs`` beside the breakdown's, one :class:`Row` per
    component: registered components in table order, then any a leaf declared that is not
    registered, then the unattributed FLOPs; a component neither side has is left out."""
    analytic = {c.name: {"forward": c.forward, "backward": c.backward, "recompute": c.recompute}
                for c in breakdown}
    counted_names = {name for name, _ in counted}
    unknown = tuple(sorted(counted_names - set(component_names()) - {UNATTRIBUTED}))
    return tuple(Row(name, {p: counted.get((name, p), 0) for p in PHASES},
                     analytic.get(name, dict.fromkeys(PHASES, 0)))
                 for name in component_names() + unknown + (UNATTRIBUTED,)
                 if name in analytic or name in counted_names)


class VerifyResult(NamedTuple):
    rows: Tuple[Row, ...]
    flop_counter_total: int  # FlopCounterMode's own global count
    mode: str                # "meta" or "real"
    batch_size: int
    seq_length: int
    seconds: float
    problems: Tuple[str, ...]

    @property
    def counted_total(self) -> int:
        return sum(r.counted_total for r in self.rows)

    @property
    def analytic_total(self) -> int:
        return sum(r.analytic_total for r in self.rows)

    @property
    def mismatches(self) -> List[Row]:
        return [r for r in self.rows if not r.exact]

    @property
    def exact(self) -> bool:
        return (not self.mismatches and not self.problems
                and self.flop_counter_total == self.counted_total)

    def __getitem__(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"exact": self.exact, "mode": self.mode, "batch_size": self.batch_size,
                "seq_length": self.seq_length,
                "components": [r.to_dict() for r in self.rows],
                "counted_total": self.counted_total, "analytic_total": self.analytic_total,
                "flop_counter_total": self.flop_counter_total,
                "mismatches": [r.name for r in self.mismatches],
                "problems": list(self.problems), "seconds": self.seconds}


def choose_meta(model: ModelShape, seq_length: int, batch_size: int = 1,
                recompute: Recompute = NO_RECOMPUTE, pipeline_parallel_size: int = 1) -> bool:
    """True when the shape is too large to run with real tensors in a few seconds on a CPU."""
    import dataclasses
    if model.max_position_embeddings is None:
        model = dataclasses.replace(model, max_position_embeddings=seq_length)
    hardware = flops_breakdown(model, seq_length, batch_size, recompute,
                               pipeline_parallel_size).hardware_flops
    return hardware > REAL_MAX_HARDWARE_FLOPS or parameter_count(model).total > REAL_MAX_PARAMETERS


# Megatron-Core features the reference GPT does not build (tests/megatron_core counts them on
# Megatron-Core's own model): flag -> whether the model uses it
_NOT_BUILT = (
    ("--mlp-type", lambda m: m.moe_residual),  # PR-MoE, the microsoft fork's
    ("--multi-latent-attention", lambda m: m.multi_latent_attention),
    ("--mtp-num-layers", lambda m: m.mtp_num_layers > 0),
    ("--moe-shared-expert-intermediate-size", lambda m: m.shared_expert_ffn_hidden_size > 0),
    ("--moe-ffn-hidden-size", lambda m: m.is_moe and m.expert_ffn_hidden_size != m.ffn_hidden_size),
    # issue 20 item 2 (counted on Megatron-Core's own modules in tests/megatron_core)
    ("--attention-output-gate", lambda m: m.attention_output_gate),
    ("--moe-latent-size", lambda m: m.is_moe and m.moe_latent_size is not None),
)


def check_buildable(model: ModelShape) -> None:
    """ShapeError naming the first flag whose feature the reference GPT does not build."""
    for flag, used in _NOT_BUILT:
        if used(model):
            raise ShapeError(f"{flag}: the reference GPT does not build this feature, so verify "
                             "cannot count it (Megatron-Core's own features are checked against "
                             "Megatron-Core itself in tests/megatron_core)", flag)


def check_real_fits(model: ModelShape, seq_length: int, batch_size: int = 1,
                    recompute: Recompute = NO_RECOMPUTE, pipeline_parallel_size: int = 1) -> None:
    """ValueError, before anything is allocated, when a real-tensor step cannot fit in memory
    (a 176B ``--real`` would otherwise be killed by the kernel, not refused)."""
    check_training_step_fits(model, seq_length, batch_size, "verify --real",
                             "use --meta, which counts the same FLOPs without memory",
                             recompute, pipeline_parallel_size)


def count_flops(model: ModelShape, seq_length: int, batch_size: int = 1,
                recompute: Recompute = NO_RECOMPUTE, pipeline_parallel_size: int = 1,
                meta: Optional[bool] = None, seed: int = 0):
    """Run one forward+backward of the reference GPT; return (counter, mode)."""
    check_buildable(model)
    if meta is None:
        meta = choose_meta(model, seq_length, batch_size, recompute, pipeline_parallel_size)
    if not meta:
        check_real_fits(model, seq_length, batch_size, recompute, pipeline_parallel_size)
    device = torch.device("meta") if meta else torch.device("cpu")
    torch.manual_seed(seed)
    gpt = ReferenceGPT(model, seq_length, recompute, pipeline_parallel_size, dropout=0.0,
                       device=device, dtype=torch.float32)
    if meta:
        input_ids = torch.zeros(batch_size, seq_length, dtype=torch.long, device=device)
    else:
        input_ids = torch.randint(0, model.vocab_size, (batch_size, seq_length), device=device)
    labels = input_ids.roll(-1, dims=1)
    counter = ComponentFlopCounter(gpt)
    try:
        with torch.utils.checkpoint.set_checkpoint_early_stop(False), counter:
            loss = gpt.loss(input_ids, labels)
            counter.phase = "backward"
            loss.backward()
    finally:
        counter.remove_hooks()
    return counter, ("meta" if meta else "real")


def verify(model: ModelShape, seq_length: int, batch_size: int = 1,
           recompute: Recompute = NO_RECOMPUTE, pipeline_parallel_size: int = 1,
           meta: Optional[bool] = None) -> VerifyResult:
    """Counted vs analytic FLOPs of one training step, per component and phase."""
    start = time.perf_counter()
    counter, mode = count_flops(model, seq_length, batch_size, recompute, pipeline_parallel_size, meta)
    breakdown = flops_breakdown(model, seq_length, batch_size, recompute, pipeline_parallel_size,
                                causal=False)
    rows = compare_rows(counter.counted, breakdown)
    return VerifyResult(rows, counter.get_total_flops(), mode, batch_size, seq_length,
                        time.perf_counter() - start, tuple(dict.fromkeys(counter.problems)))
