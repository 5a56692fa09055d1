"""megatron-flops: exact FLOPs and throughput for Megatron-style transformer training.

The core (this package's top-level modules) imports nothing outside the standard library.
``__all__`` below is the stable Python surface of the core; docs/api.md lists it with the
other public modules (``megatron_flops.components``, ``megatron_flops.megatron``,
``megatron_flops.logs``, and those that need torch).  Every other module is internal.
"""

from .conventions import conventions_for_run
from .errors import ShapeError, UsageError
from .flops import Breakdown, Component, FlopsPerSample, flops_breakdown
from .hardware import peak_tflops, resolve_peak
from .legacy import legacy_tflops_for_shapes
from .meter import ThroughputMeter, ThroughputReport
from .params import ParameterCount, parameter_count
from .shapes import NO_RECOMPUTE, ModelShape, Recompute, RunShape, VisionEncoder

__version__ = "0.1.0"

__all__ = [
    "Breakdown", "Component", "FlopsPerSample", "ModelShape", "NO_RECOMPUTE", "ParameterCount",
    "Recompute", "RunShape", "ShapeError", "ThroughputMeter", "ThroughputReport", "UsageError",
    "conventions_for_run", "flops_breakdown", "legacy_tflops_for_shapes", "parameter_count",
    "peak_tflops", "resolve_peak", "__version__",
    # vision-language runs (issue 20 item 3)
    "VisionEncoder",
]
