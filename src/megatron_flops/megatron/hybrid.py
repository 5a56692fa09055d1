"""Megatron-LM's hybrid (Mamba-2 / attention / MLP / MoE) models, read from their flags.

Read from NVIDIA/Megatron-LM at d98e8a64 (``megatron/training/arguments.py``, the hybrid
block of ``validate_args``; ``megatron/core/models/hybrid/hybrid_layer_allocation.py``;
``hybrid_builders.py``); nothing copied.  What Megatron-LM does, and so what is read here:

- ``--hybrid-layer-pattern`` is the sole sign of a hybrid model; ``--hybrid-override-pattern`` is
  its deprecated name (both at once: refused); ``--is-hybrid-model`` alone is refused: Megatron-LM
  before 2026-02 built an all-Mamba model from it, today's builds a GPT model.
- The pattern's main part (before the first ``/``, ``|`` removed) sets ``--num-layers``
  (a different ``--num-layers`` is ignored with a warning); each part after a ``/`` is one MTP
  depth and sets ``--mtp-num-layers``; the legacy ``--mtp-hybrid-override-pattern`` with
  ``--mtp-num-layers`` N becomes ``main/mtp/…/mtp`` (N copies).
- ``+`` (MLA) in the pattern turns ``--multi-latent-attention`` on.
- ``|`` splits the main part into pipeline segments: their number must be a multiple of the
  pipeline size (more segments: virtual stages); with pipes, ``--decoder-first/last-pipeline-
  num-layers`` are refused; with a pattern, ``--num-layers-per-virtual-pipeline-stage``,
  ``--num-virtual-stages-per-pipeline-rank``, ``--pipeline-model-parallel-layout`` and
  ``--account-for-embedding/loss-in-pipeline-split`` are refused.
- A hybrid model is built from ``--spec`` (``hybrid_builders.py`` needs one): the standard stack
  specs (:data:`STANDARD_SPECS`) build the layers counted here; any other spec is refused.
- Before 2026 (Megatron-Core ≤ 0.16) ``--hybrid-attention-ratio`` / ``--hybrid-mlp-ratio`` placed
  the layers themselves: :func:`pattern_from_ratios` places them the same way.

Standard library only.
"""

import re
from typing import Optional, Tuple

from ..errors import ShapeError
from ..shapes import (HYBRID_ATTENTION, HYBRID_MAMBA, HYBRID_MLA, HYBRID_MLP, HYBRID_MTP_SEPARATOR,
                      HYBRID_PIPE)

__all__ = ["STANDARD_SPECS", "check_pipeline_flags", "hybrid_pattern", "model_fields",
           "pattern_from_ratios", "standard_spec", "stage_layers"]

#: ``--spec`` values (module, object) that build the standard hybrid layers: Megatron-LM's
#: hybrid stack spec and its pre-2026 name (``megatron.core.models.mamba``).
STANDARD_SPECS = (("megatron.core.models.hybrid.hybrid_layer_specs", "hybrid_stack_spec"),
                  ("megatron.core.models.mamba.mamba_layer_specs", "mamba_stack_spec"))


def standard_spec(value) -> bool:
    """Whether a ``--spec`` value (its words, one string, or a dump's ``str()`` of the list)
    names one of :data:`STANDARD_SPECS`."""
    if value is None:
        return False
    text = " ".join(value) if isinstance(value, (list, tuple)) else str(value)
    return tuple(re.findall(r"[A-Za-z_][\w.]*", text)) in STANDARD_SPECS


def pattern_from_ratios(num_layers: int, attention_ratio: float, mlp_ratio: float) -> str:
    """The pattern Megatron-Core (≤ 0.16 ``allocate_layers``; ``pattern_from_ratios`` since)
    builds from ratios: round(l·ratio) attention layers spread evenly between Mamba runs that
    start and end the model, then round(l·mlp_ratio) of the remaining Mamba layers turned into
    MLP layers, spread evenly.  Both placements walk the layers with a running budget of the
    gap length, placing a layer where fewer than half a layer of the gap is left."""
    symbols = [HYBRID_MAMBA] * num_layers
    attention = round(num_layers * attention_ratio)
    mamba = num_layers - attention
    gap = mamba / (attention + 1)
    budget = gap
    for index in range(num_layers):
        if budget < 0.5:
            symbols[index] = HYBRID_ATTENTION
            budget += gap
        else:
            budget -= 1
    mlp = round(num_layers * mlp_ratio)
    if mlp > 0:
        gap = (mamba - mlp) / mlp
        budget = gap
        for index in range(num_layers):
            if symbols[index] != HYBRID_MAMBA:
                continue
            if budget < 0.5:
                symbols[index] = HYBRID_MLP
                budget += gap
            else:
                budget -= 1
    return "".join(symbols)


def _ratio(ns, name: str, flag: str) -> float:
    value = getattr(ns, name, None)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ShapeError(f"{flag} must be a number in [0, 1], got {value!r}", flag)
    return float(value)


