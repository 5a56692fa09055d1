"""Memory of each pipeline stage's ranks: model state, activations in flight, and the peak.

Every rank of a stage (its TP, CP and DP ranks alike) holds the stage's model state
(:mod:`megatron_flops.model_state`) and the activations its micro-batches in flight keep for
backward (:mod:`megatron_flops.activations`).  Under the 1F1B schedule stage ``i`` of ``p``
has run ``p − i`` forwards when it runs its first backward (``min(p − i, M)`` with ``M``
micro-batches), and never more after.  Interleaved (``v`` model chunks per stage, each
``1/v`` of its layers): ``(p − i − 1)·2 + (v − 1)·p + 1`` chunk-forwards are in flight at the
first backward (Megatron-Core's warm-up count plus the one steady-state forward; at most
``M·v``), so stage 0 holds ``1 + (p − 1)/(p·v)`` times its layers' activations of ``p``
micro-batches (Korthikanti et al.'s interleaving penalty); its embedding holds ``min(p, M)``.

The peak adds what backward re-materialises at once: one recomputed chunk's activations
(full recompute; its checkpointed input is already counted), or one layer's core-attention
terms (selective).  Not modelled: the logits' and gradients' transient buffers, the
communication buffers, the allocator's fragmentation and the framework itself.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .activations import (ACTIVATIONS, CORE_ATTENTION, ActivationSettings, Parallel,
                          activation_breakdown, layer_activation_bytes)
from .errors import UsageError
from .model_state import ModelState, StateSettings, model_state, rank_parameters
from .shapes import ModelShape, RunShape

__all__ = ["RankMemory", "StageMemory", "in_flight_chunks", "rank_memory"]


def in_flight_chunks(stage: int, pipeline_parallel: int, micro_batches: int,
                     virtual_stages: int = 1) -> int:
    """Chunk-forwards whose activations stage ``stage`` holds at once (module docstring);
    with ``virtual_stages`` 1 this is micro-batches: ``min(p − i, M)``."""
    p, v = pipeline_parallel, virtual_stages
    if v == 1:
        return min(p - stage, micro_batches)
    return min((p - stage - 1) * 2 + (v - 1) * p + 1, micro_batches * v)


@dataclass(frozen=True)
class StageMemory:
    """One pipeline stage's ranks: bytes each holds."""

    stage: int
    layers: Tuple[int, ...]
    in_flight: int
    """Micro-batches in flight (chunk-forwards with virtual stages)."""
    state: ModelState
    activations_per_micro_batch: Dict[str, int]
    activations: int
    """Activations held at once: ``in_flight`` micro-batches (or chunks) of this stage."""
    recompute_working: int
    """What backward re-materialises at once (one recomputed chunk / one attention core)."""

    @property
    def peak(self) -> int:
        return self.state.total + self.activations + self.recompute_working

    def to_dict(self) -> dict:
        return {"stage": self.stage, "layers": len(self.layers), "in_flight": self.in_flight,
                "state": self.state.to_dict(),
                "activations_per_micro_batch": dict(self.activations_per_micro_batch),
                "activations": self.activations, "recompute_working": self.recompute_working,
                "peak": self.peak}


@dataclass(frozen=True)
class RankMemory:
    """Per-stage memory of a run and where its peak is."""

    stages: Tuple[StageMemory, ...]
    settings: ActivationSettings
    state_settings: StateSettings
    micro_batches: int
    virtual_stages: int

    @property
    def peak_stage(self) -> StageMemory:
        return max(self.stages, key=lambda stage: (stage.peak, -stage.stage))

    def to_dict(self) -> dict:
        peak = self.peak_stage
        return {"stages": [stage.to_dict() for stage in self.stages],
                "peak_bytes": peak.peak, "peak_stage": peak.stage,
                "micro_batches": self.micro_batches, "virtual_stages": self.virtual_stages,
                "activation_settings": dict(vars(self.settings)),
                "state_settings": dict(vars(self.state_settings))}


