"""Training-time planning from the exact count (the idea of Narayanan et al. 2021, Eq. 4).

Eq. 4 estimates end-to-end time as ``8·T·P / (n·X)``: tokens ``T``, parameters ``P``, GPUs
``n``, achieved TFLOP/s per GPU ``X`` (with full recompute, 8 = 2 forward + 4 backward + 2
recompute FLOPs per parameter per token).  We replace ``8·P`` by the exact hardware FLOPs per
token of this shape and recompute setting, so attention and logits are counted too.

:func:`iteration_breakdown` is the breakdown of one whole iteration of a run (its global
batch, sequence length, recompute and pipeline size): what every command and adapter that
plans or summarises a run starts from.
"""

from dataclasses import dataclass

from .errors import UsageError
from .flops import Breakdown, flops_breakdown
from .shapes import ModelShape, RunShape


def iteration_breakdown(model: ModelShape, run: RunShape, causal: bool = False) -> Breakdown:
    """The breakdown of one iteration of ``run``: its global batch at its sequence length."""
    return flops_breakdown(model, run.seq_length, run.global_batch_size, run.recompute,
                           run.pipeline_model_parallel_size, causal)


@dataclass(frozen=True)
class TrainingTime:
    train_tokens: int
    iterations: float
    hardware_flops: float
    seconds: float

    @property
    def days(self) -> float:
        return self.seconds / 86400.0


def training_time(model: ModelShape, run: RunShape, train_tokens: int, tflops_per_gpu: float,
                  causal: bool = False) -> TrainingTime:
    """Wall time to train on ``train_tokens`` at ``tflops_per_gpu`` achieved *hardware*
    TFLOP/s per GPU (what the forks log), on ``run.world_size`` GPUs, at the run's full
    global batch and sequence length."""
    if train_tokens <= 0:
        raise UsageError(f"--plan-tokens must be positive, got {train_tokens}", "--plan-tokens")
    if tflops_per_gpu <= 0:
        raise UsageError(f"--plan-tflops-per-gpu must be positive, got {tflops_per_gpu}",
                         "--plan-tflops-per-gpu")
    breakdown = iteration_breakdown(model, run, causal)
    iterations = train_tokens / breakdown.tokens
    hardware_flops = iterations * breakdown.hardware_flops
    seconds = hardware_flops / (run.world_size * tflops_per_gpu * 1e12)
    return TrainingTime(train_tokens, iterations, hardware_flops, seconds)
