"""Which pipeline stage runs which layers, and the exact FLOPs of each stage and pipeline rank.

Every tool splits an iteration's FLOPs evenly over the GPUs, but a pipeline's stages differ:
the first holds the embedding (a lookup: no matmul), the last the output layer (logits), the
loss and, in Megatron-Core, the multi-token-prediction heads; uneven first/last stages, an
embedding- or loss-aware split, virtual stages, a ``--pipeline-model-parallel-layout`` and
DeepSpeed's own partitioning all move layers between ranks.  A :class:`PipelineLayout` holds
the real assignment of one framework (built here from its rules, read from its code at a
recorded commit), and :func:`stage_breakdowns` counts each stage exactly: the stages'
breakdowns add up to the iteration's, component by component.

Per GPU: the GPUs of one pipeline rank (``world / PP`` of them: TP × CP × SP × DP) share its
stages' FLOPs evenly, as today's whole-model figure shares the iteration's over the world.
Standard library only.
"""

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import ShapeError
from .flops import Breakdown, flops_breakdown
from .shapes import NO_RECOMPUTE, ModelShape, Recompute

__all__ = [
    "PipelineStage", "PipelineLayout", "RankFlops", "even_layout", "megatron_layout",
    "pattern_layout", "deepspeed_layout", "deepspeed_pipe_specs", "partition_uniform",
    "partition_balanced", "stage_breakdowns", "rank_flops", "pipeline_report",
]


def _size(layers: range) -> int:
    """``len(layers)`` without its ssize_t limit (``--num-layers 10**30`` is counted too)."""
    return max(0, layers.stop - layers.start)


@dataclass(frozen=True)
class PipelineStage:
    """One (virtual) pipeline stage: what it runs, and on which pipeline rank."""

    index: int
    """Position in the model's order (0: the first layers); virtual stage ``v`` of rank ``r``
    is ``v·PP + r`` (Megatron's interleaving)."""
    rank: int
    """The pipeline rank that runs it."""
    layers: range
    """Its transformer layers, 0-based and consecutive."""
    mtp_layers: range = range(0)
    """Its multi-token-prediction layers, numbered from ``num_layers`` on."""
    embedding: bool = False
    """It holds the input embedding (no matmul FLOPs: a lookup)."""
    output_layer: bool = False
    """It holds the output layer and the loss: the logits (and MTP logits) are counted here."""

    @property
    def layer_indices(self) -> Tuple[range, range]:
        return self.layers, self.mtp_layers

    @property
    def num_layers(self) -> int:
        """Transformer and MTP layers of the stage."""
        return _size(self.layers) + _size(self.mtp_layers)

    def label(self) -> str:
        """``E 0-4 mtp×1 L``: embedding, layer range, MTP layers, output layer (``(empty)``)."""
        parts = ["E"] if self.embedding else []
        if self.layers:
            first, last = self.layers[0], self.layers[-1]
            parts.append(str(first) if first == last else f"{first}-{last}")
        if self.mtp_layers:
            parts.append(f"mtp×{_size(self.mtp_layers)}")
        if self.output_layer:
            parts.append("L")
        return " ".join(parts) or "(empty)"


@dataclass(frozen=True)
class PipelineLayout:
    """The stages of a model, in order, and where they come from."""

    stages: Tuple[PipelineStage, ...]
    pipeline_parallel_size: int
    source: str
    """The framework rule that placed them (said in every table)."""

    def rank_stages(self, rank: int) -> Tuple[PipelineStage, ...]:
        return tuple(stage for stage in self.stages if stage.rank == rank)

    @property
    def virtual_stages_per_rank(self) -> int:
        return len(self.stages) // self.pipeline_parallel_size

    def check(self, num_layers: int, mtp_num_layers: int = 0) -> "PipelineLayout":
        """ShapeError unless the stages hold every layer once, in order, one embedding and one
        output layer (a bug in a builder, said as what it is)."""
        position, mtp_position = 0, num_layers
        for stage in self.stages:
            if stage.layers.start != position or stage.mtp_layers.start != mtp_position:
                raise ShapeError(f"pipeline stage {stage.index} does not continue at layer "
                                 f"{position}")
            position, mtp_position = stage.layers.stop, stage.mtp_layers.stop
        if position != num_layers or mtp_position != num_layers + mtp_num_layers:
            raise ShapeError(f"the pipeline stages hold {position} layers, not --num-layers "
                             f"({num_layers})", "--pipeline-model-parallel-size")
        if sum(s.embedding for s in self.stages) != 1 or sum(s.output_layer for s in self.stages) != 1:
            raise ShapeError("a pipeline needs one embedding and one output layer")
        return self


