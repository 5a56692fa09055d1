"""``megatron-flops verify``: count a reference GPT's training step with PyTorch, check the formulas.

The work (building the model, counting, attributing, comparing) is
:func:`megatron_flops.reference.verify.verify`; this module parses the flags and prints.
"""

import argparse
import json
import sys
from typing import List

from ..activations import ActivationSettings, activation_breakdown, check_modelled
from ..params import parameter_count
from ..report import describe_model, table
from .common import EXIT_MISMATCH, EXIT_OK, UsageError, command_parser, parse_command
from .memory import memory_flags


def _text(result, model, recompute) -> str:
    from ..reference.verify import PHASES
    rows = []
    for r in result.rows:
        rows.append([r.name] + [f"{r.counted[p]:,}" for p in PHASES]
                    + [f"{r.counted_total:,}", f"{r.analytic_total:,}",
                       f"{r.counted_total - r.analytic_total:+,}", "ok" if r.exact else "MISMATCH"])
    header = ["component", "forward", "backward", "recompute", "counted", "analytic", "difference", ""]
    lines = [describe_model(model),
             f"one step: batch {result.batch_size} × seq {result.seq_length}, recompute "
             f"{recompute.label}, {result.mode} tensors, dense attention (full s×s), "
             f"{result.seconds:.2f} s",
             table(rows, header, [False] + [True] * 6 + [False]),
             f"total counted {result.counted_total:,}  analytic {result.analytic_total:,}  "
             f"(FlopCounterMode total {result.flop_counter_total:,})"]
    for problem in result.problems:
        lines.append(f"problem: {problem}")
    if result.exact:
        lines.append("exact: every component matches in forward, backward and recompute")
    else:
        for r in result.mismatches:
            differing = ", ".join(f"{p} counted {r.counted[p]:,} analytic {r.analytic[p]:,}"
                                  for p in PHASES if r.counted[p] != r.analytic[p])
            lines.append(f"MISMATCH {r.name}: {differing}")
        if result.flop_counter_total != result.counted_total:
            lines.append(f"MISMATCH: FlopCounterMode counted {result.flop_counter_total:,} in all, "
                         f"{result.counted_total:,} attributed")
    return "\n".join(lines)


# verify --memory runs real tensors: the model's parameters and one micro-batch's saved bytes
MEMORY_MAX_BYTES = 2 * 10 ** 9
MEMORY_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16"}


def _verify_memory(flags, args, model, run) -> int:
    import torch

    from ..reference.saved import verify_memory
    check_modelled(model, positions=True)
    if args.meta:
        raise UsageError("--memory measures real tensors: drop --meta")
    if flags.attention_dropout != flags.hidden_dropout:
        raise UsageError(f"--attention-dropout ({flags.attention_dropout}) must equal "
                         f"--hidden-dropout ({flags.hidden_dropout}) for verify --memory: the "
                         "reference model has one dropout probability")
    if run.dtype not in MEMORY_DTYPES:
        raise UsageError(f"verify --memory runs on the CPU in fp32 or bf16, not {run.dtype} "
                         "(drop --fp16/--fp8-format)")
    dtype = getattr(torch, MEMORY_DTYPES[run.dtype])
    beta = torch.empty((), dtype=dtype).element_size()
    settings = ActivationSettings.for_reference(beta, flags.hidden_dropout > 0)
    b, s = run.micro_batch_size, run.seq_length
    model_for_count = model
    if model.position_embedding == "learned" and model.max_position_embeddings is None:
        import dataclasses
        model_for_count = dataclasses.replace(model, max_position_embeddings=s)
    needed = (parameter_count(model_for_count).total * beta
              + sum(activation_breakdown(model, b, s, settings, run.recompute).values()))
    if needed > MEMORY_MAX_BYTES:
        raise UsageError(f"verify --memory builds the model with real tensors: this shape needs "
                         f"{needed / 1e9:,.1f} GB (at most {MEMORY_MAX_BYTES / 1e9:g} GB); verify "
                         "a smaller one (fewer layers, shorter --seq-length), estimate any size")
    rows = verify_memory(model, s, b, run.recompute, flags.hidden_dropout, dtype)
    exact = all(row.matches for row in rows)
    if args.json:
        print(json.dumps({"micro_batch_size": b, "seq_length": s, "recompute": run.recompute.label,
                          "dtype": run.dtype, "dropout": flags.hidden_dropout, "exact": exact,
                          "rows": [{"terms": list(r.terms), "modules": list(r.modules),
                                    "measured_bytes": r.measured, "formula_bytes": r.formula}
                                   for r in rows],
                          "measured_bytes": sum(r.measured for r in rows),
                          "formula_bytes": sum(r.formula for r in rows)}))
    else:
        table_rows = [[" + ".join(r.terms), f"{r.measured:,}", f"{r.formula:,}",
                       f"{r.measured - r.formula:+,}", "ok" if r.matches else "MISMATCH"]
                      for r in rows]
        print(describe_model(model))
        print(f"one micro-batch: {b} × seq {s}, recompute {run.recompute.label}, {run.dtype}, "
              f"dropout {flags.hidden_dropout:g}; bytes saved for backward (each storage once, "
              "parameters excluded), measured per module with saved_tensors_hooks")
        print(table(table_rows, ["terms", "measured", "formula", "difference", ""],
                    [False, True, True, True, False]))
        print(f"total measured {sum(r.measured for r in rows):,}  formula "
              f"{sum(r.formula for r in rows):,}")
        print("exact: every term matches" if exact else "MISMATCH: see the rows above")
    return EXIT_OK if exact else EXIT_MISMATCH


