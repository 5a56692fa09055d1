"""User errors and bugs stay apart (STYLE.md 10): only ``UsageError`` (``ShapeError`` is
one) becomes one line and exit 2; any other exception keeps its traceback."""

import pytest

from megatron_flops import ShapeError, UsageError
from megatron_flops.commands.common import EXIT_USAGE, run_guarded
from megatron_flops.megatron import run as megatron_run


def test_one_usage_error_class_for_the_commands_and_the_runner():
    assert megatron_run.UsageError is UsageError
    assert issubclass(ShapeError, UsageError) and issubclass(UsageError, ValueError)


@pytest.mark.parametrize("error", [UsageError("--peak-tflops must be positive, got 0"),
                                   ShapeError("--hidden-size must be a positive integer, got 0",
                                              "--hidden-size")])
def test_a_user_error_is_one_line_and_exit_2(error, capsys):
    def command(argv):
        raise error
    assert run_guarded(command, []) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == f"megatron-flops: error: {error}\n"


@pytest.mark.parametrize("bug", [ValueError("math domain error"), KeyError("x"),
                                 ZeroDivisionError("division by zero")])
def test_a_programming_error_keeps_its_traceback(bug):
    def command(argv):
        raise bug
    with pytest.raises(type(bug)):
        run_guarded(command, [])


def test_planning_names_the_flags_estimate_takes():
    from megatron_flops.planning import training_time
    from megatron_flops import ModelShape, RunShape
    model = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=128)
    with pytest.raises(UsageError, match="^--plan-tokens must be positive"):
        training_time(model, RunShape(seq_length=32), 0, 100.0)
    with pytest.raises(UsageError, match="^--plan-tflops-per-gpu must be positive"):
        training_time(model, RunShape(seq_length=32), 1000, 0.0)
