"""``megatron-flops`` command line: the dispatcher.

One module per command in this package, imported only when chosen, so ``estimate`` never
imports torch.  Every bad input ends with one line on stderr naming the flag, exit 2.
Commands sit on top of every other layer: nothing outside this package imports it.
"""

import importlib
import os
import sys
from typing import List, Optional, Sequence

from .. import __version__
from .common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, fail, run_guarded

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
    try:
        try:
            return _dispatch(argv)
        finally:
            sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
    except BrokenPipeError:  # the reader stopped early (`| head -1`): what it wanted, it has
        _discard_stdout()
        return EXIT_OK
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's code for SIGINT (the demo
        # catches it inside its loop first, to print its summary)
        print("megatron-flops: interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as error:  # stdout itself cannot take the output (`> /dev/full`)
        _discard_stdout()
        return fail(f"cannot write the output: {error.strerror or error}")


def _dispatch(argv: List[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: megatron-flops COMMAND [flags]\n\ncommands:")
        for name, (_, _, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        print("\n'megatron-flops COMMAND --help' describes a command's flags.")
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] in ("--version", "version"):
        print(__version__)
        return EXIT_OK
    name = argv[0]
    if name not in COMMANDS:
        return fail(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")
    return _run(name, argv[1:])


# the optional dependency a command needs -> the extra that installs it
NEEDS = {"demo": "torch", "peak": "torch", "verify": "torch"}
EXTRAS = {"torch": "torch", "tensorboard": "tensorboard", "wandb": "wandb",
          "matplotlib": "plot", "deepspeed": "deepspeed"}


def _run(name: str, argv: Sequence[str]) -> int:
    """Run command ``name``; what the machine refuses becomes one line on stderr, exit 2."""
    module, function, _ = COMMANDS[name]
    try:
        return run_guarded(getattr(importlib.import_module(module), function), argv)
    except ImportError as error:
        if (error.name or "").startswith("megatron_flops"):
            raise  # our own import is broken: a bug, keep its traceback
        return fail(missing_dependency(name, error))
    except BrokenPipeError:
        raise
    except OSError as error:  # a path that cannot be read or written
        where = f"{error.filename}: " if error.filename else ""
        return fail(f"{name}: {where}{error.strerror or error}")
    except (OverflowError, MemoryError) as error:
        return fail(f"{name}: a value is too large to compute with ({error or 'out of memory'})")


def missing_dependency(command: str, error: ImportError) -> str:
    """The line for a command whose optional dependency cannot be imported."""
    module = (error.name or NEEDS.get(command) or "an optional dependency").split(".")[0]
    extra = EXTRAS.get(module)
    hint = f"; install it: pip install -e '.[{extra}]' in a megatron-flops clone" if extra else ""
    return f"{command} needs {module}, which cannot be imported ({error}){hint}"


def _discard_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so that exiting flushes nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor (an in-process caller's stream)
        pass
