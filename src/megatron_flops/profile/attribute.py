"""Every matmul of the profiled iterations filed under a component, the rest by category.

**Which ops.**  The FLOP-carrying ops are the innermost matmul ops (``aten::mm``, ``addmm``,
``bmm``, ``baddbmm``, ``_scaled_mm``: what ``aten::linear`` and ``aten::matmul`` call, in
forward and backward) and the fused attention kernels (``aten::_scaled_dot_product_*``,
forward and ``_backward``).  Their FLOPs are read from the recorded operand shapes
(``record_shapes=True``): ``2·m·k·n`` per product; a fused attention call is its two
products, Q·Kᵀ and attention·V, and its backward twice that (our convention, the same as
for every matmul; the flash kernels' internal recompute of Q·Kᵀ is not counted).

**Which pass.**  An op inside an ``autograd::engine::evaluate_function: XBackward0`` span is
backward work — unless it recorded its own autograd ``Sequence number`` (it built a graph
node: a forward op re-run inside backward) or sits in a component scope opened inside that
span: then it is the *recomputed* forward, reported on its own rows.

**Which component** (the first rule that decides, reported per row):

1. ``scope``: a ``record_function`` span named ``megatron_flops:<component>/<columns>+…``
   around the op (the demo and :mod:`.scopes` emit them, one per leaf module; a fused
   matmul names every component it carries with its output columns, and its FLOPs and time
   are split in that ratio);
2. ``scope via autograd``: a backward op takes the component of the forward op whose
   ``Sequence number`` its ``evaluate_function`` span carries;
3. ``shape``: the forward operand shapes matched against the model's matmuls
   (``[T × h]·[h × (n+2g)·d]`` is the fused QKV, ``B·n × [s × d]·[d × s]`` the scores, …);
   a shape that several components share is filed under the first and listed as ambiguous;
4. otherwise the op stays ``unattributed`` (its time and FLOPs still shown).

**Time.**  On a CPU trace an op's time is its span; on a GPU trace, the kernels it launched
(runtime ``correlation`` ids).  The rest of each iteration, on the host thread that ran it
(CPU) or on the device timeline (GPU): other ops by kind (norms, softmax and loss,
optimizer, elementwise and the rest), communication (NCCL / gloo / c10d), host time between
ops (Python, framework, idle), and for a pipeline run the expected bubble out of the idle
time.  Parts and rest add up to the iteration's measured span exactly (the profiler's own
overhead is inside the spans).
"""

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import UsageError
from ..flops import COMPONENTS
from ..planning import iteration_breakdown
from ..shapes import ModelShape, RunShape
from .trace import Event, Step, Trace

SCOPE_PREFIX = "megatron_flops:"
NORMS_SCOPE = SCOPE_PREFIX + "norms"
BACKWARD_PREFIX = "autograd::engine::evaluate_function:"
# the spans torch.compile's code runs in (Dynamo's frame, Inductor's graph call, AOTAutograd's
# forward and backward functions): inside them no module scope survives (Dynamo drops
# record_function) and backward ops carry no per-op autograd link
COMPILED_SPANS = ("Torch-Compiled Region", "## Call CompiledFxGraph", "CompiledFunction")
# the row for matmuls of compiled code that no scope names: not split by shape, which would
# misattribute backward products (a weight gradient's shape is often another layer's)
COMPILED = "compiled (no scope)"
MATMUL_OPS = {"aten::mm": 0, "aten::addmm": 1, "aten::bmm": 0, "aten::baddbmm": 1,
              "aten::_scaled_mm": 0}  # name -> index of the first product operand
ATTENTION_OP = re.compile(r"^aten::_scaled_dot_product_(?!attention_math)\w*attention\w*$")
COMMUNICATION = re.compile(r"nccl|gloo|c10d|all_?reduce|all_?gather|reduce_?scatter|"
                           r"broadcast|all_?to_?all|record_param_comms|barrier", re.I)
NORM = re.compile(r"(layer|rms|group|batch)_?norm", re.I)
SOFTMAX = re.compile(r"softmax|cross_entropy|nll_?loss", re.I)
OPTIMIZER = re.compile(r"^Optimizer\.|_foreach_|adam|clip_grad|fused_sgd", re.I)

