"""Runtime hook: exact throughput in an unmodified Megatron-DeepSpeed training run.

``megatron_flops.megatron.install()`` (or ``python -m megatron_flops.run pretrain_gpt.py …``)
patches ``megatron.training`` when it is imported (at once if it already is).  Nothing of the
fork's source is edited; the module's attributes are replaced by thin wrappers.

What is detected, by features (never by version strings):

- **microsoft / deepspeedai fork**: ``megatron.training.throughput_calculator`` exists with
  the signature ``(model, args, iteration_time, total_iterations)`` (imported by name from
  ``megatron.utils``).  Both module attributes are replaced by
  :func:`megatron_flops.megatron.calculator.throughput_calculator`, so the console
  ``samples per second``/``tgs``/``TFLOPs`` fields and the W&B ``throughput/*`` keys the fork
  derives from it become exact.
- **bigscience fork**: ``training_log`` computes TFLOPs inline (its code constants contain the
  ``TFLOPs:`` field).  The hook lets ``training_log`` run unchanged and corrects what it
  emits: the ``interval-time`` timer's ``elapsed()`` is observed (the fork's own interval
  time), ``print_rank_last`` gets the exact ``samples per second`` and ``TFLOPs`` fields, and
  the TensorBoard writer's ``add_scalar`` gets the exact values for the
  ``iteration-time/samples per second[ per replica]``, ``iteration-time/tokens per second[ per
  replica]`` and ``iteration-time/TFLOPs per gpu (estimated)`` tags.
- anything else: one message, the run is left untouched.

In both forks ``training_log`` (called once per iteration by ``train()``) is wrapped to count
each iteration's own batch and sequence length (per-iteration accounting), and after it
returns, on the rank that owns the writers (the last), the ``throughput/*`` tags of
:data:`megatron_flops.sinks.TAGS` are written through the run's own TensorBoard writer (vs
iteration, samples and tokens) and W&B; the console line gains
:func:`megatron_flops.sinks.console_fields`.  Rank 0 prints, once, the FLOPs breakdown, the
peak used and how far the fork's own formula is off for this shape.

The hook never crashes training: an exception inside it is reported once (rank 0 and the
last rank) and the hook disables itself; the fork's original behaviour continues.
"""

import functools
import importlib.abc
import importlib.util
import inspect
import os
import sys
from typing import Callable, Optional

from .. import sinks
from . import calculator as calc

FORK_MICROSOFT = "microsoft"
FORK_BIGSCIENCE = "bigscience"
ENV_DISABLE = "MEGATRON_FLOPS_DISABLE"
TRAINING_MODULE = "megatron.training"
PREFIX = "megatron-flops:"

_CALCULATOR_PARAMETERS = ("model", "args", "iteration_time", "total_iterations")

# bigscience TensorBoard tags whose values the hook replaces: tag -> value from the report
_BIGSCIENCE_TAGS = {
    "iteration-time/samples per second": lambda r, dp: r.samples_per_second,
    "iteration-time/samples per second per replica": lambda r, dp: r.samples_per_second / dp,
    "iteration-time/tokens per second": lambda r, dp: r.tokens_per_second,
    "iteration-time/tokens per second per replica": lambda r, dp: r.tokens_per_second / dp,
    "iteration-time/TFLOPs per gpu (estimated)": lambda r, dp: r.hardware_tflops_per_gpu,
}


def replace_field(line: str, key: str, value: str) -> str:
    """``line`` with the value of its `` key: value |`` field replaced (unchanged if absent)."""
    marker = f" {key}: "
    start = line.find(marker)
    if start < 0:
        return line
    start += len(marker)
    end = line.find(" |", start)
    return line if end < 0 else line[:start] + value + line[end:]


def _rank_and_world():
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
    except Exception:
        pass
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _code_strings(code) -> set:
    """String constants of a code object and the code objects nested in it."""
    out = set()
    for const in code.co_consts:
        if isinstance(const, str):
            out.add(const)
        elif hasattr(const, "co_consts"):
            out |= _code_strings(const)
    return out


def _parameter_names(function) -> tuple:
    try:
        return tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return ()


