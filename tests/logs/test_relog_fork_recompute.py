"""Issue 24: the microsoft fork's own formula for ``--deepspeed --recompute-method block``.

Read in deepspeedai/Megatron-DeepSpeed ``megatron/utils.py::throughput_calculator``
(commit 207b2d5): ``fwd_bwd_macs += fwd_macs`` whenever ``args.checkpoint_activations`` or
``args.recompute_granularity == 'full'`` — the flags, not what runs.  With ``--deepspeed`` the
fork builds DeepSpeed's pipeline model, whose checkpoint interval is 0 for the block method
(no recompute runs: the exact hardware count has none), yet the logged TFLOPs carry one more
forward: 4/3 of model FLOPs, +33.3 % vs the exact hardware count.
"""

import contextlib
import io
import json

from megatron_flops.cli import main
from megatron_flops.legacy import legacy_error

L, H, N, S, V, MICRO, WORLD, PP = 4, 256, 4, 128, 1024, 2, 2, 2
SECONDS = 0.002   # a logged figure of a few TFLOP/s: its 2 decimals hold 3 significant digits


def _log(tmp_path, logfmt):
    batch = MICRO * (WORLD // PP)
    # the fork's formula: 3 × forward MACs (model) + one forward for granularity full
    logged = logfmt.microsoft_logged_tflops(batch, S, L, H, N, N, 4 * H, V, SECONDS, WORLD) * 4 / 3
    lines = logfmt.arguments_dump(
        num_layers=L, hidden_size=H, num_attention_heads=N, num_key_value_heads=N,
        ffn_hidden_size=4 * H, swiglu=False, seq_length=S, micro_batch_size=MICRO,
        global_batch_size=batch, pipeline_model_parallel_size=PP, tensor_model_parallel_size=1,
        world_size=WORLD, deepspeed=True, no_pipeline_parallel=False,
        recompute_granularity="full", recompute_method="block", recompute_num_layers=1,
        checkpoint_activations=False, ds_sequence_parallel_size=1, log_interval=10)
    lines.append(f" > padded vocab (size: {V}) with 0 dummy tokens (new size: {V})")
    for i in (10, 20, 30):
        lines.append(logfmt.microsoft_line(i, i * batch, i * batch * S, SECONDS, batch,
                                           batch / SECONDS, logged, S, WORLD))
    path = tmp_path / "block.log"
    path.write_text("\n".join(lines) + "\n")
    return path, logged


def test_relog_of_a_block_recompute_pipeline_run_reproduces_its_own_tflops(tmp_path, logfmt):
    path, logged = _log(tmp_path, logfmt)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["relog", str(path), "--json"])
    assert code == 0, err.getvalue()
    summary = next(json.loads(line)["summary"] for line in err.getvalue().splitlines()
                   if line.startswith('{"summary"'))
    assert summary["fork_formula_checked"] == 3
    assert summary["fork_formula_mismatches"] == 0
    assert "do not describe this run" not in err.getvalue()
    # no recompute runs in the pipeline model: the fork's figure is 4/3 of the exact count
    model, hardware = logfmt.hand_flops_per_sample(S, L, H, N, V)
    assert model == hardware
    exact = MICRO * (WORLD // PP) * hardware / (SECONDS * WORLD * 1e12)
    assert abs(legacy_error(logged, exact) - 1 / 3) < 1e-9
    interval = json.loads(out.getvalue().splitlines()[-1])
    assert abs(interval["error"] - 1 / 3) < 5e-3   # the logged figure, printed with 2 decimals


def test_estimate_says_the_microsoft_fork_logs_a_third_more(capsys):
    code = main(["estimate", "--num-layers", str(L), "--hidden-size", str(H),
                 "--num-attention-heads", str(N), "--seq-length", str(S), "--vocab-size", str(V),
                 "--micro-batch-size", str(MICRO), "--deepspeed", "--recompute-granularity",
                 "full", "--recompute-method", "block", "--recompute-num-layers", "1",
                 "--pipeline-model-parallel-size", str(PP), "--world-size", str(WORLD),
                 "--iteration-time", str(SECONDS), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["flops_per_iteration"]["hardware"] == result["flops_per_iteration"]["model"]
    microsoft = result["throughput"]["legacy_tflops_per_gpu"]["microsoft"]
    hardware = result["throughput"]["tflops_per_gpu"]["hardware"]
    assert abs(microsoft / hardware - 4 / 3) < 1e-9