CATEGORIES = ("norms", "softmax and loss", "optimizer", "elementwise and other ops",
              "communication", "host (python, framework, between ops)", "idle (device)",
              "pipeline bubble")
MODEL, RECOMPUTE = "model", "recompute"

Parts = Tuple[Tuple[str, float], ...]  # ((component, weight), ...): weights sum to 1


# ---- one op -----------------------------------------------------------------------------

def is_flop_op(event: Event) -> bool:
    return event.category in ("cpu_op", "") and (event.name in MATMUL_OPS
                                                 or bool(ATTENTION_OP.match(event.name)))


def op_flops(event: Event) -> Tuple[int, int]:
    """(FLOPs, products) read from the recorded shapes; (0, 0) when they were not recorded.

    A fused attention op's FLOPs are its two products (scores, attention·V) ×2 if backward.
    """
    dims = event.args.get("Input Dims") or []
    try:
        if event.name in MATMUL_OPS:
            first = MATMUL_OPS[event.name]
            a, b = dims[first], dims[first + 1]
            batch = a[0] if len(a) == 3 else 1
            return 2 * batch * a[-2] * a[-1] * b[-1], 1
        backward = event.name.endswith("_backward")
        q, k, v = dims[1:4] if backward else dims[0:3]
        batch_heads = q[0] * q[1]
        flops = 2 * batch_heads * q[2] * k[2] * (q[3] + v[3])
        return (2 * flops if backward else flops), 2
    except (IndexError, TypeError):
        return 0, 0


def parse_scope(name: str) -> Optional[Parts]:
    """``megatron_flops:query/512+key_value/256`` -> ((query, 2/3), (key_value, 1/3))."""
    if not name.startswith(SCOPE_PREFIX) or name == NORMS_SCOPE:
        return None
    parts = []
    for item in name[len(SCOPE_PREFIX):].split("+"):
        component, _, columns = item.partition("/")
        if component not in COMPONENTS:
            return None
        parts.append((component, float(columns) if columns else 1.0))
    total = sum(w for _, w in parts)
    return tuple((c, w / total) for c, w in parts)


def scope_name(parts: Sequence[Tuple[str, int]]) -> str:
    """The scope name of a module carrying ``((component, output columns), ...)``."""
    if len(parts) == 1:
        return SCOPE_PREFIX + parts[0][0]
    return SCOPE_PREFIX + "+".join(f"{c}/{columns}" for c, columns in parts)


def innermost_scope(event: Event, stop: Optional[Event] = None) -> Optional[Parts]:
    for node in event.ancestors():
        if node is stop:
            return None
        parts = parse_scope(node.name)
        if parts is not None:
            return parts
    return None


def in_compiled_code(event: Event) -> bool:
    return any(node.name.startswith(COMPILED_SPANS) for node in event.ancestors())


def backward_span(event: Event) -> Optional[Event]:
    for node in event.ancestors():
        if node.name.startswith(BACKWARD_PREFIX):
            return node
    return None


# ---- shapes -----------------------------------------------------------------------------

