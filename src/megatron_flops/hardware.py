"""Dense peak matmul throughput of accelerators, per dtype, for MFU and HFU.

Figures are the vendors' datasheet numbers for *dense* math.  NVIDIA datasheets print the
Tensor Core figures "with sparsity" (twice the dense rate, marked with an asterisk) for
Ampere and later; the table holds half of those, i.e. the dense figure, and never a sparse
one.  AMD and Intel datasheets print dense figures (AMD lists the sparse ones separately).
``fp32`` is the non-tensor (CUDA core / vector) rate except where a part has FP32 matrix
units (AMD CDNA: the matrix figure).  A device or dtype not in the table has no peak:
callers report no MFU rather than guess.  ``--peak-tflops`` overrides the table.

Device names are matched on whole words of the lower-cased name (``torch.cuda.
get_device_name()``, ``rocm-smi`` / ``hl-smi`` names, or our table keys): a name matches one
part or none, never a neighbour (a B300 is not an A100, an H100 PCIe not an SXM, GH200 not
H200, MI300A not MI300X).  Each part's ``source`` names the document its figures come from.
"""

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from .errors import UsageError


@dataclass(frozen=True)
class Part:
    """One accelerator: dense TFLOP/s per dtype, and the datasheet they come from."""

    key: str
    tflops: Mapping[str, float]
    source: str


def _part(key: str, source: str, fp32=None, tf32=None, bf16=None, fp16=None, fp8=None,
          fp4=None) -> Part:
    figures = {"fp32": fp32, "tf32": tf32, "bf16": bf16, "fp16": bf16 if fp16 is None else fp16,
               "fp8": fp8, "fp4": fp4}
    return Part(key, {k: float(v) for k, v in figures.items() if v is not None}, source)


_H100_SXM = dict(fp32=67.0, tf32=494.7, bf16=989.4, fp8=1978.9)
_H100_PCIE = dict(fp32=51.0, tf32=378.0, bf16=756.0, fp8=1513.0)
_H100_NVL = dict(fp32=60.0, tf32=417.5, bf16=835.5, fp8=1670.5)
_A100 = dict(fp32=19.5, tf32=156.0, bf16=312.0)
_MI300X = dict(fp32=163.4, tf32=653.7, bf16=1307.4, fp8=2614.9)

PARTS: Tuple[Part, ...] = (
    _part("a100", "NVIDIA A100 Tensor Core GPU datasheet (SXM column)", **_A100),
    _part("a100-pcie", "NVIDIA A100 Tensor Core GPU datasheet (PCIe column)", **_A100),
    _part("a800", "NVIDIA A800 Tensor Core GPU datasheet (SXM)", **_A100),
    _part("a800-pcie", "NVIDIA A800 Tensor Core GPU datasheet (PCIe)", **_A100),
    _part("h100-sxm", "NVIDIA H100 Tensor Core GPU datasheet (SXM column)", **_H100_SXM),
    _part("h100-pcie", "NVIDIA H100 Tensor Core GPU datasheet (PCIe column)", **_H100_PCIE),
    _part("h100-nvl", "NVIDIA H100 Tensor Core GPU datasheet (NVL column, per GPU)", **_H100_NVL),
    _part("h800", "NVIDIA H800 Tensor Core GPU datasheet (SXM)", **_H100_SXM),
    _part("h800-pcie", "NVIDIA H800 Tensor Core GPU datasheet (PCIe)", **_H100_PCIE),
    _part("h200", "NVIDIA H200 Tensor Core GPU datasheet (SXM column)", **_H100_SXM),
    _part("h200-nvl", "NVIDIA H200 Tensor Core GPU datasheet (NVL column)", **_H100_NVL),
    _part("gh200", "NVIDIA GH200 Grace Hopper Superchip datasheet (GPU)", **_H100_SXM),
    _part("h20", "NVIDIA H20 product brief", fp32=44.0, tf32=74.0, bf16=148.0, fp8=296.0),
    _part("b200", "NVIDIA HGX B200 datasheet (8-GPU figures / 8)",
          fp32=75.0, tf32=1125.0, bf16=2250.0, fp8=4500.0, fp4=9000.0),
    _part("b300", "NVIDIA HGX B300 datasheet (8-GPU figures / 8)",
          fp32=75.0, tf32=1125.0, bf16=2250.0, fp8=4500.0, fp4=13500.0),
    _part("gb200", "NVIDIA GB200 NVL72 datasheet (72-GPU figures / 72; FP32 left out: not read off the sheet)",
          tf32=1250.0, bf16=2500.0, fp8=5000.0, fp4=10000.0),
    _part("gb300", "NVIDIA GB300 NVL72 datasheet (72-GPU figures / 72; FP32 left out: not read off the sheet)",
          tf32=1250.0, bf16=2500.0, fp8=5000.0, fp4=15000.0),
    _part("v100-sxm", "NVIDIA V100 Tensor Core GPU datasheet (SXM2)", fp32=15.7, fp16=125.0),
    _part("v100-pcie", "NVIDIA V100 Tensor Core GPU datasheet (PCIe)", fp32=14.0, fp16=112.0),
    _part("a10", "NVIDIA A10 Tensor Core GPU datasheet", fp32=31.2, tf32=62.5, bf16=125.0),
    _part("l4", "NVIDIA L4 Tensor Core GPU datasheet", fp32=30.3, tf32=60.0, bf16=121.0,
          fp8=242.5),
    _part("l40s", "NVIDIA L40S GPU datasheet", fp32=91.6, tf32=183.0, bf16=362.05, fp8=733.0),
    _part("rtx-6000-ada", "NVIDIA RTX 6000 Ada Generation datasheet",
          fp32=91.1, tf32=182.1, bf16=364.25, fp8=728.5),
    _part("rtx-a6000", "NVIDIA RTX A6000 datasheet", fp32=38.7, tf32=77.4, bf16=154.8),
    _part("mi250x", "AMD Instinct MI250X datasheet", fp32=95.7, bf16=383.0),
    _part("mi250", "AMD Instinct MI250 datasheet", fp32=90.5, bf16=362.1),
    _part("mi300x", "AMD Instinct MI300X datasheet", **_MI300X),
    _part("mi300a", "AMD Instinct MI300A datasheet", fp32=122.6, tf32=490.3, bf16=980.6,
          fp8=1961.2),
    _part("mi325x", "AMD Instinct MI325X datasheet", **_MI300X),
    _part("mi350x", "AMD Instinct MI350X datasheet", fp32=144.2, bf16=2306.9, fp8=4613.7,
          fp4=9227.5),
    _part("mi355x", "AMD Instinct MI355X datasheet", fp32=157.3, bf16=2516.6, fp8=5033.2,
          fp4=10066.3),
    _part("gaudi2", "Intel Gaudi 2 AI accelerator white paper (MME)", bf16=432.0, fp8=865.0),
    _part("gaudi3", "Intel Gaudi 3 AI accelerator white paper (MME)", bf16=1835.0, fp8=1835.0),
)