def _stage_layers(num_layers: int, pp: int,
                  stage_layers: Optional[Sequence[int]]) -> List[Tuple[int, ...]]:
    if stage_layers is None:
        if num_layers % pp:
            raise UsageError(f"--pipeline-model-parallel-size ({pp}) must divide --num-layers "
                             f"({num_layers}) for an even split")
        stage_layers = (num_layers // pp,) * pp
    if len(stage_layers) != pp or sum(stage_layers) != num_layers:
        raise UsageError(f"the pipeline stages hold {sum(stage_layers)} layers in "
                         f"{len(stage_layers)} stages, not --num-layers ({num_layers}) in "
                         f"--pipeline-model-parallel-size ({pp})")
    out, first = [], 0
    for size in stage_layers:
        out.append(tuple(range(first, first + size)))
        first += size
    return out


def _recompute_working(model, b, s, run: RunShape, layers, settings, parallel) -> int:
    recompute = run.recompute
    if recompute.granularity == "full" and layers:
        chunk = (recompute.num_layers or 1) if recompute.method == "uniform" else 1
        chunk = min(chunk, len(layers))
        one = max(sum(layer_activation_bytes(model, b, s, model.experts_in_layer(i), settings,
                                             "none", parallel=parallel).values())
                  for i in layers[:max(1, chunk)])
        return chunk * one
    if recompute.granularity == "selective" and CORE_ATTENTION in recompute.modules and layers:
        terms = layer_activation_bytes(model, b, s, 1, settings, "none", parallel=parallel)
        return sum(v for k, v in terms.items() if ACTIVATIONS[k].recomputed_by == CORE_ATTENTION)
    return 0


def rank_memory(model: ModelShape, run: RunShape, settings: ActivationSettings,
                state_settings: StateSettings, sequence_parallel: bool = False,
                expert_parallel: int = 1, expert_tensor_parallel: Optional[int] = None,
                virtual_stages: int = 1,
                stage_layers: Optional[Sequence[int]] = None) -> RankMemory:
    """Bytes held by a rank of each pipeline stage of ``run`` (module docstring)."""
    pp, tp, cp = (run.pipeline_model_parallel_size, run.tensor_model_parallel_size,
                  run.context_parallel_size)
    b, s = run.micro_batch_size, run.seq_length
    if s % cp:
        raise UsageError(f"--context-parallel-size ({cp}) must divide --seq-length ({s})")
    if sequence_parallel and s % tp:
        raise UsageError(f"--tensor-model-parallel-size ({tp}) must divide --seq-length ({s}) "
                         "with --sequence-parallel")
    etp = tp if expert_tensor_parallel is None else expert_tensor_parallel
    if run.world_size % (etp * expert_parallel * pp):
        raise UsageError(f"--expert-model-parallel-size ({expert_parallel}) × expert tensor "
                         f"parallel ({etp}) × PP ({pp}) must divide the world size "
                         f"({run.world_size})")
    parallel = Parallel(tensor=tp, sequence_parallel=sequence_parallel, context=cp)
    data_parallel = run.data_parallel_size * cp * run.sequence_parallel_size
    expert_dp = run.world_size // (etp * expert_parallel * pp)
    micro_batches = run.global_batch_size // (b * run.data_parallel_size)
    stages = []
    for stage, layers in enumerate(_stage_layers(model.num_layers, pp, stage_layers)):
        first, last = stage == 0, stage == pp - 1
        params = rank_parameters(model, layers, first, last, tp, expert_parallel, etp, pp)
        state = model_state(params, state_settings, data_parallel, expert_dp)
        per_micro = activation_breakdown(model, b, s, settings, run.recompute, layers, first,
                                         last, pp, parallel)
        chunks = in_flight_chunks(stage, pp, micro_batches, virtual_stages)
        once = {k: v for k, v in per_micro.items() if ACTIVATIONS[k].occurs == "once per model"}
        layer_bytes = sum(per_micro.values()) - sum(once.values())
        held = layer_bytes * chunks // virtual_stages
        if first:
            held += once.get("embedding", 0) * min(pp if virtual_stages > 1 else pp - stage,
                                                   micro_batches)
        held += sum(v for k, v in once.items() if k != "embedding")  # last stage: one in flight
        working = _recompute_working(model, b, s, run, layers, settings, parallel)
        stages.append(StageMemory(stage, layers, chunks, state, per_micro, held, working))
    return RankMemory(tuple(stages), settings, state_settings, micro_batches, virtual_stages)
