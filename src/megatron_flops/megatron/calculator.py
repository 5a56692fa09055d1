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
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from ..errors import UsageError
from ..hardware import Peak, resolve_peak
from ..meter import ThroughputMeter, ThroughputReport
from ..params import parameter_count
from ..shapes import ModelShape, RunShape
from .args import shapes_from_args

ENV_PEAK_TFLOPS = "MEGATRON_FLOPS_PEAK_TFLOPS"
ENV_GPU = "MEGATRON_FLOPS_GPU"
ENV_CAUSAL = "MEGATRON_FLOPS_CAUSAL"
ENV_CONVENTIONS = "MEGATRON_FLOPS_CONVENTIONS"


def _switch(value: Optional[bool], variable: str) -> bool:
    """An on/off setting: the value given, else the environment variable's 1/true/yes/on."""
    if value is not None:
        return value
    return os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """Overrides of one hook (the arguments of :func:`megatron_flops.megatron.install`).

    ``None`` leaves the choice to the environment (``MEGATRON_FLOPS_PEAK_TFLOPS``,
    ``MEGATRON_FLOPS_GPU``, ``MEGATRON_FLOPS_CAUSAL``, ``MEGATRON_FLOPS_CONVENTIONS``, read when
    a run's shapes are first built), then to the device torch reports.
    """

    peak_tflops: Optional[float] = None
    gpu: Optional[str] = None
    causal: Optional[bool] = None
    conventions: Optional[bool] = None   # the conventions table in the start summary

    def overridden(self, peak_tflops: Optional[float] = None, gpu: Optional[str] = None,
                   causal: Optional[bool] = None,
                   conventions: Optional[bool] = None) -> "Settings":
        """These settings with the values given (not None) replacing theirs."""
        if peak_tflops is not None and not peak_tflops > 0:
            raise UsageError(f"peak_tflops must be positive, got {peak_tflops}")
        return Settings(self.peak_tflops if peak_tflops is None else float(peak_tflops),
                        self.gpu if gpu is None else gpu,
                        self.causal if causal is None else bool(causal),
                        self.conventions if conventions is None else bool(conventions))

    def causal_counting(self) -> bool:
        """Count causal attention (half of QKᵀ and A·V)?  Off unless asked (flash kernels)."""
        return _switch(self.causal, ENV_CAUSAL)

    def show_conventions(self) -> bool:
        """Print what each framework's convention counts in the start summary?  Off unless
        asked (``install(conventions=True)`` or ``MEGATRON_FLOPS_CONVENTIONS=1``)."""
        return _switch(self.conventions, ENV_CONVENTIONS)

    def peak(self, run: RunShape) -> Peak:
        """Peak for MFU/HFU: the override, else env var, else the device table, for the
        run's dtype."""
        override = self.peak_tflops if self.peak_tflops is not None else _env_float(ENV_PEAK_TFLOPS)
        gpu = self.gpu or os.environ.get(ENV_GPU, "").strip() or device_name()
        return resolve_peak(gpu, run.dtype, override)


def _env_float(name: str) -> Optional[float]:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{name} must be a number of TFLOP/s, got {text!r}") from None
    if not value > 0:
        raise UsageError(f"{name} must be positive, got {text}")
    return value


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


def iteration_seq_length(args) -> int:
    """Sequence length of the iteration just trained, as the fork counts its tokens."""
    actual = getattr(args, "actual_seq_length", None)  # microsoft: set every iteration
    if actual is not None:
        return actual
    # Megatron-LM's multimodal example (issue 20 item 3): model.py overwrote args.seq_length
    # with one tile's image embeddings; the language model runs at the decoder length
    if getattr(args, "language_model_type", None) and getattr(args, "decoder_seq_length", None):
        return args.decoder_seq_length
    if getattr(args, "curriculum_learning", False):  # bigscience: DeepSpeed curriculum
        return args.curriculum_seqlen
    return args.seq_length


def random_ltd_tokens(args) -> Optional[Tuple[int, int, int]]:
    """``(seq_length, reserved_length, layers)`` of the iteration just trained when the
    microsoft fork's random-LTD dropped tokens in it, else None.

    The fork (``training.py``, every iteration) sets ``args.random_ltd_reserved_length`` from
    DeepSpeed's scheduler and, once, ``args.random_ltd_layer_num``; the length before dropping
    is the curriculum length or ``--seq-length``, and tokens are dropped only when the reserved
    length is below it (its ``actual_seq_length`` is then the token-weighted average over layers).
    """
    if not getattr(args, "random_ltd", False):
        return None
    reserved = getattr(args, "random_ltd_reserved_length", None)
    layers = getattr(args, "random_ltd_layer_num", None)
    if not isinstance(reserved, int) or not isinstance(layers, int) or layers <= 0:
        return None
    curriculum = (getattr(args, "curriculum_learning_legacy", False)
                  or getattr(args, "data_efficiency_curriculum_learning", False))
    full = args.curriculum_seqlen if curriculum else args.seq_length
    return (full, reserved, layers) if reserved < full else None


