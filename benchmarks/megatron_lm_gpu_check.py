"""The real Megatron-LM check of tests/megatron_lm_real on one GPU: NCCL, bf16, no stand-ins.

    MEGATRON_LM_PATH=/path/to/Megatron-LM python benchmarks/megatron_lm_gpu_check.py [NAME …]

For each configuration of ``tests/megatron_lm_real/test_real_loop.CONFIGURATIONS`` (or the
ones named) Megatron-LM's own ``pretrain_gpt.py`` trains the same tiny GPT (2 layers, h 64,
seq 32, 6 iterations, mock data) twice on ``cuda:0`` in bf16 with the NCCL backend — plain,
then hooked with ``--count-flops=2 --strict`` and FlopCounterMode around each real
``train_step`` — and the same checks as the CPU tier are made: the hook's FLOPs per log
interval = FlopCounterMode's, to the FLOP; iteration 2 counted with every component equal to
the formula, exit status 0; a flag-free relog of the plain log = the hook; the loss hooked =
plain; then the wrong model (an extra matmul in ``linear_proj``) must end with exit status 1
naming attention_output.  Megatron-Core's local (unfused) attention is used
(``--transformer-impl local``): Transformer Engine's fused attention is a kernel
FlopCounterMode cannot count, which the counting mode would list (and ``--strict`` fail on).
Gradient-accumulation fusion stays off for the same reason (a fused wgrad kernel).  A few
minutes on an H100 (start-up dominates).  The table goes to stdout (and
``MEGATRON_LM_REAL_TABLE`` if set).  Needs Megatron-LM's dependencies for a GPU run
(its dataset helpers compiled: pybind11).

Not run yet: no GPU was lent when it was written (issue 19).
"""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "megatron_lm_real"))

import test_real_loop as real  # noqa: E402

GPU = ("--bf16 --transformer-impl local --distributed-backend nccl --mock-data "
       "--tokenizer-type NullTokenizer --no-gradient-accumulation-fusion")


def main(names) -> int:
    checkout = Path(os.environ.get("MEGATRON_LM_PATH", ""))
    if not (checkout / "pretrain_gpt.py").is_file():
        print("megatron_lm_gpu_check: set MEGATRON_LM_PATH to a Megatron-LM checkout",
              file=sys.stderr)
        return 2
    names = names or list(real.CONFIGURATIONS)
    unknown = [n for n in names if n not in real.CONFIGURATIONS]
    if unknown:
        print(f"megatron_lm_gpu_check: unknown configuration {unknown[0]!r}; one of "
              f"{', '.join(real.CONFIGURATIONS)}", file=sys.stderr)
        return 2
    table = os.environ.setdefault("MEGATRON_LM_REAL_TABLE",
                                  str(Path(tempfile.mkdtemp()) / "table.md"))
    failed = []
    for index, name in enumerate(names):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                real.check_configuration(checkout, name, real.CONFIGURATIONS[name], Path(tmp),
                                         29700 + index, flags=GPU, stand_ins=False)
                print(f"ok      {name}", flush=True)
            except AssertionError as error:
                failed.append(name)
                print(f"FAILED  {name}: {str(error)[:2000]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        hooked, data = real.run(checkout, "hooked", "", Path(tmp), 29699,
                                {"MEGATRON_LM_REAL_EXTRA_MATMUL": "1"}, flags=GPU,
                                stand_ins=False)
        caught = (hooked.returncode == 1
                  and "MISMATCH attention_output" in hooked.stdout)
        print(f"{'ok' if caught else 'FAILED':8}wrong model caught by --strict naming "
              "attention_output", flush=True)
        if not caught:
            failed.append("wrong model")
    print("| release | configuration | hook FLOPs/iter | FlopCounterMode | --count-flops "
          "--strict | relog | loss hooked = plain |")
    print(Path(table).read_text() if Path(table).exists() else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
