"""``python -m megatron_flops.run [--local_rank=N] SCRIPT [ARGS…]``: the public entry point
(used under ``torchrun -m`` and ``deepspeed --module``) of :mod:`megatron_flops.megatron.run`."""

from .megatron.run import USAGE, UsageError, main, split_command

__all__ = ["USAGE", "UsageError", "main", "split_command"]

if __name__ == "__main__":
    main()
