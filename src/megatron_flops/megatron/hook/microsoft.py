"""The microsoft (deepspeedai) Megatron-DeepSpeed fork (read at f4157bea).

Detected by ``megatron.training.throughput_calculator(model, args, iteration_time,
total_iterations)`` (imported by name from ``megatron.utils``).  Both module attributes are
replaced by a wrapper with the drop-in's meaning
(:func:`megatron_flops.megatron.calculator.throughput_calculator`): it closes the interval,
so the console ``samples per second``/``TFLOPs`` fields and the W&B ``throughput/*`` keys
the fork derives from its result become exact.  The line's log-time ``tokens per gpu per
second (tgs)`` is replaced; the new W&B keys go through the fork's ``get_wandb_writer()``.
"""

import functools
import sys

from ... import legacy
from ...report import format_tflops
from .. import calculator as calc
from .. import module_names as names
from .base import Interval, Strategy, parameter_names, replace_field

CALCULATOR_PARAMETERS = ("model", "args", "iteration_time", "total_iterations")


class MicrosoftFork(Strategy):
    name = "microsoft"
    title = "the microsoft Megatron-DeepSpeed fork"
    how = "throughput_calculator replaced"
    formula_owner = "the microsoft fork's own formula"
    feature = ("megatron.training.throughput_calculator(model, args, iteration_time, "
               "total_iterations)")
    module_names = names.MICROSOFT

    @staticmethod
    def detect(training) -> bool:
        calculator = getattr(training, "throughput_calculator", None)
        return callable(calculator) and parameter_names(calculator)[:4] == CALCULATOR_PARAMETERS

    def install(self) -> None:
        training, hook = self.training, self.hook
        original = training.throughput_calculator

        @functools.wraps(calc.throughput_calculator)
        def throughput_calculator(model, args, iteration_time, total_iterations):
            if hook.enabled:
                try:
                    return self.close(args, iteration_time, total_iterations)
                except Exception as error:
                    hook.fail("throughput_calculator", error)
            return original(model, args, iteration_time, total_iterations)

        hook.replace(training, "throughput_calculator", throughput_calculator)
        utils = sys.modules.get("megatron.utils")
        if utils is not None and getattr(utils, "throughput_calculator", None) is original:
            hook.replace(utils, "throughput_calculator", throughput_calculator)

    def close(self, args, seconds: float, total_iterations: int):
        """The calculator's tuple, closing the current interval (or, without one — log-time
        accounting — the accounting's own interval)."""
        interval = self.hook.interval
        if interval is None:
            interval = Interval(None, self.hook.accounts.for_args(args))
        report = interval.close(seconds, total_iterations, self.num_microbatches)
        return (report.samples_per_second, report.hardware_tflops_per_gpu,
                interval.accounting.params_billions)

    def edit_line(self, interval: Interval, message: str) -> str:
        """The fork computes tgs at log time (samples/s × the current seqlen / world size),
        wrong across a curriculum change; its format is ``{:.3f}``.  TFLOPs as every TFLOP/s
        figure here (``report.format_tflops``: the fork's ``{:.2f}`` prints 0.00 at small
        scale)."""
        message = replace_field(message, "tokens per gpu per second (tgs)",
                                "%.3f" % interval.report.tokens_per_second_per_gpu)
        message = replace_field(message, "TFLOPs",
                                format_tflops(interval.report.hardware_tflops_per_gpu))
        return self.append_fields(interval, message)

    def legacy_flops(self, args, batch_size: int, seq_length: int) -> float:
        return legacy.microsoft_flops_per_iteration(
            batch_size, seq_length, args.num_layers, args.hidden_size, args.num_attention_heads,
            getattr(args, "num_key_value_heads", None),
            getattr(args, "ffn_hidden_size", None) or 4 * args.hidden_size,
            args.padded_vocab_size, bool(getattr(args, "swiglu", False)),
            getattr(args, "recompute_granularity", None), getattr(args, "topk", 1) or 1,
            bool(getattr(args, "checkpoint_activations", False)))
