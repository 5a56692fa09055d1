"""``megatron-flops`` command line: the dispatcher.

One module per command in this package, imported only when chosen, so ``estimate`` never
imports torch.  Every bad input ends with one line on stderr naming the flag, exit 2.
Commands sit on top of every other layer: nothing outside this package imports it.
"""

import importlib
import sys
from typing import Optional, Sequence

from .common import EXIT_OK, EXIT_USAGE, fail, run_guarded

# name -> (module, function, one-line help)
COMMANDS = {
    "estimate": ("megatron_flops.commands.estimate", "estimate_main",
                 "FLOPs breakdown, parameters, throughput and MFU for Megatron flags"),
    "demo": ("megatron_flops.commands.demo", "demo_main",
             "train the reference GPT on text with live TFLOP/s, MFU and HFU (needs torch)"),
    "peak": ("megatron_flops.commands.peak", "peak_main",
             "measure this device's achievable dense matmul TFLOP/s per dtype (needs torch)"),
    "verify": ("megatron_flops.commands.verify", "verify_main",
               "count one training step of a reference GPT with PyTorch and check the formulas"),
    "patch": ("megatron_flops.commands.patch", "patch_main",
              "route a Megatron-DeepSpeed checkout's throughput reporting through megatron-flops"),
    "profile": ("megatron_flops.commands.profile", "profile_main",
                "where the time went: per-component TFLOP/s from a PyTorch profiler trace"),
    "relog": ("megatron_flops.commands.relog", "relog_main",
              "true TFLOP/s, MFU and the logged TFLOPs' error for a past run's log or TensorBoard run"),
    "compare": ("megatron_flops.commands.compare", "compare_main",
                "steady-state throughput of two runs: exit 1 when the candidate regressed"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: megatron-flops COMMAND [flags]\n\ncommands:")
        for name, (_, _, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        print("\n'megatron-flops COMMAND --help' describes a command's flags.")
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] in ("--version", "version"):
        from .. import __version__
        print(__version__)
        return EXIT_OK
    name = argv[0]
    if name not in COMMANDS:
        return fail(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")
    module, function, _ = COMMANDS[name]
    return run_guarded(getattr(importlib.import_module(module), function), argv[1:])