class ShapeRule:
    """The model's matmuls by operand shape, for ops that no scope names."""

    def __init__(self, model: ModelShape, run: RunShape):
        h, n, g, d = (model.hidden_size, model.num_attention_heads, model.num_query_groups,
                      model.kv_channels)
        f, V, s = model.ffn_hidden_size, model.vocab_size, run.seq_length
        self.tokens = run.micro_batch_size * run.seq_length
        table: Dict[Tuple[int, int], List[Tuple[str, Parts]]] = defaultdict(list)

        def add(pair, label, parts):
            total = sum(w for _, w in parts)
            table[pair].append((label, tuple((c, w / total) for c, w in parts)))

        add((h, (n + 2 * g) * d), "dense", (("query", n * d), ("key_value", 2 * g * d)))
        add((n * d, h), "dense", (("attention_output", 1),))
        experts = {model.experts_in_layer(i) for i in range(model.num_layers)}
        for prefix, present in (("mlp", 1 in experts), ("expert", any(e > 1 for e in experts))):
            if not present:
                continue
            label = "dense" if prefix == "mlp" else "expert"
            if model.glu:
                add((h, 2 * f), label, ((f"{prefix}_up", 1), (f"{prefix}_gate", 1)))
                add((h, f), label, ((f"{prefix}_up", 1), (f"{prefix}_gate", 1)))
            else:
                add((h, f), label, ((f"{prefix}_up", 1),))
            add((f, h), label, ((f"{prefix}_down", 1),))
        for e in sorted(e for e in experts if e > 1):
            add((h, e), "dense", (("moe_router", 1),))
        add((h, V), "dense", (("logits", 1),))
        # separate Q, K, V projections (Megatron fuses them): only where no other matmul
        # has their shape (with n·d = h the Q projection looks like the output projection)
        for pair, component in (((h, n * d), "query"), ((h, 2 * g * d), "key_value"),
                                ((h, g * d), "key_value")):
            if pair not in table:
                add(pair, "dense", ((component, 1),))
        self.table = dict(table)
        self.scores = (s, d, s)            # (m, k, n) of one head's Q·Kᵀ
        self.over_values = (s, s, d)       # one head's attention·V

    def classify(self, event: Event, backward: bool = False) -> Tuple[Optional[Parts], List[str]]:
        """(parts or None, the other candidates' names when ambiguous)."""
        if ATTENTION_OP.match(event.name):
            return (("attention_scores", 0.5), ("attention_over_values", 0.5)), []
        dims = event.args.get("Input Dims") or []
        first = MATMUL_OPS.get(event.name, 0)
        try:
            a, b = dims[first], dims[first + 1]
            m, k, n = a[-2], a[-1], b[-1]
        except (IndexError, TypeError):
            return None, []
        if len(a) == 3:  # batched: the attention core
            found = []
            if (m, k, n) == self.scores:
                found.append((("attention_scores", 1.0),))
            if (m, k, n) == self.over_values:
                found.append((("attention_over_values", 1.0),))
            if backward and found:  # unlinked backward: both products have these shapes
                return (("attention_scores", 0.5), ("attention_over_values", 0.5)), []
            return (found[0], [label(p) for p in found[1:]]) if found else (None, [])
        pairs = [(n, k), (n, m)] if backward else [(k, n)]
        candidates = [c for pair in pairs for c in self.table.get(pair, [])]
        if len({parts for _, parts in candidates}) > 1 and not backward:
            # dense MLP or expert: a dense layer's matmul sees every token of a micro batch,
            # an expert only those routed to it (all of them, rarely: then it stays ambiguous)
            experts = [c for c in candidates if c[0] == "expert"]
            if m != self.tokens and experts:
                candidates = experts
            else:
                dense = [c for c in candidates if c[0] == "dense"]
                candidates = dense + [c for c in candidates if c not in dense]
        if not candidates:
            return None, []
        distinct = []
        for _, parts in candidates:
            if parts not in distinct:
                distinct.append(parts)
        return distinct[0], [label(p) for p in distinct[1:]]


def label(parts: Parts) -> str:
    return "+".join(c for c, _ in parts)


# ---- the attribution --------------------------------------------------------------------

@dataclass
class MatmulCall:
    event: Event
    phase: str                 # forward, backward, recompute
    parts: Optional[Parts]
    rule: str                  # scope, scope via autograd, shape, unattributed
    flops: int                 # from the trace's shapes
    seconds: float
    ambiguous_with: List[str] = field(default_factory=list)


@dataclass
class Row:
    component: str             # a component name, or "unattributed"
    kind: str                  # model (forward + backward) or recompute
    calls: int = 0
    trace_flops: float = 0.0
    seconds: float = 0.0
    forward_seconds: float = 0.0
    backward_seconds: float = 0.0
    flops: float = 0.0         # ours: from flops_breakdown
    rules: Counter = field(default_factory=Counter)

    @property
    def name(self) -> str:
        return self.component if self.kind == MODEL else f"{self.component} (recompute)"


