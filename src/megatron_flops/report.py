"""Text rendering of a breakdown for people (tables with aligned columns, no dependencies)."""

import math
from typing import List, Optional, Sequence

from .errors import UsageError
from .flops import Breakdown
from .params import ParameterCount
from .rank_memory import RankMemory
from .shapes import PARTS, ModelShape, RunShape

_UNITS = ((1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"),
          (1e3, "kFLOP"), (1.0, "FLOP"))


def flops_unit(value: float):
    for scale, name in _UNITS:
        if value >= scale:
            return scale, name
    return 1.0, "FLOP"


def format_flops(value: float) -> str:
    scale, name = flops_unit(value)
    return f"{value / scale:.3f} {name}"


def format_significant(value: Optional[float], digits: int = 3, min_decimals: int = 0) -> str:
    """``value`` with ``digits`` significant digits in plain notation: the one way a rate
    (TFLOP/s, tokens/s) is printed, whatever its scale.

    ``0.0011834`` -> ``"0.00118"``, ``62.917`` -> ``"62.9"``, ``312.0`` -> ``"312"``,
    ``11024.4`` -> ``"11024"`` (no digit dropped left of the point), ``None`` -> ``"n/a"``;
    below 1e-6, scientific notation (``"1.23e-07"``).  ``min_decimals`` keeps at least that
    many digits after the point (``62.9`` -> ``"62.90"`` with 2)."""
    if value is None:
        return "n/a"
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = abs(value)
    if magnitude < 1e-6:
        return f"{value:.{digits - 1}e}"
    exponent = math.floor(math.log10(magnitude))
    rounded = float(f"{magnitude:.{digits - 1}e}")   # rounding may carry: 9.996 -> 10.0
    exponent = max(exponent, math.floor(math.log10(rounded)))
    decimals = max(min_decimals, digits - 1 - exponent)
    return f"{value:.{decimals}f}"


def format_tflops(value: Optional[float]) -> str:
    """A TFLOP/s figure, everywhere one is printed (console lines, tables, summaries): two
    decimals as Megatron prints ``TFLOPs: 123.45``, and at least three significant digits,
    so a small run's ``0.00118`` never reads ``0.00``; ``"n/a"`` for None."""
    return format_significant(value, 3, min_decimals=2)


def format_optional(value: Optional[float], spec: str) -> str:
    """``value`` formatted with ``spec``; ``"n/a"`` when there is none (no time, no peak)."""
    return "n/a" if value is None else format(value, spec)


def format_percent(fraction: Optional[float], spec: str = ".1f", unit: str = "%") -> str:
    """``0.4517`` -> ``"45.2%"``; ``"n/a"`` when there is no value (no peak, nothing logged).

    ``spec`` formats the percentage (``"+.1f"`` for a signed error), ``unit`` follows it."""
    return "n/a" if fraction is None else f"{100.0 * fraction:{spec}}{unit}"


def gpus(count: int) -> str:
    """``"1 GPU"``, ``"8 GPUs"``."""
    return f"{count} GPU" if count == 1 else f"{count} GPUs"


def format_count(value: int) -> str:
    for scale, name in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f}{name}"
    return str(value)


