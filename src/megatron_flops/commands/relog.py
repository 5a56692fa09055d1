"""``megatron-flops relog``: the true TFLOP/s, MFU and HFU of every interval a past run logged.

The flags and the printing; the work is :mod:`megatron_flops.logs.relog` (the driver: files
in, intervals out, through :mod:`~megatron_flops.logs.reading`, :mod:`~megatron_flops.logs.segments`
and :mod:`~megatron_flops.logs.intervals`), :mod:`megatron_flops.logs.summary` (the statistics)
and :mod:`megatron_flops.logs.outputs` (the sinks each interval goes to).

The model flags are optional: what the log's arguments dump holds is read from it, and a
flag typed here overrides it.  Shapes are therefore settled only once the log's first
iteration line is read (and again at each restart's new dump).
"""

import json
import os
import sys
from typing import List, TextIO

from ..conventions import convention
from ..hardware import Peak, resolve_peak
from ..logs import outputs
from ..logs.console import FORKS, ParseStats
from ..logs.relog import relog_run
from ..logs.summary import Summary
from ..megatron.args import ignored_flags
from ..megatron.bridge_config import load_config_yaml, typed_flags
from ..report import describe_model, gpus
from .common import (EXIT_OK, UsageError, add_convention_arguments, add_peak_arguments,
                     command_parser, parse_flags_over_log, positive, print_flag_report)

# relog's own output option; the run's own --tensorboard-dir (in a pasted command line) is
# FLOP-neutral and ignored (before issue 10 relog used that name for this output)
WRITE_TENSORBOARD = "--write-tensorboard"


def _check_outputs(args) -> None:
    """Refuse an output that cannot be written before anything is read."""
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            from matplotlib.figure import Figure
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install -e '.[plot]' in a megatron-flops clone") from None
        extension = os.path.splitext(args.plot)[1].lstrip(".").lower()
        supported = Figure().canvas.get_supported_filetypes()
        if extension not in supported:
            raise UsageError(f"--plot {args.plot!r}: the file name must end in one of "
                             f"{', '.join('.' + e for e in sorted(supported))} (e.g. .png)")
    inputs = [os.path.abspath(path) for path in args.paths if path != "-"]
    targets = []
    for flag, target in (("--csv", args.csv), ("--plot", args.plot)):
        if target:
            folder = os.path.dirname(os.path.abspath(target))
            if not os.path.isdir(folder):
                raise UsageError(f"{flag} {target!r}: folder {folder!r} does not exist")
            if any(_same_file(target, path) for path in inputs):
                raise UsageError(f"{flag} {target!r} is one of the logs read (PATH): write "
                                 "the output to another file")
            if any(_same_file(target, other) for _, other in targets):
                raise UsageError(f"{flag} {target!r} is also {targets[0][0]}'s file")
            targets.append((flag, target))
    if args.write_tensorboard:
        if any(os.path.abspath(args.write_tensorboard) == os.path.abspath(path)
               for path in args.paths):
            raise UsageError(f"{WRITE_TENSORBOARD} must differ from PATH: the corrected run is "
                             "written beside the original, not into it")
        if os.path.exists(args.write_tensorboard) and not os.path.isdir(args.write_tensorboard):
            raise UsageError(f"{WRITE_TENSORBOARD} {args.write_tensorboard!r} is a file, not a "
                             "folder")
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UsageError(f"{WRITE_TENSORBOARD} needs tensorboard: "
                             "pip install -e '.[tensorboard]' in a megatron-flops clone") from None


def _same_file(a: str, b: str) -> bool:
    a, b = os.path.abspath(a), os.path.abspath(b)
    try:
        return a == b or os.path.samefile(a, b)
    except OSError:   # one of them does not exist (yet)
        return False


def _parse(parser, argv: List[str]):
    """(args, the Megatron flags typed): the shapes wait for the log's arguments dump."""
    args, given, report, unknown = parse_flags_over_log(parser, argv)
    # the flag catalogue, as every command reads it: unsupported ones are an error
    print_flag_report(report, unknown)
    if "--tensorboard-dir" in ignored_flags(unknown):
        print(f"megatron-flops: --tensorboard-dir is the run's own flag (ignored); relog writes "
              f"its corrected TensorBoard run with {WRITE_TENSORBOARD} DIR", file=sys.stderr)
    return args, given


