"""megatron-flops: exact FLOPs and throughput for Megatron-style transformer training.

The core (this package's top-level modules) imports nothing outside the standard library.
"""

from .flops import Breakdown, Component, flops_breakdown
from .hardware import peak_tflops, resolve_peak
from .meter import ThroughputMeter, ThroughputReport
from .params import ParameterCount, parameter_count
from .shapes import ModelShape, Recompute, RunShape, ShapeError

__version__ = "0.1.0"

__all__ = [
    "Breakdown", "Component", "ModelShape", "ParameterCount", "Recompute", "RunShape",
    "ShapeError", "ThroughputMeter", "ThroughputReport", "flops_breakdown", "parameter_count",
    "peak_tflops", "resolve_peak", "__version__",
]
