"""A per-iteration throughput accumulator.

Megatron-DeepSpeed computes throughput at log time from the *current* batch size and the
interval's mean iteration time, which is wrong across a batch-size ramp-up step or a
curriculum sequence-length change.  The meter instead adds every iteration's own samples,
tokens and FLOPs, and divides by the interval's wall time when asked for a report.
"""

from typing import NamedTuple, Optional, Sequence, Tuple

from .flops import FlopsPerSample
from .shapes import NO_RECOMPUTE, ModelShape, Recompute, RunShape


class ThroughputReport(NamedTuple):
    """Throughput over one reporting interval (the iterations added since the last report).

    All rates divide by ``elapsed_seconds``, the interval's wall-clock time.

    - ``samples_per_second``, ``tokens_per_second``: global (all data-parallel replicas).
    - ``tokens_per_second_per_gpu``: ``tokens_per_second / world_size`` (Megatron's "tgs").
    - ``model_tflops_per_gpu``: model FLOPs (forward + backward, no recomputation) of the
      interval's iterations / (seconds × world size × 1e12).
    - ``hardware_tflops_per_gpu``: the same with the configured recomputation added — what
      the devices actually executed.  Equal to the model figure without recompute.
    - ``mfu`` / ``hfu``: those two divided by the device's dense peak TFLOP/s, as fractions
      (0.5 is 50 %); ``None`` when no peak is known.
    - ``peak_tflops``: the dense peak TFLOP/s per GPU they divide by (``None``: none known).
    """

    iterations: int
    elapsed_seconds: float
    samples: int
    tokens: int
    model_flops: int
    hardware_flops: int
    world_size: int
    samples_per_second: float
    tokens_per_second: float
    tokens_per_second_per_gpu: float
    model_tflops_per_gpu: float
    hardware_tflops_per_gpu: float
    mfu: Optional[float]
    hfu: Optional[float]
    peak_tflops: Optional[float] = None


_new_report = tuple.__new__


