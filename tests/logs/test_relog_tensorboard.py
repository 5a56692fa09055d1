"""relog on TensorBoard runs written here in each fork's tags, and the corrected run it writes.

bigscience writes with torch's SummaryWriter and ``new_style=True`` (the scalars come back
as tensors); microsoft's tags are written as plain scalars with relog's own EventWriter.
Expected values: hand_flops_per_sample (conftest.py) × batch / (seconds × world × 1e12).
"""

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from megatron_flops.logs.tensorboard import EventWriter, read_tensorboard_run  # noqa: E402
from megatron_flops.sinks import TAGS  # noqa: E402

L, H, N, V = 4, 512, 8, 4096
FLAGS = ["--num-layers", L, "--hidden-size", H, "--num-attention-heads", N,
         "--padded-vocab-size", V]
WORLD = 4


def bigscience_run(directory, logfmt):
    """Iterations 1..30, batch 8 until 15 then 16, curriculum 256 → 512 at 16, logged every 10
    with ``--log-timers-to-tensorboard --log-batch-size-to-tensorboard``."""
    torch_tb = pytest.importorskip("torch.utils.tensorboard")
    writer = torch_tb.SummaryWriter(log_dir=str(directory))
    consumed = 0
    seconds = {10: 0.5, 20: 0.8, 30: 1.0}
    for i in range(1, 31):
        batch = 8 if i <= 15 else 16
        seq = 256 if i <= 15 else 512
        consumed += batch
        writer.add_scalar("steps-vs-samples/y=samples,x=steps", consumed, i, new_style=True)
        writer.add_scalar("batch-size/batch-size", batch, i, new_style=True)
        writer.add_scalar("curriculum_seqlen", seq, i, new_style=True)
        writer.add_scalar("lm-loss-training/lm loss", 5.0, i, new_style=True)
        if i % 10 == 0:
            t = seconds[i]
            writer.add_scalar("iteration-time/iteration-time", t, i, new_style=True)
            writer.add_scalar("iteration-time/samples per second", batch / t, i, new_style=True)
            writer.add_scalar("iteration-time/TFLOPs per gpu (estimated)",
                              logfmt.bigscience_logged_tflops(batch, seq, L, H, V, t, WORLD),
                              i, new_style=True)
    writer.close()
    return seconds


def test_read_bigscience_run_tensors(tmp_path, logfmt):
    bigscience_run(tmp_path / "bs", logfmt)
    records = list(read_tensorboard_run(str(tmp_path / "bs")))
    assert [r.iteration for r in records] == [10, 20, 30]
    assert {r.fork for r in records} == {"bigscience"}
    assert [r.consumed_samples for r in records] == [80, 8 * 15 + 16 * 5, 8 * 15 + 16 * 15]
    assert [r.curriculum_seqlen for r in records] == [256, 512, 512]
    assert [r.seconds_per_iteration for r in records] == pytest.approx([0.5, 0.8, 1.0])
    assert records[0].tflops == pytest.approx(
        logfmt.bigscience_logged_tflops(8, 256, L, H, V, 0.5, WORLD), rel=1e-6)


def test_bigscience_round_trip(tmp_path, logfmt, capsys):
    seconds = bigscience_run(tmp_path / "bs", logfmt)
    out = tmp_path / "corrected"
    peak = 100.0
    result = logfmt.run_cli(capsys, tmp_path / "bs", *FLAGS, "--seq-length", 512,
                            "--world-size", WORLD, "--peak-tflops", peak, "--json",
                            "--write-tensorboard", out)
    assert result.code == 0, result.err
    intervals = logfmt.json_intervals(result)
    # interval 10: first, logged batch 8 at seq 256; interval 20: iterations 11–20 consumed
    # 5·8 + 5·16 = 120 → batch 12, seq 512 (the value at the step); interval 30: batch 16
    assert [i["batch_size"] for i in intervals] == [8, 12, 16]
    assert [i["seq_length"] for i in intervals] == [256, 512, 512]
    for interval, batch, seq in zip(intervals, (8, 12, 16), (256, 512, 512)):
        model, hardware = logfmt.hand_flops_per_sample(seq, L, H, N, V)
        t = seconds[interval["iteration"]]
        assert interval["tflops_per_gpu"]["model"] == pytest.approx(
            batch * model / (t * WORLD * 1e12), rel=1e-6)
        assert interval["error"] == pytest.approx(
            interval["logged_tflops"] / interval["tflops_per_gpu"]["hardware"] - 1, rel=1e-9)

    accumulator = EventAccumulator(str(out), size_guidance={"scalars": 0})
    accumulator.Reload()
    written = set(accumulator.Tags()["scalars"])
    for _, tag in TAGS:
        assert {tag, tag + " vs samples"} <= written
    assert "relog/logged_tflops_per_gpu" in written
    hardware = {e.step: e.value for e in accumulator.Scalars("throughput/hardware_tflops_per_gpu")}
    assert sorted(hardware) == [10, 20, 30]
    for interval in intervals:
        assert hardware[interval["iteration"]] == pytest.approx(
            interval["tflops_per_gpu"]["hardware"], rel=1e-6)
    mfu = {e.step: e.value for e in accumulator.Scalars("throughput/mfu")}
    assert mfu[30] == pytest.approx(intervals[2]["tflops_per_gpu"]["model"] / peak, rel=1e-6)
    by_samples = {e.step for e in accumulator.Scalars("throughput/mfu vs samples")}
    assert by_samples == {i["consumed_samples"] for i in intervals}
    # the denominator beside the MFU: the --peak-tflops typed, every interval
    assert {e.step: e.value for e in accumulator.Scalars("throughput/peak_tflops")} == \
        {10: peak, 20: peak, 30: peak}