@dataclass
class Profile:
    trace_path: str
    steps: List[int]
    iteration_seconds: float            # sum over the profiled iterations
    rows: List[Row]
    categories: Dict[str, float]        # seconds over the profiled iterations
    peak_tflops: Optional[float]
    peak_source: str
    world_size: int
    device: str                         # "cpu" (host spans) or "gpu" (kernels)
    ambiguous: List[str]
    unattributed: List[str]
    model_flops: float                  # ours, this rank, the profiled iterations
    hardware_flops: float

    @property
    def matmul_seconds(self) -> float:
        return sum(r.seconds for r in self.rows)

    @property
    def accounted_seconds(self) -> float:
        return self.matmul_seconds + sum(self.categories.values())

    @property
    def mfu(self) -> Optional[float]:
        if not self.peak_tflops or not self.iteration_seconds:
            return None
        return self.model_flops / (self.iteration_seconds * self.peak_tflops * 1e12)

    @property
    def hfu(self) -> Optional[float]:
        if not self.peak_tflops or not self.iteration_seconds:
            return None
        return self.hardware_flops / (self.iteration_seconds * self.peak_tflops * 1e12)

    def tflops(self, row: Row) -> Optional[float]:
        return row.flops / row.seconds / 1e12 if row.seconds > 0 and row.flops else None

    def waterfall(self) -> List[Tuple[str, float]]:
        """(name, fraction of peak lost) from 100 % down to MFU: each model row costs its
        time beyond what its FLOPs need at peak; recompute rows and categories all their
        time.  The fractions add up to 1 − MFU."""
        if self.mfu is None:
            return []
        total, peak = self.iteration_seconds, self.peak_tflops * 1e12
        steps = []
        for row in self.rows:
            ideal = row.flops / peak if row.kind == MODEL else 0.0
            steps.append((row.name, (row.seconds - ideal) / total))
        steps += [(name, seconds / total) for name, seconds in self.categories.items() if seconds]
        return steps


def attribute(trace: Trace, model: ModelShape, run: RunShape, steps: Optional[Sequence[int]] = None,
              peak_tflops: Optional[float] = None, peak_source: str = "") -> Profile:
    """Join ``trace`` (one rank's) with the breakdown of ``model`` and ``run``."""
    chosen = [s for s in trace.steps if steps is None or s.number in steps]
    if not chosen:
        raise UsageError(f"--steps: the trace holds ProfilerStep "
                         f"{', '.join(str(s.number) for s in trace.steps)}")
    gpu = bool(trace.kernels)
    flop_ops = [e for e in trace.events if is_flop_op(e)
                and not any(is_flop_op(a) for a in e.ancestors())]
    forward_by_sequence: Dict[int, List[Event]] = defaultdict(list)
    for op in flop_ops:
        if "Sequence number" in op.args:
            forward_by_sequence[op.args["Sequence number"]].append(op)
    kernel_seconds = _kernel_seconds_by_op(trace, set(flop_ops)) if gpu else {}
    shapes = ShapeRule(model, run)
    calls: List[MatmulCall] = []
    for step in chosen:
        for op in flop_ops:
            if step.ts <= op.ts < step.end:
                seconds = kernel_seconds.get(id(op), 0.0) if gpu else op.dur * 1e-6
                calls.append(_classify(op, seconds, forward_by_sequence, shapes))

    rows = _rows(calls, model, run, len(chosen))
    categories = (_device_categories(trace, chosen, flop_ops) if gpu
                  else _host_categories(chosen, set(map(id, flop_ops))))
    iteration_seconds = sum(s.dur for s in chosen) * 1e-6
    _pipeline_bubble(categories, run, iteration_seconds)
    breakdown = iteration_breakdown(model, run)
    share = len(chosen) / run.world_size
    ambiguous = sorted({f"{c.event.name} {c.event.args.get('Input Dims')}: filed under "
                        f"{label(c.parts)}, also matches {', '.join(c.ambiguous_with)}"
                        for c in calls if c.ambiguous_with})
    unattributed = sorted({f"{c.event.name} {c.event.args.get('Input Dims')} ({c.phase})"
                           for c in calls if c.parts is None})
    return Profile(trace.path, [s.number for s in chosen], iteration_seconds, rows,
                   categories, peak_tflops, peak_source, run.world_size,
                   "gpu" if gpu else "cpu", ambiguous, unattributed,
                   breakdown.model_flops * share, breakdown.hardware_flops * share)


