"""PyTorch reference GPT (Megatron's layer structure) and the FLOPs verifier (extra ``torch``).

Import :mod:`megatron_flops.reference.model` or :mod:`megatron_flops.reference.verify`;
this package imports nothing on its own so the core stays torch-free.
"""
