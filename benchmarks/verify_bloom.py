"""Wall time of `megatron-flops verify` at BLOOM-176B's shape on meta tensors.

BLOOM-176B: 70 layers, hidden 14336, 112 heads, seq 2048, padded vocab 250,880, ALiBi,
embedding layernorm, tied embeddings, GeLU, full recompute, micro batch 1.
Target: under 30 s on a 2-core CPU.  Run: PYTHONPATH=src python benchmarks/verify_bloom.py
"""

import argparse
import json
import os
import platform
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    start = time.perf_counter()
    import torch
    from megatron_flops.reference.verify import verify
    from megatron_flops.shapes import ModelShape, Recompute
    import_seconds = time.perf_counter() - start

    model = ModelShape(num_layers=70, hidden_size=14336, num_attention_heads=112,
                       vocab_size=250880, position_embedding="alibi", embedding_layernorm=True)
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = verify(model, seq_length=2048, batch_size=1, recompute=Recompute("full"))
        seconds.append(time.perf_counter() - start)
        if not result.exact:
            raise SystemExit(f"BLOOM-176B does not verify: {[r.name for r in result.mismatches]}")
    print(json.dumps({
        "shape": "BLOOM-176B, seq 2048, full recompute, meta tensors",
        "exact": result.exact,
        "hardware_flops_per_sample": result.counted_total,
        "import_seconds": round(import_seconds, 2),
        "verify_seconds": [round(s, 2) for s in seconds],
        "best_seconds": round(min(seconds), 2),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }, indent=1))


if __name__ == "__main__":
    main()