def _scope_or_compiled(event: Event, via: str = ""):
    """``(parts, rule)`` from the first two rules, read on ``event``: an enclosing scope, else
    compiled code (one row); None when neither decides."""
    parts = innermost_scope(event)
    if parts is not None:
        return parts, "scope" + via
    if in_compiled_code(event):
        return ((COMPILED, 1.0),), "compiled"
    return None


def _classify(op: Event, seconds: float, forward_by_sequence, shapes: ShapeRule) -> MatmulCall:
    flops, _ = op_flops(op)
    span = backward_span(op)
    if span is not None and ("Sequence number" in op.args or innermost_scope(op, stop=span)):
        phase = "recompute"
    elif span is not None:
        phase = "backward"
    else:
        phase = "forward"
    if phase != "backward":
        found = _scope_or_compiled(op)
        if found is not None:
            return MatmulCall(op, phase, *found, flops, seconds)
        parts, others = shapes.classify(op)
        return MatmulCall(op, phase, parts, "shape" if parts else "unattributed", flops,
                          seconds, others)
    forward = _linked_forward(span, op, forward_by_sequence)
    if forward is not None:
        found = _scope_or_compiled(forward, " via autograd")
        if found is not None:
            return MatmulCall(op, phase, *found, flops, seconds)
        parts, others = shapes.classify(forward)
        if parts is not None:
            return MatmulCall(op, phase, parts, "shape via autograd", flops, seconds, others)
    if in_compiled_code(op):
        return MatmulCall(op, phase, ((COMPILED, 1.0),), "compiled", flops, seconds)
    parts, others = shapes.classify(op, backward=True)
    return MatmulCall(op, phase, parts, "shape" if parts else "unattributed", flops, seconds,
                      others)


def _linked_forward(span: Event, op: Event, forward_by_sequence) -> Optional[Event]:
    candidates = [f for f in forward_by_sequence.get(span.args.get("Sequence number"), ())
                  if f.ts < op.ts and backward_span(f) is None]
    return candidates[-1] if candidates else None


def _rows(calls: List[MatmulCall], model: ModelShape, run: RunShape, iterations: int) -> List[Row]:
    breakdown = iteration_breakdown(model, run)
    share = iterations / run.world_size
    rows: Dict[Tuple[str, str], Row] = {}
    for component in breakdown:
        rows[(component.name, MODEL)] = Row(component.name, MODEL,
                                            flops=component.model_flops * share)
    for component in breakdown:
        if component.recompute:
            rows[(component.name, RECOMPUTE)] = Row(component.name, RECOMPUTE,
                                                    flops=component.recompute * share)
    for call in calls:
        kind = RECOMPUTE if call.phase == "recompute" else MODEL
        for component, weight in call.parts or (("unattributed", 1.0),):
            row = rows.get((component, kind))
            if row is None:
                row = rows[(component, kind)] = Row(component, kind)
            row.calls += 1  # a fused call counts once for each component it carries
            row.trace_flops += weight * call.flops
            row.seconds += weight * call.seconds
            if call.phase == "backward":
                row.backward_seconds += weight * call.seconds
            else:
                row.forward_seconds += weight * call.seconds
            row.rules[call.rule] += 1
    return list(rows.values())


# ---- the rest of the iteration ----------------------------------------------------------

def _category(event: Event, inherited: Optional[str]) -> Tuple[str, Optional[str]]:
    """(category of the event's own time, what its children inherit)."""
    name = event.name
    if inherited in ("communication", "optimizer"):
        return inherited, inherited
    if COMMUNICATION.search(name):
        return "communication", "communication"
    if OPTIMIZER.search(name):
        return "optimizer", "optimizer"
    if name == NORMS_SCOPE or NORM.search(name):
        return "norms", "norms"
    if SOFTMAX.search(name):
        return "softmax and loss", "softmax and loss"
    if inherited is not None:
        return inherited, inherited
    if name.startswith("aten::") or event.category == "kernel":
        return "elementwise and other ops", None
    return "host (python, framework, between ops)", None


