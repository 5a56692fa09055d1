"""Chrome-trace events written by hand for the profile tests (one tiny GPU step), and the model
they describe: h 64, 4 heads of 16, one KV group, so the fused QKV matmul is
[T × 64]·[64 × (64 + 2·16)] with T = 2 × 24."""

from megatron_flops.shapes import ModelShape

MODEL = ModelShape(num_layers=1, hidden_size=64, num_attention_heads=4, num_query_groups=1,
                   vocab_size=256)
FLAGS = ["--num-layers", "1", "--hidden-size", "64", "--num-attention-heads", "4",
         "--num-key-value-heads", "1", "--vocab-size", "256", "--seq-length", "24",
         "--micro-batch-size", "2"]


def op(name, ts, dur, cat="cpu_op", tid=1, **args):
    """A host-side complete event (an aten op, a runtime call, a user annotation)."""
    return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur, "pid": 1, "tid": tid,
            "args": args}


def kernel(name, ts, dur, correlation, stream=7):
    """A device kernel, linked to its launch by ``correlation``."""
    return {"ph": "X", "name": name, "cat": "kernel", "ts": ts, "dur": dur, "pid": 0,
            "tid": stream, "args": {"correlation": correlation}}
