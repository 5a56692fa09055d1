"""The peak table: real device names resolve to their own part, never a neighbour's peak.

Device strings below are what ``torch.cuda.get_device_name()`` (CUDA and ROCm builds),
``torch.hpu.get_device_name()`` or ``hl-smi`` print on those parts, as seen in public logs
and tools (e.g. runpodctl's GPU list: "NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB HBM3",
"NVIDIA B300 SXM6 AC"; ROCm's "AMD Instinct MI250X/MI250", "AMD Instinct MI325 OAM";
hl-smi's "HL-225" for Gaudi 2 OAM and "HL-325L" for Gaudi 3).
"""

import pytest

from megatron_flops.hardware import (PARTS, PEAK_TFLOPS, ambiguous_device, canonical_device,
                                     peak_tflops, resolve_peak)

REAL_NAMES = [
    ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA A100-SXM4-40GB", "a100"),
    ("NVIDIA A100-PCIE-40GB", "a100-pcie"),
    ("NVIDIA A100 80GB PCIe", "a100-pcie"),
    ("NVIDIA A800-SXM4-80GB", "a800"),
    ("NVIDIA A800 80GB PCIe", "a800-pcie"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H100 NVL", "h100-nvl"),
    ("NVIDIA H800", "h800"),
    ("NVIDIA H800 PCIe", "h800-pcie"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA H200 NVL", "h200-nvl"),
    ("NVIDIA GH200 480GB", "gh200"),
    ("NVIDIA GH200 144G HBM3e", "gh200"),
    ("NVIDIA H20", "h20"),
    ("NVIDIA B200", "b200"),
    ("NVIDIA B300 SXM6 AC", "b300"),
    ("NVIDIA GB200", "gb200"),
    ("NVIDIA GB300", "gb300"),
    ("Tesla V100-SXM2-32GB", "v100-sxm"),
    ("Tesla V100-PCIE-16GB", "v100-pcie"),
    ("NVIDIA A10", "a10"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada"),
    ("NVIDIA RTX A6000", "rtx-a6000"),
    ("AMD Instinct MI250X", "mi250x"),
    ("AMD Instinct MI300X", "mi300x"),
    ("AMD Instinct MI300X VF", "mi300x"),
    ("AMD Instinct MI300A", "mi300a"),
    ("AMD Instinct MI325X", "mi325x"),
    ("AMD Instinct MI325 OAM", "mi325x"),
    ("AMD Instinct MI350X", "mi350x"),
    ("AMD Instinct MI355X", "mi355x"),
    ("GAUDI2", "gaudi2"),
    ("HL-225", "gaudi2"),
    ("GAUDI3", "gaudi3"),
    ("HL-325L", "gaudi3"),
]

# Names that must get no peak at all: parts not in the table (near neighbours of ones that
# are) and a string that names two parts.
UNKNOWN_NAMES = [
    "NVIDIA A10G",                 # AWS part, not the A10
    "NVIDIA L40",                  # not the L40S, not the L4
    "NVIDIA GeForce RTX 4090",
    "NVIDIA RTX PRO 6000 Blackwell Server Edition",  # not the RTX 6000 Ada
    "NVIDIA RTX A5000",
    "Quadro RTX 6000",             # Turing, not the RTX 6000 Ada
    "AMD Instinct MI210",
    "AMD Instinct MI250X/MI250",   # ROCm prints this for both parts
    "HL-288",                      # Gaudi 2 PCIe card: not the OAM figures
    "Intel(R) Data Center GPU Max 1550",
    "cpu",
]


@pytest.mark.parametrize("name, key", REAL_NAMES)
def test_real_device_name_resolves_to_its_own_part(name, key):
    assert canonical_device(name) == key
    assert peak_tflops(name, "bf16" if "v100" not in key else "fp16") == PEAK_TFLOPS[key][
        "bf16" if "v100" not in key else "fp16"]


@pytest.mark.parametrize("name", UNKNOWN_NAMES)
def test_unknown_device_gets_no_peak_and_says_so(name):
    assert canonical_device(name) is None
    peak = resolve_peak(name, "bf16")
    assert peak.tflops is None and "no MFU" in peak.source


def test_ambiguous_rocm_name_says_which_to_give():
    assert "mi250x or mi250" in ambiguous_device("AMD Instinct MI250X/MI250")
    assert "mi250x or mi250" in resolve_peak("AMD Instinct MI250X/MI250").source


def test_every_key_resolves_to_itself_and_no_name_to_a_neighbour():
    for part in PARTS:
        assert canonical_device(part.key) == part.key
        assert canonical_device(part.key.upper()) == part.key
    # each real name matches exactly the part the table says, so no part's name falls back to
    # another part's peak (the B300 -> A100 fallback of allenai/OLMo-core#817, MI355X -> A100
    # of AMD-AGI/Primus#772)
    keys = {key for _, key in REAL_NAMES}
    assert len(keys) >= 30
    for name, key in REAL_NAMES:
        for other in keys - {key}:
            assert canonical_device(name) != other


# Dense figures as printed in the vendors' datasheets (NVIDIA: the "with sparsity" figure
# halved).  bf16 TFLOP/s.
DATASHEET_BF16 = {
    "a100": 312, "h100-sxm": 989.4, "h100-pcie": 756, "h100-nvl": 835.5, "h200": 989.4,
    "h20": 148, "h800": 989.4, "a800": 312, "b200": 2250, "b300": 2250, "gb200": 2500,
    "gb300": 2500, "l4": 121, "l40s": 362.05, "rtx-6000-ada": 364.25, "rtx-a6000": 154.8,
    "mi250x": 383, "mi300x": 1307.4, "mi325x": 1307.4, "mi355x": 2516.6, "gaudi2": 432,
    "gaudi3": 1835,
}


def test_dense_bf16_figures_never_sparse():
    for key, tflops in DATASHEET_BF16.items():
        assert PEAK_TFLOPS[key]["bf16"] == pytest.approx(tflops), key
        assert PEAK_TFLOPS[key]["fp16"] == PEAK_TFLOPS[key]["bf16"]


def test_fp8_is_twice_bf16_on_hopper_blackwell_and_cdna3():
    # a structural check on the dense table: FP8 tensor cores run at 2x the bf16 rate on these
    for key in ("h100-sxm", "h100-pcie", "h100-nvl", "h200", "h20", "b200", "b300", "gb200",
                "gb300", "l4", "mi300x", "mi325x", "mi355x", "gaudi2"):
        assert PEAK_TFLOPS[key]["fp8"] == pytest.approx(2 * PEAK_TFLOPS[key]["bf16"], rel=3e-3)
    assert "fp8" not in PEAK_TFLOPS["a100"] and "fp4" not in PEAK_TFLOPS["h100-sxm"]
    assert PEAK_TFLOPS["b200"]["fp4"] == 2 * PEAK_TFLOPS["b200"]["fp8"]


def test_every_part_cites_its_datasheet():
    for part in PARTS:
        assert part.source and part.tflops
    peak = resolve_peak("NVIDIA H100 NVL", "fp8")
    assert peak.tflops == 1670.5 and peak.document.startswith("NVIDIA H100")
    assert resolve_peak("NVIDIA A100-SXM4-80GB", "fp8").tflops is None  # no FP8 on Ampere
