"""Counting mode: the matmul FLOPs the user's own model executes in one training step.

``count_step(step, ...)`` runs ``step()`` (one whole training iteration of the real model:
forward, backward, activation recomputation as the fork does it, optimizer) once under
:class:`ModelFlopCounter` — a :class:`torch.utils.flop_counter.FlopCounterMode` inside
``torch.utils.checkpoint.set_checkpoint_early_stop(False)`` — and compares what it counted,
component by component and phase by phase, with :func:`megatron_flops.flops.flops_breakdown`
for the same shape.  ``step()``'s return value is passed back: training continues.

Attribution reuses the verifier's technique (:mod:`megatron_flops.reference.verify`): a
counted op belongs to the innermost running module that the framework's *name table* maps
to a component; in the backward pass it belongs to the autograd node being executed, which
that module's forward tagged.  Differences from the reference GPT, which the real forks need:

* **names, not classes.**  A module's unit is found from its qualified name (what
  ``model.named_modules()`` calls it, with any wrapper prefix such as DeepSpeed's ``module.``)
  by the framework strategy's rules (:mod:`megatron_flops.megatron.module_names`):
  ``self_attention.query_key_value``, ``mlp.dense_h_to_4h``, ``deepspeed_moe.gate``, … .
  Modules are seen through global module hooks, so the model never has to be handed over.
* **by operator inside a module.**  The forks compute QKᵀ (``baddbmm``) and A·V (``bmm``)
  inline in the attention module's forward (bigscience) or in ``core_attention``
  (microsoft); such a rule maps operator names to components, in the backward pass through
  the name of the autograd node (``BaddbmmBackward0`` -> ``baddbmm``).
* **phases from the autograd engine.**  An op with no autograd node running is forward; one
  run while a node runs and a module's forward is running is recompute (the forks'
  reentrant ``checkpoint`` re-runs the modules inside its backward); otherwise backward.
  Nodes are tagged whenever a module's forward ends, recompute included, because a
  reentrant checkpoint back-propagates through the graph its recompute built.
* **the logits** are a function call (``parallel_lm_logits``, the pipeline model's tied
  ``forward_fn``), not a module call: an otherwise unattributed matmul with an operand
  dimension equal to the padded vocabulary is filed under ``logits``.
* **what could not be counted** is listed, not hidden: dispatched operators missing from
  FlopCounterMode's registry whose name looks like a matmul or attention kernel (e.g.
  ``aten._scaled_dot_product_flash_attention_for_cpu``, ``flash_attn`` / Transformer
  Engine ops), and custom autograd functions with such names that bypass the dispatcher
  (apex ``FusedDenseFunc``, ``FlashAttnFunc``), found on the autograd graph, with call counts
  — unless their backward ran counted matmuls (then they dispatch to torch and are counted).

Every FLOP FlopCounterMode counts is attributed to a component or to ``unattributed``, so
the table's sum equals FlopCounterMode's own total.
"""

import re
import time
from collections import Counter
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..flops import flops_breakdown
from ..shapes import ModelShape, Recompute
from ..reference.verify import (_TAG, PHASES, UNATTRIBUTED, ComponentFlopCounter, Row, _grad_fns,
                                compare_rows)
from ..report import table
from .module_names import NameRule, Unit

_SEEN = "megatron_flops_seen"
_BACKWARD_SUFFIX = re.compile(r"Backward\d*$")
# name pieces that make an op or autograd function look like a matmul / attention kernel
_MATMUL_WORDS = frozenset(("mm", "bmm", "gemm", "matmul", "linear", "attn", "attention", "conv",
                           "einsum", "flash", "sdpa", "fmha", "mha"))
# a custom autograd function named "...Dense..." is a fused linear (apex FusedDenseFunc); a
# dispatched aten op with "dense" is not (_local_scalar_dense, embedding_dense_backward)
_FUNCTION_WORDS = _MATMUL_WORDS | {"dense"}


def _compile(pattern: str):
    body = r"\.".join("[^.]+" if part == "*" else re.escape(part) for part in pattern.split("."))
    return re.compile(rf"(?:^|.*\.){body}$")


