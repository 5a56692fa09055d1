"""``python -m megatron_flops.run SCRIPT [ARGS…]``: run a Megatron-DeepSpeed training script
with the megatron-flops hook installed, without editing it.  (``megatron_flops.run`` is the
public alias of this module.)

The script runs as ``__main__`` (like ``python SCRIPT ARGS``: its folder first on
``sys.path``, ``sys.argv = [SCRIPT, ARGS…]``).  Works under launchers:

- ``torchrun --nproc_per_node=8 -m megatron_flops.run pretrain_gpt.py ARGS``
- ``deepspeed --module megatron_flops.run pretrain_gpt.py ARGS`` — the launcher puts
  ``--local_rank=N`` before the script; it is passed on to the script.

Configuration is by environment variable (so launchers need no extra flags):
``MEGATRON_FLOPS_PEAK_TFLOPS``, ``MEGATRON_FLOPS_GPU``, ``MEGATRON_FLOPS_CAUSAL``,
``MEGATRON_FLOPS_DISABLE``.
"""

import os
import runpy
import sys
from typing import List, Optional

USAGE = ("usage: python -m megatron_flops.run [--local_rank=N] SCRIPT.py [ARGS...]\n"
         "runs SCRIPT.py with exact throughput reporting (megatron-flops hook installed)")


class UsageError(Exception):
    pass


def split_command(argv: List[str]):
    """(launcher options to pass on, script, script arguments)."""
    passed_on = []
    rest = list(argv)
    while rest and (rest[0].startswith("--local_rank") or rest[0].startswith("--local-rank")):
        option = rest.pop(0)
        if "=" not in option and rest:
            option = f"{option}={rest.pop(0)}"
        passed_on.append(option)
    if not rest or rest[0].startswith("-"):
        raise UsageError(USAGE if not rest or rest[0] in ("-h", "--help")
                         else f"megatron-flops run: expected a script, got {rest[0]!r}\n{USAGE}")
    return passed_on, rest[0], rest[1:]


def main(argv: Optional[List[str]] = None) -> None:
    try:
        passed_on, script, script_args = split_command(sys.argv[1:] if argv is None else argv)
        if not os.path.isfile(script):
            raise UsageError(f"megatron-flops run: no such script: {script}")
    except UsageError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
    from .hook import install
    install()
    path = os.path.abspath(script)
    sys.argv = [script] + passed_on + script_args
    sys.path.insert(0, os.path.dirname(path))
    runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    main()