PARTS_BY_KEY: Dict[str, Part] = {p.key: p for p in PARTS}

# key -> {dtype: dense TFLOP/s}
PEAK_TFLOPS: Dict[str, Dict[str, float]] = {p.key: dict(p.tflops) for p in PARTS}

# Names one device string cannot tell apart: no part, and the message says which to give.
_AMBIGUOUS: Tuple[Tuple[str, str], ...] = (
    (r"\bmi250x mi250\b", "reported for both MI250X and MI250: give --gpu mi250x or mi250"),
)

# (pattern on the normalised name, table key); first match wins, so the specific comes
# before the general (h100 ... nvl before h100) and names containing another are listed
# first (gh200 before h200).  Words are separated by single spaces after normalising.
_NAME_PATTERNS: Tuple[Tuple[str, str], ...] = (
    (r"\bgh200\b", "gh200"),
    (r"\bgb300\b", "gb300"),
    (r"\bgb200\b", "gb200"),
    (r"\bb300\b", "b300"),
    (r"\bb200\b", "b200"),
    (r"\bh200\b.*\bnvl\b", "h200-nvl"),
    (r"\bh200\b", "h200"),
    (r"\bh100\b.*\bnvl\b", "h100-nvl"),
    (r"\bh100\b.*\bpcie\b", "h100-pcie"),
    (r"\bh100\b", "h100-sxm"),
    (r"\bh800\b.*\bpcie\b", "h800-pcie"),
    (r"\bh800\b", "h800"),
    (r"\bh20\b", "h20"),
    (r"\ba100\b.*\bpcie\b", "a100-pcie"),
    (r"\ba100\b", "a100"),
    (r"\ba800\b.*\bpcie\b", "a800-pcie"),
    (r"\ba800\b", "a800"),
    (r"\bv100\b.*\bpcie\b", "v100-pcie"),
    (r"\bv100\b", "v100-sxm"),
    (r"\bl40s\b", "l40s"),
    (r"\bl4\b", "l4"),
    (r"\brtx 6000 ada\b", "rtx-6000-ada"),
    (r"\brtx a6000\b", "rtx-a6000"),
    (r"\ba10\b", "a10"),
    (r"\bmi355x\b", "mi355x"),
    (r"\bmi350x\b", "mi350x"),
    (r"\bmi325x?\b", "mi325x"),
    (r"\bmi300x\b", "mi300x"),
    (r"\bmi300a\b", "mi300a"),
    (r"\bmi250x\b", "mi250x"),
    (r"\bmi250\b", "mi250"),
    (r"\bgaudi ?2\b|\bhl 225[a-z]?\b", "gaudi2"),
    (r"\bgaudi ?3\b|\bhl 325l?\b", "gaudi3"),
)


