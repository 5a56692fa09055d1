"""Regenerate this folder's Megatron-LM console logs from the training-loop fixture.

    python tests/data/megatron_lm/generate.py [OUT_DIR]

Each log is what one job's merged stdout looks like: rank 0 prints the argument dump and the
padded-vocabulary line, the last rank prints the iteration lines (Megatron-LM's
``print_rank_last``).  The fixture's clock is virtual, so the files are deterministic.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent.parent / "megatron" / "fixtures" / "megatron_lm"

RUNS = {
    # 2748e7c7 (2023-11): no timestamp; a GPT-2 345M-like run on 8 GPUs
    "megatron_lm_2023-11.log": dict(world=8, argv=(
        "--num-layers 24 --hidden-size 1024 --num-attention-heads 16 --seq-length 1024 "
        "--max-position-embeddings 1024 --micro-batch-size 4 --global-batch-size 32 "
        "--train-iters 30 --log-interval 10 --log-throughput --bf16 "
        "--fake-seconds-per-iteration 0.21 --fixture-log-format 2023")),
    # f427c6f0 (2024-03): [%Y-%m-%d %H:%M:%S]; the README's 1.7B H100 row's shape, 48 GPUs
    "megatron_lm_2024-03.log": dict(world=48, argv=(
        "--num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 4096 "
        "--max-position-embeddings 4096 --micro-batch-size 4 --global-batch-size 192 "
        "--train-iters 20 --log-interval 5 --log-throughput --bf16 "
        "--fake-seconds-per-iteration 2.6 --fixture-log-format 2024")),
    # 6cf285b2 (2026-01) / d98e8a64: microseconds, iteration 1 logged with start-up time;
    # GQA, SwiGLU, MoE after a dense first layer, MTP, batch ramp-up, checkpoints
    "megatron_lm_2026.log": dict(world=8, save=True, argv=(
        "--num-layers 8 --hidden-size 1024 --num-attention-heads 16 --group-query-attention "
        "--num-query-groups 4 --swiglu --ffn-hidden-size 2816 --seq-length 2048 "
        "--position-embedding-type rope --normalization RMSNorm --disable-bias-linear "
        "--untie-embeddings-and-output-weights --num-experts 8 --moe-router-topk 2 "
        "--moe-layer-freq ([0]*1+[1]*7) --moe-ffn-hidden-size 704 --mtp-num-layers 1 "
        "--micro-batch-size 2 --global-batch-size 64 --rampup-batch-size 16 16 320 "
        "--train-iters 24 --log-interval 4 --log-throughput --bf16 --vocab-size 128000 "
        "--fake-seconds-per-iteration 0.35 --fake-startup-seconds 41.5 --save-interval 12 "
        "--fixture-log-format 2026")),
}


def run_rank(argv, rank, world, workdir, save=False):
    """One rank's stdout; checkpoints (progress.txt) go to ``workdir/checkpoints``."""
    env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), PYTHONPATH=str(FIXTURE))
    if save:
        argv = argv + " --save checkpoints"  # relative: the dump shows the same path every time
    code = "import sys; from megatron.training import pretrain; pretrain(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *argv.split()], env=env, check=True,
                          capture_output=True, text=True, cwd=workdir).stdout


def main(out=HERE):
    out = Path(out)
    for name, run in RUNS.items():
        with tempfile.TemporaryDirectory() as workdir:
            save = run.get("save", False)
            first = run_rank(run["argv"], 0, run["world"], workdir, save).splitlines()
            last = run_rank(run["argv"], run["world"] - 1, run["world"], workdir, save).splitlines()
            # rank 0's closing line comes after the last rank's iteration lines
            ranked = [(0, line) for line in first[:-1]] + [(run["world"] - 1, line) for line in last]
            ranked.append((0, first[-1]))
            (out / name).write_text("".join(f"{line}\n" for _, line in ranked))
            if name == "megatron_lm_2026.log":
                # srun -l style: every line prefixed with its rank
                (out / "megatron_lm_2026_rank_prefix.log").write_text(
                    "".join(f"{rank}: {line}\n" for rank, line in ranked))
            if save:
                shutil.copy(Path(workdir) / "checkpoints" / "progress.txt", out / "progress.txt")


if __name__ == "__main__":
    main(*sys.argv[1:])
