"""Measured peak: the dense matmul TFLOP/s this device actually reaches, per dtype.

Datasheets give a GPU's peak; a CPU (or a GPU missing from the table) has none we can trust.
``megatron-flops peak`` (:mod:`megatron_flops.commands.peak`) multiplies square matrices of
a few sizes, after a warm-up, several times each, and keeps the best rate: an *achievable*
peak, the ceiling MFU is measured against when no datasheet figure applies.  One ``n×n`` by ``n×n`` product is ``2·n³`` FLOPs.

On CUDA the clock is read after ``torch.cuda.synchronize()``; on CPU the product is
synchronous.  Needs the ``torch`` extra.
"""

import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, NamedTuple, Optional, Sequence

from ..errors import UsageError

DTYPES = ("fp32", "bf16", "fp16")
CPU_SIZES = (256, 512, 1024)
CUDA_SIZES = (2048, 4096, 8192)


class PeakMeasurement(NamedTuple):
    """The best rate over ``sizes`` for one device and dtype."""

    device: str          # "cpu" or "cuda"
    device_name: str     # e.g. "NVIDIA H200" or the CPU's model name
    dtype: str
    tflops: float        # best achieved dense matmul TFLOP/s
    best_size: int
    per_size_tflops: Dict[int, float]
    threads: int         # torch intra-op threads used (CPU)

    def as_dict(self) -> dict:
        out = self._asdict()
        out["per_size_tflops"] = {str(k): v for k, v in self.per_size_tflops.items()}
        return out


def torch_dtype(name: str):
    import torch
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def device_name(device: str) -> str:
    """A human name for the device: the GPU's marketing name, or the CPU's model name."""
    import torch
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "cpu"


def check_device(device: str) -> None:
    import torch
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda needs a CUDA GPU, and none is available to torch")


def _matmul_seconds(a, b, out, repeats: int, synchronize) -> float:
    """Best wall time of one product over ``repeats`` timed runs."""
    import torch
    best = float("inf")
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def measure_matmul_tflops(device: str = "cpu", dtype: str = "fp32",
                          sizes: Optional[Sequence[int]] = None, repeats: int = 5,
                          min_seconds_per_size: float = 0.25,
                          max_seconds_per_size: float = 2.0,
                          on_size: Optional[Callable[[int], None]] = None) -> PeakMeasurement:
    """Best dense matmul TFLOP/s over ``sizes`` (square ``n×n·n×n`` products).

    Each size: two warm-up products, then at least ``repeats`` timed products, more while
    under ``min_seconds_per_size`` (a busy machine gets more chances at its best), fewer when
    ``max_seconds_per_size`` runs out first (slow dtypes on CPU, e.g. fp16 without native
    kernels).  The fastest product counts.  ``on_size(n)`` is called as each size starts
    (``peak``'s progress line).
    """
    import torch
    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_device(device)
    if sizes is None:
        sizes = CUDA_SIZES if device.startswith("cuda") else CPU_SIZES
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)
    per_size: Dict[int, float] = {}
    generator = torch.Generator(device="cpu").manual_seed(0)
    for n in sizes:
        if on_size is not None:
            on_size(n)
        a = torch.randn(n, n, generator=generator).to(device=device, dtype=torch_dtype(dtype))
        b = torch.randn(n, n, generator=generator).to(device=device, dtype=torch_dtype(dtype))
        out = torch.empty_like(a)
        started = time.perf_counter()
        _matmul_seconds(a, b, out, 2, synchronize)  # warm-up: kernels, thread pool, caches
        best, runs = float("inf"), 0
        while True:
            spent = time.perf_counter() - started
            if runs >= 1 and spent > max_seconds_per_size:
                break
            if runs >= repeats and spent > min_seconds_per_size:
                break
            best = min(best, _matmul_seconds(a, b, out, 1, synchronize))
            runs += 1
        per_size[n] = 2.0 * n ** 3 / best / 1e12
        del a, b, out
    best_size = max(per_size, key=per_size.get)
    return PeakMeasurement(device.split(":")[0], device_name(device), dtype, per_size[best_size],
                           best_size, per_size, torch.get_num_threads())


def quick_peak(device: str = "cpu", dtype: str = "fp32") -> PeakMeasurement:
    """About a second of measuring, for the demo's MFU where no datasheet peak applies."""
    sizes = (256, 512) if device == "cpu" else (2048, 4096)
    return measure_matmul_tflops(device, dtype, sizes=sizes, repeats=5,
                                 min_seconds_per_size=0.3, max_seconds_per_size=0.8)


# ---- the cache: the best rate ever measured on this machine ----------------------------------
#
# A shared or busy machine measures low now and then; MFU against such a peak would read
# above 100 %.  Every measurement is remembered per (device name, dtype, threads) and the
# best one seen is the peak used.  ``MEGATRON_FLOPS_CACHE_DIR`` moves the file.

def cache_file() -> Path:
    root = os.environ.get("MEGATRON_FLOPS_CACHE_DIR")
    if root is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "megatron-flops")
    return Path(root) / "measured_peaks.json"


def cache_key(m: PeakMeasurement) -> str:
    return f"{m.device_name} | {m.dtype} | {m.threads} threads"


def remember(measurement: PeakMeasurement) -> float:
    """Store ``measurement`` if it beats the cached one; return the best TFLOP/s known.

    Never raises: an unreadable or unwritable cache just means this measurement alone counts.
    """
    path = cache_file()
    key = cache_key(measurement)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    previous = cached.get(key)
    if not isinstance(previous, (int, float)) or isinstance(previous, bool):
        previous = 0.0
    if measurement.tflops <= previous:
        return float(previous)
    cached[key] = measurement.tflops
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        scratch.write_text(json.dumps(cached, indent=1, sort_keys=True))
        os.replace(scratch, path)
    except OSError:
        pass
    return measurement.tflops
