"""Writes ``console_0.3.1.log``: a Megatron-Bridge v0.3.1 console log, its lines in Bridge's own
formats (``ConfigContainer.log_non_default_values``, ``train_utils.training_log``: read at
v0.3.1, format strings reproduced, no code run), its TFLOP/s from Bridge's own
``num_floating_point_operations`` (the 0.3.1 wheel's ``flop_utils.py``, loaded by
tests/megatron_bridge/bridge_formula.py) for the run below on 64 GPUs.

No public Megatron-Bridge log with its configuration summary and iteration lines was found
(searched: Megatron-Bridge issues and PRs; PR #388 quotes one ``Step Time`` line only, without
its configuration); so this one is made, and says so.

    PYTHONPATH=src:tests/megatron_bridge python tests/data/megatron_bridge/make_console_log.py
"""

import sys
from pathlib import Path
from types import SimpleNamespace

# Llama-3-8B's shape (Llama3ModelProvider8B) with a NullTokenizer of Llama-3's vocabulary size
MODEL = dict(num_layers=32, hidden_size=4096, num_attention_heads=32, num_query_groups=8,
             ffn_hidden_size=14336, gated_linear_unit=True, add_bias_linear=False,
             normalization="RMSNorm", bf16=True)
SEQ, VOCAB, MICRO, GLOBAL, WORLD, TRAIN_ITERS, LOG_INTERVAL = 8192, 128256, 1, 128, 64, 40, 10
SECONDS = (14.2184, 12.8127, 12.7931, 12.8019)   # per iteration, one per log interval
STAMPS = ("2026-03-25 10:02:22", "2026-03-25 10:04:30", "2026-03-25 10:06:38",
          "2026-03-25 10:08:46")


def bridge_flops() -> float:
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    import bridge_formula
    flop_utils = bridge_formula.load_flop_utils(bridge_formula.bridge_source_root())
    model = TransformerConfig(**{k: v for k, v in MODEL.items()}, activation_func=F.silu)
    model.seq_length, model.vocab_size, model.make_vocab_size_divisible_by = SEQ, VOCAB, 128
    config = SimpleNamespace(model=model, peft=None, dataset=None,
                             train=SimpleNamespace(global_batch_size=GLOBAL))
    return flop_utils.num_floating_point_operations(config, GLOBAL)


def summary() -> list:
    rule, thin = "=" * 70, "-" * 70
    defaults = {"num_layers": 0, "hidden_size": 0, "num_attention_heads": 0,
                "num_query_groups": None, "ffn_hidden_size": None, "gated_linear_unit": False,
                "add_bias_linear": True, "normalization": "LayerNorm", "bf16": False}
    lines = ["", rule, "Configuration Summary (Non-Default Values vs Megatron Core)", rule, "",
             "[model] Non-default values (vs Mcore TransformerConfig):"]
    values = dict(MODEL, kv_channels=128)  # TransformerConfig.__post_init__ sets h / n
    defaults["kv_channels"] = None
    for name in sorted(values):
        lines.append(f"  {name}: {values[name]!r}  (Mcore default: {defaults[name]!r})")
    lines += ["", thin, "Other Configuration Values:", thin, "", "[train]:",
              f"  global_batch_size: {GLOBAL!r}", f"  micro_batch_size: {MICRO!r}",
              f"  train_iters: {TRAIN_ITERS!r}", "", "[tokenizer]:",
              "  tokenizer_type: 'NullTokenizer'", f"  vocab_size: {VOCAB!r}", "", rule]
    return lines


def main(out: Path) -> None:
    flops = bridge_flops()
    lines = summary()
    for index, seconds in enumerate(SECONDS):
        iteration = (index + 1) * LOG_INTERVAL
        per_gpu_tf = flops / seconds / WORLD / 1e12
        lines.append(f"Step Time : {seconds:.2f}s GPU utilization: "
                     f"{per_gpu_tf:.1f}MODEL_TFLOP/s/GPU")
        lines.append(
            f" [{STAMPS[index]}] iteration {iteration:8d}/{TRAIN_ITERS:8d} |"
            f" consumed samples: {iteration * GLOBAL:12d} |"
            f" elapsed time per iteration (ms): {seconds * 1000.0:.1f} |"
            f" throughput per GPU (TFLOP/s/GPU): {per_gpu_tf:.1f} |"
            f" learning rate: {3e-4:.6E} | global batch size: {GLOBAL:5d} |"
            f" lm loss: {10.4 - index:.6E} | loss scale: 1.0 | grad norm: {2.5 - index / 4:.3f} |"
            f" number of skipped iterations: {0:3d} | number of nan iterations: {0:3d} |")
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else
         Path(__file__).with_name("console_0.3.1.log"))