def table(rows: Sequence[Sequence[str]], header: Sequence[str], right: Sequence[bool]) -> str:
    widths = [max(len(str(r[i])) for r in list(rows) + [header]) for i in range(len(header))]

    def line(cells):
        return "  ".join(str(c).rjust(w) if r else str(c).ljust(w)
                         for c, w, r in zip(cells, widths, right)).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def describe_model(model: ModelShape) -> str:
    n, g = model.num_attention_heads, model.num_query_groups
    attention = "MHA" if g == n else "MQA" if g == 1 else f"GQA {n // g}:1"
    mlp = model.glu_activation or "gelu"
    parts = [f"{model.num_layers} layers", f"hidden {model.hidden_size}",
             f"{n} heads × {model.kv_channels} ({g} KV heads, {attention})",
             f"ffn {model.ffn_hidden_size} ({mlp})",
             f"vocab {model.vocab_size} ({'tied' if model.tie_embeddings else 'untied'})",
             f"{model.position_embedding} positions"]
    if model.is_moe:
        experts = sorted(set(model.num_experts))
        if model.moe_layer_freq is None:
            where = f"every {model.expert_interval} layers"
        else:
            where = f"in {model.num_moe_layers} of {model.num_layers} layers"
        parts.append(f"MoE {'/'.join(map(str, experts))} experts top-{model.moe_topk} {where}")
        if model.moe_ffn_hidden_size:
            parts.append(f"expert ffn {model.moe_ffn_hidden_size}")
        if model.shared_expert_ffn_hidden_size:
            parts.append(f"shared experts ffn {model.shared_expert_ffn_hidden_size}")
    if model.multi_latent_attention:
        parts.append(f"MLA (q rank {model.q_lora_rank or 'none'}, kv rank {model.kv_lora_rank}, "
                     f"heads qk {model.qk_head_dim}+{model.qk_pos_emb_head_dim} v {model.v_head_dim})")
    if model.mtp_num_layers:
        parts.append(f"{model.mtp_num_layers} MTP layers")
    if model.window_size is not None:
        parts.append(f"sliding window {model.window_size}")
    # issue 20 item 2
    if model.is_moe and model.moe_latent_size is not None:
        parts.append(f"latent MoE {model.moe_latent_size}")
    if model.is_moe and model.moe_shared_expert_gate and model.shared_expert_ffn_hidden_size:
        parts.append("shared-expert gate")
    if model.attention_output_gate:
        parts.append("attention output gate")
    # vision-language runs and frozen weights (issue 20 item 3)
    if model.vision is not None:
        v, vit = model.vision, model.vision.transformer
        parts.append(f"vision: ViT {vit.num_layers} layers × {vit.hidden_size} "
                     f"({vit.num_attention_heads} heads × {vit.kv_channels}, ffn "
                     f"{vit.ffn_hidden_size}), {v.img_h}×{v.img_w} tiles of {v.patch_dim}-pixel "
                     f"patches ({v.seq_length} ViT tokens, {v.image_embeddings} image embeddings "
                     f"per tile) × {v.tiles} tile{'s' if v.tiles > 1 else ''}, {v.projector} "
                     "projection")
    if model.frozen:
        parts.append("frozen: " + ", ".join(p for p in PARTS if p in model.frozen))
    return ", ".join(parts)


def describe_run(run: RunShape) -> str:
    accumulation = run.global_batch_size // (run.micro_batch_size * run.data_parallel_size)
    text = (f"seq {run.seq_length}, global batch {run.global_batch_size} (micro "
            f"{run.micro_batch_size} × DP {run.data_parallel_size} × {accumulation} accumulation), "
            f"{gpus(run.world_size)} (TP {run.tensor_model_parallel_size}, PP "
            f"{run.pipeline_model_parallel_size}"
            + (f", CP {run.context_parallel_size}: {run.tokens_per_gpu_per_sample} tokens of each "
               f"sample per GPU" if run.context_parallel_size > 1 else "")
            + f"), recompute {run.recompute.label}, {run.dtype}")
    if run.rampup_batch_size:
        start, inc, samples = run.rampup_batch_size
        text += f", batch ramp-up {start} +{inc} over {samples} samples"
    if run.batch_schedule:
        steps = " → ".join(f"{batch} from sample {start:,}" for start, batch in run.batch_schedule)
        text += f", step batch schedule {steps}"
    return text


def breakdown_table(breakdown: Breakdown) -> str:
    total = breakdown.hardware_flops
    scale, unit = flops_unit(total)
    rows: List[List[str]] = []
    for c in breakdown:
        rows.append([c.name, f"{c.forward / scale:.3f}", f"{c.backward / scale:.3f}",
                     f"{c.recompute / scale:.3f}", f"{100.0 * c.hardware_flops / total:.1f}%"])
    rows.append(["total", f"{breakdown.forward_flops / scale:.3f}",
                 f"{breakdown.backward_flops / scale:.3f}",
                 f"{breakdown.recompute_flops / scale:.3f}", "100.0%"])
    return table(rows, [f"component ({unit})", "forward", "backward", "recompute", "share"],
                 [False, True, True, True, True])


