"""Readers of NVIDIA Megatron-LM features that change the count: selective recompute modules
(``--recompute-modules``, ``--moe-layer-recompute``), the step batch-size schedule
(``--step-batch-size-schedule``) and the flexible pipeline layout
(``--pipeline-model-parallel-layout``).

Each reads a Megatron ``args`` namespace (or our parsed command line, same destinations) the
way Megatron-LM does at d98e8a64 (``megatron/training/arguments.py``,
``megatron/core/transformer/transformer_config.py``,
``megatron/core/num_microbatches_calculator.py``,
``megatron/core/transformer/pipeline_parallel_layer_layout.py``) and returns values; errors
are :class:`ShapeError` naming the flag.  Standard library only.
"""

import re
from typing import List, Optional, Tuple

from ..shapes import SELECTIVE_RECOMPUTE_MODULES, ShapeError

__all__ = ["selective_modules", "run_notes", "step_batch_schedule", "pipeline_layout_stages",
           "check_given_values", "check_typed_schedule"]

# Megatron-Core's other modules: each belongs to a feature this tool refuses (GatedDeltaNet /
# GatedDeltaProduct attention variants, hyper-connections)
_MODULES_OF_UNSUPPORTED_FEATURES = ("gdn_norm_out", "gdp_in_proj", "gdp_qkv", "mhc")
_NO_MATMUL = ("moe_act", "layernorm")


def selective_modules(ns, granularity: Optional[str]) -> Tuple[Optional[str], Tuple[str, ...]]:
    """``(granularity, modules)`` after ``--recompute-modules`` / ``--moe-layer-recompute``.

    As TransformerConfig.__post_init__: the modules default to ``core_attn``;
    ``--moe-layer-recompute`` is refused with full recompute, else turns recompute selective and
    adds ``moe`` (so the default ``core_attn`` is re-run too).  The modules act only with
    selective recompute; ``moe_act`` and ``layernorm`` re-run no matmul (accepted, with a note:
    :func:`run_notes`).
    """
    modules = getattr(ns, "recompute_modules", None)
    if isinstance(modules, str):
        modules = modules.split()
    modules = list(modules) if modules is not None else ["core_attn"]
    if getattr(ns, "moe_layer_recompute", False):
        if granularity == "full":
            raise ShapeError("--moe-layer-recompute cannot be used with full recompute "
                             "(Megatron-LM refuses it)", "--moe-layer-recompute")
        granularity = "selective"
        if "moe" not in modules:
            modules.append("moe")
    if granularity != "selective":
        return granularity, ("core_attn",)
    for module in modules:
        if module in _MODULES_OF_UNSUPPORTED_FEATURES:
            raise ShapeError(f"not supported yet: --recompute-modules {module} (it belongs to a "
                             "feature that is not counted yet)", "--recompute-modules")
        if module not in SELECTIVE_RECOMPUTE_MODULES:
            raise ShapeError(f"--recompute-modules must be among "
                             f"{', '.join(SELECTIVE_RECOMPUTE_MODULES + _MODULES_OF_UNSUPPORTED_FEATURES)}"
                             f", got {module!r}", "--recompute-modules")
    return granularity, tuple(dict.fromkeys(modules))


def run_notes(run) -> List[Tuple[str, str]]:
    """``(flag, note)`` for what a resolved run accepts without counting anything for it."""
    kept = [m for m in run.recompute.modules if m in _NO_MATMUL]
    if run.recompute.granularity == "selective" and kept:
        return [("--recompute-modules", f"{' and '.join(kept)} recompute re-runs no matmul (an "
                 "activation, a norm): it adds no FLOPs")]
    return []


_SUFFIX = {"K": 10 ** 3, "M": 10 ** 6, "B": 10 ** 9, "T": 10 ** 12}


def _schedule_number(text: str) -> int:
    text = text.strip().upper()
    scale = _SUFFIX.get(text[-1:], 1)
    if text[-1:] in _SUFFIX:
        text = text[:-1]
    value = float(text)  # Megatron: int(float(value) * multiplier)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return int(value * scale)


