"""Memory per rank for ``estimate --memory``, ``verify --memory`` and the hook: the run's
memory-relevant Megatron flags read from the pasted command, and the table.

The flags are read by a parser of their own (unknown words left alone), so the FLOPs
commands' flag report is unchanged: dropout (``--hidden-dropout``, ``--attention-dropout``,
Megatron's default 0.1 each), the attention kernel (``--use-flash-attn``; Megatron-LM's
Transformer Engine default ``--transformer-impl transformer_engine`` runs a fused kernel unless
``--attention-backend unfused``), ``--sequence-parallel``, ``--use-distributed-optimizer`` /
the forks' ``--zero-stage``, ``--optimizer``, ``--expert-model-parallel-size``,
``--expert-tensor-parallel-size``, virtual pipeline stages.
"""

import argparse
from typing import List, Optional

from ..errors import UsageError
from ..megatron.memory_args import memory_from_namespace
from ..rank_memory import RankMemory
from ..report import memory_lines

__all__ = ["memory_flags", "memory_for", "memory_lines"]



class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _probability(flag):
    def convert(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}") from None
        if not 0.0 <= value < 1.0:
            raise argparse.ArgumentTypeError(f"{flag} must be in [0, 1), got {text}")
        return value
    return convert


def _count(flag):
    def convert(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be a positive integer, got {value}")
        return value
    return convert


def _memory_parser() -> argparse.ArgumentParser:
    parser = _Parser(add_help=False, allow_abbrev=False)
    add = parser.add_argument
    add("--hidden-dropout", type=_probability("--hidden-dropout"), default=0.1)
    add("--attention-dropout", type=_probability("--attention-dropout"), default=0.1)
    for flag in ("--use-flash-attn", "--use-flash-attn-v1", "--use-flash-attn-v2",
                 "--use-flash-attn-triton", "--sequence-parallel", "--use-distributed-optimizer"):
        add(flag, action="store_true")
    add("--transformer-impl", choices=("local", "transformer_engine", "inference_optimized"))
    add("--attention-backend")
    add("--zero-stage", type=int, choices=(0, 1, 2, 3), default=None)
    add("--virtual-pipeline-model-parallel-size",
        type=_count("--virtual-pipeline-model-parallel-size"))
    add("--optimizer", choices=("adam", "sgd"), default="adam")
    add("--expert-model-parallel-size", type=_count("--expert-model-parallel-size"), default=1)
    add("--expert-tensor-parallel-size", type=_count("--expert-tensor-parallel-size"))
    add("--num-layers-per-virtual-pipeline-stage",
        type=_count("--num-layers-per-virtual-pipeline-stage"))
    add("--num-virtual-stages-per-pipeline-rank",
        type=_count("--num-virtual-stages-per-pipeline-rank"))
    add("--accumulate-allreduce-grads-in-fp32", action="store_true")
    return parser


def memory_flags(argv: List[str]) -> argparse.Namespace:
    """The memory flags of a pasted command (bad values raise before anything is printed)."""
    return _memory_parser().parse_known_args(argv)[0]


def memory_for(flags: argparse.Namespace, namespace, model, run, dialect: str) -> RankMemory:
    """The per-rank memory of the resolved ``model``/``run`` with the memory ``flags``
    (``namespace``: the Megatron flags already parsed, for the pipeline's stage sizes)."""
    merged = argparse.Namespace(**{**vars(namespace), **vars(flags)})
    return memory_from_namespace(merged, model, run, dialect)