def _host_categories(steps: Sequence[Step], flop_op_ids) -> Dict[str, float]:
    """The step thread's time outside the matmul ops, by category (seconds)."""
    categories = dict.fromkeys(CATEGORIES, 0.0)
    for step in steps:
        # depth first, in the order of the children (the sums come out the same, bit for bit,
        # as a recursive walk's), with an explicit stack: no nesting depth is too deep
        pending = [(step.event, None)]
        while pending:
            event, inherited = pending.pop()
            if id(event) in flop_op_ids:
                continue
            own, passed = _category(event, inherited)
            categories[own] += event.self_time * 1e-6
            pending.extend((child, passed) for child in reversed(event.children))
    return categories


def _kernel_seconds_by_op(trace: Trace, flop_ops) -> Dict[int, float]:
    """GPU time of each matmul op: its kernels, found through the runtime launch events."""
    owner = _kernel_owners(trace)
    seconds: Dict[int, float] = defaultdict(float)
    for kernel in trace.kernels:
        op = owner.get(kernel.args.get("correlation"))
        while op is not None and op not in flop_ops:
            op = op.parent
        if op is not None:
            seconds[id(op)] += kernel.dur * 1e-6
    return seconds


def _kernel_owners(trace: Trace) -> Dict[object, Event]:
    """correlation id -> the host op that launched it (the launch event's parent)."""
    owners = {}
    for event in trace.events:
        if event.category in ("cuda_runtime", "cuda_driver", "hip_runtime") \
                and "correlation" in event.args and event.parent is not None:
            owners[event.args["correlation"]] = event.parent
    return owners


def _device_categories(trace: Trace, steps: Sequence[Step], flop_ops) -> Dict[str, float]:
    """The device timeline of each step, cut at every kernel start and end: a moment belongs
    to a matmul kernel if one runs (already counted per component), else to the other
    compute kernels running, else to communication, else it is idle."""
    owner = _kernel_owners(trace)
    flop_set = set(flop_ops)
    categories = dict.fromkeys(CATEGORIES, 0.0)
    labelled = []
    for kernel in trace.kernels:
        op = owner.get(kernel.args.get("correlation"))
        chain = [op] + list(op.ancestors()) if op is not None else []
        if any(node in flop_set for node in chain):
            labelled.append((kernel, "matmul"))
            continue
        category = "communication" if COMMUNICATION.search(kernel.name) else None
        if category is None:
            inherited = None
            for node in reversed(chain):
                _, inherited = _category(node, inherited)
            category = inherited or "elementwise and other ops"
        labelled.append((kernel, category))
    for step in steps:
        cuts = {step.ts, step.end}
        inside = [(max(k.ts, step.ts), min(k.end, step.end), c) for k, c in labelled
                  if k.end > step.ts and k.ts < step.end]
        for start, end, _ in inside:
            cuts.update((start, end))
        points = sorted(cuts)
        for left, right in zip(points, points[1:]):
            active = [c for start, end, c in inside if start <= left and end >= right]
            width = (right - left) * 1e-6
            if "matmul" in active:
                continue
            compute = [c for c in active if c != "communication"]
            if compute:
                for c in compute:
                    categories[c] += width / len(compute)
            elif active:
                categories["communication"] += width
            else:
                categories["idle (device)"] += width
    return categories


def _pipeline_bubble(categories: Dict[str, float], run: RunShape, iteration_seconds: float) -> None:
    """For a pipeline run, the expected bubble (p − 1)/(m + p − 1) of the iteration, taken
    out of the idle / host time (it cannot be told apart from other waiting in one trace)."""
    p = run.pipeline_model_parallel_size
    if p <= 1:
        return
    micro = run.global_batch_size // (run.micro_batch_size * run.data_parallel_size)
    expected = (p - 1) / (micro + p - 1) * iteration_seconds
    for name in ("idle (device)", "host (python, framework, between ops)", "communication"):
        taken = min(expected, categories[name])
        categories[name] -= taken
        categories["pipeline bubble"] += taken
        expected -= taken