def _consecutive(counts: Sequence[int], pp: int, num_layers: int, mtp_num_layers: int,
                 mtp_stage: int, source: str) -> PipelineLayout:
    """Stages of ``counts`` transformer layers each, in order; MTP on ``mtp_stage``."""
    stages, first = [], 0
    last = len(counts) - 1
    for index, count in enumerate(counts):
        # empty MTP ranges before and after the MTP stage keep the numbering continuous
        mtp_start = num_layers + (mtp_num_layers if index > mtp_stage else 0)
        mtp = range(mtp_start, mtp_start + (mtp_num_layers if index == mtp_stage else 0))
        stages.append(PipelineStage(index, index % pp, range(first, first + count), mtp,
                                    embedding=index == 0, output_layer=index == last))
        first += count
    return PipelineLayout(tuple(stages), pp, source).check(num_layers, mtp_num_layers)


def even_layout(num_layers: int, pipeline_parallel_size: int = 1,
                mtp_num_layers: int = 0) -> PipelineLayout:
    """Megatron's default: ``num_layers / PP`` layers on every rank (PP must divide them)."""
    return megatron_layout(num_layers, pipeline_parallel_size, mtp_num_layers=mtp_num_layers)


def megatron_layout(num_layers: int, pipeline_parallel_size: int = 1, *,
                    first_stage_layers: Optional[int] = None,
                    last_stage_layers: Optional[int] = None,
                    embedding_in_split: bool = False, loss_in_split: bool = False,
                    virtual_stages: Optional[int] = None,
                    mtp_num_layers: int = 0, virtual_flag: str = "--num-layers-per-virtual-"
                    "pipeline-stage") -> PipelineLayout:
    """Megatron-Core's own pipeline split (0.16.1 ``transformer_block.get_num_layers_to_build``,
    ``transformer_layer.get_transformer_layer_offset``).

    ``--decoder-first/last-pipeline-num-layers`` fix the first/last rank's layers and share the
    rest evenly; ``--account-for-embedding/loss-in-pipeline-split`` count the embedding/loss as
    one layer each in an even split (the first/last stage builds one layer fewer); with
    ``virtual_stages`` (``v`` model chunks per rank) each rank's layers are split into ``v``
    chunks, and chunk ``c`` of rank ``r`` is stage ``c·PP + r``: the stages hold consecutive
    layers in that order.  MTP layers sit on the last stage (``mtp_on_this_rank`` without a
    layout), the embedding on the first, the output layer and loss on the last.
    """
    pp = pipeline_parallel_size
    vp = virtual_stages if (virtual_stages and pp > 1) else 1
    uneven = first_stage_layers is not None or last_stage_layers is not None
    if uneven:
        if embedding_in_split or loss_in_split:
            raise ShapeError("--decoder-first/last-pipeline-num-layers cannot be combined with "
                             "--account-for-embedding/loss-in-pipeline-split (Megatron-Core "
                             "refuses it)", "--decoder-first-pipeline-num-layers")
        rest, middle = num_layers, pp
        for fixed in (first_stage_layers, last_stage_layers):
            if fixed is not None:
                rest, middle = rest - fixed, middle - 1
        if rest < 0 or middle < 0 or (middle == 0 and rest) or (middle and rest % middle):
            raise ShapeError(
                f"--num-layers ({num_layers}) minus the --decoder-first/last-pipeline-num-layers "
                f"must divide evenly over the other {max(middle, 0)} pipeline stages",
                "--decoder-first-pipeline-num-layers")
        per_rank = [rest // middle if middle else 0] * pp
        if first_stage_layers is not None:
            per_rank[0] = first_stage_layers
        if last_stage_layers is not None:
            per_rank[-1] = last_stage_layers
    else:
        total = num_layers + int(embedding_in_split) + int(loss_in_split)
        if total % pp:
            raise ShapeError(f"--pipeline-model-parallel-size ({pp}) must divide --num-layers "
                             f"({num_layers}{' + the embedding/loss' if total != num_layers else ''})",
                             "--pipeline-model-parallel-size")
        per_rank = [total // pp] * pp
    for rank, count in enumerate(per_rank):
        if count % vp:
            raise ShapeError(f"pipeline rank {rank}'s {count} layers do not split into {vp} "
                             "virtual stages", virtual_flag)
    counts = [per_rank[rank] // vp for _ in range(vp) for rank in range(pp)]
    if embedding_in_split:
        counts[0] -= 1
    if loss_in_split:
        counts[-1] -= 1
    if min(counts) < 0:
        raise ShapeError("not enough layers for the embedding/loss in the pipeline split",
                         "--pipeline-model-parallel-size")
    kind = ("even" if not uneven else "uneven first/last") + (
        f", {vp} virtual stages per rank" if vp > 1 else "") + (
        ", embedding in the split" if embedding_in_split else "") + (
        ", loss in the split" if loss_in_split else "")
    return _consecutive(counts, pp, num_layers, mtp_num_layers, len(counts) - 1,
                        f"Megatron split ({kind})")


def pattern_layout(stages: Sequence[Sequence[str]], pipeline_parallel_size: int,
                   num_layers: int, mtp_num_layers: int = 0) -> PipelineLayout:
    """``--pipeline-model-parallel-layout`` stages (as :func:`.megatron.features.
    pipeline_layout_stages` returns them, already validated): stage ``i`` on rank ``i % PP``,
    ``t`` the next transformer layer, ``m`` the next MTP layer, ``E`` the embedding, ``L`` the
    output layer and loss (MTP logits included: Megatron-Core computes them in the
    post-process of the stage with the loss)."""
    built, layer, mtp = [], 0, num_layers
    for index, stage in enumerate(stages):
        t, m = stage.count("t"), stage.count("m")
        built.append(PipelineStage(index, index % pipeline_parallel_size, range(layer, layer + t),
                                   range(mtp, mtp + m), "E" in stage, "L" in stage))
        layer, mtp = layer + t, mtp + m
    return PipelineLayout(tuple(built), pipeline_parallel_size,
                          "--pipeline-model-parallel-layout").check(num_layers, mtp_num_layers)


# ---- DeepSpeed's PipelineModule (deepspeed 0.19.8 runtime/pipe/module.py, runtime/utils.py) --

def partition_uniform(num_items: int, num_parts: int) -> List[int]:
    """DeepSpeed's ``partition_uniform``: part boundaries, the first ``num_items % num_parts``
    parts one item longer (each part one item, then empty ones, with fewer items than parts)."""
    if num_items <= num_parts:
        return [min(p, num_items) for p in range(num_parts + 1)]
    chunk, residual = divmod(num_items, num_parts)
    return [p * chunk + min(p, residual) for p in range(num_parts + 1)]


def partition_balanced(weights: Sequence[int], num_parts: int) -> List[int]:
    """DeepSpeed's ``partition_balanced``: the split of ``weights`` into ``num_parts``
    consecutive parts that minimises (largest part − smallest part), by the same dynamic
    programme and the same tie-break (the last split point of equal cost wins), so that the
    boundaries are DeepSpeed's own; uniform when there are no more items than parts."""
    n, m = len(weights), num_parts
    if n <= m:
        return partition_uniform(n, m)
    inf = float("inf")
    prefix = [0.0] * (n + 1)
    for i, w in enumerate(weights):
        prefix[i + 1] = prefix[i] + w
    dp_max = [[inf] * (m + 1) for _ in range(n + 1)]
    dp_min = [[inf] * (m + 1) for _ in range(n + 1)]
    dp_cost = [[inf] * (m + 1) for _ in range(n + 1)]
    position = [[0] * (m + 1) for _ in range(n + 1)]
    dp_max[0][0] = 0
    dp_cost[0][0] = 0
    for i in range(1, n + 1):
        for j in range(1, min(i, m) + 1):
            best_cost, best_max, best_min, best_k = dp_cost[i][j], dp_max[i][j], dp_min[i][j], \
                position[i][j]
            for k in range(i):
                part = prefix[i] - prefix[k]
                max_sum = max(dp_max[k][j - 1], part)
                min_sum = min(dp_min[k][j - 1], part)
                cost = max_sum - min_sum
                if best_cost >= cost:
                    best_cost, best_max, best_min, best_k = cost, max_sum, min_sum, k
            dp_cost[i][j], dp_max[i][j], dp_min[i][j], position[i][j] = \
                best_cost, best_max, best_min, best_k
    parts = [n]
    for j in range(m, 0, -1):
        parts.append(position[parts[-1]][j])
    return parts[::-1]


TRANSFORMER_SPEC = "ParallelTransformerLayerPipe"
EMBEDDING_SPEC = "EmbeddingPipe"
OUTPUT_SPECS = ("EmbeddingPipe", "LMHeadPipe")
# beyond this many (specs² × stages) steps DeepSpeed's own search takes minutes in Python
MAX_PARTITION_STEPS = 20_000_000


def deepspeed_pipe_specs(fork: str, num_layers: int, *, half_precision: bool,
                         untied: bool = False, moe: bool = False,
                         normalization: str = "layernorm") -> Tuple[str, ...]:
    """The layer specs of the fork's ``GPTModelPipe``, by the name DeepSpeed's ``type:``
    partitioning matches (a class's or a function's ``__name__``), in order.

    - bigscience (megatron/model/gpt_model.py at 8387ae17): ``_to_float16``, the tied
      ``EmbeddingPipe``, a transpose lambda, the transformer layers, ``undo``, the final
      ``LayerNorm``, the tied ``EmbeddingPipe`` again (logits), ``float16_to_fp32`` with
      fp16/bf16;
    - microsoft / deepspeedai (at 4efb479d): ``_to_float16``, ``EmbeddingPipe``, the layers,
      ``_calculate_moe_loss`` in an MoE model, ``LayerNorm`` or ``RMSNorm``, ``LMHeadPipe``
      (untied) or the tied ``EmbeddingPipe``, ``float16_to_fp32`` with fp16/bf16.
    """
    tail = ("float16_to_fp32",) if half_precision else ()
    layers = (TRANSFORMER_SPEC,) * num_layers
    if fork == "bigscience":
        return ("_to_float16", EMBEDDING_SPEC, "<lambda>") + layers + (
            "undo", "LayerNorm", EMBEDDING_SPEC) + tail
    norm = "LayerNorm" if normalization == "layernorm" else "RMSNorm"
    return ("_to_float16", EMBEDDING_SPEC) + layers + (
        ("_calculate_moe_loss",) if moe else ()) + (
        norm, "LMHeadPipe" if untied else EMBEDDING_SPEC) + tail


def deepspeed_layout(specs: Sequence[str], pipeline_parallel_size: int,
                     method: str = "type:transformer", flag: str = "--pp-partition-method"
                     ) -> PipelineLayout:
    """DeepSpeed ``PipelineModule._partition_layers`` over ``specs`` (names, as
    :func:`deepspeed_pipe_specs`): ``uniform`` (equal numbers of specs), ``type:REGEX`` (the
    specs whose name the regex finds, case-insensitive, balanced by count; the rest weigh 0).
    Both forks' ``GPTModelPipe`` pass ``type:transformer`` (bigscience: unless
    ``--pp-partition-method``); ``parameters`` (DeepSpeed's own default, balancing the
    parameter counts of each built spec on its TP rank) is not counted yet.
    Stage ``i`` is pipeline rank ``i``; the embedding is where the first ``EmbeddingPipe`` is,
    the output layer where the last ``EmbeddingPipe`` / ``LMHeadPipe`` is."""
    pp, n = pipeline_parallel_size, len(specs)
    lowered = method.lower()
    if lowered == "uniform":
        parts = partition_uniform(n, pp)
    elif lowered.startswith("type:"):
        try:
            pattern = re.compile(method.split(":")[1], re.IGNORECASE)
        except re.error as error:
            raise ShapeError(f"{flag} {method}: not a regular expression ({error})",
                             flag) from None
        weights = [1 if pattern.search(name) else 0 for name in specs]
        if not any(weights):
            raise ShapeError(f"{flag} {method} matches no layer (DeepSpeed refuses it)", flag)
        if n > pp and n * n * pp > MAX_PARTITION_STEPS:
            raise ShapeError(f"DeepSpeed's partition search over {n} layers "
                             f"on {pp} stages is too large to repeat here", flag)
        parts = partition_balanced(weights, pp)
    else:
        raise ShapeError(f"not supported yet: {flag} {method} (per-stage FLOPs know uniform "
                         "and type:…)", flag)
    transformer = [i for i, name in enumerate(specs) if name == TRANSFORMER_SPEC]
    embedding = specs.index(EMBEDDING_SPEC)
    output = max(i for i, name in enumerate(specs) if name in OUTPUT_SPECS)
    stages, layer, num_layers = [], 0, len(transformer)
    for index in range(pp):
        start, stop = parts[index], parts[index + 1]
        count = sum(1 for i in transformer if start <= i < stop)
        stages.append(PipelineStage(index, index, range(layer, layer + count),
                                    range(num_layers, num_layers), embedding=start <= embedding < stop,
                                    output_layer=start <= output < stop))
        layer += count
    return PipelineLayout(tuple(stages), pp, f"DeepSpeed PipelineModule, {method}").check(
        num_layers)


# ---- FLOPs per stage and per rank -----------------------------------------------------------

def stage_breakdowns(model: ModelShape, layout: PipelineLayout, seq_length: int,
                     batch_size: int = 1, recompute: Recompute = NO_RECOMPUTE,
                     causal: bool = False) -> Tuple[Breakdown, ...]:
    """The breakdown of each stage of ``layout`` over one iteration of ``batch_size`` samples:
    its layers (recomputed as the whole model's recompute says), and on the output stage the
    logits, MTP logits and a distillation teacher's forward.  They add up to
    :func:`.flops.flops_breakdown` of the whole model."""
    pp = layout.pipeline_parallel_size
    return tuple(flops_breakdown(model, seq_length, batch_size, recompute, pp, causal,
                                 layer_indices=_Indices(stage), output_layer=stage.output_layer,
                                 input_layer=stage.embedding)
                 for stage in layout.stages)


class _Indices:
    """A stage's layer indices as one sequence (transformer layers, then MTP layers), with the
    counts the breakdown needs without visiting each layer."""

    __slots__ = ("layers", "mtp_layers")

    def __init__(self, stage: PipelineStage):
        self.layers, self.mtp_layers = stage.layers, stage.mtp_layers

    def __iter__(self):
        yield from self.layers
        yield from self.mtp_layers

    def __len__(self):
        return _size(self.layers) + _size(self.mtp_layers)


@dataclass(frozen=True)
class RankFlops:
    """The FLOPs one pipeline rank runs per iteration (all its stages, all its GPUs)."""

    rank: int
    stages: Tuple[int, ...]
    layers: int
    model_flops: int
    hardware_flops: int
    gpus: int
    """GPUs at this pipeline rank (world / PP): they share its FLOPs evenly."""

    @property
    def model_flops_per_gpu(self) -> float:
        return self.model_flops / self.gpus

    @property
    def hardware_flops_per_gpu(self) -> float:
        return self.hardware_flops / self.gpus


def rank_flops(layout: PipelineLayout, breakdowns: Sequence[Breakdown],
               world_size: int) -> Tuple[RankFlops, ...]:
    """Per pipeline rank: the sum of its stages' FLOPs, and the GPUs that share them."""
    gpus = world_size // layout.pipeline_parallel_size
    ranks: Dict[int, List[int]] = {}
    for stage in layout.stages:
        ranks.setdefault(stage.rank, []).append(stage.index)
    return tuple(RankFlops(rank, tuple(indices),
                           sum(layout.stages[i].num_layers for i in indices),
                           sum(breakdowns[i].model_flops for i in indices),
                           sum(breakdowns[i].hardware_flops for i in indices), gpus)
                 for rank, indices in sorted(ranks.items()))


def pipeline_report(layout: PipelineLayout, breakdowns: Sequence[Breakdown], world_size: int,
                    iteration_seconds: Optional[float] = None,
                    peak_tflops: Optional[float] = None) -> dict:
    """The ``pipeline`` object of ``estimate --json`` (docs/pipeline.md defines every key):
    each stage's layers and FLOPs per iteration, each pipeline rank's FLOPs per iteration and
    per GPU, and, given an iteration time, each rank's TFLOP/s per GPU, MFU and HFU; the
    busiest rank (the most hardware FLOPs per GPU: the one the others wait for) and the
    spread of hardware FLOPs per GPU over the ranks (busiest / least busy)."""
    ranks = rank_flops(layout, breakdowns, world_size)

    def per_second(flops_per_gpu: float) -> Optional[float]:
        return None if iteration_seconds is None else flops_per_gpu / iteration_seconds / 1e12

    def utilisation(tflops: Optional[float]) -> Optional[float]:
        return None if tflops is None or not peak_tflops else tflops / peak_tflops

    rank_rows = []
    for r in ranks:
        model_tflops = per_second(r.model_flops_per_gpu)
        hardware_tflops = per_second(r.hardware_flops_per_gpu)
        rank_rows.append({
            "rank": r.rank, "stages": list(r.stages), "layers": r.layers,
            "flops_per_iteration": {"model": r.model_flops, "hardware": r.hardware_flops},
            "flops_per_gpu": {"model": r.model_flops_per_gpu, "hardware": r.hardware_flops_per_gpu},
            "tflops_per_gpu": (None if model_tflops is None else
                               {"model": model_tflops, "hardware": hardware_tflops}),
            "mfu": utilisation(model_tflops), "hfu": utilisation(hardware_tflops)})
    busiest = max(ranks, key=lambda r: r.hardware_flops)
    least = min(r.hardware_flops for r in ranks)
    return {
        "source": layout.source,
        "pipeline_parallel_size": layout.pipeline_parallel_size,
        "virtual_stages_per_rank": layout.virtual_stages_per_rank,
        "gpus_per_rank": world_size // layout.pipeline_parallel_size,
        "stages": [{"stage": s.index, "rank": s.rank, "label": s.label(),
                    "layers": [s.layers.start, s.layers.stop],
                    "mtp_layers": _size(s.mtp_layers), "embedding": s.embedding,
                    "output_layer": s.output_layer,
                    "flops_per_iteration": {"model": b.model_flops, "hardware": b.hardware_flops}}
                   for s, b in zip(layout.stages, breakdowns)],
        "ranks": rank_rows,
        "busiest_rank": busiest.rank,
        "spread": busiest.hardware_flops / least if least else None,
    }