class MegatronHook:
    """The installed hook (one per process).  See the module docstring.

    ``fork`` is ``"microsoft"``, ``"bigscience"``, ``None`` (not patched yet) or
    ``"unknown"``; ``enabled`` turns False after the first failure.
    """

    def __init__(self, out=None):
        self.fork: Optional[str] = None
        self.enabled = True
        self.failure: Optional[str] = None
        self.training_module = None
        self.per_iteration = False
        self.out = out  # a stream for messages (None: sys.stdout at print time)
        self._summary_done = False
        self._in_training_log = False
        self._report = None  # the report of the interval closed in this training_log call
        self._accounting = None
        self._total_loss_dict = None
        self._keys_in_line = None
        self._watching = False
        self._originals = {}

    # ---- messages ---------------------------------------------------------------------

    def _print(self, text: str, ranks=("first", "last")) -> None:
        rank, world = _rank_and_world()
        if ("first" in ranks and rank == 0) or ("last" in ranks and rank == world - 1):
            print(text, file=self.out or sys.stdout, flush=True)

    def fail(self, where: str, error: BaseException) -> None:
        """Report the first failure once, then step aside for good."""
        if not self.enabled:
            return
        self.enabled = False
        self.failure = f"{type(error).__name__}: {error}"
        self._report = None
        self._print(f"{PREFIX} disabled after an error in {where} ({self.failure}); "
                    "training continues with the fork's own throughput numbers")

    # ---- patching ---------------------------------------------------------------------

    def patch(self, training) -> Optional[str]:
        """Patch a loaded ``megatron.training`` module; return the fork detected."""
        if getattr(training, "_megatron_flops_fork", None):
            return training._megatron_flops_fork  # already patched (hook and patch both on)
        try:
            fork = self._detect(training)
            if fork is None:
                self.fork = "unknown"
                self.enabled = False
                training._megatron_flops_fork = "unknown"
                self._print(f"{PREFIX} this Megatron version is not one the hook knows (neither "
                            "megatron.training.throughput_calculator(model, args, iteration_time, "
                            "total_iterations) nor an inline 'TFLOPs:' field in training_log); "
                            "the run is left untouched")
                return None
            self.training_module = training
            self.fork = fork
            if fork == FORK_MICROSOFT:
                self._patch_microsoft(training)
            self._wrap_print(training, rewrite=fork == FORK_BIGSCIENCE)
            self._wrap_training_log(training)
            training._megatron_flops_fork = fork
            return fork
        except Exception as error:  # never break the import of the training module
            self.fail("patching megatron.training", error)
            return None

    def _detect(self, training) -> Optional[str]:
        calculator = getattr(training, "throughput_calculator", None)
        if callable(calculator) and _parameter_names(calculator)[:4] == _CALCULATOR_PARAMETERS:
            return FORK_MICROSOFT
        training_log = getattr(training, "training_log", None)
        code = getattr(training_log, "__code__", None)
        if code is not None and callable(getattr(training, "print_rank_last", None)) \
                and "print_rank_last" in code.co_names \
                and any("TFLOPs:" in s for s in _code_strings(code)) \
                and callable(getattr(training, "get_timers", None)):
            return FORK_BIGSCIENCE
        return None

    def _set(self, module, name: str, value) -> None:
        self._originals[(module.__name__, name)] = getattr(module, name)
        setattr(module, name, value)

    def _patch_microsoft(self, training) -> None:
        original = training.throughput_calculator
        hook = self

        @functools.wraps(calc.throughput_calculator)
        def throughput_calculator(model, args, iteration_time, total_iterations):
            if hook.enabled:
                try:
                    accounting = hook._accounting_for(args)
                    report = accounting.close_interval(iteration_time, total_iterations,
                                                       hook._num_microbatches)
                    hook._report = report
                    return (report.samples_per_second, report.hardware_tflops_per_gpu,
                            accounting.params_billions)
                except Exception as error:
                    hook.fail("throughput_calculator", error)
            return original(model, args, iteration_time, total_iterations)

        throughput_calculator._megatron_flops = True
        self._set(training, "throughput_calculator", throughput_calculator)
        utils = sys.modules.get("megatron.utils")
        if utils is not None and getattr(utils, "throughput_calculator", None) is original:
            self._set(utils, "throughput_calculator", throughput_calculator)

    def _wrap_print(self, training, rewrite: bool) -> None:
        """print_rank_last: the main log line (the one with ' TFLOPs: ') gains our fields;
        with ``rewrite`` (bigscience) its samples-per-second and TFLOPs values are replaced;
        otherwise (microsoft, whose TFLOPs and samples/s come from our calculator) its
        log-time ``tokens per gpu per second (tgs)`` is."""
        hook = self
        original_print = training.print_rank_last
        edit = self._rewrite_bigscience_line if rewrite else self._rewrite_microsoft_line

        @functools.wraps(original_print)
        def print_rank_last(message, *rest, **kwargs):
            if hook.enabled and hook._report is not None and hook._in_training_log \
                    and isinstance(message, str) and " TFLOPs: " in message:
                try:
                    message = edit(message)
                except Exception as error:
                    hook.fail("print_rank_last", error)
            return original_print(message, *rest, **kwargs)

        self._set(training, "print_rank_last", print_rank_last)

    def _wrap_training_log(self, training) -> None:
        """training_log: per-iteration accounting, then the new tags and console fields."""
        hook = self
        original_log = training.training_log
        names = _parameter_names(original_log)
        self.per_iteration = (len(names) > 3 and names[3] == "iteration"
                              and callable(getattr(training, "get_args", None))
                              and callable(getattr(training, "get_num_microbatches", None)))
        if not self.per_iteration:
            self._print(f"{PREFIX} training_log has an unexpected signature {names}: "
                        "throughput counted at log time (batch-size ramp-up not per iteration)")
            if self.fork == FORK_BIGSCIENCE:
                raise RuntimeError("bigscience training_log without (…, iteration, …)")
            return

        @functools.wraps(original_log)
        def training_log(*args, **kwargs):
            if hook.enabled:
                try:
                    hook._total_loss_dict = args[1] if len(args) > 1 else kwargs.get("total_loss_dict")
                    hook._before_training_log(args[3] if len(args) > 3 else kwargs["iteration"])
                except Exception as error:
                    hook.fail("training_log (before)", error)
            hook._in_training_log = True
            try:
                result = original_log(*args, **kwargs)
            finally:
                hook._in_training_log = False
            if hook.enabled and hook._report is not None:
                try:
                    hook._after_training_log(args[3] if len(args) > 3 else kwargs["iteration"])
                except Exception as error:
                    hook.fail("training_log (after)", error)
            hook._report = None
            return result

        self._set(training, "training_log", training_log)

    # ---- per iteration ----------------------------------------------------------------

    def _num_microbatches(self) -> int:
        return self.training_module.get_num_microbatches()

    def _accounting_for(self, args):
        accounting = self._accounting
        if accounting is None or accounting.args is not args:
            accounting = self._accounting = calc.accounting_for(args)
        return accounting

    def _before_training_log(self, iteration: int) -> None:
        training = self.training_module
        args = training.get_args()
        accounting = self._accounting_for(args)
        if not self._summary_done:
            self._summary_done = True
            self._start_summary(args, accounting)
        accounting.observe_iteration(calc.iteration_batch_size(args, self._num_microbatches),
                                     calc.iteration_seq_length(args))
        self._report = None
        if self.fork == FORK_BIGSCIENCE and not self._watching and iteration % args.log_interval == 0:
            self._watch_bigscience_outputs(training)

    def _watch_bigscience_outputs(self, training) -> None:
        """Observe the interval timer and wrap the TB writer (once each; cheap checks)."""
        timer = training.get_timers()("interval-time")
        if not getattr(timer, "_megatron_flops", False):
            original_elapsed = timer.elapsed
            hook = self

            @functools.wraps(original_elapsed)
            def elapsed(*args, **kwargs):
                seconds = original_elapsed(*args, **kwargs)
                if hook.enabled and hook._in_training_log and hook._report is None:
                    try:
                        accounting = hook._accounting
                        total = hook._interval_iterations(accounting)
                        hook._report = accounting.close_interval(seconds, total,
                                                                 hook._num_microbatches)
                    except Exception as error:
                        hook.fail("the interval timer", error)
                return seconds

            timer.elapsed = elapsed
            timer._megatron_flops = True
        get_writer = getattr(training, "get_tensorboard_writer", None)
        writer = get_writer() if get_writer is not None else None
        if writer is not None and not getattr(writer, "_megatron_flops", False):
            original_add_scalar = writer.add_scalar
            hook = self

            def add_scalar(tag, value, *args, **kwargs):
                report = hook._report
                if report is not None and hook.enabled and tag in _BIGSCIENCE_TAGS:
                    try:
                        value = _BIGSCIENCE_TAGS[tag](report, hook._accounting.args.data_parallel_size)
                    except Exception as error:
                        hook.fail("add_scalar", error)
                return original_add_scalar(tag, value, *args, **kwargs)

            add_scalar._megatron_flops_original = original_add_scalar
            writer.add_scalar = add_scalar
            writer._megatron_flops = True
        # both in place (or no writer on this rank, which the fork never creates later)
        self._watching = True

    def _interval_iterations(self, accounting) -> int:
        """Iterations in the fork's interval: advanced + skipped, as its training_log counts
        them (equal to the observed ones unless the hook came in mid-interval)."""
        counts = self._total_loss_dict
        try:
            return counts["advanced iterations"] + counts["skipped iterations"]
        except (TypeError, KeyError):
            return accounting.meter.pending_iterations

    # ---- per log interval -------------------------------------------------------------

    def _rewrite_bigscience_line(self, message: str) -> str:
        """The fork's format for these two fields: samples/s ``{:.3f}``, TFLOPs ``{:.2f}``."""
        report = self._report
        message = replace_field(message, "samples per second", "%.3f" % report.samples_per_second)
        message = replace_field(message, "TFLOPs", "%.2f" % report.hardware_tflops_per_gpu)
        return self._append_fields(message)

    def _rewrite_microsoft_line(self, message: str) -> str:
        """The fork computes tgs at log time (samples/s × the current seqlen / world size),
        wrong across a curriculum change; its format is ``{:.3f}``."""
        message = replace_field(message, "tokens per gpu per second (tgs)",
                                "%.3f" % self._report.tokens_per_second_per_gpu)
        return self._append_fields(message)

    def _append_fields(self, message: str) -> str:
        """Our console fields after the fork's, leaving out keys the line already has."""
        skip = self._keys_in_line
        if skip is None:  # the fork's line has the same keys every interval: look once
            skip = self._keys_in_line = frozenset(
                key for key, _ in sinks.console_fields(self._report) if f" {key}: " in message)
        return message + "".join(f" {key}: {value} |" for key, value
                                 in sinks.console_fields(self._report) if key not in skip)

    def _after_training_log(self, iteration: int) -> None:
        report = self._report
        training = self.training_module
        args = self._accounting.args
        get_writer = getattr(training, "get_tensorboard_writer", None)
        writer = get_writer() if get_writer is not None else None
        if writer is not None:
            add_scalar = getattr(writer.add_scalar, "_megatron_flops_original", None)
            target = _ScalarTarget(add_scalar) if add_scalar is not None else writer
            sinks.write_tensorboard(target, report, iteration,
                                    getattr(args, "consumed_train_samples", None),
                                    getattr(args, "consumed_train_tokens", None))
        log = self._wandb_log(training)
        if log is not None:
            sinks.write_wandb(log, report, iteration)

    def _wandb_log(self, training) -> Optional[Callable]:
        get_wandb = getattr(training, "get_wandb_writer", None)
        if get_wandb is not None:  # microsoft: the wandb module on the last rank, else None
            writer = get_wandb()
            return getattr(writer, "log", None) if writer else None
        wandb = sys.modules.get("wandb")  # bigscience has no W&B; a user's own wandb.init
        if wandb is not None and getattr(wandb, "run", None) is not None:
            rank, world = _rank_and_world()
            if rank == world - 1:
                return wandb.log
        return None

    # ---- start ------------------------------------------------------------------------

    def _start_summary(self, args, accounting) -> None:
        rank, _ = _rank_and_world()
        if rank != 0:
            return
        from ..flops import flops_breakdown
        from ..params import parameter_count
        from ..report import summary_lines
        model, run = accounting.model, accounting.run
        breakdown = flops_breakdown(model, run.seq_length, run.global_batch_size, run.recompute,
                                    run.pipeline_model_parallel_size, accounting.causal)
        how = ("throughput_calculator replaced" if self.fork == FORK_MICROSOFT else
               "training_log's TFLOPs and throughput fields corrected")
        lines = [f"{PREFIX} hooked the {self.fork} Megatron-DeepSpeed fork ({how}; "
                 f"{'per-iteration' if self.per_iteration else 'log-time'} accounting)"]
        lines += summary_lines(model, run, breakdown, parameter_count(model))
        lines.append(f"attention counted {'causal' if accounting.causal else 'dense (full s×s)'}; "
                     "elementwise ops not counted")
        hint = "" if accounting.peak.known else (
            f" [set {calc.ENV_GPU} (e.g. h100-sxm) or {calc.ENV_PEAK_TFLOPS}]")
        lines.append(f"peak for MFU/HFU: {accounting.peak.source}{hint}")
        lines.append(fork_formula_line(self.fork, args, breakdown.hardware_flops,
                                       run.global_batch_size, run.seq_length))
        self._print("\n".join(lines), ranks=("first",))


