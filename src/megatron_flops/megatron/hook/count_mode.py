"""The hook's counting mode (off by default): on one iteration, count what the model executes.

Turned on by ``install(count_flops=ITERATION)``, ``python -m megatron_flops.run
--count-flops[=ITERATION] …`` or ``MEGATRON_FLOPS_COUNT_FLOPS=ITERATION``.  The hook wraps
``megatron.training.train_step``; the first iteration numbered ``ITERATION`` or later
(default 1: the first one that runs) runs under :func:`megatron_flops.megatron.counting.counted_step` with the framework
strategy's ``module_names``, and rank 0 prints the table (component × counted, formula,
difference; unattributed FLOPs; the kernels that could not be counted; the cost in seconds).
The formula is :func:`~megatron_flops.flops.flops_breakdown` of the run's shapes for the
samples this rank trained in that iteration (micro-batch × micro-batches) at the iteration's
sequence length, with dense attention (what the fork's ``baddbmm``/``bmm`` compute).  Every
other iteration runs untouched; training continues after the counted one.

The iteration a ``train_step`` call trains is the loop's own number: the ``iteration``
keyword Megatron-LM passes (core_v0.16.0 on: the iterations done before this one), else the
iteration the run started from (``args.iteration`` at the first call: a resumed checkpoint's)
plus the calls made so far — Megatron-LM does not update ``args.iteration`` while it trains;
the forks do, and both readings agree there.  A run that ends before the chosen iteration is
told so at exit (``--strict``: exit status 1).

``strict`` (``--strict``, ``MEGATRON_FLOPS_STRICT=1``) ends the run with exit status 1
right after the table when a component differs from the formula by more than ``tolerance``
(``--tolerance``, ``MEGATRON_FLOPS_TOLERANCE``, a fraction or a percentage of that phase's
formula FLOPs; default 0: exact), when FLOPs are unattributed or kernels could not be
counted, or when counting failed.  Without ``strict`` a failure of the counting is reported
once and training continues uncounted: when torch's FLOP formula (or the attribution) raises
inside the counted step, the step had not completed and runs again uncounted (a counter
failure is told from the step's own by the traceback: :func:`raised_by_counter`).  An
exception raised by the training step itself propagates as it would without counting.
"""

import atexit
import functools
import os
import sys
from dataclasses import dataclass
from typing import Optional

from ...errors import UsageError
from ...report import parse_fraction
from .. import calculator as calc
from .base import PREFIX

ENV_COUNT_FLOPS = "MEGATRON_FLOPS_COUNT_FLOPS"
ENV_STRICT = "MEGATRON_FLOPS_STRICT"
ENV_TOLERANCE = "MEGATRON_FLOPS_TOLERANCE"
EXIT_MISMATCH = 1
_TRUE = ("1", "true", "yes", "on")


def count_iteration(value, where: str) -> Optional[int]:
    """``True`` / ``"on"`` -> 1 (the first iteration), an integer >= 1 -> itself, ``None`` /
    ``False`` / ``""`` / ``"0"`` / ``"off"`` -> None (off)."""
    if value is None or value is False:
        return None
    if value is True:
        return 1
    text = str(value).strip().lower()
    if text in ("", "0", "off", "false", "no"):
        return None
    if text in ("on", "true", "yes"):
        return 1
    if not text.isdigit():
        raise UsageError(f"{where} must be an iteration number (>= 1), got {value!r}")
    return int(text)


@dataclass(frozen=True)
class CountSettings:
    """``iteration``: the iteration to count (None: counting off)."""

    iteration: Optional[int] = None
    strict: bool = False
    tolerance: float = 0.0

    @classmethod
    def resolve(cls, count_flops=None, strict=None, tolerance=None) -> "CountSettings":
        """The arguments given (not None), else the environment variables."""
        if count_flops is None:
            iteration = count_iteration(os.environ.get(ENV_COUNT_FLOPS), ENV_COUNT_FLOPS)
        else:
            iteration = count_iteration(count_flops, "count_flops")
        if strict is None:
            strict = os.environ.get(ENV_STRICT, "").strip().lower() in _TRUE
        if tolerance is None:
            text = os.environ.get(ENV_TOLERANCE, "").strip()
            tolerance = parse_fraction(text, ENV_TOLERANCE) if text else 0.0
        elif isinstance(tolerance, str):
            tolerance = parse_fraction(tolerance, "tolerance")
        elif not tolerance >= 0:
            raise UsageError(f"tolerance must not be negative, got {tolerance}")
        return cls(iteration, bool(strict), float(tolerance))


def raised_by_counter(error: BaseException) -> bool:
    """Whether ``error`` was raised by the FLOP counter rather than the step's own code: a
    frame of its traceback is the counter's per-operator hook (``_count_flops``: torch's
    FLOP formulas and our attribution run there, after the operator itself ran) or torch's
    module tracker.  An operator's own error is raised before ``_count_flops`` is called,
    so it never has such a frame."""
    traceback = error.__traceback__
    while traceback is not None:
        code = traceback.tb_frame.f_code
        if code.co_name == "_count_flops" or os.path.basename(
                code.co_filename) == "module_tracker.py":
            return True
        traceback = traceback.tb_next
    return False