def summary_lines(model: ModelShape, run: RunShape, breakdown: Breakdown,
                  params: ParameterCount) -> List[str]:
    return [
        f"model: {describe_model(model)}",
        f"run:   {describe_run(run)}",
        f"parameters: {params.total:,} ({format_count(params.total)}; "
        f"{format_count(params.non_embedding)} without embeddings)",
        "",
        breakdown_table(breakdown),
        "",
        f"model FLOPs per iteration:    {breakdown.model_flops:,} ({format_flops(breakdown.model_flops)})",
        f"hardware FLOPs per iteration: {breakdown.hardware_flops:,} "
        f"({format_flops(breakdown.hardware_flops)}, recompute {run.recompute.label})",
    ]


def parse_fraction(text: str, flag: str) -> float:
    """``"5%"`` -> 0.05, ``"0.05"`` -> 0.05; a negative or non-numeric value names ``flag``."""
    cleaned = str(text).strip()
    percent = cleaned.endswith("%")
    try:
        value = float(cleaned[:-1] if percent else cleaned)
    except ValueError:
        raise UsageError(f"{flag} must be a fraction (0.05) or a percentage (5%), "
                         f"got {text!r}") from None
    value = value / 100.0 if percent else value
    if not value >= 0 or math.isinf(value):
        raise UsageError(f"{flag} must not be negative, got {text!r}")
    return value


# ---- memory per rank (issue 22) ----------------------------------------------------------------

GIB = 1024 ** 3


def _gib(value: int) -> str:
    return f"{value / GIB:,.3f}"


def memory_lines(memory: RankMemory, measured_peak: Optional[int] = None) -> List[str]:
    """The per-stage table (GiB per rank), the peak and where it is, the largest activation terms."""
    s, st = memory.settings, memory.state_settings
    sharding = {0: "none", 1: "optimizer state (distributed optimizer / ZeRO-1)",
                2: "optimizer state and gradients (ZeRO-2)", 3: "all model state (ZeRO-3)"}
    lines = [f"memory per rank (GiB): activations {s.dtype_bytes}-byte, attention "
             f"{'fused (flash: log-sum-exp)' if s.flash_attention else 'unfused (s² probabilities)'}, "
             f"dropout masks {'on' if s.hidden_dropout or s.attention_dropout else 'off'}; "
             f"{st.optimizer} {st.optimizer_bytes} B/parameter, parameters {st.parameter_bytes} B, "
             f"gradients {st.gradient_bytes} B, sharded: {sharding[st.zero_stage]}"]
    rows = []
    for stage in memory.stages:
        rows.append([str(stage.stage), str(len(stage.layers)), str(stage.in_flight),
                     _gib(stage.state.parameters), _gib(stage.state.gradients),
                     _gib(stage.state.optimizer), _gib(stage.activations),
                     _gib(stage.recompute_working), _gib(stage.peak)])
    header = ["stage", "layers", "in flight", "parameters", "gradients", "optimizer",
              "activations", "recompute", "peak"]
    lines.append(table(rows, header, [True] * len(header)))
    peak = memory.peak_stage
    lines.append(f"peak: {_gib(peak.peak)} GiB on pipeline stage {peak.stage} (every TP/CP/DP "
                 f"rank of that stage alike){'' if memory.virtual_stages == 1 else f', {memory.virtual_stages} virtual stages per rank'}")
    if measured_peak is not None:
        lines.append(f"measured peak: {_gib(measured_peak)} GiB")
    per = peak.activations_per_micro_batch
    total = sum(per.values()) or 1
    lines.append(f"activations of one micro-batch on stage {peak.stage}, by term:")
    term_rows = [[name, f"{value / 2 ** 20:,.2f}", f"{100 * value / total:.1f}%"]
                 for name, value in per.items() if value]
    lines.append(table(term_rows, ["term", "MiB", "share"], [False, True, True]))
    lines.append("not counted: the logits' and gradients' transient buffers, communication "
                 "buffers, allocator fragmentation, the framework's own memory")
    return lines
