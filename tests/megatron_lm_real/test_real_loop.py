"""NVIDIA Megatron-LM's own training loop, a tiny GPT on mock data, on one CPU process:
plain, and hooked with ``--count-flops=2 --strict`` (issue 19).

For each configuration the same ``pretrain_gpt.py`` command runs twice (:mod:`launch`):

* **plain** — Megatron-LM alone (only the CPU stand-ins of :mod:`cpu_stand_ins`);
* **hooked** — the megatron-flops hook installed before Megatron-LM is imported, with the
  counting mode on iteration 2 and ``--strict`` (``MEGATRON_FLOPS_COUNT_FLOPS=2``,
  ``MEGATRON_FLOPS_STRICT=1``), and outside everything ``FlopCounterMode`` around each real
  ``train_step`` (the truth).

Checked: each log interval's FLOPs by the hook (hardware: what ran, recompute included) equal
the FLOPs FlopCounterMode counted in that interval's real steps, to the FLOP; the counting
mode counted iteration 2 (the loop's own number: Megatron-LM never updates
``args.iteration``), every component equal to the formula per phase, nothing unattributed,
exit status 0 — and the table printed after the start summary, every line prefixed; a flag-free
``relog`` of the plain log gives the hook's FLOPs per iteration; the loss of every logged
iteration is the same hooked and plain.  A deliberately wrong model (one extra h×h matmul in
``linear_proj``) makes ``--strict`` end the run with exit status 1 naming
``attention_output``.

``MEGATRON_LM_REAL_TABLE=FILE`` appends one line per configuration (the issue's table).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parent.parent / "src"

TINY = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 "
        "--max-position-embeddings 32 --micro-batch-size 2 --global-batch-size 4 "
        "--train-iters 6 --log-interval 2 --log-throughput --lr 1e-3 --min-lr 1e-4 "
        "--lr-decay-style constant --eval-interval 1000 --eval-iters 0 --seed 1234 "
        "--attention-dropout 0 --hidden-dropout 0 --vocab-size 4095")
# (4095 + the NullTokenizer's end-of-document token: 4096; the mock data of Megatron-LM
# ≤ core_v0.15 emits token ids 1 … 4095 whatever the vocabulary)
# Megatron-LM on a CPU: no Transformer Engine, apex, CUDA fusions or NCCL
CPU = ("--transformer-impl local --distributed-backend gloo --mock-data "
       "--tokenizer-type NullTokenizer --no-gradient-accumulation-fusion "
       "--no-masked-softmax-fusion --no-bias-gelu-fusion --no-bias-dropout-fusion "
       "--no-persist-layer-norm --no-rope-fusion")
MOE = "--num-experts 4 --disable-bias-linear --moe-aux-loss-coeff 0"

CONFIGURATIONS = {
    "base": "",
    "swiglu": "--swiglu --ffn-hidden-size 96",
    "gqa 2 groups": "--group-query-attention --num-query-groups 2",
    "untied": "--untie-embeddings-and-output-weights",
    "full recompute (uniform 1)": ("--recompute-granularity full --recompute-method uniform "
                                   "--recompute-num-layers 1"),
    "selective recompute": "--recompute-granularity selective",
    # top-1 needs the pre-softmax router; MoE needs bias-free linears at TP = EP = 1
    "moe top-1": f"{MOE} --moe-router-topk 1 --moe-router-pre-softmax",
    "moe top-2": f"{MOE} --moe-router-topk 2",
    "mtp 1 layer": "--mtp-num-layers 1 --position-embedding-type rope",  # (MTP asserts it)
    "mla": ("--multi-latent-attention --q-lora-rank 32 --kv-lora-rank 24 --qk-head-dim 16 "
            "--qk-pos-emb-head-dim 8 --v-head-dim 12 --position-embedding-type rope"),
}
ITERATIONS, LOG_INTERVAL, COUNTED = 6, 2, 2
LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \|")
LOSS = re.compile(r"lm loss: (\S+) \|")


def release_of(checkout: Path) -> str:
    if os.environ.get("MEGATRON_LM_RELEASE"):  # a label for an archive without .git
        return os.environ["MEGATRON_LM_RELEASE"]
    try:
        out = subprocess.run(["git", "-C", str(checkout), "describe", "--tags", "--always"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return checkout.name


def run(checkout: Path, mode: str, extra: str, tmp_path: Path, port: int, env_extra=None,
        flags: str = CPU, stand_ins: bool = True):
    result = tmp_path / f"{mode}.json"
    # the checkout first (before an installed megatron-core), then ours, then the caller's
    # (e.g. a folder with the packages an older release imports: six, regex, yaml)
    path = [str(checkout), str(SRC)] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
               LOCAL_RANK="0", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("MEGATRON_FLOPS_COUNT_FLOPS", "MEGATRON_FLOPS_STRICT", "MEGATRON_FLOPS_DISABLE"):
        env.pop(name, None)
    if mode == "hooked":
        env.update(MEGATRON_FLOPS_COUNT_FLOPS=str(COUNTED), MEGATRON_FLOPS_STRICT="1")
    if not stand_ins:
        env["MEGATRON_LM_REAL_STAND_INS"] = "0"
    env.update(env_extra or {})
    argv = [sys.executable, str(HERE / "launch.py"), mode, str(result),
            str(checkout / "pretrain_gpt.py"), *f"{TINY} {flags} {extra}".split()]
    done = subprocess.run(argv, cwd=str(checkout), env=env, capture_output=True, text=True,
                          timeout=900)
    (tmp_path / f"{mode}.log").write_text(done.stdout)
    (tmp_path / f"{mode}.err").write_text(done.stderr)
    data = json.loads(result.read_text()) if result.exists() else None
    return done, data


def losses(log: str) -> dict:
    out = {}
    for line in log.splitlines():
        found, loss = LINE.search(line), LOSS.search(line)
        if found and loss:
            out[int(found.group(1))] = loss.group(1)
    return out


def relog_flops_per_iteration(log_path: Path) -> dict:
    """A flag-free relog of the log: hardware FLOPs per iteration of each interval, by the
    interval's last iteration."""
    sys.path.insert(0, str(SRC))
    done = subprocess.run([sys.executable, "-m", "megatron_flops", "relog", str(log_path),
                           "--json"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(SRC)))
    assert done.returncode == 0, done.stderr
    out = {}
    for line in done.stdout.splitlines():
        if line.strip():
            row = json.loads(line)
            flops = row["tflops_per_gpu"]["hardware"] * 1e12 * row["seconds_per_iteration"]
            out[row["iteration"]] = round(flops)
    return out


