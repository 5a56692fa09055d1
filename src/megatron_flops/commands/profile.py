"""``megatron-flops profile TRACE [model/run flags] [--arguments-from LOG]``: where an
iteration's time went, per component, from a PyTorch profiler trace (the work is
:mod:`megatron_flops.profile`).  The shapes come from the flags, or from a training log's
arguments dump (:func:`megatron_flops.logs.segments.segment_from_log`, as ``relog`` reads it)
with the flags typed laid over it."""

import json
import sys
from typing import List

from .common import (EXIT_OK, UsageError, add_peak_arguments, command_parser,
                     parse_flags_over_log, print_flag_report)

# profile's own option (no Megatron parser has it): the log whose arguments dump gives the shapes
ARGUMENTS_FROM = "--arguments-from"


def _shapes(parser, argv: List[str]):
    """(args, model, run, segment): the shapes from the flags, or (``--arguments-from``) from
    the log's arguments dump with the flags typed laid over it (``segment``: where each value
    came from; None without a log).  Nothing is printed before the shapes are settled, so an
    error stays one line."""
    from ..logs.segments import segment_from_log
    from ..megatron.args import shapes_from_args
    args, given, report, unknown = parse_flags_over_log(parser, argv)
    segment = None
    if args.arguments_from is None:
        model, run = shapes_from_args(args)
    else:
        try:
            segment = segment_from_log(args, given, args.arguments_from)
        except ValueError as error:  # a ShapeError too: its message names the flag
            raise UsageError(f"{ARGUMENTS_FROM}: {error}") from None
        model, run = segment.model, segment.run
    print_flag_report(report, unknown)
    for note in segment.notes if segment is not None else ():
        print(f"megatron-flops: {note}", file=sys.stderr)
    return args, model, run, segment


def profile_main(argv: List[str]) -> int:
    parser = command_parser(
        "profile", "Join a torch.profiler Chrome trace (record_shapes=True, one ProfilerStep "
        "per iteration) with the exact FLOPs of the model and run given by Megatron flags "
        f"or read from a training log's arguments dump ({ARGUMENTS_FROM} LOG): "
        "per component calls, FLOPs, time, TFLOP/s, % of peak and of the iteration; the rest "
        "of the iteration by category.")
    parser.add_argument("trace", metavar="TRACE", help="the trace (.json or .json.gz) of one rank")
    parser.add_argument("--steps", type=int, nargs="+", metavar="N",
                        help="ProfilerStep numbers to use (default: all in the trace)")
    parser.add_argument("--png", metavar="PATH",
                        help="write the MFU waterfall and per-component bars (needs matplotlib)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(ARGUMENTS_FROM, metavar="LOG", dest="arguments_from",
                        help="read the model and run shape from this training log's arguments "
                             "dump (console log of either fork or of Megatron-LM, or a folder "
                             "of one run's logs); flags typed here override it")
    add_peak_arguments(parser)
    args, model, run, segment = _shapes(parser, argv)
    from ..hardware import resolve_peak
    from ..profile.attribute import attribute
    from ..profile.report import profile_dict, table_lines
    from ..profile.trace import load_trace
    trace = load_trace(args.trace)
    peak = resolve_peak(args.gpu or trace.device_name(), run.dtype, args.peak_tflops)
    profile = attribute(trace, model, run, args.steps, peak.tflops, peak.source)
    if args.png:
        from ..profile.plot import write_png
        write_png(profile, args.png)
    if args.json:
        result = profile_dict(profile)
        if segment is not None:
            result["arguments_from"] = {"path": args.arguments_from,
                                        "sources": dict(segment.sources)}
        print(json.dumps(result))
    else:
        if segment is not None:
            print(f"shapes from {args.arguments_from}: {segment.world_size_line()}")
            for line in segment.provenance_lines():
                print(f"  {line}")
            print()
        print("\n".join(table_lines(profile)))
        if args.png:
            print(f"picture: {args.png}")
    return EXIT_OK
