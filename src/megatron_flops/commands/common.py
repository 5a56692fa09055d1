"""What every command shares: exit codes, the usage error, the parser and its flag types."""

import argparse
import math
import sys
from typing import List, Sequence

from ..errors import UsageError
from ..logs.arguments import given_destinations
from ..megatron.args import (add_megatron_arguments, check_flags, ignored_flags,
                             megatron_argument_parser, parse_megatron_args)
from ..megatron.resolve import ASSUMED, resolve_command

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130   # 128 + SIGINT: what a shell reports for Ctrl-C


def fail(message: str) -> int:
    print(f"megatron-flops: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_guarded(function, argv: Sequence[str]) -> int:
    """Run a sub-command; turn bad input (a :class:`~megatron_flops.errors.UsageError`, a
    ``ShapeError`` among them) into one clear line and exit code 2.  Any other exception is
    a bug and keeps its traceback."""
    try:
        return function(list(argv))
    except UsageError as error:
        return fail(str(error))


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def command_parser(prog: str, description: str) -> argparse.ArgumentParser:
    # "resolve": a command may define a Megatron flag for itself (the demo's --deepspeed)
    parser = Parser(prog=f"megatron-flops {prog}", description=description, allow_abbrev=False,
                    conflict_handler="resolve")
    add_megatron_arguments(parser)
    return parser


def parse_resolved(parser: argparse.ArgumentParser, argv: List[str], quiet: bool = False,
                   warn_assumed: bool = True):
    """Parse a pasted command (launcher words and all) and resolve it; report the ignored
    flags and (``warn_assumed``) what was assumed once on stderr; return (args, resolved):
    ``resolved`` (:class:`~megatron_flops.megatron.resolve.ResolvedRun`) holds the shapes,
    the dialect and the provenance record."""
    args, resolved, report, unknown = resolve_command(argv, parser)  # raises before printing
    if not quiet:
        print_flag_report(report, unknown, launcher=resolved.launcher is not None)
        if warn_assumed:
            for assumption in resolved.assumptions:
                if assumption.kind == ASSUMED and assumption.warn:
                    print(f"megatron-flops: warning: {assumption.line()}", file=sys.stderr)
    return args, resolved


def parse_command(parser: argparse.ArgumentParser, argv: List[str], quiet: bool = False):
    """Parse known flags, report ignored ones once on stderr; return (args, model, run)."""
    args, resolved = parse_resolved(parser, argv, quiet)
    return args, resolved.model, resolved.run


def print_flag_report(report, unknown: List[str], launcher: bool = False) -> None:
    """The flag catalogue's lines on stderr, then the stray words (not flags, not the pasted
    script) that were ignored, said once."""
    for line in report.lines():
        print(line, file=sys.stderr)
    stray = [u for u in unknown if not u.startswith("-")]
    if launcher and stray and stray[0].endswith(".py"):
        stray = stray[1:]  # the script a launcher ran
    if stray and not ignored_flags(unknown) and not all(s.endswith(".py") for s in stray):
        print(f"megatron-flops: ignoring arguments: {' '.join(stray)}", file=sys.stderr)


def parse_flags_over_log(parser: argparse.ArgumentParser, argv: List[str]):
    """(args, given, report, unknown) for a command whose shapes may come from a log's
    arguments dump: the flags parsed, no shape derived yet; ``given``: the ``dest`` of every
    Megatron flag actually typed (they override the dump); ``report``: the flag catalogue's
    note on the ``unknown`` flags (unsupported ones raise), for the caller to print."""
    args, unknown = parse_megatron_args(argv, parser)
    megatron = {action.dest for action in megatron_argument_parser()._actions} | {"log_interval"}
    given = given_destinations(parser, argv) & (megatron - {"strict_flags", "lenient_flags",
                                                             "framework"})
    report = check_flags(unknown, getattr(args, "strict_flags", False),
                         lenient=getattr(args, "lenient_flags", False))
    return args, given, report, unknown


def positive(kind, flag):
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}")
        if not value > 0 or not math.isfinite(value):  # nan, inf: no count divides by them
            raise argparse.ArgumentTypeError(f"{flag} must be positive and finite, got {text}")
        return value
    return convert


def add_convention_arguments(parser: argparse.ArgumentParser) -> None:
    """--conventions / --convention NAME (estimate and relog; Megatron-LM's FP8 flags are read
    with the others)."""
    parser.add_argument("--conventions", action="store_true",
                        help="table of what each framework's formula reports for this run")
    parser.add_argument("--convention", metavar="NAME",
                        help="make one convention the headline (palm, megatron-lm@2024-04, …)")


def add_peak_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpu", help="device name for the peak table (a100, h100-sxm, h200, "
                                      "…; `megatron-flops peak --list` lists them)")
    parser.add_argument("--peak-tflops", type=positive(float, "--peak-tflops"),
                        help="dense peak TFLOP/s per GPU, overrides the table")