class ThroughputMeter:
    """Accumulates iterations; :meth:`report` turns an interval into a :class:`ThroughputReport`.

    ``add_iteration(batch_size, seq_length)`` is called once per training iteration with that
    iteration's *global* batch size (samples over all data-parallel ranks) and sequence length
    (and, for packed variable-length samples, each sample's document lengths).
    ``add_iterations(count, samples, seq_length)`` adds ``count`` iterations at once that
    together consumed ``samples`` samples of ``seq_length`` tokens (what a log line tells:
    ``relog`` knows an interval's iterations and samples, not each iteration's batch).
    ``report(elapsed_seconds)`` closes the interval and starts a new one.  The meter does no
    I/O, no collective and no device synchronisation; FLOPs per sample are computed once per
    distinct sequence length.

    ``consumed_samples`` and ``consumed_tokens`` run over the whole life of the meter.
    """

    __slots__ = ("world_size", "peak_tflops", "_per_sample", "_iterations", "_samples",
                 "_tokens", "_model_flops", "_hardware_flops", "consumed_samples",
                 "consumed_tokens")

    def __init__(self, model: ModelShape, world_size: int = 1, recompute: Recompute = NO_RECOMPUTE,
                 pipeline_parallel_size: int = 1, peak_tflops: Optional[float] = None,
                 causal: bool = False):
        if world_size <= 0:
            raise ValueError(f"--world-size must be a positive integer, got {world_size}")
        if peak_tflops is not None and peak_tflops <= 0:
            raise ValueError(f"--peak-tflops must be positive, got {peak_tflops}")
        self.world_size = world_size
        self.peak_tflops = peak_tflops
        self._per_sample = FlopsPerSample(model, recompute, pipeline_parallel_size, causal)
        self.consumed_samples = 0
        self.consumed_tokens = 0
        self._reset()

    @classmethod
    def for_run(cls, model: ModelShape, run: RunShape, peak_tflops: Optional[float] = None,
                causal: bool = False) -> "ThroughputMeter":
        return cls(model, run.world_size, run.recompute, run.pipeline_model_parallel_size,
                   peak_tflops, causal)

    def _reset(self) -> None:
        self._iterations = 0
        self._samples = 0
        self._tokens = 0
        self._model_flops = 0
        self._hardware_flops = 0

    def add_iteration(self, batch_size: int, seq_length: int,
                      document_lengths: Optional[Sequence[Sequence[int]]] = None,
                      seqlen_squared_sum: Optional[float] = None,
                      token_dropping: Optional[Tuple[int, int]] = None) -> None:
        """``document_lengths``: packed (THD) samples, one list of document lengths per sample
        of the global batch; attention is then counted per document (Σ Lᵢ² per sample).
        ``seqlen_squared_sum``: instead of the lengths, their Σ Lᵢ² over the global batch (what
        Megatron-LM's loop reports; see :meth:`FlopsPerSample.packed_batch_from_squares`).
        ``token_dropping``: ``(reserved_length, layers)``, random-LTD's ``layers`` layers ran on
        ``reserved_length`` tokens of each sample (:meth:`FlopsPerSample.token_dropping`)."""
        if seqlen_squared_sum is not None and token_dropping is not None:
            raise ValueError("packed documents and random-LTD together are not counted")
        if seqlen_squared_sum is not None:
            if document_lengths is not None:
                raise ValueError("give document lengths or their sum of squares, not both")
            model_flops, hardware_flops = self._per_sample.packed_batch_from_squares(
                seq_length, batch_size, seqlen_squared_sum)
        elif token_dropping is not None:
            if document_lengths is not None:
                raise ValueError("packed documents and random-LTD together are not counted")
            model_flops, hardware_flops = self._per_sample.token_dropping(seq_length,
                                                                          *token_dropping)
            model_flops, hardware_flops = batch_size * model_flops, batch_size * hardware_flops
        elif document_lengths is None:
            model_flops, hardware_flops = self._per_sample(seq_length)
            model_flops, hardware_flops = batch_size * model_flops, batch_size * hardware_flops
        else:
            if len(document_lengths) != batch_size:
                raise ValueError(f"document lengths are given for {len(document_lengths)} "
                                 f"samples but the batch has {batch_size}")
            model_flops, hardware_flops = self._per_sample.packed_batch(seq_length,
                                                                        document_lengths)
        tokens = batch_size * seq_length
        self._iterations += 1
        self._samples += batch_size
        self._tokens += tokens
        self._model_flops += model_flops
        self._hardware_flops += hardware_flops
        self.consumed_samples += batch_size
        self.consumed_tokens += tokens

    def add_iterations(self, count: int, samples: int, seq_length: int,
                       token_dropping: Optional[Tuple[int, int]] = None) -> None:
        """``count`` iterations that together consumed ``samples`` samples of ``seq_length``
        tokens (``token_dropping``: as for :meth:`add_iteration`), in one call."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"an interval has at least one iteration, got {count!r}")
        # FLOPs are linear in the samples: one "iteration" of all the samples counts them
        # exactly; then the interval's other iterations are added to the count
        self.add_iteration(samples, seq_length, token_dropping=token_dropping)
        self._iterations += count - 1

    def interval_report(self, count: int, samples: int, seq_length: int,
                        elapsed_seconds: float) -> ThroughputReport:
        """``add_iterations(count, samples, seq_length)`` then ``report(elapsed_seconds)`` in
        one call, for an interval with nothing pending (``relog``'s per-line path): the same
        report, the same consumed totals, without the general per-iteration options."""
        if self._iterations:
            self.add_iterations(count, samples, seq_length)
            return self.report(elapsed_seconds)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"an interval has at least one iteration, got {count!r}")
        if not elapsed_seconds > 0:
            raise ValueError(f"elapsed time must be positive, got {elapsed_seconds!r} s")
        model_flops, hardware_flops = self._per_sample(seq_length)
        model_flops, hardware_flops = samples * model_flops, samples * hardware_flops
        tokens = samples * seq_length
        self.consumed_samples += samples
        self.consumed_tokens += tokens
        world_size = self.world_size
        per_gpu_seconds = elapsed_seconds * world_size
        model_tflops = model_flops / (per_gpu_seconds * 1e12)
        hardware_tflops = hardware_flops / (per_gpu_seconds * 1e12)
        peak = self.peak_tflops
        if peak:
            return _new_report(ThroughputReport, (
                count, elapsed_seconds, samples, tokens, model_flops, hardware_flops, world_size,
                samples / elapsed_seconds, tokens / elapsed_seconds, tokens / per_gpu_seconds,
                model_tflops, hardware_tflops, model_tflops / peak, hardware_tflops / peak,
                float(peak)))
        return _new_report(ThroughputReport, (
            count, elapsed_seconds, samples, tokens, model_flops, hardware_flops, world_size,
            samples / elapsed_seconds, tokens / elapsed_seconds, tokens / per_gpu_seconds,
            model_tflops, hardware_tflops, None, None, None))

    @property
    def counts_token_dropping(self) -> bool:
        """Whether :meth:`add_iteration` can count random-LTD (``token_dropping``) exactly."""
        return self._per_sample.layers_alike

    @property
    def pending_iterations(self) -> int:
        return self._iterations

    def discard_interval(self) -> None:
        """Drop the iterations added since the last report (consumed totals keep them)."""
        self._reset()

    def report(self, elapsed_seconds: float) -> ThroughputReport:
        """Close the interval of the iterations added since the last report."""
        if not elapsed_seconds > 0:
            raise ValueError(f"elapsed time must be positive, got {elapsed_seconds!r} s")
        per_gpu_seconds = elapsed_seconds * self.world_size
        model_tflops = self._model_flops / (per_gpu_seconds * 1e12)
        hardware_tflops = self._hardware_flops / (per_gpu_seconds * 1e12)
        peak = self.peak_tflops
        result = ThroughputReport(
            self._iterations,
            elapsed_seconds,
            self._samples,
            self._tokens,
            self._model_flops,
            self._hardware_flops,
            self.world_size,
            self._samples / elapsed_seconds,
            self._tokens / elapsed_seconds,
            self._tokens / per_gpu_seconds,
            model_tflops,
            hardware_tflops,
            model_tflops / peak if peak else None,
            hardware_tflops / peak if peak else None,
            float(peak) if peak else None,
        )
        self._reset()
        return result