def _looks_like_matmul(name: str, words=_MATMUL_WORDS) -> bool:
    """``aten._scaled_dot_product_flash_attention_for_cpu``, ``FusedDenseFuncBackward``: yes."""
    pieces = re.split(r"[._]+|(?<=[a-z0-9])(?=[A-Z])", name)
    return any(p.lower() in words or p.lower().endswith("mm") for p in pieces if p)


# ---- the counter ----------------------------------------------------------------------

class ModelFlopCounter(ComponentFlopCounter):
    """FlopCounterMode attributing every counted FLOP of any model run inside it by name.

    ``counted[(component, phase)]``; ``uncountable[name]`` = calls of kernels it could not
    count; ``problems``: attribution trouble (reported, never raised).
    """

    def __init__(self, shape: ModelShape, rules: Sequence[NameRule]):
        super().__init__(units={})
        self.shape = shape
        self.rules = [(_compile(rule.pattern), rule.unit(shape)) for rule in rules]
        self.uncountable: Counter = Counter()
        self.custom_functions: Counter = Counter()  # backward node name -> forward calls
        self._counting_nodes = set()  # backward node names during which a matmul was counted
        self._names: Dict[torch.nn.Module, str] = {}
        self._module_units: Dict[torch.nn.Module, object] = {}
        self._modules: List[Tuple[torch.nn.Module, object]] = []  # every module running
        self._hook_handles = []
        self._pooled: Counter = Counter()  # (fused unit, phase) -> FLOPs, split on exit

    # -- module tracking (global hooks: the model need not be handed over)

    def __enter__(self):
        hooks = torch.nn.modules.module
        self._hook_handles = [hooks.register_module_forward_pre_hook(self._pre_hook),
                              hooks.register_module_forward_hook(self._post_hook)]
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._settle()
            for handle in self._hook_handles:
                handle.remove()
            self._hook_handles = []
            self._names.clear()
            self._module_units.clear()

    def _unit_of(self, module):
        try:
            return self._module_units[module]
        except KeyError:
            pass
        if module not in self._names:
            root = self._modules[0][0] if self._modules else module
            for candidate in (root, module):
                for name, sub in candidate.named_modules():
                    self._names.setdefault(sub, name)
                if module in self._names:
                    break
        name = self._names.get(module, "")
        unit = next((u for regex, u in self.rules if name and regex.match(name)), None)
        self._module_units[module] = unit
        return unit

    def _pre_hook(self, module, args):
        try:
            self._modules.append((module, self._unit_of(module)))
        except Exception as error:
            self.problems.append(f"module hook: {type(error).__name__}: {error}")
            self._modules.append((module, None))

    def _post_hook(self, module, args, output):
        try:
            while self._modules:
                running, unit = self._modules.pop()
                if running is module:
                    break
            else:
                unit = None
            self._scan_graph(unit, args, output)
        except Exception as error:
            self.problems.append(f"module hook: {type(error).__name__}: {error}")

    def _scan_graph(self, unit, args, output) -> None:
        """Tag the untagged autograd nodes this forward created with ``unit`` (its operator's
        entry for an operator-keyed unit), and note custom functions that look like kernels."""
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        boundary = set(_grad_fns(a for a in args if isinstance(a, torch.Tensor)))
        stack = [node for node in _grad_fns(outputs) if node not in boundary]
        visited = set()
        while stack:
            node = stack.pop()
            if node is None or node in boundary or node in visited:
                continue
            visited.add(node)
            metadata = node.metadata
            if _SEEN not in metadata:
                metadata[_SEEN] = True
                name = node.name()
                if isinstance(node, torch.autograd.function.BackwardCFunction) \
                        and _looks_like_matmul(name, _FUNCTION_WORDS):
                    self.custom_functions[name] += 1
            if unit is not None and _TAG not in metadata:
                if isinstance(unit, dict):
                    resolved = unit.get(_BACKWARD_SUFFIX.sub("", node.name()).lower())
                    if resolved is not None:
                        metadata[_TAG] = resolved
                else:
                    metadata[_TAG] = unit
            stack.extend(next_node for next_node, _ in node.next_functions)

    def uncountable_kernels(self) -> Dict[str, int]:
        """Name -> calls: dispatched matmul-like ops FlopCounterMode has no formula for, and
        custom autograd functions with matmul-like names whose backward ran no counted matmul
        (an extension kernel the dispatcher never sees; the microsoft fork's
        ``LinearWithGradAccumulationAndAsyncCommunication`` calls torch matmuls, so is not
        listed)."""
        out = dict(self.uncountable)
        for name, calls in self.custom_functions.items():
            if name not in self._counting_nodes:
                out[f"{_BACKWARD_SUFFIX.sub('', name)} (custom autograd function, not "
                    "dispatched)"] = calls
        return out

    # -- attribution

    def _split(self, unit, phase, flops, op) -> None:
        """A fused unit's FLOPs are pooled per phase and split by output columns once, at the
        end: a module whose calls are shares of one count (Megatron-Core's ``output_layer``,
        1 logits + m MTP-logits calls of the same shape) need not divide per call."""
        if len(unit) == 1:
            super()._split(unit, phase, flops, op)
        else:
            self._pooled[(unit, phase)] += flops

    def _settle(self) -> None:
        pooled, self._pooled = self._pooled, Counter()
        for (unit, phase), flops in pooled.items():
            names = "+".join(component for component, _ in unit)
            super()._split(unit, phase, flops, f"the fused {names} module")

    def _attribute(self, func_packet, args) -> Tuple[Optional[Unit], str]:
        node = torch._C._current_autograd_node()
        if node is None or self._modules:
            phase = "forward" if node is None else "recompute"
            unit = next((u for _, u in reversed(self._modules) if u is not None), None)
            if isinstance(unit, dict):
                unit = unit.get(getattr(func_packet, "__name__", ""))
        else:
            phase, unit = "backward", node.metadata.get(_TAG)
            self._counting_nodes.add(node.name())
        if unit is None and any(isinstance(a, torch.Tensor) and self.shape.vocab_size in a.shape
                                for a in args):
            unit = (("logits", 1),)
        return unit, phase

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet in self.flop_registry:
            try:
                flops = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
                unit, phase = self._attribute(func_packet, args)
                if unit is None:
                    self.counted[(UNATTRIBUTED, phase)] += flops
                else:
                    self._split(unit, phase, flops, func_packet)
            except Exception as error:
                self.problems.append(f"attributing {func_packet}: {type(error).__name__}: {error}")
        else:
            name = str(func_packet)
            if _looks_like_matmul(name):
                self.uncountable[f"{name} (dispatched, not in FlopCounterMode's registry)"] += 1
        return FlopCounterMode._count_flops(self, func_packet, out, args, kwargs)


