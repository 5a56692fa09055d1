"""``megatron-flops verify``: count a reference GPT's training step with PyTorch, check the formulas.

The work (building the model, counting, attributing, comparing) is
:func:`megatron_flops.reference.verify.verify`; this module parses the flags and prints.
"""

import argparse
import json
import sys
from typing import List

from ..report import describe_model, table
from .common import EXIT_MISMATCH, EXIT_OK, UsageError, command_parser, parse_command


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
    args, model, run = parse_command(parser, argv)
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
