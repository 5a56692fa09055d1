"""Where throughput goes: the console line, TensorBoard tags, W&B keys.

One code path for the Megatron hook, the demo and ``relog``.  Writers are duck-typed
(anything with ``add_scalar(tag, value, step)``, or ``wandb.log``-like callables), so this
module imports nothing outside the standard library.
"""

from typing import Callable, Dict, List, Optional, Tuple

from .meter import ThroughputReport
from .report import format_percent, format_tflops

# report field -> TensorBoard / W&B tag
TAGS: Tuple[Tuple[str, str], ...] = (
    ("model_tflops_per_gpu", "throughput/model_tflops_per_gpu"),
    ("hardware_tflops_per_gpu", "throughput/hardware_tflops_per_gpu"),
    ("mfu", "throughput/mfu"),
    ("hfu", "throughput/hfu"),
    ("peak_tflops", "throughput/peak_tflops"),   # the MFU/HFU denominator, beside them
    ("tokens_per_second", "throughput/tokens_per_second"),
    ("tokens_per_second_per_gpu", "throughput/tokens_per_second_per_gpu"),
    ("samples_per_second", "throughput/samples_per_second"),
)


def scalars(report: ThroughputReport) -> Dict[str, float]:
    """tag -> value for one report (MFU/HFU and the peak left out when no peak is known)."""
    out = {}
    for field, tag in TAGS:
        value = getattr(report, field)
        if value is not None:
            out[tag] = float(value)
    return out


# (report field, tag vs iteration, tag vs samples, tag vs tokens), built once: the Megatron
# hook writes these on the last rank every log interval
_TAG_AXES = tuple((field, tag, tag + " vs samples", tag + " vs tokens") for field, tag in TAGS)


def write_tensorboard(writer, report: ThroughputReport, iteration: int,
                      consumed_samples: Optional[int] = None,
                      consumed_tokens: Optional[int] = None) -> None:
    """Write every tag vs iteration, and ``… vs samples`` / ``… vs tokens`` like Megatron."""
    add_scalar = writer.add_scalar
    for field, tag, vs_samples, vs_tokens in _TAG_AXES:
        value = getattr(report, field)
        if value is None:
            continue
        value = float(value)
        add_scalar(tag, value, iteration)
        if consumed_samples is not None:
            add_scalar(vs_samples, value, consumed_samples)
        if consumed_tokens is not None:
            add_scalar(vs_tokens, value, consumed_tokens)


def write_wandb(log: Callable[..., None], report: ThroughputReport, iteration: int) -> None:
    """``log`` is ``wandb.log`` (or anything with its signature)."""
    log(scalars(report), step=iteration)


def console_fields(report: ThroughputReport) -> List[Tuple[str, str]]:
    """(key, formatted value) pairs in the order they are printed.

    Every value is a plain number a log scraper can parse: units live in the key
    (``MFU (%): 45.2``), and a value that is not known (MFU/HFU without a peak) is left out,
    never printed as ``n/a``.  (Before issue 10 the fields read ``MFU: 45.2%`` / ``MFU: n/a``;
    ``relog`` still reads both forms.)"""
    fields = [
        ("samples per second", f"{report.samples_per_second:.3f}"),
        ("tokens per second", f"{report.tokens_per_second:.1f}"),
        ("tokens per gpu per second", f"{report.tokens_per_second_per_gpu:.1f}"),
        ("model TFLOP/s per gpu", format_tflops(report.model_tflops_per_gpu)),
        ("hardware TFLOP/s per gpu", format_tflops(report.hardware_tflops_per_gpu)),
    ]
    for key, fraction in (("MFU (%)", report.mfu), ("HFU (%)", report.hfu)):
        if fraction is not None:
            fields.append((key, format_percent(fraction, unit="")))
    return fields


def console_line(report: ThroughputReport, prefix_fields: Tuple[Tuple[str, str], ...] = ()) -> str:
    """Megatron style: `` key: value |`` fields."""
    fields = list(prefix_fields) + console_fields(report)
    return "".join(f" {key}: {value} |" for key, value in fields)
