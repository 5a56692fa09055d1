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
    from demo_helpers import one_intra_op_thread
    with one_intra_op_thread():
        yield
