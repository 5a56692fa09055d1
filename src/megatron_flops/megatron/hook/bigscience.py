"""The bigscience-workshop Megatron-DeepSpeed fork (read at 8387ae17).

Detected by a ``training_log`` that computes TFLOPs inline (its code constants hold the
``TFLOPs:`` field) and prints through ``print_rank_last``.  ``training_log`` runs unchanged;
the hook corrects what it emits: the ``interval-time`` timer's ``elapsed()`` (the fork's own
interval time) closes the interval, the printed line gets the exact ``samples per second``
and ``TFLOPs``, and the TensorBoard writer's ``add_scalar`` the exact values of the
``iteration-time/*`` throughput tags.  The timer and the writer exist only once training
runs: they are wrapped at the first log iteration.
"""

from ... import legacy
from ...report import format_tflops
from .. import module_names as names
from .base import (ORIGINAL_ADD_SCALAR, WATCHED, Interval, Strategy, code_strings, replace_field,
                   watch_interval_timer)

# the fork's TensorBoard tags whose values the hook replaces: tag -> value from the report
# and the data-parallel size
FORK_TAGS = {
    "iteration-time/samples per second": lambda r, dp: r.samples_per_second,
    "iteration-time/samples per second per replica": lambda r, dp: r.samples_per_second / dp,
    "iteration-time/tokens per second": lambda r, dp: r.tokens_per_second,
    "iteration-time/tokens per second per replica": lambda r, dp: r.tokens_per_second / dp,
    "iteration-time/TFLOPs per gpu (estimated)": lambda r, dp: r.hardware_tflops_per_gpu,
}


class BigscienceFork(Strategy):
    name = "bigscience"
    title = "the bigscience Megatron-DeepSpeed fork"
    how = "training_log's TFLOPs and throughput fields corrected"
    formula_owner = "the bigscience fork's own formula"
    feature = "an inline 'TFLOPs:' field in training_log"
    module_names = names.BIGSCIENCE
    log_time_fallback = False  # the interval is closed only from inside training_log

    def __init__(self, hook, training):
        super().__init__(hook, training)
        self._watching = False

    @staticmethod
    def detect(training) -> bool:
        code = getattr(getattr(training, "training_log", None), "__code__", None)
        return (code is not None and callable(getattr(training, "print_rank_last", None))
                and "print_rank_last" in code.co_names
                and any("TFLOPs:" in s for s in code_strings(code))
                and callable(getattr(training, "get_timers", None)))

    def install(self) -> None:
        pass  # print_rank_last and training_log are the hook's; the rest at the first log

    def on_log_iteration(self, interval: Interval) -> None:
        if not self._watching:
            watch_interval_timer(self, self.training.get_timers()("interval-time"))
            writer = self.tensorboard_writer()
            if writer is not None:
                self._watch_writer(writer)
            # both in place (or no writer on this rank, which the fork never creates later)
            self._watching = True

    def _watch_writer(self, writer) -> None:
        """The fork's throughput tags get the exact values of the current interval."""
        if getattr(writer, WATCHED, False):
            return
        original_add_scalar, hook = writer.add_scalar, self.hook

        def add_scalar(tag, value, *args, **kwargs):
            interval = hook.interval
            if interval is not None and interval.report is not None and hook.enabled \
                    and tag in FORK_TAGS:
                try:
                    value = FORK_TAGS[tag](interval.report,
                                           interval.accounting.args.data_parallel_size)
                except Exception as error:
                    hook.fail("add_scalar", error)
            return original_add_scalar(tag, value, *args, **kwargs)

        setattr(add_scalar, ORIGINAL_ADD_SCALAR, original_add_scalar)
        writer.add_scalar = add_scalar
        setattr(writer, WATCHED, True)

    def edit_line(self, interval: Interval, message: str) -> str:
        """The fork's format for samples/s (``{:.3f}``); TFLOPs as every TFLOP/s figure here
        (``report.format_tflops``: the fork's two decimals, and three significant digits at
        small scale, where ``{:.2f}`` prints 0.00 and a relog of the line reads -100 %)."""
        report = interval.report
        message = replace_field(message, "samples per second", "%.3f" % report.samples_per_second)
        message = replace_field(message, "TFLOPs", format_tflops(report.hardware_tflops_per_gpu))
        return self.append_fields(interval, message)

    def legacy_flops(self, args, batch_size: int, seq_length: int) -> float:
        return legacy.bigscience_flops_per_iteration(
            batch_size, seq_length, args.num_layers, args.hidden_size, args.padded_vocab_size,
            bool(getattr(args, "glu_activation", None)),
            bool(getattr(args, "checkpoint_activations", False)))
