"""Memory on a GPU, estimated against measured (issue 22, item 5).  Not run in CI.

1. **Saved bytes on CUDA, exact.**  The reference GPT's bytes saved for backward, measured per
   module with ``saved_tensors_hooks`` on the GPU, against the activation formulas with CUDA's
   conventions (a bool dropout mask, fp32 LayerNorm statistics) — the one convention the CPU
   proof (``tests/reference/test_memory_proof.py``) cannot reach.  Every row must match.
2. **The demo at two shapes**: one short run each (fp32, so no autocast copies), its measured
   peak (``torch.cuda.max_memory_allocated``) beside the estimate it prints; the ratio is
   reported, not asserted: the peak also holds what the estimate leaves out (the logits'
   gradient, the optimizer step's temporaries, cuBLAS workspaces, allocator rounding).

    python benchmarks/memory_gpu_check.py            # on a machine with CUDA (~1-2 minutes)
    python benchmarks/memory_gpu_check.py --smoke    # the same steps at tiny shapes on a CPU

Exit status 1 when a saved-bytes row differs (part 1) or a demo run fails.
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from megatron_flops.reference.saved import verify_memory  # noqa: E402
from megatron_flops.shapes import ModelShape, Recompute  # noqa: E402

SAVED_CASES = [  # (name, model fields, recompute, dropout, dtype)
    ("dense fp32 dropout", {}, Recompute(), 0.1, torch.float32),
    ("dense bf16 dropout", {}, Recompute(), 0.1, torch.bfloat16),
    ("selective bf16 GQA", {"num_query_groups": 2}, Recompute("selective"), 0.1, torch.bfloat16),
    ("full bf16", {}, Recompute("full"), 0.1, torch.bfloat16),
    ("GLU bf16 rmsnorm", {"glu_activation": "swiglu", "normalization": "rmsnorm"}, Recompute(),
     0.1, torch.bfloat16),
    ("MoE fp32", {"num_experts": 4, "moe_topk": 2, "expert_interval": 1}, Recompute(), 0.1,
     torch.float32),
]
DEMO_SHAPES = {  # two shapes, one short fp32 run each
    "small": ["--num-layers", "4", "--hidden-size", "512", "--num-attention-heads", "8",
              "--seq-length", "512", "--max-position-embeddings", "512", "--micro-batch-size", "8"],
    "medium": ["--num-layers", "12", "--hidden-size", "1024", "--num-attention-heads", "16",
               "--seq-length", "1024", "--max-position-embeddings", "1024",
               "--micro-batch-size", "4"],
}
SMOKE_SHAPES = {
    "small": ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
              "--seq-length", "16", "--max-position-embeddings", "16", "--micro-batch-size", "2"],
    "medium": ["--num-layers", "3", "--hidden-size", "64", "--num-attention-heads", "4",
               "--seq-length", "32", "--max-position-embeddings", "32", "--micro-batch-size", "2"],
}
MEASURED = re.compile(r"memory: measured peak (?P<measured>[\d,.]+) GiB .* vs (?P<estimated>[\d,.]+)"
                      r" GiB estimated \((?P<ratio>[\d.]+) × the estimate\)")


def saved_bytes_check(device: str) -> bool:
    base = dict(num_layers=3, hidden_size=64, num_attention_heads=4, vocab_size=256,
                max_position_embeddings=64)
    ok = True
    print(f"== 1. bytes saved for backward on {device}: measured per module vs formula ==")
    for name, fields, recompute, dropout, dtype in SAVED_CASES:
        rows = verify_memory(ModelShape(**{**base, **fields}), 64, 4, recompute, dropout, dtype,
                             device=device)
        measured, formula = sum(r.measured for r in rows), sum(r.formula for r in rows)
        wrong = [r for r in rows if not r.matches]
        ok &= not wrong
        print(f"{name:<22} measured {measured:>12,}  formula {formula:>12,}  "
              f"{'exact' if not wrong else 'MISMATCH'}")
        for row in wrong:
            print(f"    {' + '.join(row.terms)}: measured {row.measured:,} formula {row.formula:,}")
    return ok


def demo_runs(device: str, shapes: dict) -> bool:
    print(f"== 2. the demo on {device}: measured peak vs estimated ==")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    ok = True
    for name, shape in shapes.items():
        argv = [sys.executable, "-m", "megatron_flops", "demo", *shape, "--train-iters", "3",
                "--log-interval", "1", "--device", device]
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("memory")]
        ok &= done.returncode == 0
        print(f"-- {name}: {' '.join(shape)} ({time.perf_counter() - started:.0f} s, "
              f"exit {done.returncode})")
        for line in lines:
            print(f"   {line}")
        match = next((MEASURED.search(line) for line in lines if MEASURED.search(line)), None)
        if match:
            print(f"   measured / estimated = {match['ratio']}")
        if done.returncode:
            print(done.stderr[-2000:])
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke for the CPU walk-through", file=sys.stderr)
        return 2
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda":
        print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    ok = saved_bytes_check(device)
    ok &= demo_runs(device, SMOKE_SHAPES if args.smoke else DEMO_SHAPES)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
