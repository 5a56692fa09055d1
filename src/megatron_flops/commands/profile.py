"""``megatron-flops profile TRACE [model/run flags]``: where an iteration's time went, per
component, from a PyTorch profiler trace (the work is :mod:`megatron_flops.profile`)."""

import json
from typing import List

from .common import EXIT_OK, add_peak_arguments, command_parser, parse_command


def profile_main(argv: List[str]) -> int:
    parser = command_parser(
        "profile", "Join a torch.profiler Chrome trace (record_shapes=True, one ProfilerStep "
        "per iteration) with the exact FLOPs of the model and run given by Megatron flags: "
        "per component calls, FLOPs, time, TFLOP/s, %% of peak and of the iteration; the rest "
        "of the iteration by category.")
    parser.add_argument("trace", metavar="TRACE", help="the trace (.json or .json.gz) of one rank")
    parser.add_argument("--steps", type=int, nargs="+", metavar="N",
                        help="ProfilerStep numbers to use (default: all in the trace)")
    parser.add_argument("--png", metavar="PATH",
                        help="write the MFU waterfall and per-component bars (needs matplotlib)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_peak_arguments(parser)
    args, model, run = parse_command(parser, argv)
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
        print(json.dumps(profile_dict(profile)))
    else:
        print("\n".join(table_lines(profile)))
        if args.png:
            print(f"picture: {args.png}")
    return EXIT_OK
