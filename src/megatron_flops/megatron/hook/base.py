"""What every framework strategy shares: the interval object, the strategy interface and the
pieces two frameworks use alike (the console-line edit, the new tags, the formula line).

A :class:`Strategy` is one training framework's way of reporting throughput.  The hook
(:class:`~megatron_flops.megatron.hook.runtime.MegatronHook`) asks each strategy in turn
whether it recognises the loaded ``megatron.training`` (:meth:`Strategy.detect`), lets the
one that does wrap what it needs (:meth:`Strategy.install`), and then wraps ``training_log``
itself: every call creates one :class:`Interval`, counts the iteration, and makes the
interval the hook's current one until ``training_log`` returns.  The strategy's wrappers
close the interval (:meth:`Interval.close`, from the framework's own interval time) and
edit the framework's line and tags from ``interval.report``; after ``training_log`` the hook
writes the ``throughput/*`` tags (:meth:`Strategy.write_outputs`).
"""

import functools
import inspect
import os
import sys
from typing import Callable, Optional

from ... import sinks
from ...legacy import legacy_error
from .. import calculator as calc

PREFIX = "megatron-flops:"
ORIGINAL_ADD_SCALAR = "_megatron_flops_original"  # on a writer's wrapped add_scalar


def rank_and_world():
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
    except Exception:
        pass
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def code_strings(code) -> set:
    """String constants of a code object and the code objects nested in it."""
    out = set()
    for const in code.co_consts:
        if isinstance(const, str):
            out.add(const)
        elif hasattr(const, "co_consts"):
            out |= code_strings(const)
    return out


def parameter_names(function) -> tuple:
    try:
        return tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return ()


def replace_field(line: str, key: str, value: str) -> str:
    """``line`` with the value of its `` key: value |`` field replaced (unchanged if absent)."""
    marker = f" {key}: "
    start = line.find(marker)
    if start < 0:
        return line
    start += len(marker)
    end = line.find(" |", start)
    return line if end < 0 else line[:start] + value + line[end:]


class Interval:
    """One ``training_log`` call: the iteration it is called for, the run's accounting, the
    framework's per-interval counters (``total_loss_dict``) and, once a strategy closed the
    interval the framework just timed, its ``report`` (None on iterations that do not log)."""

    __slots__ = ("iteration", "accounting", "loss_counts", "report")

    def __init__(self, iteration: int, accounting: calc.RunAccounting, loss_counts=None):
        self.iteration = iteration
        self.accounting = accounting
        self.loss_counts = loss_counts
        self.report = None

    def framework_iterations(self) -> int:
        """Iterations in the framework's interval: advanced + skipped, as ``training_log``
        counts them (equal to the observed ones unless the hook came in mid-interval)."""
        counts = self.loss_counts
        try:
            return counts["advanced iterations"] + counts["skipped iterations"]
        except (TypeError, KeyError):
            return self.accounting.meter.pending_iterations

    def close(self, seconds: float, total_iterations: int, num_microbatches: Callable[[], int]):
        """The report of the interval the framework timed (``seconds``, ``total_iterations``)."""
        self.report = self.accounting.close_interval(seconds, total_iterations, num_microbatches)
        return self.report


WATCHED = "_megatron_flops"  # marks a timer or writer already wrapped


def watch_interval_timer(strategy: "Strategy", timer, ends_interval=None) -> None:
    """Wrap the framework's ``interval-time`` timer: its ``elapsed()`` during a log
    iteration's ``training_log`` closes the current interval with the framework's own
    seconds — unless ``ends_interval(args, kwargs)`` says this read does not end it."""
    if getattr(timer, WATCHED, False):
        return
    original_elapsed, hook = timer.elapsed, strategy.hook

    @functools.wraps(original_elapsed)
    def elapsed(*args, **kwargs):
        seconds = original_elapsed(*args, **kwargs)
        interval = hook.interval
        if interval is not None and interval.report is None and hook.enabled \
                and (ends_interval is None or ends_interval(args, kwargs)):
            try:
                interval.close(seconds, interval.framework_iterations(), strategy.num_microbatches)
            except Exception as error:
                hook.fail("the interval timer", error)
        return seconds

    timer.elapsed = elapsed
    setattr(timer, WATCHED, True)


class _ScalarTarget:
    """Writes through the writer's original add_scalar (bypassing a strategy's tag edit)."""

    __slots__ = ("add_scalar",)

    def __init__(self, add_scalar):
        self.add_scalar = add_scalar


