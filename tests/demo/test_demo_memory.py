"""The demo's memory estimate (issue 22): its activation part is what the reference GPT it
trains saves for backward (measured with saved_tensors_hooks on a CPU), its state part 16
bytes per parameter (fp32 parameters and gradients, AdamW's two fp32 moments); the start
line and the measured-peak line (n/a without CUDA)."""

import pytest

torch = pytest.importorskip("torch")

from megatron_flops.commands import main  # noqa: E402
from megatron_flops.demo.config import DemoConfig  # noqa: E402
from megatron_flops.demo.memory import demo_memory  # noqa: E402
from megatron_flops.params import parameter_count  # noqa: E402
from megatron_flops.reference.saved import measure_reference  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute, RunShape  # noqa: E402

MODEL = ModelShape(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=256,
                   max_position_embeddings=16)


@pytest.mark.parametrize("recompute, dropout", [(Recompute(), 0.1), (Recompute("full"), 0.0),
                                                (Recompute("selective"), 0.1)])
def test_the_estimate_is_what_the_trained_model_saves(recompute, dropout):
    run = RunShape(seq_length=16, micro_batch_size=2, global_batch_size=2, recompute=recompute)
    memory = demo_memory(DemoConfig(model=MODEL, run=run, hidden_dropout=dropout), cuda=False)
    stage = memory.stages[0]
    assert stage.in_flight == 1
    assert stage.activations == measure_reference(MODEL, 16, 2, recompute, dropout).total
    assert stage.state.total == 16 * parameter_count(MODEL).total


def test_demo_prints_the_estimate_and_the_measured_peak(capsys):
    code = main(["demo", "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                 "--seq-length", "16", "--micro-batch-size", "2", "--train-iters", "2",
                 "--log-interval", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "memory per process (estimate): peak " in out
    assert "memory: measured peak n/a (no CUDA device: no allocator statistics)" in out