class CountingMode:
    """Wraps ``train_step`` of the patched training module; counts once."""

    def __init__(self, hook, settings: CountSettings):
        self.hook = hook
        self.settings = settings
        self.done = False
        self.result = None   # the CountResult, once counted
        self.failure: Optional[str] = None
        self.calls = 0         # train_step calls seen
        self._start = None     # args.iteration at the first call
        self.iteration = None  # the loop's number of the iteration being trained
        self._installed = (None, None)

    def install(self, training) -> None:
        step = getattr(training, "train_step", None)
        if not callable(step):
            self._failed("finding megatron.training.train_step",
                         AttributeError("no train_step in megatron.training"))
            return
        mode = self

        @functools.wraps(step)
        def train_step(*args, **kwargs):
            if mode.done or not mode._due(training, kwargs):
                return step(*args, **kwargs)
            mode.done = True
            return mode._count(training, step, args, kwargs)

        self.hook.replace(training, "train_step", train_step)
        self._installed = (training, train_step)
        atexit.register(self._never_reached)

    def _due(self, training, kwargs) -> bool:
        """Is the iteration this call trains the chosen one (or later)?"""
        try:
            self.calls += 1
            done = kwargs.get("iteration")
            if not isinstance(done, int) or isinstance(done, bool):
                if self._start is None:
                    self._start = int(training.get_args().iteration)
                done = max(self._start + self.calls - 1, int(training.get_args().iteration))
            self.iteration = done + 1
            return self.iteration >= self.settings.iteration
        except Exception as error:
            self._failed("numbering the iteration", error)
            return False

    def _never_reached(self) -> None:
        """At exit: a count asked for and never made is said, never silent.  Runs once: a
        direct call (a test, a notebook) takes it off the exit handlers, so a process that
        hosted a counting mode without training (a test runner) does not end with status 1."""
        atexit.unregister(self._never_reached)
        training, wrapper = self._installed
        if self.done or getattr(training, "train_step", None) is not wrapper:
            return  # counted, failed (said), or the hook was removed
        last = f"the last was iteration {self.iteration}" if self.iteration else "none ran"
        self.hook.print(f"{PREFIX} counting mode: iteration {self.settings.iteration} was never "
                        f"trained ({self.calls} train_step call{'s' if self.calls != 1 else ''}; "
                        f"{last}): nothing was counted", ranks=("first",))
        if self.settings.strict:  # an atexit handler cannot set the status otherwise
            self.hook.print(f"{PREFIX} --strict: exit status {EXIT_MISMATCH}", ranks=("first",))
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(EXIT_MISMATCH)

    def _failed(self, where: str, error: BaseException) -> None:
        self.done = True
        self.failure = f"{type(error).__name__}: {error}"
        strict = self.settings.strict
        self.hook.print(f"{PREFIX} counting mode failed in {where} ({self.failure}); "
                        + ("--strict: ending the run" if strict else
                           "training continues uncounted"))
        if strict:
            raise SystemExit(EXIT_MISMATCH)

    def _count(self, training, step, args, kwargs):
        try:
            from ..counting import count_result, counted_step
            train_args = training.get_args()
            accounting = self.hook.accounts.for_args(train_args)
            model, run = accounting.model, accounting.run
            iteration = self.iteration
            samples = train_args.micro_batch_size * self.hook.strategy.num_microbatches()
            seq_length = calc.iteration_seq_length(train_args)
            rules = self.hook.strategy.module_names
        except Exception as error:
            self._failed("preparing the count", error)
            return step(*args, **kwargs)
        started, finished = [], []

        def run_step():
            started.append(True)
            value = step(*args, **kwargs)
            finished.append(value)
            return value

        try:
            counter, seconds, value = counted_step(run_step, model, rules)
        except Exception as error:
            if finished:   # the step completed; the counter failed on the way out
                self._failed("stopping the counter", error)
                return finished[0]
            if started and not raised_by_counter(error):
                raise  # the training step's own error, as without counting
            if started:
                # torch's FLOP formula or our attribution raised inside the step: the step
                # did not complete; it runs again uncounted (its micro-batches drawn anew)
                self._failed("torch's FLOP formula or the attribution, inside the step "
                             "(the step runs again uncounted)", error)
            else:
                self._failed("starting the counter", error)
            return step(*args, **kwargs)
        try:
            result = self.result = count_result(
                counter, seconds, model, seq_length, samples, run.recompute,
                run.pipeline_model_parallel_size, run.tensor_model_parallel_size)
            tolerance = self.settings.tolerance
            lines = [f"{PREFIX} counting mode: iteration {iteration} counted with "
                     f"torch.utils.flop_counter by {self.hook.strategy.name}'s module names"]
            lines += result.lines(tolerance)
            self.hook.start_summary(train_args, accounting)  # the summary first, then the table
            lines = "\n".join(lines).split("\n")  # every line of the table carries the prefix
            self.hook.print("\n".join(line if line.startswith(PREFIX) else f"{PREFIX} {line}"
                                       for line in lines), ranks=("first",))
        except Exception as error:
            self._failed("building the table", error)
            return value
        if self.settings.strict and not result.passes(tolerance):
            self.hook.print(f"{PREFIX} --strict: the counted FLOPs differ from the formula "
                            f"(tolerance {tolerance:g}); ending the run with exit status "
                            f"{EXIT_MISMATCH}")
            raise SystemExit(EXIT_MISMATCH)
        return value
