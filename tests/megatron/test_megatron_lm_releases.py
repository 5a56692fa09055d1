"""The Megatron-LM strategy on every release's ``training_log`` signature (issue 19).

``tests/data/megatron_lm/training_log_signatures.json`` holds the parameter names of
``training_log``, ``num_floating_point_operations`` and ``train_step`` read from NVIDIA/Megatron-LM
at each release tag (``git show TAG:megatron/training/training.py``; ``megatron/training.py``
for core_v0.5.0; the commit of each tag beside it): core_v0.5.0 is the first release with
``num_floating_point_operations`` / ``--log-throughput``; core_v0.6.0 … core_v0.15.x put
``decoupled_learning_rate`` before ``iteration``; core_v0.16.0 on pass ``iteration=`` to
``train_step``.  The hook finds ``iteration`` by name, so each era gets the full behaviour —
shown on the training-loop fixture rewritten to the 0.6–0.15 signature.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

from megatron_flops.megatron import hook as hook_module
from megatron_flops.megatron.hook.megatron_lm import MegatronLM

HERE = Path(__file__).resolve().parent
SIGNATURES = json.loads((HERE.parent / "data" / "megatron_lm" /
                         "training_log_signatures.json").read_text())
FIXTURE = HERE / "fixtures" / "megatron_lm"
ARGV = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 "
        "--micro-batch-size 2 --global-batch-size 8 --train-iters 8 --log-interval 4 "
        "--log-throughput --wandb-project p --fake-seconds-per-iteration 1e-6 "
        "--fake-startup-seconds 1e-5 --vocab-size 128").split()


def fake_training_module(release):
    """A module with the release's signatures (bodies empty): what the strategy and the
    hook's training_log wrapper read."""
    import types
    names = SIGNATURES[release]
    module = types.ModuleType(f"fake_{release}")

    def define(name, params):
        text = ", ".join(p if p.startswith("*") else f"{p}=None" for p in params)
        exec(f"def {name}({text}):\n    return None", module.__dict__)

    define("training_log", names["training_log"])
    define("num_floating_point_operations", names["num_floating_point_operations"])
    define("train_step", names["train_step"])
    module.get_args = module.get_num_microbatches = module.print_rank_last = lambda *a: None
    return module


@pytest.mark.parametrize("release", sorted(SIGNATURES))
def test_every_release_is_detected_and_its_iteration_found_by_name(release):
    module = fake_training_module(release)
    assert MegatronLM.detect(module)
    names = SIGNATURES[release]["training_log"]
    hook = hook_module.MegatronHook(hook_module.STRATEGIES)
    hook.strategy = MegatronLM(hook, module)
    hook._wrap_training_log(module)
    assert hook.per_iteration, release
    expected = 4 if "decoupled_learning_rate" in names else 3
    assert names.index("iteration") == expected


def purge():
    for name in [m for m in sys.modules if m == "megatron" or m.startswith("megatron.")]:
        del sys.modules[name]


def test_decoupled_learning_rate_release_gets_summary_fields_and_tags(tmp_path, capsys,
                                                                       monkeypatch):
    """The fixture rewritten to core_v0.6.0 … core_v0.15.x's training_log (an extra
    ``decoupled_learning_rate`` before ``iteration``): start summary, our fields on the line,
    the throughput/* W&B keys — before issue 19 the hook fell back to log time without them."""
    checkout = tmp_path / "v0.15"
    shutil.copytree(FIXTURE, checkout, ignore=shutil.ignore_patterns("__pycache__"))
    training = checkout / "megatron" / "training" / "training.py"
    text = training.read_text()
    old_def = "def training_log(loss_dict, total_loss_dict, learning_rate, iteration,"
    old_call = "loss_dict, total_loss_dict, 3.0e-4, iteration,"
    assert old_def in text and old_call in text
    text = text.replace(old_def, "def training_log(loss_dict, total_loss_dict, learning_rate, "
                                 "decoupled_learning_rate, iteration,")
    text = text.replace(old_call, "loss_dict, total_loss_dict, 3.0e-4, None, iteration,")
    training.write_text(text)
    monkeypatch.chdir(tmp_path)
    purge()
    sys.path.insert(0, str(checkout))
    capsys.readouterr()
    try:
        hook = hook_module.install()
        import megatron.training
        megatron.training.pretrain(list(ARGV))
        wandb = sys.modules["megatron.training.global_vars"].get_wandb_writer()
        per_iteration = hook.per_iteration
    finally:
        hook_module.uninstall()
        sys.path.remove(str(checkout))
        purge()
    out = capsys.readouterr().out
    assert per_iteration
    assert "not wrapped" not in out and "unexpected signature" not in out
    assert "megatron-flops: hooked NVIDIA Megatron-LM" in out
    assert "per-iteration accounting" in out
    assert any(" model TFLOP/s per gpu: " in line for line in out.splitlines()
               if "iteration        8/" in line)
    assert any(key.startswith("throughput/") for data, _ in wandb.logged for key in data)
