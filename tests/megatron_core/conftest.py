"""Megatron-Core ground truth: helpers importable as ``mcore_counting``; one gloo process group
(world size 1, TP = PP = 1) with CPU stand-ins for CUDA-only calls, for this package's tests.

Every test module here starts with ``pytest.importorskip("megatron.core")``, so without the
``megatron-core`` extra the package is skipped, not failed.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="package")
def megatron_core():
    """Megatron-Core's parallel state for one CPU process, torn down after the package; one
    intra-op thread meanwhile (2 shared cores: two OpenMP threads spin-wait on each other)."""
    import mcore_counting
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with mcore_counting.single_process_model_parallel():
        yield
    torch.set_num_threads(threads)
