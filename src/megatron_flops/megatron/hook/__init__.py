"""Runtime hook: exact throughput in an unmodified Megatron training run.

``megatron_flops.megatron.install()`` (or ``python -m megatron_flops.run pretrain_gpt.py …``)
patches ``megatron.training`` when it is imported (at once if it already is).  Nothing of the
framework's source is edited; the module's attributes are replaced by thin wrappers.

One strategy per training framework (:data:`STRATEGIES`, asked in order; detection by
features, never by version strings):

- :mod:`.microsoft` — the microsoft / deepspeedai Megatron-DeepSpeed fork: its
  ``throughput_calculator`` is replaced, so the fields and W&B keys it feeds become exact;
- :mod:`.bigscience` — the bigscience fork: ``training_log``'s inline TFLOPs; the interval
  timer, the printed line and the ``iteration-time/*`` TensorBoard tags are corrected;
- :mod:`.megatron_lm` — NVIDIA Megatron-LM (``megatron.training.training``): its
  ``num_floating_point_operations`` is replaced, so ``throughput per GPU`` and the
  ``throughput`` scalar become exact model TFLOP/s per GPU;
- anything else: one message, the run is left untouched.

The hook itself (:mod:`.runtime`) wraps ``training_log`` (called once per iteration by
``train()``): each call is one :class:`~.base.Interval` in which the iteration's own batch
and sequence length are counted (per-iteration accounting); when the strategy has closed the
interval, the line printed through ``print_rank_last`` gains
:func:`megatron_flops.sinks.console_fields`, and after ``training_log`` returns, on the rank
that owns the writers (the last), the ``throughput/*`` tags of :data:`megatron_flops.sinks.TAGS`
go to the run's own TensorBoard writer (vs iteration, samples and tokens) and W&B.  Rank 0
prints, once, the FLOPs breakdown, the peak used and how far the framework's own formula is
off for this shape.  Adding a framework is adding a :class:`~.base.Strategy` module and its
line in :data:`STRATEGIES`.

The hook never crashes training: an exception inside it is reported once (rank 0 and the
last rank) and the hook disables itself; the framework's original behaviour continues.
"""

import os
import sys
from typing import Optional

from .. import calculator as calc
from .base import PREFIX, Interval, Strategy, replace_field
from .count_mode import CountSettings
from .bigscience import BigscienceFork
from .importer import MEGATRON_LM_TRAINING_MODULE, TRAINING_MODULE, TrainingImportFinder
from .megatron_lm import MegatronLM
from .microsoft import MicrosoftFork
from .runtime import MegatronHook

__all__ = ["install", "uninstall", "installed", "MegatronHook", "Interval", "Strategy",
           "STRATEGIES", "replace_field", "PREFIX"]

# asked in this order: a microsoft training_log also prints an inline "TFLOPs:" field
STRATEGIES = (MicrosoftFork, BigscienceFork, MegatronLM)
FORK_MICROSOFT = MicrosoftFork.name
FORK_BIGSCIENCE = BigscienceFork.name
ENV_DISABLE = "MEGATRON_FLOPS_DISABLE"


_HOOK: Optional[MegatronHook] = None


def install(peak_tflops: Optional[float] = None, gpu: Optional[str] = None,
            causal: Optional[bool] = None, training_module=None, out=None,
            count_flops=None, strict: Optional[bool] = None,
            tolerance=None, conventions: Optional[bool] = None) -> Optional[MegatronHook]:
    """Install the hook (idempotent) and return it; see :mod:`megatron_flops.megatron.hook`.

    ``peak_tflops`` / ``gpu`` override the peak used for MFU/HFU (else the env vars
    ``MEGATRON_FLOPS_PEAK_TFLOPS`` / ``MEGATRON_FLOPS_GPU``, else the device name);
    ``causal`` counts half of the attention products (flash attention; env
    ``MEGATRON_FLOPS_CAUSAL=1``).  ``count_flops`` (an iteration number, or True for the
    first; env ``MEGATRON_FLOPS_COUNT_FLOPS``) turns on the counting mode, ``strict`` (env
    ``MEGATRON_FLOPS_STRICT=1``) ends the run when the count differs from the formula by more
    than ``tolerance`` (a fraction or ``"0.5%"``; env ``MEGATRON_FLOPS_TOLERANCE``; default
    exact) — see :mod:`.count_mode`.  ``conventions`` (env ``MEGATRON_FLOPS_CONVENTIONS=1``)
    adds to the start summary what each framework's formula counts for the run's shape
    (:mod:`megatron_flops.conventions`).  A second call keeps the hook and replaces the settings
    it gives.  ``megatron.training`` is patched now if it is imported (or given as
    ``training_module``, a module or its name), else as soon as it is imported.  With
    ``MEGATRON_FLOPS_DISABLE=1`` nothing is installed and None is returned.
    """
    global _HOOK
    if os.environ.get(ENV_DISABLE, "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    counting = CountSettings.resolve(count_flops, strict, tolerance)
    if _HOOK is None:
        settings = calc.Settings().overridden(peak_tflops, gpu, causal, conventions)
        _HOOK = MegatronHook(STRATEGIES, settings, out)
        sys.meta_path.insert(0, TrainingImportFinder(_HOOK))
    else:
        _HOOK.settings = _HOOK.settings.overridden(peak_tflops, gpu, causal, conventions)
        if out is not None:
            _HOOK.out = out
    if counting.iteration is not None or _HOOK.counting.iteration is None:
        _HOOK.counting = counting
    if isinstance(training_module, str):  # the patched training.py passes its __name__
        training_module = sys.modules[training_module]
    module = training_module if training_module is not None else (
        sys.modules.get(MEGATRON_LM_TRAINING_MODULE) or sys.modules.get(TRAINING_MODULE))
    if module is not None:
        _HOOK.patch(module)
    return _HOOK


def uninstall() -> None:
    """Remove the import finder and restore every patched attribute (tests, notebooks)."""
    global _HOOK
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, TrainingImportFinder)]
    if _HOOK is not None:
        _HOOK.restore()
    _HOOK = None


def installed() -> Optional[MegatronHook]:
    return _HOOK