def table_line(release, name, hook, truth, count, relog, loss_equal) -> None:
    path = os.environ.get("MEGATRON_LM_REAL_TABLE")
    if path:
        with open(path, "a") as out:
            out.write(f"| {release} | {name} | {hook} | {truth} | {count} | {relog} | "
                      f"{loss_equal} |\n")


def check_configuration(checkout: Path, name: str, extra: str, tmp_path: Path, port: int,
                        flags: str = CPU, stand_ins: bool = True) -> None:
    """Plain and hooked runs of one configuration and every check of the module docstring
    (also run by benchmarks/megatron_lm_gpu_check.py on a GPU, without stand-ins)."""
    plain, _ = run(checkout, "plain", extra, tmp_path, port, flags=flags, stand_ins=stand_ins)
    assert plain.returncode == 0, plain.stderr[-3000:]
    hooked, data = run(checkout, "hooked", extra, tmp_path, port, flags=flags,
                       stand_ins=stand_ins)
    release = release_of(checkout)
    assert data is not None, hooked.stderr[-3000:]
    assert data["hook_failure"] is None and data["per_iteration"], data
    # the hook's FLOPs = FlopCounterMode around the real steps, interval by interval
    truth = {int(k): v for k, v in data["truth"].items()}
    assert sorted(truth) == list(range(1, ITERATIONS + 1))
    assert data["reports"], hooked.stdout[-3000:]
    for report in data["reports"]:
        last = report["iteration"]
        steps = range(last - report["iterations"] + 1, last + 1)
        assert report["hardware_flops"] == sum(truth[i] for i in steps), (report, truth)
    # --count-flops=2 --strict: iteration 2 counted, every component exact, exit status 0
    count = data["count"]
    assert data["counted_iteration"] == COUNTED, data
    assert count is not None and data["count_failure"] is None, data
    assert count["unattributed"] == 0 and not count["uncountable"] and not count["problems"]
    assert all(row["exact"] for row in count["components"]), count
    assert count["counted_total"] == count["formula_total"] == truth[COUNTED]
    assert hooked.returncode == 0, hooked.stderr[-3000:]
    lines = hooked.stdout.splitlines()
    summary = next(i for i, line in enumerate(lines) if line.startswith("megatron-flops: hooked"))
    table = next(i for i, line in enumerate(lines)
                 if line.startswith("megatron-flops: counting mode: iteration 2 counted"))
    assert summary < table
    end = next(i for i in range(table, len(lines)) if "match: every component" in lines[i])
    assert all(line.startswith("megatron-flops:") for line in lines[table:end + 1])
    # a flag-free relog of the plain log = the hook, per iteration of each interval
    relogged = relog_flops_per_iteration(tmp_path / "plain.log")
    per_iteration = {r["iteration"]: r["hardware_flops"] // r["iterations"]
                     for r in data["reports"]}
    for iteration, flops in per_iteration.items():
        assert relogged.get(iteration) == flops, (iteration, relogged, per_iteration)
    # the hook changes no number of the training itself
    plain_losses, hooked_losses = losses(plain.stdout), losses(hooked.stdout)
    assert plain_losses and plain_losses == hooked_losses
    table_line(release, name, per_iteration[ITERATIONS], truth[ITERATIONS],
               f"{count['counted_total']} = formula, strict exit 0",
               relogged.get(ITERATIONS), "yes")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_real_megatron_lm_loop(megatron_lm_checkout, tmp_path, name):
    check_configuration(megatron_lm_checkout, name, CONFIGURATIONS[name], tmp_path,
                        29600 + list(CONFIGURATIONS).index(name))


@pytest.mark.slow
def test_a_wrong_model_is_caught_by_strict_naming_the_component(megatron_lm_checkout,
                                                                 tmp_path):
    """One extra [T × h]·[h × h] matmul in every ``linear_proj`` (launch.py's
    ``MEGATRON_LM_REAL_EXTRA_MATMUL``): the counting mode ends the run with exit status 1 and
    names attention_output — the component, not just a total."""
    hooked, data = run(megatron_lm_checkout, "hooked", "", tmp_path, 29599,
                       {"MEGATRON_LM_REAL_EXTRA_MATMUL": "1"})
    assert hooked.returncode == 1, hooked.stderr[-3000:]
    assert "megatron-flops: MISMATCH attention_output: forward counted" in hooked.stdout
    assert [row["name"] for row in data["count"]["components"] if not row["exact"]] == \
        ["attention_output"]
    assert "ending the run with exit status 1" in hooked.stdout
    table_line(release_of(megatron_lm_checkout), "wrong model (extra matmul in linear_proj)",
               "-", "-", "strict exit 1: MISMATCH attention_output", "-", "-")
