"""``python -m megatron_flops.run SCRIPT [ARGS…]``: run a Megatron-DeepSpeed training script
with the megatron-flops hook installed, without editing it.  (``megatron_flops.run`` is the
public alias of this module.)

The script runs as ``__main__`` (like ``python SCRIPT ARGS``: its folder first on
``sys.path``, ``sys.argv = [SCRIPT, ARGS…]``); SCRIPT may also be a folder or zip file holding
``__main__.py``, which goes first on ``sys.path`` itself, as ``python`` does.  ``-h`` prints
the usage (exit 0).  Works under launchers:

- ``torchrun --nproc_per_node=8 -m megatron_flops.run pretrain_gpt.py ARGS``
- ``deepspeed --module megatron_flops.run pretrain_gpt.py ARGS`` — the launcher puts
  ``--local_rank=N`` before the script; it is passed on to the script.

Configuration is by environment variable (so launchers need no extra flags):
``MEGATRON_FLOPS_PEAK_TFLOPS``, ``MEGATRON_FLOPS_GPU``, ``MEGATRON_FLOPS_CAUSAL``,
``MEGATRON_FLOPS_DISABLE``; the counting mode also by ``MEGATRON_FLOPS_COUNT_FLOPS``,
``MEGATRON_FLOPS_STRICT``, ``MEGATRON_FLOPS_TOLERANCE`` (or the options
``--count-flops[=ITERATION]``, ``--strict``, ``--tolerance=FRACTION`` before the script).
"""

import os
import runpy
import sys
from typing import List, Optional

from ..errors import UsageError
from ..report import parse_fraction
from .hook import install
from .hook.count_mode import CountSettings, count_iteration


USAGE = ("usage: python -m megatron_flops.run [--local_rank=N] [--count-flops[=ITERATION]] "
         "[--strict] [--tolerance=FRACTION] SCRIPT.py [ARGS...]\n"
         "runs SCRIPT.py with exact throughput reporting (megatron-flops hook installed);\n"
         "--count-flops counts one iteration's matmul FLOPs with torch and prints them beside "
         "the formula's, --strict ends the run (exit 1) when they differ beyond --tolerance")
COUNTING_OPTIONS = ("--count-flops", "--strict", "--tolerance")
# what --help prints after the usage: the environment variables that set the hook up (a
# launcher passes no flag of ours)
ENVIRONMENT_HELP = """
environment (the hook's settings; launchers need no extra flag):
  MEGATRON_FLOPS_GPU=NAME          the device for the MFU/HFU peak (a100, h100-sxm, h200, ...;
                                   `megatron-flops peak --list` lists them); default: the
                                   name torch reports for the GPU
  MEGATRON_FLOPS_PEAK_TFLOPS=X     the dense peak TFLOP/s per GPU (overrides the table)
  MEGATRON_FLOPS_CAUSAL=1          count half of the attention score and A·V products
  MEGATRON_FLOPS_CONVENTIONS=1     print what each framework's formula reports at start
  MEGATRON_FLOPS_DISABLE=1         run the script untouched (no hook)
  MEGATRON_FLOPS_COUNT_FLOPS=N     the counting mode (as --count-flops=N)
  MEGATRON_FLOPS_STRICT=1          as --strict
  MEGATRON_FLOPS_TOLERANCE=F       as --tolerance=F
docs: docs/megatron.md (the hook), docs/ci.md (the counting mode)"""


class HelpRequested(Exception):
    """``-h`` / ``--help``: the usage on stdout, exit 0."""


def runnable_as_path(script: str) -> bool:
    """What ``python SCRIPT`` runs: a file, or a folder or zip file holding ``__main__.py``."""
    if os.path.isdir(script):
        return os.path.isfile(os.path.join(script, "__main__.py"))
    return os.path.isfile(script)