def relog_main(argv: List[str]) -> int:
    parser = command_parser(
        "relog", "Recompute the true TFLOP/s per GPU, MFU and HFU of every interval a "
        "Megatron-DeepSpeed or NVIDIA Megatron-LM run logged (console logs, Megatron-LM's "
        "progress.txt, or a TensorBoard run directory), and the "
        "logged TFLOPs' error.  Model flags are read from the log's arguments dump; flags "
        "given here override it.")
    parser.add_argument("paths", metavar="PATH", nargs="+",
                        help="console log of either fork or of Megatron-LM ('-' reads stdin), "
                             "Megatron-LM's progress.txt, several of one "
                             "run's logs or a folder of them (*.log, *.txt, *.out; read in "
                             "iteration order), or a TensorBoard run directory / event file")
    add_peak_arguments(parser)
    # the run's own flag, read with its meaning: which lines are one log interval apart
    parser.add_argument("--log-interval", type=positive(int, "--log-interval"),
                        help="the run's --log-interval (default: the log's arguments dump, "
                             "else the common step of the logged iterations)")
    parser.add_argument("--fork", choices=("auto",) + FORKS, default="auto",
                        help="which framework wrote the log (default: from each line's fields, "
                             "else the arguments dump)")
    parser.add_argument("--causal", action="store_true",
                        help="count half of the attention score and A·V products")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per interval on stdout; summary (JSON) on stderr")
    parser.add_argument("--csv", metavar="OUT", help="write one CSV row per interval")
    parser.add_argument(WRITE_TENSORBOARD, metavar="DIR", dest="write_tensorboard",
                        help="write the corrected curves as a new TensorBoard run in DIR (a "
                             "folder that holds event files already is refused: see --append)")
    parser.add_argument("--append", action="store_true",
                        help=f"with {WRITE_TENSORBOARD}: add the event file to a folder that "
                             "holds a run already (TensorBoard then shows both as one run)")
    parser.add_argument("--plot", metavar="OUT.png",
                        help="draw logged vs corrected TFLOP/s (and MFU/HFU) over iterations")
    parser.add_argument("--bridge-config", metavar="CONFIG.yaml",
                        help="a Megatron-Bridge run's saved ConfigContainer YAML: its model, "
                             "train and dataset fields as if typed (flags typed here override "
                             "it); the lines are then read as Megatron-Bridge's")
    add_convention_arguments(parser)
    args, given = _parse(parser, argv)
    if args.bridge_config is not None:
        _lay_bridge_config(args, given)
    if args.convention is not None:
        convention(args.convention)   # an unknown name fails before the log is read
    # a pasted command line's script (pretrain_gpt.py) is not a log
    scripts = [path for path in args.paths if path.endswith(".py")]
    args.paths = [path for path in args.paths if not path.endswith(".py")]
    if scripts:
        print(f"megatron-flops: ignoring arguments: {' '.join(scripts)}", file=sys.stderr)
    if not args.paths:
        raise UsageError("PATH is required: a console log, a folder of them or a TensorBoard "
                         "run (a .py script is not a log)")
    for path in args.paths:
        if path != "-" and not os.path.exists(path):
            raise UsageError(f"PATH {path!r} does not exist")
    _check_outputs(args)
    # `relog log | head`: the dispatcher ends a closed pipe quietly, for every command
    return _relog_command(args, given, sys.stdout, sys.stderr)


def _lay_bridge_config(args, given: set) -> None:
    """A Bridge YAML's fields as typed flags, under the ones really typed (issue 21)."""
    config = load_config_yaml(args.bridge_config)
    for dest, value in typed_flags(config).items():
        if dest not in given:
            setattr(args, dest, value)
            given.add(dest)
    if args.fork == "auto":
        args.fork = "megatron-bridge"


def dump_peak(args, segment):
    """The peak the log's own arguments dump names (``megatron-flops demo`` writes the one its
    MFU was measured against: ``peak_tflops``, or ``gpu``) when neither --gpu nor
    --peak-tflops is typed here; else None.  Megatron's own dumps have neither."""
    if args.gpu is not None or args.peak_tflops is not None:
        return None
    logged_peak = getattr(segment.namespace, "peak_tflops", None)
    if isinstance(logged_peak, (int, float)) and not isinstance(logged_peak, bool) \
            and logged_peak > 0:
        return Peak(float(logged_peak), f"the log's arguments: peak_tflops {logged_peak:g} "
                                        "TFLOP/s (the run's own peak)")
    logged_gpu = getattr(segment.namespace, "gpu", None)
    if isinstance(logged_gpu, str) and logged_gpu:
        found = resolve_peak(logged_gpu, segment.run.dtype)
        return found if found.tflops else None
    return None