# verify builds every layer as a module: 2048 of them take about a minute on two CPU cores
MAX_LAYERS = 2048


def verify_main(argv: List[str]) -> int:
    parser = command_parser("verify", "Count the matmul FLOPs of one forward+backward step of a "
                            "reference Megatron GPT of this shape with PyTorch's FlopCounterMode "
                            "and compare them, component by component, with the formulas. "
                            "Exit 0 when every component matches exactly, 1 otherwise.")
    tensors = parser.add_mutually_exclusive_group()
    tensors.add_argument("--meta", dest="meta", action="store_const", const=True, default=None,
                         help="build the model on meta tensors (no memory; default for large shapes)")
    tensors.add_argument("--real", dest="meta", action="store_const", const=False,
                         help="build the model with real tensors and run the arithmetic")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--causal", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true",
                        help="instead of FLOPs: the bytes one micro-batch saves for backward, "
                        "measured per module with saved_tensors_hooks (real tensors, CPU), "
                        "against the activation formulas")
    flags = memory_flags(argv) if "--memory" in argv else None  # refused before any output
    args, model, run = parse_command(parser, argv)
    if args.memory:
        return _verify_memory(flags, args, model, run)
    if args.causal:
        raise UsageError("--causal does not apply to verify: the reference model runs dense "
                         "attention matmuls (full s×s), compared with the dense formulas")
    if model.teacher is not None:
        raise UsageError("--kd/--mos: the reference model runs no distillation teacher; verify "
                         "the student without them (the teacher's forward is its own shape's)")
    if model.num_layers > MAX_LAYERS:
        raise UsageError(f"--num-layers ({model.num_layers}) must be at most {MAX_LAYERS} for verify, "
                         "which builds and runs every layer (~30 ms each, meta tensors, on a CPU); "
                         "layers of one kind count alike: verify fewer of them, estimate any number")
    from ..reference.verify import check_real_fits, choose_meta, verify
    shape = (model, run.seq_length, run.micro_batch_size, run.recompute,
             run.pipeline_model_parallel_size)
    if args.meta is False and choose_meta(*shape):
        check_real_fits(*shape)  # what cannot fit is refused, not warned about
        print("megatron-flops: warning: --real at this size needs much memory and time",
              file=sys.stderr)
    result = verify(*shape, args.meta)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(_text(result, model, run.recompute))
    return EXIT_OK if result.exact else EXIT_MISMATCH
