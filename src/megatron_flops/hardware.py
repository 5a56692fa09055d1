"""Dense peak matmul throughput of accelerators, per dtype, for MFU and HFU.

Figures are the vendors' datasheet numbers for dense math (the "with sparsity" figures are
twice these and are never used).  A device or dtype not in the table has no peak: callers
report no MFU rather than guess.  ``--peak-tflops`` overrides the table.

Sources: NVIDIA A100 Tensor Core GPU datasheet; NVIDIA H100 Tensor Core GPU datasheet (SXM,
PCIe, NVL columns); NVIDIA H200 Tensor Core GPU datasheet; NVIDIA V100 datasheet; NVIDIA A10,
L4 and L40S datasheets; AMD Instinct MI250X and MI300X datasheets.
"""

import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

# name -> {dtype: dense TFLOP/s}
PEAK_TFLOPS: Dict[str, Dict[str, float]] = {
    "a100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "h100-sxm": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "fp8": 1978.9},
    "h100-pcie": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0, "fp8": 1513.0},
    "h100-nvl": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5, "fp8": 1670.5},
    "h200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "fp8": 1978.9},
    "v100-sxm": {"fp32": 15.7, "fp16": 125.0},
    "v100-pcie": {"fp32": 14.0, "fp16": 112.0},
    "a10": {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0},
    "l4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0, "fp8": 242.0},
    "l40s": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05, "fp8": 733.0},
    "mi250x": {"fp32": 95.7, "bf16": 383.0, "fp16": 383.0},
    "mi300x": {"fp32": 163.4, "tf32": 653.7, "bf16": 1307.4, "fp16": 1307.4, "fp8": 2614.9},
}

# (pattern on a lower-cased device name, table key); first match wins
_NAME_PATTERNS: Tuple[Tuple[str, str], ...] = (
    (r"h200", "h200"),
    (r"h100.*nvl", "h100-nvl"),
    (r"h100.*pcie", "h100-pcie"),
    (r"h100", "h100-sxm"),
    (r"a100", "a100"),
    (r"v100.*pcie", "v100-pcie"),
    (r"v100", "v100-sxm"),
    (r"l40s", "l40s"),
    (r"\bl4\b", "l4"),
    (r"\ba10\b", "a10"),
    (r"mi300x", "mi300x"),
    (r"mi250x?", "mi250x"),
)


def canonical_device(name: str) -> Optional[str]:
    """Table key for a device name (``"NVIDIA A100-SXM4-80GB"`` -> ``"a100"``), or None."""
    lowered = name.strip().lower()
    if lowered in PEAK_TFLOPS:
        return lowered
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, lowered):
            return key
    return None


def peak_tflops(device: str, dtype: str) -> Optional[float]:
    """Dense peak TFLOP/s of ``device`` in ``dtype``; None when unknown."""
    key = canonical_device(device)
    if key is None:
        return None
    return PEAK_TFLOPS[key].get(dtype)


@dataclass(frozen=True)
class Peak:
    """The peak used for MFU/HFU and where it came from (shown to the user)."""

    tflops: Optional[float]
    source: str

    @property
    def known(self) -> bool:
        return self.tflops is not None


def resolve_peak(device: Optional[str] = None, dtype: str = "bf16",
                 override_tflops: Optional[float] = None) -> Peak:
    """Pick the peak: an explicit override, else the table entry, else unknown."""
    if override_tflops is not None:
        if override_tflops <= 0:
            raise ValueError(f"--peak-tflops must be positive, got {override_tflops}")
        return Peak(float(override_tflops), f"given ({override_tflops:g} TFLOP/s)")
    if device is None:
        return Peak(None, "unknown device: no MFU (give --gpu or --peak-tflops)")
    value = peak_tflops(device, dtype)
    if value is None:
        key = canonical_device(device)
        if key is None:
            return Peak(None, f"no peak known for device {device!r}: no MFU (give --peak-tflops)")
        return Peak(None, f"no {dtype} peak known for {key}: no MFU (give --peak-tflops)")
    return Peak(value, f"{canonical_device(device)} dense {dtype} datasheet peak ({value:g} TFLOP/s)")
