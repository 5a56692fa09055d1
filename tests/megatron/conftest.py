"""Run the fixture forks in-process, with or without the hook, and read their outputs back."""

import os
import shutil
import sys

import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
FORKS = ("bigscience", "microsoft")


def fixture_dir(fork: str) -> str:
    return os.path.join(FIXTURES, f"{fork}_fork")


def _purge_megatron():
    for name in list(sys.modules):
        if name == "megatron" or name.startswith("megatron."):
            del sys.modules[name]


class ForkRunner:
    """Runs ``megatron.training.pretrain(argv)`` of a fixture checkout, in this process."""

    def __init__(self, capsys):
        self.capsys = capsys

    def run(self, checkout: str, argv, hook: bool = True, late_install: bool = False,
            **install_kwargs) -> str:
        """``late_install``: import megatron.training first, then install (patched at once)."""
        from megatron_flops.megatron import hook as hook_module
        _purge_megatron()
        sys.path.insert(0, checkout)
        self.capsys.readouterr()
        try:
            if hook and not late_install:
                hook_module.install(**install_kwargs)
            import megatron.training
            if hook and late_install:
                hook_module.install(**install_kwargs)
            megatron.training.pretrain(list(argv))
            # the forks' megatron/global_vars.py, Megatron-LM's megatron/training/global_vars.py
            global_vars = (sys.modules.get("megatron.global_vars")
                           or sys.modules["megatron.training.global_vars"])
            self.wandb = global_vars.get_wandb_writer() \
                if hasattr(global_vars, "get_wandb_writer") else None
        finally:
            hook_module.uninstall()
            sys.path.remove(checkout)
            _purge_megatron()
        return self.capsys.readouterr().out


@pytest.fixture
def runner(capsys):
    return ForkRunner(capsys)


def pytest_collection_modifyitems(items):
    """A test that trains a fixture fork (the ``runner`` fixture: a real training loop, the
    tiny GPT through torch when torch is installed) is ``slow``: ``python -m pytest -q`` runs
    it, the development fast path ``-m "not slow"`` does not."""
    for item in items:
        if "runner" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def checkout_copy(tmp_path):
    """A writable copy of a fixture checkout (for the patcher)."""
    def make(fork: str) -> str:
        target = tmp_path / f"{fork}_checkout"
        shutil.copytree(fixture_dir(fork), target,
                        ignore=shutil.ignore_patterns("__pycache__"))
        return str(target)
    return make


@pytest.fixture
def tools():
    """Helpers for the tests (importlib import mode: tests cannot import conftest)."""
    class Tools:
        pass
    t = Tools()
    t.read_scalars = read_scalars
    t.log_lines = log_lines
    t.field = field
    t.fixture_dir = fixture_dir
    t.require_tensorboard = require_tensorboard
    t.purge_megatron = _purge_megatron
    return t


def require_tensorboard():
    """Skip (not fail) without torch or tensorboard: the fixture forks' writer is torch's
    SummaryWriter, and the event files are read back with tensorboard."""
    pytest.importorskip("torch")
    pytest.importorskip("torch.utils.tensorboard")
    pytest.importorskip("tensorboard")


def read_scalars(log_dir: str) -> dict:
    """tag -> [(step, value)] from the event files (new-style scalars come back as tensors)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util
    accumulator = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    out = {}
    tags = accumulator.Tags()
    for tag in tags.get("scalars", []):
        out[tag] = [(e.step, e.value) for e in accumulator.Scalars(tag)]
    for tag in tags.get("tensors", []):
        out[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                    for e in accumulator.Tensors(tag)]
    return out


def log_lines(output: str):
    return [line for line in output.splitlines() if line.startswith(" iteration ")]


def field(line: str, key: str) -> str:
    """The value of `` key: value |`` in a Megatron log line."""
    marker = f" {key}: "
    start = line.index(marker) + len(marker)
    return line[start:line.index(" |", start)]
