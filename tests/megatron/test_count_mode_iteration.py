"""The counting mode picks the iteration by the loop's own number (issue 19): Megatron-LM does
not update ``args.iteration`` while it trains (``--count-flops=N`` with N > 1 never counted and
exited 0 silently), the forks do, Megatron-LM ≥ core_v0.16.0 passes ``iteration=`` to
``train_step``; a count asked for and never made is said at exit (``--strict``: status 1)."""

import io
import types

import pytest

from megatron_flops.megatron import hook as hook_module
from megatron_flops.megatron.hook import count_mode
from megatron_flops.megatron.hook.count_mode import CountingMode, CountSettings


def setup(iteration, strict=False, start=0, fork_updates=False, keyword=False):
    args = types.SimpleNamespace(iteration=start)
    training = types.ModuleType("fake_training")
    trained = []

    def train_step(*a, **kwargs):
        trained.append(args.iteration + 1 if not keyword else kwargs["iteration"] + 1)
        if fork_updates:
            args.iteration += 1
        return "loss"

    training.train_step = train_step
    training.get_args = lambda: args
    hook = hook_module.MegatronHook(hook_module.STRATEGIES, out=io.StringIO())
    mode = CountingMode(hook, CountSettings(iteration=iteration, strict=strict))
    counted = []

    def count(training_, step, a, kwargs):
        counted.append(mode.iteration)
        return step(*a, **kwargs)

    mode._count = count
    mode.install(training)
    return training, mode, counted, hook, args


def loop(training, args, steps, keyword=False, start=None):
    done = args.iteration if start is None else start
    for _ in range(steps):
        if keyword:
            training.train_step("batch", iteration=done)
        else:
            training.train_step("batch")
        done += 1


@pytest.mark.parametrize("how", ["megatron-lm <= 0.15 (args.iteration never updated)",
                                 "forks (args.iteration updated)",
                                 "megatron-lm >= 0.16 (iteration= keyword)"])
def test_iteration_3_is_counted_on_the_third_step(how):
    keyword = "keyword" in how
    training, mode, counted, _, args = setup(3, fork_updates="forks" in how, keyword=keyword)
    loop(training, args, 5, keyword=keyword)
    assert counted == [3]
    assert mode.calls == 3  # (steps after the counted one are not numbered)


def test_a_resumed_run_counts_by_its_checkpoints_iteration():
    training, mode, counted, _, args = setup(12, start=10)
    loop(training, args, 4)
    assert counted == [12]  # iterations 11, 12, 13, 14 trained


def test_an_iteration_never_reached_is_said_at_exit(monkeypatch):
    training, mode, counted, hook, args = setup(9)
    loop(training, args, 3)
    mode._never_reached()
    text = hook.out.getvalue()
    assert counted == []
    assert "counting mode: iteration 9 was never trained (3 train_step calls; the last was " \
           "iteration 3): nothing was counted" in text


def test_strict_exits_1_when_the_iteration_is_never_reached(monkeypatch):
    training, mode, counted, hook, args = setup(9, strict=True)
    loop(training, args, 2)
    exits = []
    monkeypatch.setattr(count_mode.os, "_exit", exits.append)
    mode._never_reached()
    assert exits == [count_mode.EXIT_MISMATCH]
    assert "--strict: exit status 1" in hook.out.getvalue()


def test_nothing_is_said_once_counted_or_when_the_hook_is_removed(monkeypatch):
    training, mode, counted, hook, args = setup(1)
    loop(training, args, 1)
    mode._never_reached()
    assert counted == [1] and "never trained" not in hook.out.getvalue()
    training2, mode2, _, hook2, args2 = setup(5)
    monkeypatch.setitem(__import__("sys").modules, training2.__name__, training2)
    hook2.restore()  # uninstall(): train_step is the original again
    mode2._never_reached()
    assert hook2.out.getvalue() == ""



def test_the_exit_check_runs_once_and_leaves_no_handler_behind():
    """A process that installed a strict counting mode and had its verdict said already (a
    test runner, a notebook) must not end with status 1 from a handler still registered: the
    whole suite exited 1 after every test had passed before this."""
    import subprocess
    import sys
    script = "\n".join([
        "import io, os, types",
        "from megatron_flops.megatron import hook as hook_module",
        "from megatron_flops.megatron.hook import count_mode",
        "training = types.ModuleType('fake_training')",
        "training.train_step = lambda *a, **k: 'loss'",
        "training.get_args = lambda: types.SimpleNamespace(iteration=0)",
        "hook = hook_module.MegatronHook(hook_module.STRATEGIES, out=io.StringIO())",
        "mode = count_mode.CountingMode(hook, count_mode.CountSettings(iteration=9, strict=True))",
        "mode.install(training)",
        "real_exit, count_mode.os._exit = count_mode.os._exit, lambda status: None",
        "mode._never_reached()   # said once, here",
        "count_mode.os._exit = real_exit",
    ])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