LIST_HINT = "from `megatron-flops peak --list`"


def peak_table_lines() -> List[str]:
    """The peak table as ``peak --list`` prints it: one line per ``--gpu`` name, its dense
    TFLOP/s per dtype and the datasheet."""
    dtypes = ("fp32", "tf32", "bf16", "fp16", "fp8", "fp4")
    width = max(len(p.key) for p in PARTS)
    lines = [f"{'--gpu':<{width}}  " + "".join(f"{d:>9}" for d in dtypes) + "  source"]
    for part in PARTS:
        cells = "".join(f"{part.tflops[d]:>9g}" if d in part.tflops else f"{'-':>9}"
                        for d in dtypes)
        lines.append(f"{part.key:<{width}}  {cells}  {part.source}")
    return lines


def _normalise(name: str) -> str:
    """Lower case, every run of other characters one space: "NVIDIA A100-SXM4" -> "nvidia a100 sxm4"."""
    return " ".join(re.split(r"[^a-z0-9]+", name.strip().lower())).strip()


def ambiguous_device(name: str) -> Optional[str]:
    """Why ``name`` names no single part (e.g. ROCm's "MI250X/MI250"), or None."""
    lowered = _normalise(name)
    for pattern, reason in _AMBIGUOUS:
        if re.search(pattern, lowered):
            return reason
    return None


def canonical_device(name: str) -> Optional[str]:
    """Table key for a device name (``"NVIDIA A100-SXM4-80GB"`` -> ``"a100"``), or None."""
    lowered = name.strip().lower()
    if lowered in PEAK_TFLOPS:
        return lowered
    if ambiguous_device(name) is not None:
        return None
    normalised = _normalise(name)
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, normalised):
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
    document: Optional[str] = None  # the datasheet the table figure comes from

    @property
    def known(self) -> bool:
        return self.tflops is not None


def resolve_peak(device: Optional[str] = None, dtype: str = "bf16",
                 override_tflops: Optional[float] = None) -> Peak:
    """Pick the peak: an explicit override, else the table entry, else unknown."""
    if override_tflops is not None:
        if override_tflops <= 0:
            raise UsageError(f"--peak-tflops must be positive, got {override_tflops}")
        return Peak(float(override_tflops), f"given ({override_tflops:g} TFLOP/s)")
    if device is None:
        return Peak(None, f"unknown device: no MFU (give --gpu NAME {LIST_HINT}, or "
                          "--peak-tflops X)")
    value = peak_tflops(device, dtype)
    if value is None:
        key = canonical_device(device)
        if key is None:
            why = ambiguous_device(device)
            if why is not None:
                return Peak(None, f"device {device!r} is {why}: no MFU")
            return Peak(None, f"no peak known for device {device!r}: no MFU (give --peak-tflops, "
                              f"or a --gpu name {LIST_HINT})")
        return Peak(None, f"no {dtype} peak known for {key}: no MFU (give --peak-tflops)")
    key = canonical_device(device)
    return Peak(value, f"{key} dense {dtype} datasheet peak ({value:g} TFLOP/s)",
                PARTS_BY_KEY[key].source)


def implausible_utilisation_warning(mfu: Optional[float], hfu: Optional[float] = None,
                                    world_size_assumed: bool = False, dtype: Optional[str] = None,
                                    peak_source: Optional[str] = None,
                                    peak_settings: str = "--gpu / --peak-tflops") -> Optional[str]:
    """One line naming the likely cause when MFU or HFU is above 100 %, else None.

    No accelerator beats its dense peak, so a figure above 100 % is a wrong denominator (the
    peak of another part or dtype, a sparsity figure, one GPU's peak for many) or a wrong
    numerator (world size too small, iterations counted twice, a time that is not the
    iteration's).  Callers print it beside the figure, everywhere MFU is shown.
    ``peak_settings`` names how the caller's user sets the peak (the training hook: its
    environment variables, since pretrain_gpt.py has no --gpu / --peak-tflops).
    """
    worst = max((u for u in (mfu, hfu) if u is not None), default=None)
    if worst is None or worst <= 1.0:
        return None
    label = "MFU" if mfu is not None and mfu >= (hfu or 0) else "HFU"
    causes = []
    if world_size_assumed:
        causes.append("the world size was assumed, not read (give --world-size)")
    if dtype in ("fp32", "tf32"):
        causes.append(f"the peak is the {dtype} one: --bf16 or --fp16 missing? (or FP8 GEMMs)")
    elif dtype in ("bf16", "fp16"):
        causes.append("the run may use FP8 GEMMs (measure against the FP8 or mixed peak)")
    causes.append(f"the peak may be another part's ({peak_source or 'unknown source'}): "
                  f"check {peak_settings}")
    causes.append("the time per iteration or the batch may not be the run's")
    return (f"warning: {label} {100 * worst:.0f}% is above 100% — impossible; likely: "
            + "; ".join(causes))