def step_batch_schedule(ns, seq_length: int) -> Optional[Tuple[Tuple[int, int], ...]]:
    """``--step-batch-size-schedule "0:768 250B:1536 …"`` as ``((from_samples, batch), …)``.

    Thresholds are tokens (Megatron-LM passes ``--seq-length``: samples = tokens // seq_length),
    with K/M/B/T suffixes; commas count as spaces.  Megatron-LM refuses it together with
    ``--global-batch-size`` or ``--decrease-batch-size-if-needed``, and so do we.
    """
    flag = "--step-batch-size-schedule"
    text = getattr(ns, "step_batch_size_schedule", None)
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        text = " ".join(map(str, text))
    # (both flags typed on one command line: :func:`check_typed_schedule`; a live run's args
    # and a dump carry the global batch validate_args derived, micro × DP)
    if getattr(ns, "decrease_batch_size_if_needed", False):
        raise ShapeError(f"{flag} and --decrease-batch-size-if-needed cannot both be given",
                         flag)
    schedule = []
    for entry in str(text).replace(",", " ").split():
        threshold, sep, batch = entry.partition(":")
        try:
            if not sep:
                raise ValueError(entry)
            schedule.append((_schedule_number(threshold) // seq_length, _schedule_number(batch)))
        except (ValueError, OverflowError):
            raise ShapeError(f"{flag}: expected THRESHOLD:BATCH_SIZE entries such as 0:768 "
                             f"250B:1536, got {entry!r}", flag) from None
    return tuple(sorted(schedule))


def refuse_weight_shards(ns) -> None:
    """``--(expert-)tensor-parallel-num-weight-shards`` above its TP size is GTP weight remat
    (``resolve_tensor_parallel_weight_shards``: remat = shards // TP), not counted yet."""
    tp = getattr(ns, "tensor_model_parallel_size", None) or 1
    expert_tp = getattr(ns, "expert_tensor_parallel_size", None) or tp
    for name, size, tp_flag in (("tensor_parallel_num_weight_shards", tp,
                                 "--tensor-model-parallel-size"),
                                ("expert_tensor_parallel_num_weight_shards", expert_tp,
                                 "--expert-tensor-parallel-size")):
        shards = getattr(ns, name, None)
        flag = "--" + name.replace("_", "-")
        if shards is None:
            continue
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < size or shards % size:
            raise ShapeError(f"{flag} ({shards}) must be a multiple of {tp_flag} ({size})", flag)
        if shards // size > 1:
            raise ShapeError(f"not supported yet: {flag} {shards} (GTP weight remat over "
                             f"{shards // size} peers, each training its own micro-batch)", flag)


def decreased_global_batch(ns, global_batch: Optional[int], per_step: int) -> Optional[int]:
    """``--decrease-batch-size-if-needed``: Megatron-LM rounds the global batch down to a
    multiple of micro batch × data parallel (``_round`` in num_microbatches_calculator.py)."""
    if global_batch is None or not getattr(ns, "decrease_batch_size_if_needed", False):
        return global_batch
    rounded = global_batch // per_step * per_step
    if rounded <= 0:
        raise ShapeError(f"--global-batch-size ({global_batch}) is smaller than micro batch × "
                         f"data parallel ({per_step}): --decrease-batch-size-if-needed leaves "
                         "no batch", "--decrease-batch-size-if-needed")
    return rounded


_LAYOUT_REPEAT = (re.compile(r"\(([^)]+)\)\*(\d+)"), re.compile(r"(.)\*(\d+)"))


def pipeline_layout_stages(layout: str, num_layers: int, pipeline_parallel_size: int,
                           mtp_num_layers: int = 0) -> Tuple[Tuple[str, ...], ...]:
    """The virtual pipeline stages of ``--pipeline-model-parallel-layout``, validated.

    The syntax of Megatron-Core's PipelineParallelLayerLayout: ``E`` embedding, ``t`` a
    transformer layer, ``m`` an MTP layer, ``L`` the loss, ``|`` between stages, ``(…)*n`` and
    ``x*n`` repeat, commas are cosmetic.  Its rules: the stage count is a multiple of the
    pipeline size, one ``E`` first, one ``L`` last, as many ``t`` as ``--num-layers`` and ``m``
    as ``--mtp-num-layers``, MTP after every transformer layer.  With a layout Megatron-LM
    skips the rule that the pipeline size divides the layers.  Stage ``i`` runs on pipeline
    rank ``i % PP``.
    """
    flag = "--pipeline-model-parallel-layout"
    text = str(layout).replace(",", "")
    for pattern in _LAYOUT_REPEAT:
        text = pattern.sub(lambda m: m.group(1) * int(m.group(2)), text)
    stages = tuple(tuple(stage) for stage in text.split("|"))
    flat = [c for stage in stages for c in stage]
    bad = sorted(set(flat) - set("ELtm"))
    if bad:
        raise ShapeError(f"{flag}: unknown layer character(s) {' '.join(bad)} in {layout!r} "
                         "(E embedding, t transformer, m MTP, L loss)", flag)
    if len(stages) % pipeline_parallel_size:
        raise ShapeError(f"{flag} has {len(stages)} stages, not a multiple of "
                         f"--pipeline-model-parallel-size ({pipeline_parallel_size})", flag)
    if not flat or flat[0] != "E" or flat.count("E") != 1:
        raise ShapeError(f"{flag} must start with the embedding E, once", flag)
    if flat[-1] != "L" or flat.count("L") != 1:
        raise ShapeError(f"{flag} must end with the loss L, once", flag)
    if flat.count("t") != num_layers:
        raise ShapeError(f"{flag} holds {flat.count('t')} transformer layers (t), not "
                         f"--num-layers ({num_layers})", flag)
    if flat.count("m") != mtp_num_layers:
        raise ShapeError(f"{flag} holds {flat.count('m')} MTP layers (m), not "
                         f"--mtp-num-layers ({mtp_num_layers})", flag)
    if "m" in flat and "t" in flat[flat.index("m"):]:
        raise ShapeError(f"{flag}: MTP layers must come after every transformer layer", flag)
    return stages


# (destination, the flag as typed): values that must be positive integers when given, each
# spelling under its own destination so that the error names the flag the user typed.  Megatron
# takes these as sizes or counts (a parallel size, a batch, a divisor, a layer count); 0 is no
# "default" there (it fails or divides by zero later), so it is refused here like -1.
POSITIVE_WHEN_GIVEN = (
    ("micro_batch_size", "--micro-batch-size"), ("batch_size", "--batch-size"),
    ("tensor_model_parallel_size", "--tensor-model-parallel-size"),
    ("model_parallel_size", "--model-parallel-size"),
    ("pipeline_model_parallel_size", "--pipeline-model-parallel-size"),
    ("pipe_parallel_size", "--pipe-parallel-size"),
    ("context_parallel_size", "--context-parallel-size"),
    ("ds_sequence_parallel_size", "--ds-sequence-parallel-size"),
    ("make_vocab_size_divisible_by", "--make-vocab-size-divisible-by"),
    ("padded_vocab_size", "--padded-vocab-size"), ("vocab_size", "--vocab-size"),
    ("num_query_groups", "--num-query-groups"), ("num_key_value_heads", "--num-key-value-heads"),
    ("kv_channels", "--kv-channels"), ("ffn_hidden_size", "--ffn-hidden-size"),
    ("topk", "--topk"), ("moe_router_topk", "--moe-router-topk"),
    ("expert_interval", "--expert-interval"), ("moe_ffn_hidden_size", "--moe-ffn-hidden-size"),
    ("checkpoint_num_layers", "--checkpoint-num-layers"),
    ("recompute_num_layers", "--recompute-num-layers"),
    ("activations_checkpoint_num_layers", "--activations-checkpoint-num-layers"),
    ("num_layers_teacher", "--num-layers-teacher"),
    ("hidden_size_teacher", "--hidden-size-teacher"),
    ("num_attention_heads_teacher", "--num-attention-heads-teacher"),
    ("decoder_first_pipeline_num_layers", "--decoder-first-pipeline-num-layers"),
    ("decoder_last_pipeline_num_layers", "--decoder-last-pipeline-num-layers"),
    ("num_layers_per_virtual_pipeline_stage", "--num-layers-per-virtual-pipeline-stage"),
    ("num_virtual_stages_per_pipeline_rank", "--num-virtual-stages-per-pipeline-rank"),
    ("encoder_seq_length", "--encoder-seq-length"), ("gas", "--gas"),
    ("expert_tensor_parallel_size", "--expert-tensor-parallel-size"),
    ("q_lora_rank", "--q-lora-rank"), ("kv_lora_rank", "--kv-lora-rank"),
    ("qk_head_dim", "--qk-head-dim"), ("qk_pos_emb_head_dim", "--qk-pos-emb-head-dim"),
    ("v_head_dim", "--v-head-dim"),
    # hybrid Mamba models
    ("mamba_state_dim", "--mamba-state-dim"), ("mamba_head_dim", "--mamba-head-dim"),
    ("mamba_num_groups", "--mamba-num-groups"), ("mamba_num_heads", "--mamba-num-heads"),
)
POSITIVE_LISTS_WHEN_GIVEN = (("num_experts", "--num-experts"), ("num_moe_experts", "--num-moe-experts"),
                             ("num_experts_teacher", "--num-experts-teacher"))
NON_NEGATIVE_WHEN_GIVEN = (("mtp_num_layers", "--mtp-num-layers"),)


def check_given_values(ns) -> None:
    """ShapeError naming the flag (as typed) whose given value is not a positive integer."""
    def bad(value, low):
        return isinstance(value, bool) or not isinstance(value, int) or value < low
    for table, low, what in ((POSITIVE_WHEN_GIVEN, 1, "a positive integer"),
                             (NON_NEGATIVE_WHEN_GIVEN, 0, "an integer ≥ 0")):
        for name, flag in table:
            value = getattr(ns, name, None)
            if value is not None and bad(value, low):
                raise ShapeError(f"{flag} must be {what}, got {value!r}", flag)
    for name, flag in POSITIVE_LISTS_WHEN_GIVEN:
        values = getattr(ns, name, None)
        if values is None or isinstance(values, str):
            continue
        for value in (values if isinstance(values, (list, tuple)) else [values]):
            if bad(value, 1):
                raise ShapeError(f"{flag} must be positive integers, got {value!r}", flag)


def as_typed(error: ShapeError, argv) -> ShapeError:
    """``error`` with the modern flag names it uses spelled as the user typed them.

    The old names (:data:`.flags.OLD_NAMES`: ``--batch-size`` for ``--micro-batch-size``, …)
    are read as their modern meaning, and the checks made later name the modern flag: when the
    command line holds the old spelling and not the modern one, the message says the old one.
    """
    from .flags import OLD_NAMES
    typed = {word.split("=", 1)[0] for word in argv if str(word).startswith("--")}
    message, flag = str(error), error.flag
    for old, modern in OLD_NAMES.items():
        if modern.startswith("--") and old in typed and modern not in typed:
            message = re.sub(re.escape(modern) + r"(?![\w-])", old, message)
            flag = old if flag == modern else flag
    if message == str(error):
        return error
    return ShapeError(message, flag)


def check_typed_schedule(argv) -> None:
    """ShapeError when a pasted command types both ``--step-batch-size-schedule`` and
    ``--global-batch-size``: Megatron-LM refuses it (the schedule sets the global batch)."""
    typed = {word.split("=", 1)[0] for word in argv if str(word).startswith("--")}
    flag = "--step-batch-size-schedule"
    if flag in typed and "--global-batch-size" in typed:
        raise ShapeError(f"{flag} and --global-batch-size cannot both be given (Megatron-LM "
                         "refuses it: the schedule sets the global batch)", flag)
