"""Demo tests: helpers importable as ``demo_helpers``; a private measured-peak cache."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _private_peak_cache(tmp_path, monkeypatch):
    """Measured peaks go to a per-test cache, not the user's."""
    monkeypatch.setenv("MEGATRON_FLOPS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread in this process: on a shared 2-core machine two OpenMP threads
    spin-wait on each other and run several times slower than one.  Timings are not what
    these tests check."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
