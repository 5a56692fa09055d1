"""The demo: train the reference GPT with live throughput (see docs/demo.md).

Imports nothing heavy on its own; the loop lives in :mod:`megatron_flops.demo.train`.
"""