class Strategy:
    """One training framework.  Subclasses set the class attributes and implement
    :meth:`detect`, :meth:`install`, :meth:`edit_line` and :meth:`legacy_flops`; the rest
    has defaults that fit the Megatron-DeepSpeed forks.

    ``hook`` is the :class:`~megatron_flops.megatron.hook.runtime.MegatronHook` (its
    ``interval`` is the current :class:`Interval`, None outside ``training_log``; its
    ``enabled``, ``fail(where, error)`` and ``replace(module, name, value)``), ``training``
    the patched ``megatron.training`` module.
    """

    name = ""                 # "bigscience": messages, MegatronHook.fork
    title = ""                # "the bigscience Megatron-DeepSpeed fork" (start summary)
    how = ""                  # what the hook changes there (start summary)
    formula_owner = ""        # "the bigscience fork's own formula" (start summary)
    formula_counts = "hardware"  # what the framework's number counts: "hardware" or "model"
    logged_name = "TFLOPs"    # the framework's throughput figure (start summary)
    feature = ""              # what detect() looks for (the "not one the hook knows" message)
    line_marker = " TFLOPs: "  # the throughput line among print_rank_last's messages
    log_time_fallback = True  # without per-iteration accounting, still install (log time)
    module_names = ()         # NameRules: which of its model's modules compute which
    #                           component (megatron_flops.megatron.module_names; counting mode)

    def __init__(self, hook, training):
        self.hook = hook
        self.training = training
        self._keys_in_line = None

    @staticmethod
    def detect(training) -> bool:
        """Is this loaded ``megatron.training`` this framework's?  By features only."""
        raise NotImplementedError

    def install(self) -> None:
        """Wrap what this framework needs (``training_log`` is wrapped by the hook)."""
        raise NotImplementedError

    # ---- per iteration (every rank) ---------------------------------------------------

    def num_microbatches(self) -> int:
        return self.training.get_num_microbatches()

    def observe(self, args, accounting: calc.RunAccounting) -> None:
        """Count the iteration just trained (its batch and sequence length, as the fork
        counts ``new_samples`` and tokens)."""
        accounting.observe_iteration(calc.iteration_batch_size(args, self.num_microbatches),
                                     calc.iteration_seq_length(args))

    def on_log_iteration(self, interval: Interval) -> None:
        """Called before ``training_log`` runs on an iteration that logs (default: nothing)."""

    # ---- per log interval -------------------------------------------------------------

    def edit_line(self, interval: Interval, message: str) -> str:
        """The framework's throughput line with exact values and our fields."""
        raise NotImplementedError

    def append_fields(self, interval: Interval, message: str) -> str:
        """Our console fields after the framework's, leaving out keys the line already has,
        also under a unit suffix (the microsoft fork's ``tokens per gpu per second (tgs)``
        is our ``tokens per gpu per second``: printed once)."""
        fields = sinks.console_fields(interval.report)
        skip = self._keys_in_line
        if skip is None:  # the line has the same keys every interval: look once
            skip = self._keys_in_line = frozenset(
                key for key, _ in fields if f" {key}: " in message or f" {key} (" in message)
        rank_fields = getattr(self.hook, "rank_fields", None)   # per pipeline rank (issue 22)
        if rank_fields is not None:
            fields = fields + rank_fields(interval)
        return message + "".join(f" {key}: {value} |" for key, value in fields if key not in skip)

    def tensorboard_writer(self):
        get_writer = getattr(self.training, "get_tensorboard_writer", None)
        return get_writer() if get_writer is not None else None

    def wandb_log(self) -> Optional[Callable]:
        """The framework's W&B writer's ``log`` (microsoft: ``get_wandb_writer()``, the wandb
        module on the last rank, else None); without one (bigscience) a user's own
        ``wandb.init`` run's ``wandb.log`` on the last rank."""
        get_wandb = getattr(self.training, "get_wandb_writer", None)
        if get_wandb is not None:
            writer = get_wandb()
            return getattr(writer, "log", None) if writer else None
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            rank, world = rank_and_world()
            if rank == world - 1:
                return wandb.log
        return None

    def write_outputs(self, interval: Interval) -> None:
        """After ``training_log``: the ``throughput/*`` tags (TensorBoard vs iteration,
        samples and tokens; W&B)."""
        report, args = interval.report, interval.accounting.args
        writer = self.tensorboard_writer()
        if writer is not None:
            add_scalar = getattr(writer.add_scalar, ORIGINAL_ADD_SCALAR, None)
            target = _ScalarTarget(add_scalar) if add_scalar is not None else writer
            sinks.write_tensorboard(target, report, interval.iteration,
                                    getattr(args, "consumed_train_samples", None),
                                    getattr(args, "consumed_train_tokens", None))
        log = self.wandb_log()
        if log is not None:
            sinks.write_wandb(log, report, interval.iteration)

    # ---- start summary ----------------------------------------------------------------

    def legacy_flops(self, args, batch_size: int, seq_length: int) -> float:
        """FLOPs per iteration by the framework's own formula, for this shape."""
        raise NotImplementedError

    def formula_line(self, args, breakdown, batch_size: int, seq_length: int) -> str:
        """What the framework's own formula counts, against the exact count of what its number
        means (:attr:`formula_counts`: hardware FLOPs for the forks, model FLOPs for
        Megatron-LM)."""
        legacy = self.legacy_flops(args, batch_size, seq_length)
        exact = getattr(breakdown, f"{self.formula_counts}_flops")
        off = legacy_error(legacy, exact)
        return (f"{self.formula_owner} counts {legacy:.4g} FLOPs per iteration for this shape, "
                f"{100 * off:+.1f}% vs the exact {self.formula_counts} count {exact:.4g}: "
                f"its {self.logged_name} would be off by that much")
