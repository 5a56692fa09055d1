"""Will one training step of this model fit in memory?  Asked *before* anything is allocated.

``verify --real`` and ``demo`` build a model with real tensors; at a 176B shape that would
ask the allocator for terabytes and end in the kernel's OOM killer, not in an error message.
:func:`check_training_step_fits` compares a *lower bound* of what one forward + backward
holds at once with the memory available, and refuses with one line when it cannot fit:

- weights and their gradients: ``2 × parameters × parameter_bytes``, plus the optimizer's
  state (``optimizer_values_per_parameter``: 2 for Adam's two moments);
- activations saved for the backward pass, per sample, of every layer that is not fully
  recomputed: the inputs of its matmuls ``s·(2h + 2·n·d + 2·g·d + f)`` and, unless the
  attention core is recomputed (selective), the attention probabilities ``n·s²``; a fully
  recomputed layer keeps only its input ``s·h`` (and one layer's activations exist again
  while it is recomputed); the logits ``s·V`` once.

Everything else (norm and activation outputs, dropout masks, the allocator's slack, the
framework itself) comes on top, so a refused step can never have fitted.  Standard library
only: the available memory is ``MemAvailable`` from ``/proc/meminfo``, else the free pages
``os.sysconf`` reports; a GPU caller passes its device's free memory instead.
"""

import os
from typing import Optional

from .errors import UsageError
from .flops import layer_kinds
from .params import parameter_count
from .shapes import NO_RECOMPUTE, ModelShape, Recompute

GB = 1e9


def available_memory_bytes() -> Optional[int]:
    """Memory this machine can give a new allocation now, in bytes; None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _layer_activation_values(model: ModelShape, s: int, attention_probabilities: bool) -> int:
    h, f = model.hidden_size, model.ffn_hidden_size
    values = s * (2 * h + 2 * model.query_projection_size + 2 * model.kv_projection_size + f)
    if attention_probabilities:
        values += model.num_attention_heads * s * s
    return values


def training_step_bytes(model: ModelShape, seq_length: int, batch_size: int = 1,
                        recompute: Recompute = NO_RECOMPUTE, pipeline_parallel_size: int = 1,
                        parameter_bytes: int = 4, activation_bytes: int = 4,
                        optimizer_values_per_parameter: int = 0) -> int:
    """A lower bound of the bytes one forward + backward holds at its peak (module docstring)."""
    import dataclasses
    if model.position_embedding == "learned" and model.max_position_embeddings is None:
        model = dataclasses.replace(model, max_position_embeddings=seq_length)
    s = seq_length
    weights = parameter_count(model).total * parameter_bytes * (2 + optimizer_values_per_parameter)
    stored = _layer_activation_values(model, s, recompute.granularity != "selective")
    per_sample = s * model.vocab_size
    recomputed = 0
    for (_, _, _, is_recomputed), layers in layer_kinds(model, recompute, pipeline_parallel_size).items():
        per_sample += layers * (s * model.hidden_size if is_recomputed else stored)
        recomputed += layers if is_recomputed else 0
    if recomputed:
        per_sample += stored  # the layer being recomputed holds its activations again
    return weights + batch_size * per_sample * activation_bytes


def check_training_step_fits(model: ModelShape, seq_length: int, batch_size: int, what: str,
                             remedy: str, recompute: Recompute = NO_RECOMPUTE,
                             pipeline_parallel_size: int = 1, parameter_bytes: int = 4,
                             activation_bytes: int = 4, optimizer_values_per_parameter: int = 0,
                             available_bytes: Optional[int] = None) -> None:
    """Raise ValueError (one line: ``what`` needs X GB, Y GB available; ``remedy``) when one
    training step cannot fit; ``available_bytes`` defaults to :func:`available_memory_bytes`
    (nothing is refused when that is unknown)."""
    needed = training_step_bytes(model, seq_length, batch_size, recompute, pipeline_parallel_size,
                                 parameter_bytes, activation_bytes, optimizer_values_per_parameter)
    available = available_memory_bytes() if available_bytes is None else available_bytes
    if available is not None and needed > available:
        raise UsageError(f"{what} at this shape needs at least {needed / GB:,.1f} GB of memory "
                         f"(weights, gradients and activations of one step) but "
                         f"{available / GB:,.1f} GB is available: {remedy}")
