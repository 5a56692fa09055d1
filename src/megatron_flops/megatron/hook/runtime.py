"""The installed hook: picks the framework's strategy, wraps ``training_log`` and
``print_rank_last``, holds the settings, the accounting cache and the current interval, and
steps aside for good at the first error."""

import functools
import re
import sys
from typing import Optional, Sequence, Type

from ...conventions import conventions_for_run, conventions_table
from ...errors import UsageError
from ...hardware import implausible_utilisation_warning
from ...params import parameter_count
from ...planning import iteration_breakdown
from ...report import GIB, format_percent, format_tflops, memory_lines, summary_lines
from .. import calculator as calc
from ..memory_args import measured_peak_bytes, memory_from_namespace
from .base import PREFIX, Interval, Strategy, parameter_names, rank_and_world
from .count_mode import CountingMode, CountSettings
from .pipeline_share import pipeline_share

# how a peak is set in a training run: pretrain_gpt.py has no --gpu / --peak-tflops
PEAK_HINT = (f"set {calc.ENV_GPU} (e.g. h100-sxm) or {calc.ENV_PEAK_TFLOPS} in the "
             "environment, or pass install(gpu=..., peak_tflops=...)")
_COMMAND_LINE_HINT = re.compile(r"\s*\(give --[^)]*\)")


def peak_text(peak) -> str:
    """The peak's source as the hook says it: a missing peak names what works in a
    training run, not the megatron-flops command line's flags."""
    if peak.known:
        return peak.source
    return f"{_COMMAND_LINE_HINT.sub('', peak.source)} [{PEAK_HINT}]"


def conventions_lines(model, run) -> list:
    """The start summary's conventions table (``MEGATRON_FLOPS_CONVENTIONS=1``): what each
    framework's formula counts for one iteration of the run's shape, beside the exact count.
    No time is known yet, so FLOPs per iteration and vs exact only.  Never raises: a shape a
    convention cannot read is one line saying so (a monitoring hook never ends a run)."""
    try:
        table = conventions_table(conventions_for_run(model, run), with_rates=False)
    except Exception as error:  # noqa: BLE001 - the training run goes on
        return [f"conventions: n/a ({error})"]
    return [f"what each convention counts for one iteration ({run.global_batch_size} × "
            f"{run.seq_length} tokens; vs exact = vs our model FLOPs; with the time: "
            "megatron-flops relog --conventions on this log):", *table.split("\n")]


UNKNOWN = "unknown"
FORK_MARKER = "_megatron_flops_fork"  # on a patched training module: the strategy's name