def _fork_num_microbatches() -> int:
    from megatron import get_num_microbatches  # the fork's own calculator
    return get_num_microbatches()


def iteration_batch_size(args, num_microbatches: Callable[[], int] = _fork_num_microbatches) -> int:
    """Global batch of the iteration just trained (the fork's ``new_samples``)."""
    return args.micro_batch_size * args.data_parallel_size * num_microbatches()


class RunAccounting:
    """Shapes, parameter count, peak and the per-iteration meter of one run (one ``args``).

    Built once from ``args`` (the shapes are validated then, and ``settings`` and the
    environment read) and kept by an :class:`AccountingCache`.
    """

    __slots__ = ("args", "model", "run", "peak", "params_billions", "meter", "causal")

    def __init__(self, args, settings: Settings = Settings()):
        self.args = args
        model, run = shapes_from_args(args)  # recompute: what the pipeline model really runs
        self.model: ModelShape = model
        self.run: RunShape = run
        self.causal = settings.causal_counting()
        self.peak = settings.peak(run)
        self.params_billions = parameter_count(model).billions
        self.meter = ThroughputMeter.for_run(model, run, self.peak.tflops, self.causal)

    def observe_iteration(self, batch_size: int, seq_length: int,
                          seqlen_squared_sum: Optional[float] = None) -> None:
        """One trained iteration (called by the hook on every iteration, all ranks);
        ``seqlen_squared_sum``: Σ Lᵢ² of a packed (THD) batch's documents, when known.

        Under random-LTD the fork's ``seq_length`` is a layer average: the dropping layers are
        counted at the reserved length instead, the others, the logits and a teacher at the
        full one (where the layers differ, the fork's average is kept: see docs/megatron.md)."""
        dropped = random_ltd_tokens(self.args)
        if dropped is not None and self.meter.counts_token_dropping and seqlen_squared_sum is None:
            full, reserved, layers = dropped
            self.meter.add_iteration(batch_size=batch_size, seq_length=full,
                                     token_dropping=(reserved, layers))
        else:
            self.meter.add_iteration(batch_size=batch_size, seq_length=seq_length,
                                     seqlen_squared_sum=seqlen_squared_sum)

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
            if total_iterations > 0:  # all at once (FLOPs are linear in the samples)
                dropped = random_ltd_tokens(self.args)
                if dropped is not None and meter.counts_token_dropping:
                    full, reserved, layers = dropped
                    meter.add_iterations(total_iterations, batch * total_iterations, full,
                                         token_dropping=(reserved, layers))
                else:
                    meter.add_iterations(total_iterations, batch * total_iterations, seq)
        return meter.report(elapsed_seconds)


class AccountingCache:
    """The :class:`RunAccounting` of the run's ``args`` (one slot: a process trains one run;
    a new ``args`` object replaces it).  The runtime hook owns one, with its settings; the
    drop-in :func:`throughput_calculator` uses the module's own (settings from the env)."""

    __slots__ = ("settings", "_accounting")

    def __init__(self, settings: Settings = Settings()):
        self.settings = settings  # used for the next build
        self._accounting: Optional[RunAccounting] = None

    def for_args(self, args) -> RunAccounting:
        accounting = self._accounting
        if accounting is None or accounting.args is not args:
            accounting = self._accounting = RunAccounting(args, self.settings)
        return accounting

    def forget(self, args=None) -> None:
        """Drop the accounting (whichever it is, or only that of ``args``)."""
        if args is None or (self._accounting is not None and self._accounting.args is args):
            self._accounting = None


_STANDALONE = AccountingCache()


def accounting_for(args) -> RunAccounting:
    """The drop-in calculator's :class:`RunAccounting` of this ``args`` (built on first use)."""
    return _STANDALONE.for_args(args)


def forget(args=None) -> None:
    """Drop the drop-in calculator's cached accounting (all of it, or that of one ``args``)."""
    _STANDALONE.forget(args)


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
