"""``megatron-flops peak``: the measured rate is FLOPs / time of real products."""

import json

import pytest

torch = pytest.importorskip("torch")

from megatron_flops.cli import main  # noqa: E402
from megatron_flops.demo import peak  # noqa: E402


def test_one_product_is_2n3_flops():
    """The rate's numerator, 2·n³ per n×n·n×n product, is what FlopCounterMode counts."""
    from torch.utils.flop_counter import FlopCounterMode
    n = 96
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    with FlopCounterMode(display=False) as counter:
        torch.matmul(a, b, out=out)
    assert counter.get_total_flops() == 2 * n ** 3


def test_measurement_is_best_over_sizes(monkeypatch):
    """With the clock replaced by one that advances a fixed time per product, the rate is
    exactly 2·n³ / that time, and the best size is the one with the best rate."""
    seconds = {64: 1e-3, 128: 2e-3}  # 128: 8× the FLOPs in 2× the time -> the best

    def fake_seconds(a, b, out, repeats, synchronize):
        return seconds[a.shape[0]]
    monkeypatch.setattr(peak, "_matmul_seconds", fake_seconds)
    m = peak.measure_matmul_tflops("cpu", "fp32", sizes=(64, 128), repeats=3,
                                   min_seconds_per_size=0.0)
    assert m.per_size_tflops[64] == pytest.approx(2 * 64 ** 3 / 1e-3 / 1e12)
    assert m.per_size_tflops[128] == pytest.approx(2 * 128 ** 3 / 2e-3 / 1e12)
    assert m.best_size == 128 and m.tflops == m.per_size_tflops[128]


def test_real_measurement_is_plausible():
    m = peak.measure_matmul_tflops("cpu", "fp32", sizes=(128,), repeats=2,
                                   min_seconds_per_size=0.0)
    assert m.device == "cpu" and m.dtype == "fp32" and m.threads >= 1
    # above 10 MFLOP/s and below 100 TFLOP/s: a real CPU, not a broken clock
    assert 1e-5 < m.tflops < 100


def test_cache_keeps_the_best(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGATRON_FLOPS_CACHE_DIR", str(tmp_path))
    low = peak.PeakMeasurement("cpu", "test cpu", "fp32", 0.1, 64, {64: 0.1}, 2)
    high = low._replace(tflops=0.3)
    assert peak.remember(low) == 0.1
    assert peak.remember(high) == 0.3
    assert peak.remember(low) == 0.3
    stored = json.loads((tmp_path / "measured_peaks.json").read_text())
    assert stored == {"test cpu | fp32 | 2 threads": 0.3}
    (tmp_path / "measured_peaks.json").write_text("not json")
    assert peak.remember(low) == 0.1  # a broken cache never breaks a run


def test_peak_command_json(capsys):
    code = main(["peak", "--device", "cpu", "--dtype", "fp32", "--size", "64", "--size", "128",
                 "--repeats", "1", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    (m,) = result["measurements"]
    assert m["dtype"] == "fp32" and set(m["per_size_tflops"]) == {"64", "128"}
    assert m["tflops"] == max(m["per_size_tflops"].values())
    assert m["datasheet_tflops"] is None  # no datasheet for a CPU


def test_peak_command_text(capsys):
    code = main(["peak", "--device", "cpu", "--dtype", "bf16", "--size", "64", "--repeats", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "bf16" in out and "TFLOP/s" in out


@pytest.mark.parametrize("argv, message", [
    (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
    (["--size", "0"], "--size must be positive"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
    (["--repeats", "x"], "--repeats must be a number"),
])
def test_peak_bad_flags_exit_2(argv, message, capsys):
    code = main(["peak", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