def test_microsoft_run_plain_scalars(tmp_path, logfmt, capsys):
    """microsoft logs no TFLOPs to TensorBoard: corrected figures only, no error."""
    writer = EventWriter(str(tmp_path / "ms"))
    consumed = 0
    for i in range(1, 21):
        consumed += 32
        writer.add_scalar("steps-vs-samples/y=samples,x=steps", consumed, i)
        writer.add_scalar("seqlen/actual_seq_length", 1024, i)
        if i % 10 == 0:
            writer.add_scalar("iteration-time/iteration-time", 2.0, i)
    writer.close()
    result = logfmt.run_cli(capsys, tmp_path / "ms", *FLAGS, "--seq-length", 2048,
                            "--world-size", WORLD, "--json")
    assert result.code == 0, result.err
    intervals = logfmt.json_intervals(result)
    assert [i["fork"] for i in intervals] == ["microsoft", "microsoft"]
    # no batch-size tag: the first interval's batch is consumed(10) − consumed(9) = 32
    assert intervals[0]["logged_global_batch_size"] == 32
    assert [i["batch_size"] for i in intervals] == [32, 32]
    assert intervals[1]["logged_tflops"] is None
    model, _ = logfmt.hand_flops_per_sample(1024, L, H, N, V)
    assert intervals[1]["tflops_per_gpu"]["model"] == pytest.approx(
        32 * model / (2.0 * WORLD * 1e12), rel=1e-6)
    assert intervals[1]["error"] is None
    assert "no logged TFLOPs" not in result.out  # JSON mode: summary on stderr
    assert logfmt.json_summary(result)["intervals_with_logged_tflops"] == 0


def test_tensorboard_errors(tmp_path, logfmt, capsys):
    for name in ("a", "b"):
        writer = EventWriter(str(tmp_path / "two" / name))
        writer.add_scalar("iteration-time/iteration-time", 1.0, 10)
        writer.close()
    result = logfmt.run_cli(capsys, tmp_path / "two", *FLAGS, "--seq-length", 128)
    assert result.code == 2 and "holds 2 TensorBoard runs (a, b)" in result.err
    writer = EventWriter(str(tmp_path / "no_timers"))
    writer.add_scalar("lm-loss-training/lm loss", 5.0, 10)
    writer.close()
    result = logfmt.run_cli(capsys, tmp_path / "no_timers", *FLAGS, "--seq-length", 128)
    assert result.code == 2 and "--log-timers-to-tensorboard" in result.err
    result = logfmt.run_cli(capsys, tmp_path / "no_timers", *FLAGS, "--seq-length", 128,
                            "--write-tensorboard", tmp_path / "no_timers")
    assert result.code == 2 and "--write-tensorboard must differ from PATH" in result.err
    (tmp_path / "empty").mkdir()
    result = logfmt.run_cli(capsys, tmp_path / "empty", *FLAGS, "--seq-length", 128)
    assert result.code == 2 and "no TensorBoard event files" in result.err


def test_the_runs_own_tensorboard_dir_is_a_run_flag(tmp_path, logfmt, capsys):
    """A pasted command line carries the run's --tensorboard-dir: FLOP-neutral, ignored (and
    said so), never taken as relog's output (that is --write-tensorboard)."""
    line = logfmt.bigscience_line(10, 640, 640 * 128, 2.0, 64, 32.0, 1.0)
    path = tmp_path / "run.log"
    path.write_text(line + "\n")
    target = tmp_path / "runs_own_tb"
    result = logfmt.run_cli(capsys, path, *FLAGS, "--seq-length", 128, "--world-size", 8,
                            "--tensorboard-dir", target)
    assert result.code == 0, result.err
    assert not target.exists()
    assert "--tensorboard-dir is the run's own flag" in result.err
    assert "--write-tensorboard DIR" in result.err