class _ScalarTarget:
    """Writes through the writer's original add_scalar (bypassing the bigscience rewrite)."""

    __slots__ = ("add_scalar",)

    def __init__(self, add_scalar):
        self.add_scalar = add_scalar


def fork_formula_line(fork: str, args, hardware_flops: int, batch_size: int, seq_length: int) -> str:
    """What the fork's own formula counts for this shape, against the exact hardware FLOPs."""
    from .. import legacy
    if fork == FORK_BIGSCIENCE:
        legacy_flops = legacy.bigscience_flops_per_iteration(
            batch_size, seq_length, args.num_layers, args.hidden_size, args.padded_vocab_size,
            bool(getattr(args, "glu_activation", None)),
            bool(getattr(args, "checkpoint_activations", False)))
    else:
        legacy_flops = legacy.microsoft_flops_per_iteration(
            batch_size, seq_length, args.num_layers, args.hidden_size, args.num_attention_heads,
            getattr(args, "num_key_value_heads", None),
            getattr(args, "ffn_hidden_size", None) or 4 * args.hidden_size,
            args.padded_vocab_size, bool(getattr(args, "swiglu", False)),
            getattr(args, "recompute_granularity", None), getattr(args, "topk", 1) or 1,
            bool(getattr(args, "checkpoint_activations", False)))
    off = legacy_flops / hardware_flops - 1.0
    return (f"the {fork} fork's own formula counts {legacy_flops:.4g} FLOPs per iteration "
            f"for this shape, {100 * off:+.1f}% vs the exact hardware count {hardware_flops:.4g}: "
            f"its TFLOPs would be off by that much")


