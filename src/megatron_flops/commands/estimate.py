"""``megatron-flops estimate``: the breakdown, parameters, throughput and MFU for Megatron flags."""

import json
import sys
from typing import List

from ..conventions import conventions_table, conventions_with_headline, headline_line
from ..fp8 import Fp8Recipe, fp8_report
from ..hardware import LIST_HINT, implausible_utilisation_warning, resolve_peak
from ..legacy import legacy_error, legacy_tflops_for_shapes
from ..meter import ThroughputMeter
from ..params import parameter_count
from ..pipeline import pipeline_report, stage_breakdowns
from ..planning import iteration_breakdown, training_time
from ..report import format_optional, format_percent, format_tflops, gpus, summary_lines
from ..errors import ShapeError
from ..megatron.stages import pipeline_layout
from .common import (EXIT_OK, UsageError, add_convention_arguments, add_peak_arguments,
                     command_parser, parse_resolved, positive)
from .memory import memory_flags, memory_for, memory_lines


def _estimate(model, run, iteration_seconds, gpu, peak_tflops, causal, train_tokens,
              tflops_per_gpu, convention=None, fp8=None, world_size_assumed=False):
    """(the JSON object, the breakdown, the parameter count): the table reuses the last two."""

    breakdown = iteration_breakdown(model, run, causal)
    params = parameter_count(model)
    peak = resolve_peak(gpu, run.dtype, peak_tflops)
    result = {
        "parameters": params.total,
        "parameters_without_embeddings": params.non_embedding,
        # batch_size, seq_length, recompute, causal, flops_per_iteration, components
        **breakdown.to_dict(),
        "world_size": run.world_size,
        "peak": {"tflops": peak.tflops, "source": peak.source},
        "throughput": None,
        "training_days": None,
    }
    if iteration_seconds is not None:
        meter = ThroughputMeter.for_run(model, run, peak.tflops, causal)
        meter.add_iteration(batch_size=run.global_batch_size, seq_length=run.seq_length)
        report = meter.report(iteration_seconds)
        legacy = legacy_tflops_for_shapes(model, run, run.global_batch_size, run.seq_length,
                                          iteration_seconds)
        hardware = report.hardware_tflops_per_gpu
        result["throughput"] = {
            "iteration_seconds": iteration_seconds,
            "samples_per_second": report.samples_per_second,
            "tokens_per_second": report.tokens_per_second,
            "tokens_per_second_per_gpu": report.tokens_per_second_per_gpu,
            "tflops_per_gpu": {"model": report.model_tflops_per_gpu, "hardware": hardware},
            "mfu": report.mfu,
            "hfu": report.hfu,
            "legacy_tflops_per_gpu": legacy,
            "legacy_error": {k: legacy_error(v, hardware) for k, v in legacy.items()},
        }
    _add_conventions(result, model, run, breakdown, iteration_seconds, gpu, peak, convention, fp8,
                     world_size_assumed)
    if train_tokens is not None or tflops_per_gpu is not None:
        if train_tokens is None or tflops_per_gpu is None:
            raise UsageError("--plan-tokens and --plan-tflops-per-gpu go together")
        plan = training_time(model, run, train_tokens, tflops_per_gpu, causal)
        result["training_days"] = plan.days
    return result, breakdown, params


def _add_conventions(result, model, run, breakdown, seconds, gpu, peak, convention, fp8,
                     world_size_assumed) -> None:
    """``conventions`` (always), ``headline``, ``fp8`` and ``warnings``: the core computes."""
    result["conventions"], result["headline"] = conventions_with_headline(
        model, run, seconds, peak.tflops, convention)
    t = result["throughput"]
    if fp8 is not None and fp8.enabled:
        result["fp8"] = fp8_report(breakdown, model, fp8, gpu,
                                   t and t["tflops_per_gpu"]["model"],
                                   t and t["tflops_per_gpu"]["hardware"])
    warning = t and implausible_utilisation_warning(t["mfu"], t["hfu"], world_size_assumed,
                                                    run.dtype, peak.source)
    result["warnings"] = [warning] if warning else []


