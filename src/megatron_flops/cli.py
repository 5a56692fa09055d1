"""``megatron-flops`` command line: one sub-command per job.

Sub-commands live in their own modules and are imported only when chosen, so ``estimate``
never imports torch.  Every bad input ends with one line on stderr naming the flag, exit 2.
"""

import argparse
import importlib
import json
import sys
from typing import List, Optional, Sequence

from .shapes import ShapeError

# name -> (module, function, one-line help)
COMMANDS = {
    "estimate": ("megatron_flops.cli", "estimate_main",
                 "FLOPs breakdown, parameters, throughput and MFU for Megatron flags"),
    "demo": ("megatron_flops.demo.train", "demo_main",
             "train the reference GPT on text with live TFLOP/s, MFU and HFU (needs torch)"),
    "peak": ("megatron_flops.demo.peak", "peak_main",
             "measure this device's achievable dense matmul TFLOP/s per dtype (needs torch)"),
    "verify": ("megatron_flops.reference.verify", "verify_main",
               "count one training step of a reference GPT with PyTorch and check the formulas"),
    "patch": ("megatron_flops.megatron.patch", "patch_main",
              "route a Megatron-DeepSpeed checkout's throughput reporting through megatron-flops"),
    "relog": ("megatron_flops.logs.relog", "relog_main",
              "true TFLOP/s, MFU and the logged TFLOPs' error for a past run's log or TensorBoard run"),
}

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def fail(message: str) -> int:
    print(f"megatron-flops: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_guarded(function, argv: Sequence[str]) -> int:
    """Run a sub-command; turn bad input into one clear line and exit code 2."""
    try:
        return function(list(argv))
    except (ShapeError, UsageError, ValueError) as error:
        return fail(str(error))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: megatron-flops COMMAND [flags]\n\ncommands:")
        for name, (_, _, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        print("\n'megatron-flops COMMAND --help' describes a command's flags.")
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] in ("--version", "version"):
        from . import __version__
        print(__version__)
        return EXIT_OK
    name = argv[0]
    if name not in COMMANDS:
        return fail(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")
    module, function, _ = COMMANDS[name]
    return run_guarded(getattr(importlib.import_module(module), function), argv[1:])


# ---- shared flag handling ----------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def command_parser(prog: str, description: str) -> argparse.ArgumentParser:
    from .megatron.args import add_megatron_arguments
    parser = _Parser(prog=f"megatron-flops {prog}", description=description, allow_abbrev=False)
    add_megatron_arguments(parser)
    return parser


def parse_command(parser: argparse.ArgumentParser, argv: List[str], quiet: bool = False):
    """Parse known flags, report ignored ones once on stderr; return (args, model, run)."""
    from .megatron.args import ignored_flags, shapes_from_args
    args, unknown = parser.parse_known_args([a for a in argv if a != "\\"])
    ignored = ignored_flags(unknown)
    stray = [u for u in unknown if not u.startswith("-")]
    if ignored and not quiet:
        print(f"megatron-flops: ignoring flags that do not change FLOPs: {' '.join(ignored)}",
              file=sys.stderr)
    if stray and not ignored and not quiet and not all(s.endswith(".py") for s in stray):
        print(f"megatron-flops: ignoring arguments: {' '.join(stray)}", file=sys.stderr)
    model, run = shapes_from_args(args)
    return args, model, run


def positive(kind, flag):
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}")
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{flag} must be positive, got {text}")
        return value
    return convert


def add_peak_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpu", help="device name for the peak table (a100, h100-sxm, h200, …)")
    parser.add_argument("--peak-tflops", type=positive(float, "--peak-tflops"),
                        help="dense peak TFLOP/s per GPU, overrides the table")


# ---- estimate ----------------------------------------------------------------------------

def estimate(model, run, iteration_seconds=None, gpu=None, peak_tflops=None, causal=False,
             train_tokens=None, tflops_per_gpu=None) -> dict:
    """Everything ``estimate`` reports, as the JSON object it prints."""
    return _estimate(model, run, iteration_seconds, gpu, peak_tflops, causal, train_tokens,
                     tflops_per_gpu)[0]


def _estimate(model, run, iteration_seconds, gpu, peak_tflops, causal, train_tokens,
              tflops_per_gpu):
    """(the JSON object, the breakdown, the parameter count): the table reuses the last two."""
    from .flops import flops_breakdown
    from .hardware import resolve_peak
    from .legacy import legacy_tflops_for_shapes
    from .meter import ThroughputMeter
    from .params import parameter_count
    from .planning import training_time

    breakdown = flops_breakdown(model, run.seq_length, run.global_batch_size, run.recompute,
                                run.pipeline_model_parallel_size, causal)
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
        meter.add_iteration(run.global_batch_size, run.seq_length)
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
            "legacy_error": {k: v / hardware - 1.0 for k, v in legacy.items()},
        }
    if train_tokens is not None or tflops_per_gpu is not None:
        if train_tokens is None or tflops_per_gpu is None:
            raise UsageError("--train-tokens and --tflops-per-gpu go together")
        plan = training_time(model, run, train_tokens, tflops_per_gpu, causal)
        result["training_days"] = plan.days
    return result, breakdown, params


def _print_estimate(result: dict, model, run, breakdown, params, causal: bool) -> None:
    from .report import summary_lines
    for line in summary_lines(model, run, breakdown, params):
        print(line)
    print(f"attention counted {'causal (half of QKᵀ and A·V)' if causal else 'dense (full s×s)'};"
          " elementwise ops (norms, softmax, activations) not counted")
    t = result["throughput"]
    if t is not None:
        print()
        print(f"at {t['iteration_seconds']:g} s per iteration on {run.world_size} GPUs:")
        print(f"  samples per second:        {t['samples_per_second']:.3f}")
        print(f"  tokens per second:         {t['tokens_per_second']:.1f} "
              f"({t['tokens_per_second_per_gpu']:.1f} per GPU)")
        print(f"  model TFLOP/s per GPU:     {t['tflops_per_gpu']['model']:.2f}")
        print(f"  hardware TFLOP/s per GPU:  {t['tflops_per_gpu']['hardware']:.2f}")
        mfu = "n/a" if t["mfu"] is None else f"{100 * t['mfu']:.1f}%"
        hfu = "n/a" if t["hfu"] is None else f"{100 * t['hfu']:.1f}%"
        print(f"  MFU / HFU:                 {mfu} / {hfu}   (peak: {result['peak']['source']})")
        for fork, value in t["legacy_tflops_per_gpu"].items():
            error = t["legacy_error"][fork]
            label = f"{fork} fork would log:"
            print(f"  {label:<27}{value:.2f} TFLOPs ({100 * error:+.1f}% vs hardware)")
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
    parser.add_argument("--train-tokens", type=positive(float, "--train-tokens"),
                        help="token budget for a training-time estimate")
    parser.add_argument("--tflops-per-gpu", type=positive(float, "--tflops-per-gpu"),
                        help="achieved hardware TFLOP/s per GPU for the training-time estimate")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args, model, run = parse_command(parser, argv)
    result, breakdown, params = _estimate(model, run, args.iteration_time, args.gpu,
                                          args.peak_tflops, args.causal, args.train_tokens,
                                          args.tflops_per_gpu)
    if args.json:
        print(json.dumps(result))
    else:
        _print_estimate(result, model, run, breakdown, params, args.causal)
    return EXIT_OK


if __name__ == "__main__":
    # run the package's module, not this file's __main__ copy: sub-commands raise
    # megatron_flops.cli.UsageError, which a __main__.UsageError would not catch
    from megatron_flops.cli import main as package_main
    sys.exit(package_main())