# ---- install --------------------------------------------------------------------------

class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then patches the freshly executed ``megatron.training``."""

    def __init__(self, loader, hook: MegatronHook):
        self._loader = loader
        self._hook = hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._hook.patch(module)

    def __getattr__(self, name):  # get_source, get_filename, … for tracebacks and inspect
        return getattr(self._loader, name)


class _TrainingImportFinder(importlib.abc.MetaPathFinder):
    """Finds ``megatron.training`` with the other finders and wraps its loader."""

    def __init__(self, hook: MegatronHook):
        self.hook = hook
        self._busy = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TRAINING_MODULE or self._busy:
            return None
        self._busy = True
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._busy = False
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _PatchingLoader(spec.loader, self.hook)
        return spec


_HOOK: Optional[MegatronHook] = None


def install(peak_tflops: Optional[float] = None, gpu: Optional[str] = None,
            causal: Optional[bool] = None, training_module=None, out=None) -> Optional[MegatronHook]:
    """Install the hook (idempotent) and return it; see :mod:`megatron_flops.megatron.hook`.

    ``peak_tflops`` / ``gpu`` override the peak used for MFU/HFU (else the env vars
    ``MEGATRON_FLOPS_PEAK_TFLOPS`` / ``MEGATRON_FLOPS_GPU``, else the device name);
    ``causal`` counts half of the attention products (flash attention; env
    ``MEGATRON_FLOPS_CAUSAL=1``).  ``megatron.training`` is patched now if it is imported
    (or given as ``training_module``, a module or its name), else as soon as it is imported.  With
    ``MEGATRON_FLOPS_DISABLE=1`` nothing is installed and None is returned.
    """
    global _HOOK
    if os.environ.get(ENV_DISABLE, "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    if peak_tflops is not None:
        if not peak_tflops > 0:
            raise ValueError(f"peak_tflops must be positive, got {peak_tflops}")
        calc.SETTINGS.peak_tflops = float(peak_tflops)
    if gpu is not None:
        calc.SETTINGS.gpu = gpu
    if causal is not None:
        calc.SETTINGS.causal = bool(causal)
    if _HOOK is None:
        _HOOK = MegatronHook(out)
        sys.meta_path.insert(0, _TrainingImportFinder(_HOOK))
    elif out is not None:
        _HOOK.out = out
    if isinstance(training_module, str):  # the patched training.py passes its __name__
        training_module = sys.modules[training_module]
    module = training_module if training_module is not None else sys.modules.get(TRAINING_MODULE)
    if module is not None:
        _HOOK.patch(module)
    return _HOOK


def uninstall() -> None:
    """Remove the import finder and restore every patched attribute (tests, notebooks)."""
    global _HOOK
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TrainingImportFinder)]
    if _HOOK is not None:
        _HOOK.enabled = False  # wrappers left on timer/writer instances pass straight through
        for (module_name, name), value in _HOOK._originals.items():
            module = sys.modules.get(module_name)
            if module is not None:
                setattr(module, name, value)
                if hasattr(module, "_megatron_flops_fork"):
                    del module._megatron_flops_fork
    _HOOK = None
    calc.SETTINGS.peak_tflops = calc.SETTINGS.gpu = calc.SETTINGS.causal = None
    calc.forget()


def installed() -> Optional[MegatronHook]:
    return _HOOK
