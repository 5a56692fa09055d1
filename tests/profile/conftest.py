"""Profile tests: traces are made here, in tmp_path, from tiny models (one or two iterations)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demo"))  # demo_helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))  # trace_helpers


@pytest.fixture(autouse=True)
def _one_thread():
    from demo_helpers import one_intra_op_thread
    with one_intra_op_thread():
        yield


@pytest.fixture(autouse=True)
def _private_peak_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGATRON_FLOPS_CACHE_DIR", str(tmp_path / "cache"))
