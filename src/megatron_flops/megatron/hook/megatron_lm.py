"""NVIDIA Megatron-LM (``megatron/training/training.py``, read at d98e8a64).

Detected by ``num_floating_point_operations(args, batch_size, …)`` in the training module
(Megatron-LM's ``megatron.training.training``; the ``megatron.training`` package only
re-exports).  Megatron-LM prints ``throughput per GPU (TFLOP/s/GPU)`` and writes the
TensorBoard/W&B scalar ``throughput`` as ``num_floating_point_operations(args, batch_size) /
(elapsed_time_per_iteration × 10¹² × world_size)`` — its own formula, the log-time batch.
The strategy replaces ``num_floating_point_operations``:

- inside ``training_log`` at a log iteration, the ``interval-time`` timer's ``elapsed()``
  closes the interval (as for the bigscience fork) and the replacement returns the
  interval's exact *model* FLOPs per iteration, so the field and the scalar become the exact
  model TFLOP/s per GPU (Megatron-LM's meaning of the number: forward + backward, no
  recompute; causal when the hook counts causal);
- everywhere else (the training loop's ``num_floating_point_operations_so_far``, which feeds
  ``progress.txt``) it returns the exact model FLOPs of that batch.

Packed (THD) sequences: the training loop passes the iteration's ``seqlen_squared_sum_in_batch``
(Σ Lᵢ² over the global batch's documents, from ``consume_seqlen_stats_in_iteration``) and
``total_real_tokens_in_batch`` to ``num_floating_point_operations`` just before it calls
``training_log`` with the same two values.  The replacement returns that batch's exact count
(attention from Σ Lᵢ², every other GEMM over all ``batch × seq_length`` tokens, padding
included: they run) and keeps Σ Lᵢ² for the iteration's accounting, so the interval's field is
exact too.  ``total_real_tokens_in_batch`` is not used: Megatron-LM leaves padding out of its
token-linear terms, the GEMMs do not.

Iteration 1's line (``is_first_iteration``, since 2026-01) reads the timer without resetting
it: the hook leaves that interval open too, so the line keeps Megatron-LM's own number
(start-up time included) and the next line covers the same iterations Megatron-LM's does.
"""

import functools

from ...flops import FlopsPerSample
from .. import calculator as calc
from .. import module_names as names
from .base import Interval, Strategy, parameter_names, watch_interval_timer


class MegatronLM(Strategy):
    name = "megatron-lm"
    title = "NVIDIA Megatron-LM"
    how = "num_floating_point_operations replaced: throughput per GPU and its scalar exact"
    formula_owner = "Megatron-LM's own formula (num_floating_point_operations, model FLOPs)"
    formula_counts = "model"  # Megatron-LM never counts recomputation
    logged_name = "throughput per GPU"
    feature = "megatron.training.training.num_floating_point_operations(args, batch_size)"
    line_marker = " throughput per GPU (TFLOP/s/GPU): "
    module_names = names.MEGATRON_CORE

    def __init__(self, hook, training):
        super().__init__(hook, training)
        self._original = training.num_floating_point_operations
        self._per_sample = {}  # id(accounting) -> FlopsPerSample
        self._squares = None   # Σ Lᵢ² of the iteration the loop just counted (packed), or None

    @staticmethod
    def detect(training) -> bool:
        formula = getattr(training, "num_floating_point_operations", None)
        return (callable(formula) and parameter_names(formula)[:2] == ("args", "batch_size")
                and callable(getattr(training, "training_log", None)))

    def install(self) -> None:
        hook, original = self.hook, self._original

        @functools.wraps(original)
        def num_floating_point_operations(args, batch_size, *rest, **kwargs):
            if hook.enabled:
                try:
                    return self._exact(args, batch_size, rest, kwargs)
                except Exception as error:
                    hook.fail("num_floating_point_operations", error)
            return original(args, batch_size, *rest, **kwargs)

        hook.replace(self.training, "num_floating_point_operations", num_floating_point_operations)

    def _exact(self, args, batch_size, rest, kwargs) -> float:
        interval = self.hook.interval
        if interval is not None and interval.report is not None:
            # Megatron-LM divides by the interval's mean iteration time
            return interval.report.model_flops / interval.framework_iterations()
        squares = self._packed_squares(rest, kwargs)
        if interval is not None or squares is False:
            # iteration 1's line (interval left open), or arguments of an interface not
            # read (positional, unknown names): Megatron-LM's own number
            return self._original(args, batch_size, *rest, **kwargs)
        self._squares = squares  # the loop's call: training_log for this iteration follows
        accounting = self.hook.accounts.for_args(args)
        per_sample = self._per_sample.get(id(accounting))
        if per_sample is None:
            run = accounting.run
            per_sample = self._per_sample[id(accounting)] = FlopsPerSample(
                accounting.model, run.recompute, run.pipeline_model_parallel_size,
                accounting.causal)
        seq_length = calc.iteration_seq_length(args)  # a multimodal run: the decoder length
        if squares is not None:
            return per_sample.packed_batch_from_squares(seq_length, batch_size, squares)[0]
        return batch_size * per_sample(seq_length)[0]

    @staticmethod
    def _packed_squares(rest, kwargs):
        """Σ Lᵢ² from the call's packed-sequence keywords (d98e8a64 names): None for BSHD,
        False when the call passes anything else."""
        known = ("seqlen_squared_sum_in_batch", "total_real_tokens_in_batch")
        if rest or any(name not in known for name in kwargs):
            return False
        return kwargs.get("seqlen_squared_sum_in_batch")

    def observe(self, args, accounting) -> None:
        """The iteration just trained, with the Σ Lᵢ² its loop passed (packed), if any."""
        squares, self._squares = self._squares, None
        accounting.observe_iteration(calc.iteration_batch_size(args, self.num_microbatches),
                                     calc.iteration_seq_length(args), squares)

    def on_log_iteration(self, interval: Interval) -> None:
        # elapsed(reset=False) is iteration 1's read (is_first_iteration): not an interval end
        watch_interval_timer(self, self.training.get_timers()("interval-time"),
                             lambda args, kwargs: kwargs.get("reset", args[0] if args else True))

    def edit_line(self, interval: Interval, message: str) -> str:
        """The throughput field is already exact (computed from the replacement)."""
        return self.append_fields(interval, message)

    def legacy_flops(self, args, batch_size: int, seq_length: int) -> float:
        """The run's own ``num_floating_point_operations`` (the original, not our
        replacement): whatever era the checkout is, its formula is the one compared."""
        return self._original(args, batch_size)
