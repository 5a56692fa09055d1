"""``megatron-flops compare BASELINE [CANDIDATE]``: a throughput regression gate over finished
runs (argv and printing; the work is in :mod:`megatron_flops.logs.compare`)."""

import json
import os
import sys
from typing import List

from ..hardware import resolve_peak
from ..logs import compare as work
from ..logs.console import FORKS
from ..report import describe_model, format_percent, parse_fraction
from .common import (EXIT_MISMATCH, EXIT_OK, UsageError, add_peak_arguments, command_parser,
                     parse_flags_over_log, print_flag_report)
from .relog import dump_peak

DESCRIPTION = (
    "Compare the steady-state throughput of two finished runs: median tokens/s per GPU, model "
    "and hardware TFLOP/s per GPU, MFU and HFU over the logged intervals after --warmup, with "
    "their interquartile range. Exit 1 when the candidate's --metric is more than --threshold "
    "below the baseline's, or (one run or two) when the median MFU is below --min-mfu. Each run "
    "is relog --json output (JSON lines), or a console log / TensorBoard run recomputed as relog "
    "does: the model flags from the log's arguments dump, flags given here override it.")


def compare_main(argv: List[str]) -> int:
    parser = command_parser("compare", DESCRIPTION)
    parser.add_argument("baseline", metavar="BASELINE", help="relog --json output, console log "
                        "or TensorBoard run of the reference run")
    parser.add_argument("candidate", metavar="CANDIDATE", nargs="?",
                        help="the run to judge (omit with --min-mfu to check one run)")
    add_peak_arguments(parser)
    parser.add_argument("--threshold", default="5%",
                        help="how far below the baseline the candidate may fall (5%% or 0.05; "
                             "default 5%%)")
    parser.add_argument("--metric", default="model_tflops_per_gpu", choices=work.METRICS,
                        help="the median that is gated (default model_tflops_per_gpu)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="logged intervals dropped at the start of each run (default 1)")
    parser.add_argument("--min-mfu", help="fail when a run's median MFU is below this "
                        "(e.g. 40%% or 0.4; needs the peak)")
    parser.add_argument("--fork", choices=("auto",) + FORKS, default="auto",
                        help="which fork wrote console logs (default: from each line)")
    parser.add_argument("--causal", action="store_true",
                        help="count half of the attention products (console logs and TensorBoard)")
    parser.add_argument("--markdown", action="store_true",
                        help="print a Markdown table of the runs (the columns people publish)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    paths = []
    for item in argv[:2]:  # BASELINE [CANDIDATE] come before the flags
        if item.startswith("-"):
            break
        paths.append(item)
    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"{path!r} does not exist (BASELINE and CANDIDATE come first)")
    need_flags = any(not work.is_json_lines(p) for p in paths)
    given = None
    if need_flags:   # console logs and TensorBoard runs: the flags over each log's dump
        args, given, report, unknown = parse_flags_over_log(parser, argv)
        print_flag_report(report, unknown)
    else:
        args = parser.parse_known_args(argv)[0]
    model = run = None
    threshold = parse_fraction(args.threshold, "--threshold")
    min_mfu = None if args.min_mfu is None else parse_fraction(args.min_mfu, "--min-mfu")
    if args.warmup < 0:
        raise UsageError(f"--warmup must not be negative, got {args.warmup}")
    if args.candidate is None and min_mfu is None:
        raise UsageError("give CANDIDATE to compare with BASELINE, or --min-mfu to check one run")
    segments = []

    def peak_tflops_for(segment):
        """As relog: --gpu / --peak-tflops, else the peak the log's dump names."""
        peak = dump_peak(args, segment) or resolve_peak(args.gpu, segment.run.dtype,
                                                        args.peak_tflops)
        return peak.tflops

    def load(path):
        if work.is_json_lines(path):
            records = work.read_json_lines(path)
        else:
            records, notes = work.read_log_records(path, args, None, None, peak_tflops_for,
                                                   args.causal,
                                                   None if args.fork == "auto" else args.fork,
                                                   given, segments)
            for note in notes:
                print(f"megatron-flops: {path}: {note}", file=sys.stderr)
        return work.summarise(path, records, args.warmup)

    runs = [load(p) for p in (args.baseline, args.candidate) if p is not None]
    if segments:   # the shapes the markdown table names: the first log's
        model, run = segments[0].model, segments[0].run
    result = work.compare(runs[0], runs[1], args.metric, threshold) if len(runs) == 2 else None
    low_mfu = []
    if min_mfu is not None:
        for summary in runs:
            mfu = summary.metrics["mfu"]
            if mfu is None:
                raise UsageError(f"--min-mfu: {summary.path} has no MFU (give --gpu NAME or "
                                 "--peak-tflops X, or relog it with them)")
            if not mfu.median >= min_mfu:  # fails closed: a NaN median never passes
                low_mfu.append(summary)
    failed = bool(low_mfu) or (result is not None and result.regressed)
    if args.json:
        print(json.dumps({"runs": [r.to_dict() for r in runs],
                          "comparison": None if result is None else result.to_dict(),
                          "min_mfu": min_mfu, "below_min_mfu": [r.path for r in low_mfu],
                          "failed": failed}))
        return EXIT_MISMATCH if failed else EXIT_OK
    if args.markdown:
        print(work.markdown_table(runs, "n/a" if model is None else describe_model(model),
                                  "n/a" if run is None else run.dtype,
                                  "n/a" if run is None else run.recompute.label))
        if result is not None:
            print()
            print(work.comparison_lines(result)[-1])
    elif result is not None:
        print("\n".join(work.comparison_lines(result)))
    else:
        print("\n".join(work.single_lines(runs[0])))
    for summary in low_mfu:
        print(f"MFU below --min-mfu: {summary.path} median "
              f"{format_percent(summary.metrics['mfu'].median)} < {100 * min_mfu:g}%")
    return EXIT_MISMATCH if failed else EXIT_OK