def is_package_path(script: str) -> bool:
    """A folder or zip file (``runpy.run_path`` puts it on ``sys.path`` itself)."""
    import zipfile
    return os.path.isdir(script) or zipfile.is_zipfile(script)


def split_command(argv: List[str]):
    """(launcher options to pass on, script, script arguments)."""
    passed_on = []
    rest = list(argv)
    while rest and (rest[0].startswith("--local_rank") or rest[0].startswith("--local-rank")):
        option = rest.pop(0)
        if "=" not in option and rest:
            option = f"{option}={rest.pop(0)}"
        passed_on.append(option)
    if rest and rest[0] in ("-h", "--help"):
        raise HelpRequested(USAGE)
    if not rest or rest[0].startswith("-"):
        raise UsageError(USAGE if not rest
                         else f"megatron-flops run: expected a script, got {rest[0]!r}\n{USAGE}")
    return passed_on, rest[0], rest[1:]


def counting_options(argv: List[str]):
    """(install() keyword arguments, the rest of argv): our counting-mode options, taken from
    the options before the script (a launcher's ``--local_rank`` may come first)."""
    options, rest, position = {}, [], 0
    while position < len(argv) and argv[position].startswith("-"):
        option = argv[position]
        name, _, value = option.partition("=")
        position += 1
        if name not in COUNTING_OPTIONS:
            rest.append(option)
            if name in ("--local_rank", "--local-rank") and not value and position < len(argv):
                rest.append(argv[position])
                position += 1
            continue
        if name == "--count-flops":
            options["count_flops"] = count_iteration(value or True, "--count-flops")
        elif name == "--strict":
            if value:
                raise UsageError(f"megatron-flops run: --strict takes no value, got {option!r}")
            options["strict"] = True
        else:
            if not value and position < len(argv):
                value, position = argv[position], position + 1
            options["tolerance"] = parse_fraction(value, "--tolerance")
    return options, rest + argv[position:]


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in ("-h", "--help"):   # asked for: the usage on stdout, exit 0
        print(USAGE + "\n" + ENVIRONMENT_HELP)
        raise SystemExit(0)
    try:
        options, rest = counting_options(argv)
        passed_on, script, script_args = split_command(rest)
        if not runnable_as_path(script):
            raise UsageError(f"megatron-flops run: no such script: {script}"
                             + (" (a folder needs a __main__.py)"
                                if os.path.isdir(script) else ""))
        CountSettings.resolve(**options)  # the environment's values too: exit 2 before the run
    except HelpRequested as usage:
        print(usage)
        raise SystemExit(0) from None
    except UsageError as error:   # a ShapeError too
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
    hook = install(**options)
    path = os.path.abspath(script)
    sys.argv = [script] + passed_on + script_args
    if not is_package_path(path):  # run_path puts a folder or zip file first itself
        sys.path.insert(0, os.path.dirname(path))
    guard = InterruptGuard()
    try:
        runpy.run_path(path, run_name="__main__")
    except (KeyboardInterrupt, Exception) as error:
        if not (isinstance(error, KeyboardInterrupt) or guard.seen):
            raise
        # Ctrl-C: what the hook measured, once (rank 0), and the shell's code for SIGINT;
        # a collective that failed after the SIGINT (a peer already gone) ends the same way
        if hook is not None:
            hook.print(hook.interrupted_summary(), ranks=("first",))
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        guard.restore()


EXIT_INTERRUPTED = 130   # 128 + SIGINT, what a shell reports for Ctrl-C


class InterruptGuard:
    """Notes a SIGINT and raises KeyboardInterrupt as Python does (issue 24): under several
    ranks a rank's collective may fail because a peer already stopped, and that error then
    says Ctrl-C, not a fault.  Only when Python's own handler is in place."""

    def __init__(self):
        import signal
        self.seen, self._installed = False, False
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True

    def _on_sigint(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def restore(self) -> None:
        import signal
        if self._installed and signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self._installed = False


if __name__ == "__main__":
    main()
