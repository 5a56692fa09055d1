"""The memory-relevant settings of a Megatron run, read from its arguments namespace.

Shared by ``estimate --memory`` (a namespace parsed from a pasted command) and the hook (the
run's own ``args``): dropout (``hidden_dropout``, ``attention_dropout``; Megatron's default 0.1
each), the attention kernel (``use_flash_attn*``; Megatron-LM's ``transformer_impl``
``transformer_engine``, its default, runs a fused kernel unless ``attention_backend`` is
``unfused``), ``sequence_parallel``, ``use_distributed_optimizer`` or the forks'
``zero_stage``, ``optimizer``, ``expert_model_parallel_size``, ``expert_tensor_parallel_size``,
virtual pipeline stages and ``accumulate_allreduce_grads_in_fp32``.
"""

import sys
from typing import Optional

from ..activations import ActivationSettings, check_modelled
from ..errors import UsageError
from ..model_state import StateSettings
from ..rank_memory import RankMemory, rank_memory
from ..shapes import ModelShape, RunShape

__all__ = ["DTYPE_BYTES", "measured_peak_bytes", "memory_from_namespace"]

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 2}
FLASH_FLAGS = ("use_flash_attn", "use_flash_attn_v1", "use_flash_attn_v2", "use_flash_attn_triton")


def _text(value) -> Optional[str]:
    """An enum's name (Megatron-LM's AttnBackend.flash) or a string, lower case; None if unset."""
    if value is None:
        return None
    return str(getattr(value, "name", value)).split(".")[-1].lower()


def flash_attention(ns, dialect: str) -> bool:
    if any(getattr(ns, name, False) for name in FLASH_FLAGS):
        return True
    impl = _text(getattr(ns, "transformer_impl", None)) or (
        "transformer_engine" if dialect == "megatron-lm" else "local")
    backend = _text(getattr(ns, "attention_backend", None))
    if impl == "transformer_engine":
        return backend != "unfused"
    return backend in ("flash", "fused")


def _dropout(ns, name: str) -> float:
    value = getattr(ns, name, None)
    return 0.1 if value is None else float(value)


def virtual_stages(ns, num_layers: int, pp: int) -> int:
    explicit = getattr(ns, "num_virtual_stages_per_pipeline_rank", None) or \
        getattr(ns, "virtual_pipeline_model_parallel_size", None)
    if explicit:
        return int(explicit)
    chunk = getattr(ns, "num_layers_per_virtual_pipeline_stage", None)
    if not chunk:
        return 1
    per_stage, rest = divmod(num_layers, pp)
    if rest or per_stage % chunk:
        raise UsageError(f"--num-layers-per-virtual-pipeline-stage ({chunk}) must divide the "
                         f"layers of each pipeline stage ({num_layers} / {pp})")
    return per_stage // chunk


def memory_from_namespace(ns, model: ModelShape, run: RunShape, dialect: str) -> RankMemory:
    """Per-rank memory of ``model``/``run`` with the memory settings ``ns`` carries."""
    from .args import megatron_stage_layers
    check_modelled(model)
    beta = DTYPE_BYTES[run.dtype]
    settings = ActivationSettings(dtype_bytes=beta,
                                  hidden_dropout=_dropout(ns, "hidden_dropout") > 0,
                                  attention_dropout=_dropout(ns, "attention_dropout") > 0,
                                  flash_attention=flash_attention(ns, dialect))
    zero = getattr(ns, "zero_stage", None)
    if hasattr(ns, "deepspeed") and not getattr(ns, "deepspeed"):
        zero = None   # a fork's --zero-stage default, without DeepSpeed running the optimizer
    if zero is None:
        zero = 1 if getattr(ns, "use_distributed_optimizer", False) else 0
    # Megatron-LM accumulates bf16 gradients in fp32; fp16 keeps fp16 gradients unless asked
    fp32_grads = beta == 4 or run.dtype == "bf16" or \
        bool(getattr(ns, "accumulate_allreduce_grads_in_fp32", False))
    state = StateSettings(parameter_bytes=beta, gradient_bytes=4 if fp32_grads else 2,
                          optimizer=_text(getattr(ns, "optimizer", None)) or "adam",
                          zero_stage=int(zero))
    pp = run.pipeline_model_parallel_size
    return rank_memory(model, run, settings, state,
                       sequence_parallel=bool(getattr(ns, "sequence_parallel", False)),
                       expert_parallel=getattr(ns, "expert_model_parallel_size", None) or 1,
                       expert_tensor_parallel=getattr(ns, "expert_tensor_parallel_size", None),
                       virtual_stages=virtual_stages(ns, model.num_layers, pp),
                       stage_layers=megatron_stage_layers(ns, model.num_layers, pp))


def measured_peak_bytes() -> Optional[int]:
    """``torch.cuda.max_memory_allocated()`` of this process's device when torch is imported
    and CUDA initialised; None otherwise (a CPU run: no allocator statistics to read)."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return None
        return int(torch.cuda.max_memory_allocated())
    except (AttributeError, RuntimeError):
        return None