def _add_pipeline(result: dict, ns, model, run, fork, causal, iteration_seconds) -> None:
    """``pipeline``: the FLOPs of each stage and pipeline rank (docs/pipeline.md); where the
    layout cannot be counted, ``{"unavailable": why}`` (the whole-model figures stand)."""
    try:
        layout = pipeline_layout(ns, model, run.pipeline_model_parallel_size, fork)
    except ShapeError as error:
        result["pipeline"] = {"unavailable": str(error)}
        return
    breakdowns = stage_breakdowns(model, layout, run.seq_length, run.global_batch_size,
                                  run.recompute, causal)
    result["pipeline"] = pipeline_report(layout, breakdowns, run.world_size, iteration_seconds,
                                         result["peak"]["tflops"])


def _print_pipeline(result: dict) -> None:
    p = result.get("pipeline")
    if p is None or p.get("pipeline_parallel_size", 2) < 2:
        return
    if "unavailable" in p:
        print(f"\nper pipeline stage: not counted ({p['unavailable']})")
        return
    print(f"\nper pipeline rank ({p['source']}; {p['gpus_per_rank']} GPUs per rank share its "
          "FLOPs):")
    print(f"  {'rank':>4}  {'stages: layers':<24} {'model FLOPs':>12} {'hw FLOPs':>12} "
          f"{'model TFLOP/s':>13} {'MFU':>6} {'HFU':>6}")
    stages = p["stages"]
    for r in p["ranks"]:
        labels = [stages[index]["label"] for index in r["stages"]]
        label = ", ".join(labels) if len(labels) > 1 else labels[0]
        t = r["tflops_per_gpu"]
        busiest = " ← busiest" if r["rank"] == p["busiest_rank"] else ""
        print(f"  {r['rank']:>4}  {label:<24} {r['flops_per_iteration']['model']:>12.4g} "
              f"{r['flops_per_iteration']['hardware']:>12.4g} "
              f"{format_tflops(t and t['model']):>13} {format_percent(r['mfu']):>6} "
              f"{format_percent(r['hfu']):>6}{busiest}")
    spread = p["spread"]
    print(f"  busiest rank {p['busiest_rank']}: "
          + ("no rank is idle" if spread is None else
             f"{100 * (spread - 1):.1f}% more hardware FLOPs per GPU than the least busy")
          + " (E embedding, L output layer and loss)")


def _print_conventions(result: dict, show_table: bool) -> None:
    peak = result["peak"]["source"]
    head = result.get("headline")
    if head is not None:
        print("\n" + headline_line(head, peak))
    if show_table:
        print("\nwhat each convention reports for this run (vs exact = vs our model FLOPs):")
        print(conventions_table(result["conventions"], peak))
    f = result.get("fp8")
    if f is not None:
        peaks, mfu = f["peak_tflops"], f["mfu"]
        low = f.get("precision", "fp8").upper()
        share = (f"\n{low} ({f['format']}, {f['recipe']}): {100 * f['fp8_share']:.1f}% of model "
                 f"FLOPs in {low} GEMMs; ")
        if peaks["bf16"] is None:   # no device: no peak to name
            print(share + f"MFU vs the bf16 and the mixed {low}/bf16 peak: n/a (give --gpu NAME "
                  f"{LIST_HINT})")
        else:
            mixed = format_optional(peaks["mixed"], ".1f")
            print(share + f"MFU {format_percent(mfu['vs_bf16'])} vs the bf16 peak "
                  f"({peaks['bf16']:g} TFLOP/s), {format_percent(mfu['vs_mixed'])} vs the mixed "
                  f"peak ({mixed} TFLOP/s)")


