"""A GPU-shaped trace written by hand (kernels linked to host ops by correlation ids, as
Kineto writes them), and the ``megatron-flops profile`` command on it.

The timeline of the one step (µs), by construction:

    0-10 idle | 10-40 GEMM (the fused QKV's addmm) | 40-50 layer norm (an all-reduce
    starts at 45, hidden behind it) | 50-65 the all-reduce alone | 65-100 idle

so: query 20 and key_value 10 (the fused matmul's 64 : 32 output columns), norms 10,
exposed communication 15, idle 10 + 35 = 45: 100 in all.
"""

import json

import pytest

from megatron_flops.commands import main
from megatron_flops.profile.attribute import attribute
from megatron_flops.profile.trace import load_trace
from megatron_flops.shapes import RunShape
from trace_helpers import FLAGS, MODEL, kernel, op  # noqa: E402


def gpu_trace(path):
    events = [
        op("ProfilerStep#5", 0, 100, cat="user_annotation"),
        op("aten::linear", 1, 10),
        op("aten::addmm", 2, 8, **{"Input Dims": [[96], [48, 64], [64, 96], [], []],
                                   "Sequence number": 10}),
        op("cudaLaunchKernel", 3, 2, cat="cuda_runtime", correlation=1),
        op("aten::layer_norm", 12, 5),
        op("cudaLaunchKernel", 13, 2, cat="cuda_runtime", correlation=2),
        op("record_param_comms", 20, 5),
        op("cudaLaunchKernel", 21, 2, cat="cuda_runtime", correlation=3),
        kernel("sm90_xmma_gemm_bf16bf16_bf16f32", 10, 30, 1),
        kernel("vectorized_layer_norm_kernel", 40, 10, 2),
        kernel("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 45, 20, 3, stream=8),
    ]
    path.write_text(json.dumps({"deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3"}],
                                "traceEvents": events}))
    return path


def test_device_timeline_by_hand(tmp_path):
    run = RunShape(seq_length=24, micro_batch_size=2)
    profile = attribute(load_trace(str(gpu_trace(tmp_path / "gpu.json"))), MODEL, run)
    assert profile.device == "gpu"
    rows = {r.component: r for r in profile.rows}
    assert rows["query"].seconds == pytest.approx(20e-6)
    assert rows["key_value"].seconds == pytest.approx(10e-6)
    assert rows["query"].trace_flops == pytest.approx(2 * 48 * 64 * 64)
    assert rows["key_value"].trace_flops == pytest.approx(2 * 48 * 64 * 32)
    assert profile.categories["norms"] == pytest.approx(10e-6)
    assert profile.categories["communication"] == pytest.approx(15e-6)
    assert profile.categories["idle (device)"] == pytest.approx(45e-6)
    assert profile.accounted_seconds == pytest.approx(100e-6)


def test_profile_command_table_json_png(tmp_path, capsys):
    trace = gpu_trace(tmp_path / "gpu.json")
    assert main(["profile", str(trace), *FLAGS, "--bf16"]) == 0
    out = capsys.readouterr().out
    assert "where the time went: 1 profiled iteration(s) (ProfilerStep #5)" in out
    assert "h100-sxm dense bf16 datasheet peak (989" in out  # the trace names the GPU
    assert "communication" in out and "idle (device)" in out

    pytest.importorskip("matplotlib")
    png = tmp_path / "where.png"
    assert main(["profile", str(trace), *FLAGS, "--peak-tflops", "100", "--json",
                 "--png", str(png)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["peak_tflops"] == 100.0 and data["profiler_steps"] == [5]
    assert data["iteration_seconds"] == pytest.approx(100e-6)
    query = next(c for c in data["components"] if c["component"] == "query")
    assert query["seconds"] == pytest.approx(20e-6) and query["rules"] == {"shape": 1}
    # waterfall: 100 % of peak minus every cost is the MFU
    lost = sum(step["fraction_of_peak_lost"] for step in data["waterfall"])
    assert 1 - lost == pytest.approx(data["mfu"])
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize("content, message", [
    (None, "cannot be read"),
    ("{not json", "is not JSON"),
    ('{"traceEvents": []}', "has no ProfilerStep#N spans"),
])
def test_bad_trace_exits_2(content, message, tmp_path, capsys):
    path = tmp_path / "trace.json"
    if content is not None:
        path.write_text(content)
    assert main(["profile", str(path), *FLAGS]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_pipeline_bubble_comes_out_of_idle_time(tmp_path):
    """PP 2 with 2 micro batches per iteration: the expected bubble (p − 1)/(m + p − 1) = 1/3
    of the 100 µs step, taken out of the 45 µs idle."""
    run = RunShape(seq_length=24, micro_batch_size=2, global_batch_size=4,
                   pipeline_model_parallel_size=2, world_size=2)
    profile = attribute(load_trace(str(gpu_trace(tmp_path / "gpu.json"))), MODEL, run)
    assert profile.categories["pipeline bubble"] == pytest.approx(100e-6 / 3)
    assert profile.categories["idle (device)"] == pytest.approx(45e-6 - 100e-6 / 3)
    assert profile.accounted_seconds == pytest.approx(100e-6)
