"""Exact throughput for a Megatron-DeepSpeed run, per iteration, from its ``args``.

:func:`throughput_calculator` is a drop-in for the microsoft (deepspeedai) fork's
``megatron.utils.throughput_calculator(model, args, iteration_time, total_iterations)`` and
returns the same tuple ``(samples_per_second, tflops, approx_parameters_in_billions)``:

- ``tflops`` keeps the fork's meaning — TFLOP/s per GPU with the configured recomputation
  counted — but is our exact *hardware* FLOPs (every GEMM of forward, backward and
  recompute, by component; see :mod:`megatron_flops.flops`), not the fork's closed formula;
- ``samples_per_second`` is the interval's samples / ``iteration_time``;
- ``approx_parameters_in_billions`` is the analytic :func:`~megatron_flops.params.parameter_count`
  of the whole model (no walk over parameters, no collective), in billions.

Per-iteration accounting.  The forks compute throughput at log time from the *current* batch
size times the number of iterations in the interval, which is wrong across a
``--rampup-batch-size`` step or a curriculum sequence-length change.  :class:`RunAccounting`
adds each iteration's own global batch (``micro_batch_size × data_parallel_size ×
get_num_microbatches()`` as the fork counts ``new_samples``) and sequence length
(``args.actual_seq_length`` in the microsoft fork, ``args.curriculum_seqlen`` when
``args.curriculum_learning`` in the bigscience fork, else ``args.seq_length``).  The runtime
hook (:mod:`megatron_flops.megatron.hook`) calls :meth:`RunAccounting.observe_iteration` once
per iteration; when nothing observed the iterations of an interval (the calculator used on
its own), the interval is counted at log time like the fork does.

Nothing here calls torch in the per-iteration or per-interval path: no collective, no device
synchronisation.  torch is imported (lazily) once, to read the device name for the peak.
"""

import os
import sys
from dataclasses import replace
from typing import Callable, Dict, Optional, Tuple

from ..hardware import Peak, resolve_peak
from ..meter import ThroughputMeter, ThroughputReport
from ..params import parameter_count
from ..shapes import ModelShape, Recompute, RunShape
from .args import shapes_from_args

ENV_PEAK_TFLOPS = "MEGATRON_FLOPS_PEAK_TFLOPS"
ENV_GPU = "MEGATRON_FLOPS_GPU"
ENV_CAUSAL = "MEGATRON_FLOPS_CAUSAL"


class Settings:
    """Overrides given to :func:`megatron_flops.megatron.install` (or read from the env)."""

    peak_tflops: Optional[float] = None
    gpu: Optional[str] = None
    causal: Optional[bool] = None


SETTINGS = Settings()


def _env_float(name: str) -> Optional[float]:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of TFLOP/s, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {text}")
    return value


def causal_counting() -> bool:
    """Count causal attention (half of QKᵀ and A·V)?  Off unless asked (flash kernels)."""
    if SETTINGS.causal is not None:
        return SETTINGS.causal
    return os.environ.get(ENV_CAUSAL, "").strip().lower() in ("1", "true", "yes", "on")


