"""Megatron-DeepSpeed adapters: argument reading (standard library only), and — imported
only where used — the runtime hook and the source patcher."""
