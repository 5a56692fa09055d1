"""The demo's memory: the estimate per process at the start, the measured peak beside it at
the end (issue 22).

The demo trains the reference GPT whose saved tensors ``verify --memory`` proves, with fp32
parameters and gradients and AdamW (two fp32 moments: 16 bytes per parameter), one pipeline
stage per process (data-parallel replicas alike).  Activations are counted in the run's dtype;
under bf16/fp16 autocast the bf16 copies of the weights and the fp32 norm outputs autocast
keeps are not modelled.  On CUDA dropout keeps a bool mask (1 byte) and norms fp32
statistics; on a CPU both are in the activation dtype.  With DeepSpeed the engine owns the
state: its ZeRO stage is read from the config.
"""

from typing import Optional

from ..activations import ActivationSettings, check_modelled
from ..errors import UsageError
from ..model_state import StateSettings
from ..rank_memory import RankMemory, rank_memory
from .config import DemoConfig

__all__ = ["demo_memory"]

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2}


def demo_memory(config: DemoConfig, cuda: bool) -> Optional[RankMemory]:
    """The estimate for one demo process; None when the shape is not modelled or the run's
    dtype has no activation size here (the caller says so)."""
    run = config.run
    beta = DTYPE_BYTES.get(run.dtype)
    if beta is None or run.pipeline_model_parallel_size > 1:
        return None   # the demo runs one stage per process: PP only chooses block recompute
    try:
        check_modelled(config.model, positions=True)
    except UsageError:
        return None
    dropout = config.hidden_dropout > 0
    settings = ActivationSettings.for_reference(beta, dropout, cuda=cuda,
                                                flash_attention=config.attention == "sdpa")
    zero = 0
    if config.deepspeed and config.deepspeed_settings:
        zero = int(config.deepspeed_settings.get("zero_optimization", {}).get("stage", 0))
    state = StateSettings(parameter_bytes=4, gradient_bytes=4, optimizer="adam", zero_stage=zero)
    return rank_memory(config.model, run, settings, state)