class MegatronHook:
    """The installed hook (one per process); see :mod:`megatron_flops.megatron.hook`.

    ``fork`` is the strategy's name (``"microsoft"``, ``"bigscience"``), ``None`` (not patched
    yet) or ``"unknown"``; ``enabled`` turns False after the first failure.  ``settings``
    (:class:`~megatron_flops.megatron.calculator.Settings`) are this hook's; ``accounts`` its
    one cache of the run's accounting; ``interval`` the :class:`~.base.Interval` of the
    ``training_log`` call in progress (None outside one).
    """

    def __init__(self, strategies: Sequence[Type[Strategy]], settings: calc.Settings = calc.Settings(),
                 out=None):
        self.strategies = tuple(strategies)
        self.strategy: Optional[Strategy] = None
        self.fork: Optional[str] = None
        self.enabled = True
        self.failure: Optional[str] = None
        self.training_module = None
        self.per_iteration = False
        self.out = out  # a stream for messages (None: sys.stdout at print time)
        self.accounts = calc.AccountingCache(settings)
        self.interval: Optional[Interval] = None
        self.counting = CountSettings()          # the counting mode's settings (off)
        self.counting_mode: Optional[CountingMode] = None
        self._summary_done = False
        self._memory_done = False   # issue 22: the memory lines, once per logging rank
        self._utilization_warned = False
        self._originals = {}
        # issue 24: the intervals reported so far, for the summary of a run ended by Ctrl-C
        # (first, last iteration, intervals, seconds, model, hardware FLOPs, world, peak)
        self.totals = [None, None, 0, 0.0, 0, 0, 1, None]
        # per pipeline rank (issue 22): this rank's share, for the accounting it was made for
        self.pipeline_share = None
        self._share_for = None
        self._share_error: Optional[str] = None

    @property
    def settings(self) -> calc.Settings:
        return self.accounts.settings

    @settings.setter
    def settings(self, settings: calc.Settings) -> None:
        self.accounts.settings = settings  # for the accounting built from now on

    # ---- messages ---------------------------------------------------------------------

    def print(self, text: str, ranks=("first", "last")) -> None:
        rank, world = rank_and_world()
        if ("first" in ranks and rank == 0) or ("last" in ranks and rank == world - 1):
            stream = self.out or sys.stdout
            for line in text.split("\n"):  # a line a write: another rank's line stays whole
                print(line, file=stream, flush=True)

    def fail(self, where: str, error: BaseException) -> None:
        """Report the first failure once, then step aside for good."""
        if not self.enabled:
            return
        self.enabled = False
        self.failure = f"{type(error).__name__}: {error}"
        self.interval = None
        self.print(f"{PREFIX} disabled after an error in {where} ({self.failure}); "
                   "training continues with the fork's own throughput numbers")

    # ---- patching ---------------------------------------------------------------------

    def replace(self, module, name: str, value) -> None:
        """Set ``module.name`` to ``value``, remembering the original for :meth:`restore`."""
        self._originals[(module.__name__, name)] = getattr(module, name)
        setattr(module, name, value)

    def restore(self) -> None:
        self.enabled = False  # wrappers left on timer/writer instances pass straight through
        for (module_name, name), value in self._originals.items():
            module = sys.modules.get(module_name)
            if module is not None:
                setattr(module, name, value)
                if hasattr(module, FORK_MARKER):
                    delattr(module, FORK_MARKER)

    def patch(self, training) -> Optional[str]:
        """Patch a loaded ``megatron.training`` module; return the fork detected."""
        if getattr(training, FORK_MARKER, None):
            return getattr(training, FORK_MARKER)  # already patched (hook and patch both on)
        if hasattr(training, "__path__") and self.strategy is not None:
            return self.fork  # Megatron-LM's package, after its training submodule was patched
        if hasattr(training, "__path__") and hasattr(training, "training"):
            return self.patch(training.training)  # Megatron-LM's package: patch the submodule
        try:
            found = next((s for s in self.strategies if s.detect(training)), None)
            if found is None:
                self.fork = UNKNOWN
                self.enabled = False
                setattr(training, FORK_MARKER, UNKNOWN)
                features = [s.feature for s in self.strategies]
                self.print(f"{PREFIX} this Megatron version is not one the hook knows (neither "
                           f"{', '.join(features[:-1])} nor {features[-1]}); "
                           "the run is left untouched")
                return None
            self.training_module = training
            self.strategy = strategy = found(self, training)
            self.fork = strategy.name
            strategy.install()
            if self.counting.iteration is not None:
                self.counting_mode = CountingMode(self, self.counting)
                self.counting_mode.install(training)
            self._wrap_print(training)
            self._wrap_training_log(training)
            setattr(training, FORK_MARKER, strategy.name)
            return strategy.name
        except Exception as error:  # never break the import of the training module
            self.fail("patching megatron.training", error)
            return None

    def _wrap_print(self, training) -> None:
        """print_rank_last: the strategy edits the throughput line of the current interval."""
        hook, strategy = self, self.strategy
        original_print, marker = training.print_rank_last, strategy.line_marker

        @functools.wraps(original_print)
        def print_rank_last(message, *rest, **kwargs):
            interval = hook.interval
            if interval is not None and interval.report is not None and hook.enabled \
                    and isinstance(message, str) and marker in message:
                try:
                    message = strategy.edit_line(interval, message)
                except Exception as error:
                    hook.fail("print_rank_last", error)
            return original_print(message, *rest, **kwargs)

        self.replace(training, "print_rank_last", print_rank_last)

    def _wrap_training_log(self, training) -> None:
        """training_log: one Interval per call (the iteration counted), current while the
        framework's training_log runs; then the new tags."""
        hook, strategy = self, self.strategy
        original_log = training.training_log
        names = parameter_names(original_log)
        # by name, not position: Megatron-LM core_v0.6.0 … core_v0.15.x has
        # decoupled_learning_rate before iteration, the forks and 0.16+ do not
        position = names.index("iteration") if "iteration" in names else None
        losses = names.index("total_loss_dict") if "total_loss_dict" in names else None
        missing = [name for name in ("get_args", "get_num_microbatches")
                   if not callable(getattr(training, name, None))]
        self.per_iteration = position is not None and not missing
        if not self.per_iteration:
            why = (f"training_log has no 'iteration' parameter ({', '.join(names)})"
                   if position is None else
                   f"the training module has no {' or '.join(missing)}")
            if not strategy.log_time_fallback:  # one fault, one message: fail() says it
                raise RuntimeError(f"{strategy.name} {why}: the hook cannot close its intervals")
            self.print(f"{PREFIX} {why}: training_log is not wrapped; lost: the start "
                       "summary, our console fields and the throughput/* tags; the "
                       f"framework's own throughput counted at log time ({strategy.logged_name}"
                       " exact, a batch-size ramp-up at the log iteration's batch size)")
            return

        @functools.wraps(original_log)
        def training_log(*args, **kwargs):
            interval = None
            if hook.enabled:
                try:
                    interval = hook._begin(
                        args[position] if len(args) > position else kwargs["iteration"],
                        args[losses] if losses is not None and len(args) > losses
                        else kwargs.get("total_loss_dict"))
                except Exception as error:
                    hook.fail("training_log (before)", error)
            hook.interval = interval
            try:
                result = original_log(*args, **kwargs)
            finally:
                hook.interval = None
            if interval is not None and interval.report is not None and hook.enabled:
                try:
                    hook.add_to_totals(interval)
                    hook.check_utilization(interval)
                    strategy.write_outputs(interval)
                except Exception as error:
                    hook.fail("training_log (after)", error)
            return result

        self.replace(training, "training_log", training_log)

    def _begin(self, iteration: int, loss_counts) -> Interval:
        """Count the iteration just trained; the Interval of this training_log call."""
        args = self.training_module.get_args()
        accounting = self.accounts.for_args(args)
        self._update_pipeline_share(args, accounting)
        self.start_summary(args, accounting)
        self.memory_summary(args, accounting)
        self.strategy.observe(args, accounting)
        interval = Interval(iteration, accounting, loss_counts)
        if iteration % args.log_interval == 0:
            self.strategy.on_log_iteration(interval)
        return interval

    def _update_pipeline_share(self, args, accounting) -> None:
        """This rank's pipeline share, once per accounting; a layout it cannot count leaves
        the even figures alone and is said in the start summary (never a failure)."""
        if self._share_for is accounting:
            return
        self._share_for = accounting
        try:
            self.pipeline_share = pipeline_share(args, accounting, self.fork)
            self._share_error = None
        except Exception as error:  # noqa: BLE001 - the training run and the hook go on
            self.pipeline_share = None
            self._share_error = str(error)

    def rank_fields(self, interval: Interval) -> list:
        """The logging rank's own fields (pipeline rank, its TFLOP/s and MFU/HFU)."""
        share = self.pipeline_share
        if share is None or interval.report is None:
            return []
        return share.fields(interval.report)

    # ---- start ------------------------------------------------------------------------

    def start_summary(self, args, accounting: calc.RunAccounting) -> None:
        """Once per run (rank 0): at the first training_log, or before the counting mode's
        table when that comes first; not without per-iteration accounting (training_log not
        wrapped: the run's loop is not one the hook follows)."""
        if self._summary_done or not self.per_iteration:
            return
        self._summary_done = True
        rank, _ = rank_and_world()
        if rank != 0:
            return
        strategy = self.strategy
        model, run = accounting.model, accounting.run
        breakdown = iteration_breakdown(model, run, accounting.causal)
        lines = [f"hooked {strategy.title} ({strategy.how}; "
                 f"{'per-iteration' if self.per_iteration else 'log-time'} accounting)"]
        lines += summary_lines(model, run, breakdown, parameter_count(model))
        lines.append(f"attention counted {'causal' if accounting.causal else 'dense (full s×s)'}; "
                     "elementwise ops not counted")
        lines.append(f"peak for MFU/HFU: {peak_text(accounting.peak)}")
        lines.append(strategy.formula_line(args, breakdown, run.global_batch_size, run.seq_length))
        if self.pipeline_share is not None:
            lines += self.pipeline_share.summary_lines()
        elif self._share_error is not None:
            lines.append(f"per pipeline rank: not counted ({self._share_error})")
        if self.settings.show_conventions():
            lines += conventions_lines(model, run)
        # every line carries the prefix (a breakdown table too): grep-able among rank output
        lines = "\n".join(lines).split("\n")
        self.print("\n".join(f"{PREFIX} {line}" if line else PREFIX for line in lines),
                   ranks=("first",))

    def memory_summary(self, args, accounting: calc.RunAccounting) -> None:
        """Once per run, at the first training_log: rank 0 prints the per-stage memory table;
        each logging rank (first, last) its stage's estimated peak beside the measured one
        (``torch.cuda.max_memory_allocated`` on a GPU, after the first iteration; n/a
        elsewhere).  A configuration the formulas do not model gets one line saying so."""
        if self._memory_done or not self.per_iteration:
            return
        self._memory_done = True
        rank, world = rank_and_world()
        if rank not in (0, world - 1):
            return
        try:
            memory = memory_from_namespace(args, accounting.model, accounting.run,
                                           self.strategy.name)
        except UsageError as error:
            self.print(f"{PREFIX} memory: not estimated ({error})", ranks=("first",))
            return
        except Exception as error:  # a fault here must not take the FLOPs accounting down
            self.print(f"{PREFIX} memory: not estimated ({type(error).__name__}: {error})",
                       ranks=("first",))
            return
        if rank == 0:
            self.print("\n".join(f"{PREFIX} {line}" for line in memory_lines(memory)),
                       ranks=("first",))
        stage = memory.stages[0 if rank == 0 else -1]
        measured = measured_peak_bytes()
        measured_text = ("n/a (no CUDA device in use)" if measured is None
                         else f"{measured / GIB:,.3f} GiB (torch.cuda.max_memory_allocated)")
        line = (f"{PREFIX} memory, rank {rank} (pipeline stage {stage.stage}): estimated peak "
                f"{stage.peak / GIB:,.3f} GiB, measured peak after the first iteration "
                f"{measured_text}")
        stream = self.out or sys.stdout
        print(line, file=stream, flush=True)

    def add_to_totals(self, interval: Interval) -> None:
        report, totals = interval.report, self.totals
        if totals[0] is None:
            totals[0] = interval.iteration - report.iterations + 1
        totals[1] = interval.iteration
        totals[2] += 1
        totals[3] += report.elapsed_seconds
        totals[4] += report.model_flops
        totals[5] += report.hardware_flops
        totals[6] = report.world_size
        totals[7] = interval.accounting.peak.tflops

    def interrupted_summary(self) -> str:
        """What the hook measured before a Ctrl-C: one line, the whole time's rates."""
        first, last, intervals, seconds, model, hardware, world, peak = self.totals
        if not intervals or not seconds > 0:
            return f"{PREFIX} interrupted (Ctrl-C) before any interval was logged"
        scale = seconds * world * 1e12
        mfu = (f"; MFU / HFU {format_percent(model / scale / peak)} / "
               f"{format_percent(hardware / scale / peak)}" if peak else "")
        return (f"{PREFIX} interrupted (Ctrl-C): {intervals} logged intervals (iterations "
                f"{first}–{last}), model / hardware TFLOP/s per GPU over their time "
                f"{format_tflops(model / scale)} / {format_tflops(hardware / scale)}{mfu}")

    def check_utilization(self, interval: Interval) -> None:
        """Once per run, on the printing rank: an MFU or HFU above 100 % never goes out
        without a warning naming the likely cause."""
        if self._utilization_warned:
            return
        report, accounting = interval.report, interval.accounting
        warning = implausible_utilisation_warning(
            report.mfu, report.hfu, dtype=accounting.run.dtype,
            peak_source=accounting.peak.source,
            peak_settings=f"{calc.ENV_GPU} / {calc.ENV_PEAK_TFLOPS}")
        if warning is not None:
            self._utilization_warned = True
            self.print(f"{PREFIX} {warning}", ranks=("last",))
