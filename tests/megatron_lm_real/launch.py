"""Run NVIDIA Megatron-LM's own ``pretrain_gpt.py`` on one CPU process with the stand-ins of
:mod:`cpu_stand_ins`: ``python launch.py MODE RESULT.json CHECKOUT/pretrain_gpt.py ARGS…``.

``MODE`` ``plain``: Megatron-LM alone.  ``hooked``: the megatron-flops hook installed (its
settings from the environment: ``MEGATRON_FLOPS_COUNT_FLOPS``, ``MEGATRON_FLOPS_STRICT``, …)
before Megatron-LM is imported, and outside it every real ``train_step`` runs under
``FlopCounterMode`` (the truth, per iteration).  RESULT.json gets, per iteration, the counted
FLOPs (``truth``), per log interval the hook's report (``reports``) and the counting mode's
table (``count``), written even when the run ends with an exit status (``--strict``).
``MEGATRON_LM_REAL_STAND_INS=0``: no CPU stand-ins (a real GPU:
benchmarks/megatron_lm_gpu_check.py).
"""

import json
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cpu_stand_ins  # noqa: E402


def extra_matmul() -> None:
    """A deliberately wrong model: every RowParallelLinear whose input is as wide as its output
    (``linear_proj`` here: n·d = h; never ``linear_fc2``, ffn ≠ h) multiplies its output by
    an h×h identity once more — the loss unchanged, one matmul too many."""
    import torch
    from megatron.core.tensor_parallel import layers

    forward = layers.RowParallelLinear.forward

    def wrong(self, *args, **kwargs):
        output, bias = forward(self, *args, **kwargs)
        if self.input_size == self.output_size:
            output = output @ torch.eye(self.output_size, dtype=output.dtype)
        return output, bias

    layers.RowParallelLinear.forward = wrong


def main() -> None:
    mode, result_path, script = sys.argv[1:4]
    stand_ins = os.environ.get("MEGATRON_LM_REAL_STAND_INS", "1") != "0"  # 0: a real GPU
    if stand_ins:
        cpu_stand_ins.install()
    sys.argv = sys.argv[3:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    if stand_ins:
        cpu_stand_ins.install_megatron()
    result = {"truth": {}, "reports": [], "count": None, "count_failure": None}
    hook = None
    if mode == "hooked":
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        import megatron_flops.megatron as mf
        hook = mf.install()
        import megatron.training.training as training  # the hook patches it here
        assert hook.strategy is not None, hook.fork
        step = training.train_step
        calls = []

        def train_step(*args, **kwargs):
            calls.append(None)
            counter = FlopCounterMode(display=False)
            with torch.utils.checkpoint.set_checkpoint_early_stop(False), counter:
                value = step(*args, **kwargs)
            result["truth"][len(calls)] = counter.get_total_flops()
            return value

        training.train_step = train_step
        write_outputs = hook.strategy.write_outputs

        def record(interval):
            report = interval.report
            result["reports"].append({"iteration": interval.iteration,
                                      "iterations": report.iterations,
                                      "model_flops": report.model_flops,
                                      "hardware_flops": report.hardware_flops})
            return write_outputs(interval)

        hook.strategy.write_outputs = record
    if os.environ.get("MEGATRON_LM_REAL_EXTRA_MATMUL"):
        extra_matmul()
    status = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    finally:
        if hook is not None and hook.counting_mode is not None:
            mode_ = hook.counting_mode
            result["count"] = mode_.result.to_dict() if mode_.result is not None else None
            result["count_failure"] = mode_.failure
            result["counted_iteration"] = mode_.iteration if mode_.done else None
        if hook is not None:
            result["hook_failure"] = hook.failure
            result["per_iteration"] = hook.per_iteration
        with open(result_path, "w") as out:
            json.dump(result, out)
    sys.exit(status)


if __name__ == "__main__":
    main()