def device_name() -> Optional[str]:
    """The accelerator's name from torch, when torch is already imported and has a GPU."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except Exception:  # a broken or emulated CUDA: no device name, no MFU
        return None
    return None


def resolve_run_peak(run: RunShape) -> Peak:
    """Peak for MFU/HFU: install() argument, else env var, else the device table."""
    override = SETTINGS.peak_tflops if SETTINGS.peak_tflops is not None else _env_float(ENV_PEAK_TFLOPS)
    gpu = SETTINGS.gpu or os.environ.get(ENV_GPU, "").strip() or device_name()
    return resolve_peak(gpu, run.dtype, override)


def pipeline_model_recompute(args, recompute: Recompute) -> Recompute:
    """What a fork's DeepSpeed pipeline model actually recomputes.

    Both forks build ``GPTModelPipe`` when ``args.deepspeed`` is set (the microsoft fork
    unless ``--no-pipeline-parallel``).  Its layers are checkpointed only through DeepSpeed's
    ``activation_checkpoint_interval``: every layer with ``--checkpoint-activations`` or full
    uniform recompute, none with full *block* recompute (the microsoft fork sets the interval
    to 0 there: DeepSpeed's pipeline has no block method).  Selective recompute lives inside
    the attention layer and is unaffected.  Seen on a real microsoft-fork run (f4157bea):
    FlopCounterMode counted no recompute with ``--recompute-method block`` in the pipe model.
    """
    if not getattr(args, "deepspeed", False) or getattr(args, "no_pipeline_parallel", False):
        return recompute
    if recompute.granularity != "full":
        return recompute
    if getattr(args, "checkpoint_activations", False) or recompute.method == "uniform":
        return Recompute("full")
    return Recompute()


def iteration_seq_length(args) -> int:
    """Sequence length of the iteration just trained, as the fork counts its tokens."""
    actual = getattr(args, "actual_seq_length", None)  # microsoft: set every iteration
    if actual is not None:
        return actual
    if getattr(args, "curriculum_learning", False):  # bigscience: DeepSpeed curriculum
        return args.curriculum_seqlen
    return args.seq_length


def _fork_num_microbatches() -> int:
    from megatron import get_num_microbatches  # the fork's own calculator
    return get_num_microbatches()


def iteration_batch_size(args, num_microbatches: Callable[[], int] = _fork_num_microbatches) -> int:
    """Global batch of the iteration just trained (the fork's ``new_samples``)."""
    return args.micro_batch_size * args.data_parallel_size * num_microbatches()


class RunAccounting:
    """Shapes, parameter count, peak and the per-iteration meter of one run (one ``args``).

    Built once from ``args`` (the shapes are validated then) and cached by
    :func:`accounting_for`.
    """

    __slots__ = ("args", "model", "run", "peak", "params_billions", "meter", "causal")

    def __init__(self, args):
        self.args = args
        model, run = shapes_from_args(args)
        run = replace(run, recompute=pipeline_model_recompute(args, run.recompute))
        self.model: ModelShape = model
        self.run: RunShape = run
        self.causal = causal_counting()
        self.peak = resolve_run_peak(run)
        self.params_billions = parameter_count(model).total / 1e9
        self.meter = ThroughputMeter.for_run(model, run, self.peak.tflops, self.causal)

    def observe_iteration(self, batch_size: int, seq_length: int) -> None:
        """One trained iteration (called by the hook on every iteration, all ranks)."""
        self.meter.add_iteration(batch_size, seq_length)

    def close_interval(self, elapsed_seconds: float, total_iterations: int,
                       num_microbatches: Callable[[], int] = _fork_num_microbatches
                       ) -> ThroughputReport:
        """Report over the interval the fork just timed (``total_iterations`` iterations).

        Uses the observed iterations when they are exactly the interval's; otherwise (the
        calculator used without the hook, or the hook installed mid-interval) counts the
        interval at log time, as the fork does: ``total_iterations`` × the current batch
        and sequence length.
        """
        meter = self.meter
        if meter.pending_iterations != total_iterations:
            meter.discard_interval()  # a partial interval, if any
            batch = iteration_batch_size(self.args, num_microbatches)
            seq = iteration_seq_length(self.args)
            for _ in range(total_iterations):
                meter.add_iteration(batch, seq)
        return meter.report(elapsed_seconds)


_CACHE: Dict[int, RunAccounting] = {}


def accounting_for(args) -> RunAccounting:
    """The cached :class:`RunAccounting` of this ``args`` object (built on first use)."""
    accounting = _CACHE.get(id(args))
    if accounting is None or accounting.args is not args:
        accounting = _CACHE[id(args)] = RunAccounting(args)
    return accounting


def forget(args=None) -> None:
    """Drop cached accounting (all of it, or that of one ``args``)."""
    if args is None:
        _CACHE.clear()
    else:
        _CACHE.pop(id(args), None)


def throughput_calculator(model, args, iteration_time: float, total_iterations: int
                          ) -> Tuple[float, float, float]:
    """Drop-in for the microsoft fork's ``megatron.utils.throughput_calculator``.

    ``iteration_time`` is the interval's wall time in seconds (the fork passes
    ``timers('interval-time').elapsed()``), ``total_iterations`` the iterations in it
    (advanced + skipped).  ``model`` is not used: the parameter count is analytic.
    Returns ``(samples_per_second, hardware TFLOP/s per GPU, parameters in billions)``.
    """
    accounting = accounting_for(args)
    report = accounting.close_interval(iteration_time, total_iterations)
    return report.samples_per_second, report.hardware_tflops_per_gpu, accounting.params_billions