def _relog_command(args, given, out: TextIO, err: TextIO) -> int:

    fork = None if args.fork == "auto" else args.fork
    stats = ParseStats()
    peak = []  # resolved once, for the first segment's dtype
    summary = Summary()
    # every output file is made (as a temporary file beside its name) before the log is
    # read, so an unwritable one fails first; each is renamed into place only once the
    # whole command has succeeded, and removed when anything fails (logs/pending.py)
    files = []
    done = False
    rows = outputs.JsonOutput(out) if args.json else outputs.TableOutput(out)
    try:
        if args.csv:
            files.append(outputs.CsvOutput(args.csv))
        if args.write_tensorboard:
            files.append(outputs.TensorBoardOutput(args.write_tensorboard, args.append))
        plot = None
        if args.plot:
            plot = outputs.PlotOutput(args.plot)
            files.append(plot)
        sinks = [rows, *files]
        last = []  # the relogger and the segment of the last run shape
        _relog_intervals(args, given, out, err, sinks, plot, summary, stats, fork, peak, last)
        rows.flush()
        _summary(args, out, err, summary, stats, peak, last)
        if plot is not None:
            plot.draw()
        for sink in files:
            sink.close()
        done = True
    finally:
        if not done:
            for sink in files:
                sink.discard()
            rows.flush()   # the rows read before the failure, as they came
    if args.plot:
        print(f"plot written to {args.plot}", file=err)
    return EXIT_OK


def _relog_intervals(args, given, out, err, sinks, plot, summary, stats, fork, peak,
                     last) -> None:
    """Every interval of the logs into ``sinks`` and ``summary``."""
    relogger = None

    def peak_tflops_for(segment):
        """--gpu / --peak-tflops, else the peak the log's own dump names (the demo's)."""
        peak.append(dump_peak(args, segment) or resolve_peak(args.gpu, segment.run.dtype,
                                                             args.peak_tflops))
        return peak[0].tflops

    add_summary = summary.add
    adds = [sink.add for sink in sinks]
    for relogger_now, new_segment, interval in relog_run(args.paths, args, given, stats,
                                                         peak_tflops_for, args.causal, fork):
        if new_segment is None:   # the per-line path
            add_summary(interval)
            for add in adds:
                add(interval)
            continue
        # a new segment (the first line, a restart's new arguments dump)
        sinks[0].flush()     # the rows so far before the new segment's heading
        first = relogger is None
        relogger, segment = relogger_now, new_segment
        summary.add_segment(segment)
        last[:] = [relogger, segment]
        for note in segment.notes:
            print(f"megatron-flops: {note}", file=err)
        if not args.json:
            heading = ("sources" if first else f"from iteration "
                       f"{segment.first_iteration} (a new arguments dump)")
            print(f"{heading}: {segment.world_size_line()}", file=out)
            for line in segment.provenance_lines():
                print(f"  {line}", file=out)
            print(file=out)
        if first and plot is not None:
            run = segment.run
            plot.title = (f"{describe_model(segment.model)}\nrecompute "
                          f"{run.recompute.label}; {gpus(run.world_size)}; "
                          f"{os.path.basename(args.paths[0].rstrip('/'))}")
            plot.peak_tflops = peak[0].tflops


def _summary(args, out, err, summary, stats, peak, last) -> None:
    """The checks that there was something to relog, then the summary."""
    from ..logs import outputs
    from ..logs.console import MAX_LINE_CHARACTERS
    if summary.intervals == 0 and summary.startup_iterations:
        raise UsageError(
            f"only start-up intervals in {' '.join(map(repr, args.paths))} (Megatron-LM's "
            "iteration 1 and the line after it, or progress.txt's first save of each job): "
            "nothing to take statistics over")
    if summary.intervals == 0:
        raise UsageError(
            f"no training_log iteration lines in {' '.join(map(repr, args.paths))} "
            f"({stats.lines} lines read, {stats.malformed} unparsed iteration lines"
            + (f", {stats.overlong} longer than {MAX_LINE_CHARACTERS:,} characters skipped"
               if stats.overlong else "") + ")")
    relogger, segment = last
    result = summary.as_dict(segment.run.world_size, stats, relogger, peak[0], args.convention)
    if args.json:
        print(json.dumps({"summary": result}), file=err)
        for warning in outputs.read_warnings(result["parse"]):  # a person reads stderr too
            print(f"megatron-flops: {warning}", file=err)
    else:
        print(file=out)
        for line in outputs.summary_lines(result):
            print(line, file=out)
        conventions = outputs.convention_lines(result, args.conventions)
        if conventions:
            print(file=out)
        for line in conventions:
            print(line, file=out)
        for warning in result["warnings"] + outputs.read_warnings(result["parse"]):
            print(f"megatron-flops: {warning}", file=err)  # the table's summary has them too