def _print_estimate(result: dict, model, run, breakdown, params, causal: bool,
                    world_note: str = "") -> None:
    for line in summary_lines(model, run, breakdown, params):
        print(line)
    if world_note:
        print(world_note)
    print(f"attention counted {'causal (half of QKᵀ and A·V)' if causal else 'dense (full s×s)'};"
          " elementwise ops (norms, softmax, activations) not counted")
    t = result["throughput"]
    if t is not None:
        print()
        print(f"at {t['iteration_seconds']:g} s per iteration on {gpus(run.world_size)}:")
        print(f"  samples per second:        {t['samples_per_second']:.3f}")
        print(f"  tokens per second:         {t['tokens_per_second']:.1f} "
              f"({t['tokens_per_second_per_gpu']:.1f} per GPU)")
        print(f"  model TFLOP/s per GPU:     {format_tflops(t['tflops_per_gpu']['model'])}")
        print(f"  hardware TFLOP/s per GPU:  {format_tflops(t['tflops_per_gpu']['hardware'])}")
        print(f"  MFU / HFU:                 {format_percent(t['mfu'])} / "
              f"{format_percent(t['hfu'])}   (peak: {result['peak']['source']})")
        for warning in result["warnings"]:
            print(f"  {warning}")
        for fork, value in t["legacy_tflops_per_gpu"].items():
            error = t["legacy_error"][fork]
            label = f"{fork} fork would log:"
            print(f"  {label:<27}{format_tflops(value)} TFLOPs ({format_percent(error, '+.1f')} "
                  "vs hardware)")
    if result["training_days"] is not None:
        print()
        print(f"training time: {result['training_days']:.2f} days")


def estimate_main(argv: List[str]) -> int:
    parser = command_parser("estimate", "Exact matmul FLOPs of one Megatron GPT training "
                            "iteration, by component, with throughput when a time is given.")
    parser.add_argument("--iteration-time", type=positive(float, "--iteration-time"),
                        metavar="SECONDS", help="measured seconds per iteration")
    add_peak_arguments(parser)
    parser.add_argument("--causal", action="store_true",
                        help="count half of the attention score and A·V products")
    # not --train-tokens: that is the run's own flag in both forks (read as FLOP-neutral)
    parser.add_argument("--plan-tokens", type=positive(float, "--plan-tokens"),
                        dest="train_tokens", help="token budget for a training-time estimate")
    parser.add_argument("--plan-tflops-per-gpu", type=positive(float, "--plan-tflops-per-gpu"),
                        dest="tflops_per_gpu",
                        help="achieved hardware TFLOP/s per GPU for the training-time estimate")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--memory", action="store_true",
                        help="also the memory of each pipeline stage's ranks: parameters, "
                        "gradients, optimizer state, activations by term, the peak")
    add_convention_arguments(parser)
    flags = memory_flags(argv) if "--memory" in argv else None  # refused before any output
    args, resolved = parse_resolved(parser, argv, warn_assumed="--json" in argv)
    model, run = resolved.model, resolved.run
    result, breakdown, params = _estimate(model, run, args.iteration_time, args.gpu,
                                          args.peak_tflops, args.causal, args.train_tokens,
                                          args.tflops_per_gpu, args.convention,
                                          Fp8Recipe.from_args(args), resolved.world_size_assumed)
    result["world_size_source"] = resolved.world_size_source  # None: assumed (TP × PP)
    # the provenance record: dialect, assumptions (inferred or assumed), flags noted
    result.update(resolved.as_dict())
    memory = None
    if args.memory:
        memory = memory_for(flags, args, model, run, resolved.dialect.name)
        result["memory"] = memory.to_dict()
    _add_pipeline(result, args, model, run, resolved.dialect.name, args.causal,
                  args.iteration_time)
    if args.json:
        print(json.dumps(result))
        for warning in result["warnings"]:
            print(f"megatron-flops: {warning}", file=sys.stderr)
    else:
        _print_estimate(result, model, run, breakdown, params, args.causal,
                        "\n".join(resolved.lines()))
        _print_pipeline(result)
        _print_conventions(result, args.conventions)
        if memory is not None:
            print()
            print("\n".join(memory_lines(memory)))
    return EXIT_OK
