"""``megatron-flops relog``: the true TFLOP/s, MFU and HFU of every interval a past run logged.

The flags and the printing; the work is :mod:`megatron_flops.logs.relog` (intervals and
statistics) and :mod:`megatron_flops.logs.outputs` (the sinks each interval goes to).
"""

import json
import os
import sys
from typing import List, TextIO

from .common import EXIT_OK, UsageError, add_peak_arguments, command_parser, parse_command


def _check_outputs(args) -> None:
    """Refuse an output that cannot be written before anything is read."""
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            from matplotlib.figure import Figure
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'megatron-flops[plot]'") from None
        extension = os.path.splitext(args.plot)[1].lstrip(".").lower()
        supported = Figure().canvas.get_supported_filetypes()
        if extension not in supported:
            raise UsageError(f"--plot {args.plot!r}: the file name must end in one of "
                             f"{', '.join('.' + e for e in sorted(supported))} (e.g. .png)")
    for flag, target in (("--csv", args.csv), ("--plot", args.plot)):
        if target:
            folder = os.path.dirname(os.path.abspath(target))
            if not os.path.isdir(folder):
                raise UsageError(f"{flag} {target!r}: folder {folder!r} does not exist")
    if args.tensorboard_dir:
        if os.path.abspath(args.tensorboard_dir) == os.path.abspath(args.path):
            raise UsageError("--tensorboard-dir must differ from PATH: the corrected run is "
                             "written beside the original, not into it")
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UsageError("--tensorboard-dir needs tensorboard: "
                             "pip install 'megatron-flops[tensorboard]'") from None


def relog_main(argv: List[str]) -> int:
    from ..logs.console import FORKS
    parser = command_parser(
        "relog", "Recompute the true TFLOP/s per GPU, MFU and HFU of every interval a "
        "Megatron-DeepSpeed run logged (console log or TensorBoard run directory), and the "
        "logged TFLOPs' error.")
    parser.add_argument("path", metavar="PATH",
                        help="console log of either fork ('-' reads stdin), or a TensorBoard "
                             "run directory / event file")
    add_peak_arguments(parser)
    parser.add_argument("--fork", choices=("auto",) + FORKS, default="auto",
                        help="which fork wrote the log (default: from the time unit per line)")
    parser.add_argument("--causal", action="store_true",
                        help="count half of the attention score and A·V products")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per interval on stdout; summary (JSON) on stderr")
    parser.add_argument("--csv", metavar="OUT", help="write one CSV row per interval")
    parser.add_argument("--tensorboard-dir", metavar="OUT",
                        help="write the corrected curves as a new TensorBoard run")
    parser.add_argument("--plot", metavar="OUT.png",
                        help="draw logged vs corrected TFLOP/s (and MFU/HFU) over iterations")
    args, model, run = parse_command(parser, argv)
    if args.path != "-" and not os.path.exists(args.path):
        raise UsageError(f"PATH {args.path!r} does not exist")
    _check_outputs(args)
    # `relog log | head`: the dispatcher ends a closed pipe quietly, for every command
    return _relog_command(args, model, run, sys.stdout, sys.stderr)


def _relog_command(args, model, run, out: TextIO, err: TextIO) -> int:
    from ..hardware import resolve_peak
    from ..logs import outputs
    from ..logs.console import ParseStats
    from ..logs.relog import Relogger, Summary, read_records, settle_run
    from ..report import describe_model

    fork = None if args.fork == "auto" else args.fork
    peak = resolve_peak(args.gpu, run.dtype, args.peak_tflops)
    stats = ParseStats()
    relogger = None
    summary = Summary()
    # the files are opened before the log is read (an unwritable one fails first) and
    # closed whatever happens; the plot is drawn only once every interval is in
    files = []
    try:
        if args.csv:
            files.append(outputs.CsvOutput(args.csv))
        if args.tensorboard_dir:
            files.append(outputs.TensorBoardOutput(args.tensorboard_dir))
        sinks = [outputs.JsonOutput(out) if args.json else outputs.TableOutput(out), *files]
        for record in read_records(args.path, stats, fork):
            if relogger is None:
                model, run, notes = settle_run(args, model, run, stats, record)
                for note in notes:
                    print(f"megatron-flops: {note}", file=err)
                relogger = Relogger(model, run, peak.tflops, args.causal, fork)
                if args.plot:
                    title = (f"{describe_model(model)}\nrecompute {run.recompute.label}; "
                             f"{run.world_size} GPUs; "
                             f"{os.path.basename(args.path.rstrip('/'))}")
                    plot = outputs.PlotOutput(args.plot, title, peak.tflops)
                    sinks.append(plot)
            interval = relogger.add(record)
            if interval is None:
                continue
            summary.add(interval)
            for sink in sinks:
                sink.add(interval)
    finally:
        for sink in files:
            sink.close()
    if summary.intervals == 0:
        raise UsageError(
            f"no training_log iteration lines in {args.path!r} ({stats.lines} lines read, "
            f"{stats.malformed} unparsed iteration lines)")
    result = summary.as_dict(run.world_size, stats, relogger, peak)
    if args.json:
        print(json.dumps({"summary": result}), file=err)
    else:
        print(file=out)
        for line in outputs.summary_lines(result):
            print(line, file=out)
    if args.plot:
        plot.close()
        print(f"plot written to {args.plot}", file=err)
    return EXIT_OK