def hybrid_pattern(ns) -> Optional[str]:
    """The run's unified hybrid pattern (main, then ``/``-separated MTP depths), or None."""
    pattern = getattr(ns, "hybrid_layer_pattern", None)
    override = getattr(ns, "hybrid_override_pattern", None)
    if override is not None:
        if pattern is not None and pattern != override:
            raise ShapeError("--hybrid-override-pattern and --hybrid-layer-pattern cannot both be "
                             "given (the first is the second's deprecated name)",
                             "--hybrid-override-pattern")
        pattern = override
    attention = _ratio(ns, "hybrid_attention_ratio", "--hybrid-attention-ratio")
    mlp = _ratio(ns, "hybrid_mlp_ratio", "--hybrid-mlp-ratio")
    if attention + mlp > 1:
        raise ShapeError(f"--hybrid-attention-ratio ({attention}) + --hybrid-mlp-ratio ({mlp}) "
                         "must not exceed 1", "--hybrid-attention-ratio")
    if attention or mlp:
        layers = getattr(ns, "num_layers", None)
        if pattern is None:
            if layers is None:
                raise ShapeError("--hybrid-attention-ratio needs --num-layers", "--num-layers")
            pattern = pattern_from_ratios(layers, attention, mlp)
        else:  # Megatron-Core ≤ 0.16: an override keeps the ratios' counts of each symbol
            main = pattern.split(HYBRID_MTP_SEPARATOR)[0].replace(HYBRID_PIPE, "")
            placed = pattern_from_ratios(len(main), attention, mlp)
            if sorted(main) != sorted(placed):
                raise ShapeError("--hybrid-override-pattern must have as many layers of each "
                                 f"kind as the ratios place ({placed})", "--hybrid-override-pattern")
    if pattern is None:
        if getattr(ns, "is_hybrid_model", False) is True:
            raise ShapeError("--is-hybrid-model without --hybrid-layer-pattern: Megatron-LM before "
                             "2026-02 builds an all-Mamba model from it, today's a GPT model; give "
                             "the pattern (--hybrid-layer-pattern M…M for all Mamba)",
                             "--is-hybrid-model")
        return None
    mtp = getattr(ns, "mtp_hybrid_override_pattern", None)
    depths = getattr(ns, "mtp_num_layers", None) or 0
    if mtp and depths > 0 and HYBRID_MTP_SEPARATOR not in pattern:
        pattern = HYBRID_MTP_SEPARATOR.join([pattern] + [mtp] * depths)
    return pattern


def _main(pattern: str) -> str:
    return pattern.split(HYBRID_MTP_SEPARATOR)[0]


def model_fields(ns) -> dict:
    """The ModelShape fields of a hybrid run (empty for a GPT run): the pattern, the layer and
    MTP-depth counts it sets, MLA when it has ``+`` layers, and the Mamba sizes."""
    pattern = hybrid_pattern(ns)
    if pattern is None:
        return {}
    parts = pattern.split(HYBRID_MTP_SEPARATOR)
    depths = [part for part in parts[1:]] if any(parts[1:]) else []
    fields = dict(hybrid_layer_pattern=pattern,
                  num_layers=len(_main(pattern).replace(HYBRID_PIPE, "")),
                  mtp_num_layers=len(depths))
    for name in ("mamba_state_dim", "mamba_head_dim", "mamba_num_groups", "mamba_num_heads"):
        value = getattr(ns, name, None)
        if value is not None:
            fields[name] = value
    if HYBRID_MLA in pattern:
        fields["multi_latent_attention"] = True
    return fields


def check_pipeline_flags(ns, pattern: str) -> None:
    """Megatron-LM's refusals of pipeline flags that a hybrid pattern's ``|`` replaces."""
    for name, flag in (("num_layers_per_virtual_pipeline_stage",
                        "--num-layers-per-virtual-pipeline-stage"),
                       ("num_virtual_stages_per_pipeline_rank",
                        "--num-virtual-stages-per-pipeline-rank"),
                       ("pipeline_model_parallel_layout", "--pipeline-model-parallel-layout"),
                       ("account_for_embedding_in_pipeline_split",
                        "--account-for-embedding-in-pipeline-split"),
                       ("account_for_loss_in_pipeline_split",
                        "--account-for-loss-in-pipeline-split")):
        if getattr(ns, name, None) not in (None, False):
            raise ShapeError(f"{flag} cannot be used with --hybrid-layer-pattern (its '|' "
                             "separators place the pipeline stages; Megatron-LM refuses it)", flag)
    if HYBRID_PIPE in _main(pattern):
        for name, flag in (("decoder_first_pipeline_num_layers",
                            "--decoder-first-pipeline-num-layers"),
                           ("decoder_last_pipeline_num_layers",
                            "--decoder-last-pipeline-num-layers")):
            if getattr(ns, name, None) is not None:
                raise ShapeError(f"{flag} cannot be used with a --hybrid-layer-pattern that has "
                                 "'|' stage separators (Megatron-LM refuses it)", flag)


def stage_layers(pattern: str, pipeline_parallel_size: int) -> Optional[Tuple[int, ...]]:
    """Decoder layers per pipeline stage from the pattern's ``|`` segments when there is one
    segment per stage; None without pipes (Megatron's even or first/last split then applies).
    More segments than stages are virtual stages (a rank's layers are not contiguous): refused
    where the per-stage split matters, by the caller."""
    segments = _main(pattern).split(HYBRID_PIPE)
    if len(segments) == 1:
        return None
    if len(segments) % pipeline_parallel_size:
        raise ShapeError(f"--hybrid-layer-pattern has {len(segments)} pipeline segments ('|'), "
                         f"not a multiple of --pipeline-model-parallel-size "
                         f"({pipeline_parallel_size})", "--hybrid-layer-pattern")
    if len(segments) != pipeline_parallel_size:
        return None
    return tuple(len(segment) for segment in segments)