# ---- the result ----------------------------------------------------------------------

class CountResult(NamedTuple):
    """Counted vs formula FLOPs of one training step on this rank."""

    rows: Tuple[Row, ...]            # Row.analytic holds the formula's figures
    flop_counter_total: int
    uncountable: Tuple[Tuple[str, int], ...]   # (operator, calls)
    problems: Tuple[str, ...]
    seconds: float                   # the counted step, counting included
    batch_size: int
    seq_length: int
    recompute: Recompute
    comparable: Optional[str]        # None, or why the formula is not this rank's count

    @property
    def counted_total(self) -> int:
        return sum(r.counted_total for r in self.rows)

    @property
    def formula_total(self) -> int:
        return sum(r.analytic_total for r in self.rows)

    @property
    def unattributed(self) -> int:
        return sum(r.counted_total for r in self.rows if r.name == UNATTRIBUTED)

    def __getitem__(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def mismatches(self, tolerance: float = 0.0) -> List[Row]:
        """Rows with a phase off by more than ``tolerance`` × that phase's formula FLOPs."""
        return [row for row in self.rows
                if any(abs(row.counted[p] - row.analytic[p]) > tolerance * row.analytic[p]
                       for p in PHASES)]

    def passes(self, tolerance: float = 0.0) -> bool:
        return (self.comparable is None and not self.mismatches(tolerance)
                and not self.uncountable and not self.problems
                and self.flop_counter_total == self.counted_total)

    def to_dict(self) -> dict:
        return {"components": [r.to_dict() for r in self.rows],
                "counted_total": self.counted_total, "formula_total": self.formula_total,
                "unattributed": self.unattributed, "flop_counter_total": self.flop_counter_total,
                "uncountable": [{"operator": name, "calls": calls}
                                for name, calls in self.uncountable],
                "problems": list(self.problems), "seconds": self.seconds,
                "batch_size": self.batch_size, "seq_length": self.seq_length,
                "comparable": self.comparable}

    def lines(self, tolerance: float = 0.0) -> List[str]:
        """The table and its verdict, said plainly."""
        rows = []
        for r in self.rows:
            difference = r.counted_total - r.analytic_total
            rows.append([r.name] + [f"{r.counted[p]:,}" for p in PHASES]
                        + [f"{r.counted_total:,}", f"{r.analytic_total:,}", f"{difference:+,}",
                           "MISMATCH" if r in self.mismatches(tolerance) else "ok"])
        header = ["component", "forward", "backward", "recompute", "counted", "formula",
                  "difference", ""]
        out = [f"counted one training step: {self.batch_size} samples × seq {self.seq_length} "
               f"on this rank, recompute {self.recompute.label}, dense attention (full s×s); "
               f"counting took {self.seconds:.2f} s",
               table(rows, header, [False] + [True] * 6 + [False]),
               f"total counted {self.counted_total:,}  formula {self.formula_total:,}  "
               f"(FlopCounterMode total {self.flop_counter_total:,}); unattributed "
               f"{self.unattributed:,}"]
        if self.uncountable:
            out.append("operators FlopCounterMode could not count (their FLOPs are missing above):")
            out += [f"  {name}: {calls} call{'s' if calls != 1 else ''}"
                    for name, calls in self.uncountable]
        else:
            out.append("operators that could not be counted: none")
        out += [f"problem: {p}" for p in self.problems]
        if self.comparable is not None:
            out.append(f"not compared with the formula: {self.comparable}")
        elif self.passes(tolerance):
            out.append("match: every component equals the formula in forward, backward and "
                       "recompute" + (f" (within {tolerance:.3%})" if tolerance else ""))
        else:
            for r in self.mismatches(tolerance):
                differing = ", ".join(f"{p} counted {r.counted[p]:,} formula {r.analytic[p]:,}"
                                      for p in PHASES if r.counted[p] != r.analytic[p])
                out.append(f"MISMATCH {r.name}: {differing}")
        return out


def counted_step(step: Callable[[], object], shape: ModelShape, rules: Sequence[NameRule]):
    """Run ``step()`` once under the counter: ``(counter, seconds, step's return value)``.

    An exception before the step starts (building the counter) means nothing ran; one from
    inside ``step()`` is the step's own and propagates as it would without counting.
    """
    counter = ModelFlopCounter(shape, rules)
    start = time.perf_counter()
    with torch.utils.checkpoint.set_checkpoint_early_stop(False), counter:
        value = step()
    return counter, time.perf_counter() - start, value


def count_result(counter: ModelFlopCounter, seconds: float, shape: ModelShape, seq_length: int,
                 batch_size: int, recompute: Recompute, pipeline_parallel_size: int = 1,
                 tensor_parallel_size: int = 1) -> CountResult:
    """The table of a counted step: counted vs :func:`flops_breakdown` for ``batch_size``
    samples of ``seq_length`` (the samples this rank trained: micro-batch × micro-batches)."""
    comparable = None
    if pipeline_parallel_size * tensor_parallel_size > 1:
        comparable = (f"tensor × pipeline parallel size is {tensor_parallel_size} × "
                      f"{pipeline_parallel_size}: this rank runs part of the model, the formula "
                      "covers all of it")
    breakdown = flops_breakdown(shape, seq_length, batch_size, recompute, pipeline_parallel_size,
                                causal=False)
    return CountResult(compare_rows(counter.counted, breakdown), counter.get_total_flops(),
                       tuple(sorted(counter.uncountable_kernels().items())),
                       tuple(dict.fromkeys(counter.problems)), seconds, batch_size, seq_length,
                       recompute, comparable)


def count_step(step: Callable[[], object], shape: ModelShape, rules: Sequence[NameRule],
               seq_length: int, batch_size: int, recompute: Recompute,
               pipeline_parallel_size: int = 1, tensor_parallel_size: int = 1):
    """Run ``step()`` once under the counter; return ``(CountResult, step's return value)``."""
    counter, seconds, value = counted_step(step, shape, rules)
    return count_result(counter, seconds, shape, seq_length, batch_size, recompute,
                        pipeline_parallel_size, tensor_parallel_size), value
