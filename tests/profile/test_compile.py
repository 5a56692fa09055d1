"""``demo --compile``: torch.compile keeps the exact count (the count is the breakdown's, the
analytic side), and the profile of its trace says plainly that compiled code's matmuls are
not split by component instead of guessing by shape.

Expected FLOPs: PyTorch's FlopCounterMode count of one eager iteration of the same model
(``demo_helpers.counted_flops_per_iteration``; compiling changes the kernels, not the
products), times the profiled iterations.  Expected calls, by hand: a layer's matmul ops
are the fused QKV linear, the scores and attention·V bmm, the output linear, MLP up and MLP
down (6), and the logits one more: 7 forward ops, each with two backward products (the
gradients of its two operands): 7 × 3 = 21 per iteration.
"""

import re

import pytest

torch = pytest.importorskip("torch")

from demo_helpers import counted_flops_per_iteration, run_demo  # noqa: E402

from megatron_flops.profile.attribute import COMPILED, attribute  # noqa: E402
from megatron_flops.profile.trace import load_trace  # noqa: E402
from megatron_flops.shapes import ModelShape, RunShape  # noqa: E402

TINY = ["--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2",
        "--seq-length", "16", "--micro-batch-size", "2"]
SHAPE = ModelShape(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=256)
SEQ, MICRO = 16, 2


@pytest.mark.slow
def test_compiled_demo_is_counted_exactly_and_profiled_plainly(tmp_path, capsys):
    out_dir = tmp_path / "profile"
    code, out, err = run_demo(TINY + [
        "--compile", "--train-iters", "3", "--log-interval", "1", "--peak-tflops", "1",
        "--profile", "--profile-start", "2", "--profile-iters", "2",
        "--profile-dir", str(out_dir)], capsys)
    assert code == 0, err
    assert "one process, torch.compile" in out  # the backend line says the model is compiled

    trace = load_trace(str(out_dir / "trace_rank0.json"))
    assert any(e.name.startswith("Torch-Compiled Region") for e in trace.events)
    profile = attribute(trace, SHAPE, RunShape(seq_length=SEQ, micro_batch_size=MICRO),
                        peak_tflops=1.0)
    # every matmul FLOP of the two iterations is in the trace, as PyTorch counts them eagerly
    assert sum(r.trace_flops for r in profile.rows) == 2 * counted_flops_per_iteration(
        SHAPE, SEQ, MICRO)
    # nothing guessed: no call filed under a component by its shape alone
    assert profile.ambiguous == [] and profile.unattributed == []
    for row in profile.rows:
        assert not set(row.rules) & {"shape", "shape via autograd", "unattributed"}, row.name
    compiled = {r.component: r for r in profile.rows}[COMPILED]
    assert compiled.calls == 2 * 21 and compiled.rules == {"compiled": 2 * 21}
    # ... and the table says so, once, in plain words
    assert len(re.findall(r"^torch\.compile: 21 matmul call\(s\) per iteration ran in compiled "
                          r"code", out, re.M)) == 1
    assert ": equal" in out


def test_compile_with_deepspeed_is_one_error(capsys):
    code, out, err = run_demo(TINY + ["--compile", "--deepspeed", "--peak-tflops", "1"], capsys)
    assert code == 2
    assert "--compile is not supported with --deepspeed" in err
    assert len(err.strip().splitlines()) == 1


def test_a_scope_around_compiled_code_still_names_it(tmp_path):
    """A hand-made CPU trace: one fused QKV matmul inside a compiled region that a component
    scope encloses (a module compiled on its own, its scope opened outside), and one that
    no scope encloses.  The first is the scope's; the second is the compiled row's, though
    its shape alone ([T × h]·[h × 3h], T = 2 × 16) would name query + key_value."""
    import json

    def span(name, ts, dur, **args):
        return {"ph": "X", "name": name, "cat": "cpu_op" if name.startswith("aten::")
                else "user_annotation", "ts": ts, "dur": dur, "pid": 1, "tid": 1, "args": args}

    qkv = {"Input Dims": [[96], [32, 32], [32, 96], [], []]}
    events = [span("ProfilerStep#3", 0, 100),
              span("megatron_flops:query/32+key_value/64", 1, 30),
              span("Torch-Compiled Region: 0/0", 2, 28),
              span("## Call CompiledFxGraph fabc ##", 3, 26),
              span("aten::addmm", 4, 20, **qkv),
              span("Torch-Compiled Region: 1/0", 40, 50),
              span("## Call CompiledFxGraph fdef ##", 41, 48),
              span("aten::addmm", 42, 40, **qkv)]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    profile = attribute(load_trace(str(path)), SHAPE,
                        RunShape(seq_length=SEQ, micro_batch_size=MICRO))
    rows = {r.component: r for r in profile.rows}
    assert rows["query"].seconds == pytest.approx(20e-6 / 3)
    assert rows["key_value"].seconds == pytest.approx(20e-6 * 2 / 3)
    assert rows["query"].rules == {"scope": 1}
    assert rows[COMPILED].seconds == pytest.approx(40e-6)
    assert rows[COMPILED].trace_flops == 2 * 32 * 32 * 96
    assert rows[COMPILED].rules == {"compiled": 1}
