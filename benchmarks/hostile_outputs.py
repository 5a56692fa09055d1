"""Hostile-input campaign for issue 23 items 1, 2, 3, 4 and 8: count what happens.

    PYTHONPATH=src python benchmarks/hostile_outputs.py [--seed 23] [--scale 1] [--hook]
                                                        [--family TEXT]

Each input is judged by an oracle written here:
- ``ok``: exit 0 and the result is right (a CSV with one row per interval; a damaged
  TensorBoard file read up to the damage with a warning giving the records read; …);
- ``clean error``: exit 2 with exactly one ``megatron-flops: error:`` line (or the
  documented exit 1 of a gate that found a regression);
- ``traceback``: an exception escaped, or "Traceback" on stderr;
- ``silent wrong``: exit 0/1 on input that must be refused, a damaged file read without a
  warning, a wrong count;
- ``data lost``: a previous output changed or a temporary file left behind by a run
  that failed.

Families: relog failing over existing outputs (csv / plot / TensorBoard folder), relog
under a full disk (RLIMIT_FSIZE, in a subprocess), compare with corrupted relog --json
records, damaged TensorBoard files, --moe-layer-freq expressions, over-long lines;
``--hook`` adds the counting mode with a FLOP formula that raises (fixture training runs).
"""

import argparse
import collections
import contextlib
import io
import json
import math
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FLAGS = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "8",
         "--seq-length", "32", "--padded-vocab-size", "1024", "--world-size", "1"]
OUTCOMES = ("ok", "clean error", "traceback", "silent wrong", "data lost")


def bigscience_line(i, seconds=1.0):
    return (f" iteration {10 * i:8d}/{100000:8d} | consumed samples: {80 * i:12d} | consumed "
            f"tokens: {2560 * i:12d} | elapsed time per iteration (s): {seconds:.2f} | learning "
            f"rate: 6.000E-05 | global batch size:     8 | lm loss: 5.432100E+00 | grad norm: "
            f"0.987 | number of skipped iterations:   0 | number of nan iterations:   0 | "
            f"samples per second: {8 / seconds:.3f} | TFLOPs: 1.00 |")


def call(argv):
    """(exit code, stdout, stderr, escaped exception or None) of the dispatcher in-process."""
    from megatron_flops.commands import main
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except BaseException as error:   # noqa: BLE001 - the point is to see it
            code, escaped = None, error
    return code, out.getvalue(), err.getvalue(), escaped


def judge_error(code, err, escaped):
    if escaped is not None or "Traceback" in err:
        return "traceback"
    errors = [line for line in err.splitlines() if line.startswith("megatron-flops: error:")]
    return "clean error" if code == 2 and len(errors) == 1 else "silent wrong"


def leftovers(folder):
    return [n for n in os.listdir(folder) if "megatron-flops-tmp" in n]


def relog_failing(rng, folder):
    """A failing relog over an existing output: exit 2, the output as it was."""
    kind = rng.choice(["empty", "garbage", "missing flag", "unparsed", "plot is a folder"])
    output = rng.choice(["--csv", "--plot", "--write-tensorboard"])
    log = os.path.join(folder, "run.log")
    lines = [bigscience_line(i) for i in range(1, rng.randint(2, 50))]
    text = {"empty": "", "garbage": "".join(chr(rng.randint(32, 126)) for _ in range(500)),
            "unparsed": " iteration x/ y | consumed samples: z |\n"}.get(kind, "\n".join(lines))
    with open(log, "w") as stream:
        stream.write(text)
    flags = list(FLAGS) if kind != "missing flag" else ["--num-layers", "2"]
    previous = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
    target = os.path.join(folder, {"--csv": "out.csv", "--plot": "out.png",
                                   "--write-tensorboard": "tb"}[output])
    if output == "--write-tensorboard":
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, "events.out.tfevents.1.previous"), "wb") as stream:
            stream.write(previous)
        flags.append("--append")
        snapshot = lambda: {n: open(os.path.join(target, n), "rb").read()  # noqa: E731
                            for n in sorted(os.listdir(target))}
    else:
        with open(target, "wb") as stream:
            stream.write(previous)
        snapshot = lambda: open(target, "rb").read()  # noqa: E731
    extra = []
    if kind == "plot is a folder":
        os.makedirs(os.path.join(folder, "p.png"), exist_ok=True)
        extra = ["--plot", os.path.join(folder, "p.png")]
        if output == "--plot":
            output, target = "--csv", os.path.join(folder, "out.csv")
            with open(target, "wb") as stream:
                stream.write(previous)
            snapshot = lambda: open(target, "rb").read()  # noqa: E731
    before = snapshot()
    code, _, err, escaped = call(["relog", log, *flags, output, target, *extra])
    if snapshot() != before or leftovers(folder) or leftovers(os.path.dirname(target)):
        return "data lost"
    return judge_error(code, err, escaped)


def relog_succeeding(rng, folder):
    """A good relog over an existing CSV: exit 0, one row per interval, nothing left over."""
    count = rng.randint(1, 300)
    log = os.path.join(folder, "run.log")
    with open(log, "w") as stream:
        stream.write("\n".join(bigscience_line(i, rng.uniform(0.5, 3)) for i in
                               range(1, count + 1)) + "\n")
    target = os.path.join(folder, "out.csv")
    with open(target, "w") as stream:
        stream.write("previous\n" * rng.randint(0, 1000))
    code, out, err, escaped = call(["relog", log, *FLAGS, "--csv", target])
    if escaped is not None or "Traceback" in err:
        return "traceback"
    rows = open(target).read().splitlines()
    if code != 0 or len(rows) != count + 1 or leftovers(folder):
        return "silent wrong"
    return "ok"


def _limit(size):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return apply


def relog_full_disk(rng, folder, env):
    """A full disk at a random size: exit 2 with the old output, or exit 0 with the whole one."""
    output = rng.choice(["--csv", "--plot", "--write-tensorboard"])
    log = os.path.join(folder, "run.log")
    count = rng.randint(10, 2000)
    with open(log, "w") as stream:
        stream.write("\n".join(bigscience_line(i) for i in range(1, count + 1)) + "\n")
    target = os.path.join(folder, f"out-{rng.getrandbits(32)}")
    if output == "--plot":
        target += ".png"
    if output != "--write-tensorboard":
        with open(target, "wb") as stream:
            stream.write(b"previous output\n")
    size = rng.randint(500, 400_000)
    done = subprocess.run([sys.executable, "-m", "megatron_flops", "relog", log, *FLAGS,
                           output, target], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, env=env, preexec_fn=_limit(size), timeout=300)
    if "Traceback" in done.stderr or "Exception" in done.stderr:
        return "traceback"
    if leftovers(folder):
        return "data lost"
    if done.returncode == 2:
        if output == "--write-tensorboard":
            return "clean error" if not os.path.exists(target) else "data lost"
        if open(target, "rb").read() != b"previous output\n":
            return "data lost"
        return "clean error" if len(done.stderr.splitlines()) == 1 else "silent wrong"
    if done.returncode != 0:
        return "silent wrong"
    if output == "--csv":
        return "ok" if len(open(target).read().splitlines()) == count + 1 else "silent wrong"
    return "ok"


def record(i, rng):
    t = rng.uniform(50, 150)
    return {"iteration": i, "tflops_per_gpu": {"model": t, "hardware": t},
            "tokens_per_second_per_gpu": rng.uniform(100, 1000), "mfu": t / 300, "hfu": t / 300}


CORRUPTIONS = [math.nan, math.inf, -math.inf, "12", [1], {"a": 1}, True, None]


def compare_corrupted(rng, folder):
    """A corrupted candidate: exit 2 naming the line (never 0 or 1)."""
    records = [record(i, rng) for i in range(1, rng.randint(3, 30))]
    where = rng.randrange(len(records))
    lines = [json.dumps(r) for r in records]
    how = rng.choice(["metric", "line", "nested", "nan mfu"])
    if how == "metric":
        key = rng.choice(["model", "hardware", "tokens_per_second_per_gpu", "mfu", "hfu"])
        value = rng.choice([c for c in CORRUPTIONS if c is not None])
        if key in ("model", "hardware"):
            records[where]["tflops_per_gpu"][key] = value
        else:
            records[where][key] = value
        lines[where] = json.dumps(records[where])
    elif how == "line":
        lines[where] = rng.choice(['"text"', "[1, 2]", "3", "null", '{"iteration": 1}',
                                   '{"iteration": 1, "tflops_per_gpu": "x"}',
                                   '{"summary": "x"}', "{" * rng.randint(1, 100_000)])
    elif how == "nested":
        depth = rng.randint(1_000, 200_000)
        lines[where] = '{"iteration": 1, "tflops_per_gpu": ' + "[" * depth + "]" * depth + "}"
    else:
        for r in records:
            r["mfu"] = math.nan
        lines = [json.dumps(r) for r in records]
    if where == 0 and not lines[0].startswith("{"):
        lines.insert(0, json.dumps(record(0, rng)))
    base = os.path.join(folder, "base.jsonl")
    candidate = os.path.join(folder, "candidate.jsonl")
    with open(base, "w") as stream:
        stream.write("\n".join(json.dumps(record(i, rng)) for i in range(1, 10)) + "\n")
    with open(candidate, "w") as stream:
        stream.write("\n".join(lines) + "\n")
    argv = ["compare", base, candidate] + (["--min-mfu", "1%"] if rng.random() < 0.5 else [])
    code, _, err, escaped = call(argv)
    return judge_error(code, err, escaped)


def tensorboard_damaged(rng, folder):
    """A flipped byte or a cut: exit 0 with a warning and the right interval count, or exit 2
    (no interval before the damage) with the damage named."""
    from megatron_flops.logs.tensorboard import EventWriter
    run = os.path.join(folder, f"tb{rng.getrandbits(32)}")
    writer = EventWriter(run)
    order = []
    steps = rng.randint(4, 60)
    for step in range(1, steps + 1):
        writer.add_scalar("steps-vs-samples/y=samples,x=steps", 32 * step, step)
        order.append("samples")
        if step % 2 == 0:
            writer.add_scalar("iteration-time/iteration-time", 2.0, step)
            order.append("time")
    writer.close()
    data = bytearray(open(writer.name, "rb").read())
    spans, offset = [], 0
    while offset < len(data):
        length = struct.unpack("<Q", bytes(data[offset:offset + 8]))[0]
        spans.append((offset, offset + 16 + length))
        offset += 16 + length
    position = rng.randrange(len(data))
    if rng.random() < 0.5:
        data[position] ^= 1 << rng.randrange(8)
        damaged = next(i for i, (a, b) in enumerate(spans) if a <= position < b)
    else:
        data = data[:position]
        ends = {b for _, b in spans} | {0}
        damaged = None if position in ends else sum(1 for _, b in spans if b <= position)
    with open(writer.name, "wb") as stream:
        stream.write(data)
    code, out, err, escaped = call(["relog", run, *FLAGS, "--seq-length", "1024", "--json"])
    if escaped is not None or "Traceback" in err:
        return "traceback"
    read_records = len(spans) if damaged is None else damaged   # the file-version one first
    intervals = sum(1 for tag in order[:max(read_records - 1, 0)] if tag == "time")
    if damaged is None:
        return "ok" if code in (0, 2) and "is damaged" not in err else "silent wrong"
    if intervals == 0:
        return "clean error" if code == 2 and "is damaged" in err else "silent wrong"
    read = len([line for line in out.splitlines() if line.strip()])
    right = (code == 0 and read == intervals and f"read {damaged:,} records" in err)
    return "ok" if right else "silent wrong"


ALPHABET = "[]()+*,01 23"


def moe_layer_freq(rng, folder):
    """Random expressions and long chains: exit 0 or one clean line, never a traceback."""
    if rng.random() < 0.5:
        term = rng.choice(["[0]", "[1]", "[1,0]", "([1]*2)"])
        text = "+".join([term] * rng.randint(1, 100_000))
    else:
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 200)))
    code, _, err, escaped = call(["estimate", "--num-layers", "4", "--hidden-size", "64",
                                  "--num-attention-heads", "8", "--seq-length", "32",
                                  "--num-experts", "4", "--moe-layer-freq", text])
    if escaped is not None or "Traceback" in err:
        return "traceback"
    return "ok" if code == 0 else judge_error(code, err, escaped)


def long_lines(rng, folder):
    """A log with newline-free stretches: the good lines' intervals, a warning, bounded."""
    good = rng.randint(0, 5)
    log = os.path.join(folder, "long.log")
    with open(log, "w") as stream:
        for i in range(1, good + 1):
            stream.write(bigscience_line(i) + "\n")
        stream.write(rng.choice(["x", "iteration ", "|"]) * rng.randint(110_000, 1_000_000))
        stream.write("\n" if rng.random() < 0.5 else "")
    code, out, err, escaped = call(["relog", log, *FLAGS])
    if escaped is not None or "Traceback" in err:
        return "traceback"
    if good == 0:
        return judge_error(code, err, escaped)
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    if code == 0 and len(rows) == good and "longer than 1,048,576" in out:
        return "ok"
    if code == 0 and len(rows) == good:   # the long line was under the bound
        return "ok"
    return "silent wrong"


def counting_mode(rng, folder):
    """The counting mode with a FLOP formula that raises: the run completes."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src")] + sys.path))
    op = rng.choice(["bmm", "baddbmm", "addmm", "mm"])
    error = rng.choice(["RuntimeError", "ValueError", "ZeroDivisionError", "KeyError"])
    iteration = rng.randint(1, 3)
    script = os.path.join(folder, "broken_formula.py")
    with open(script, "w") as stream:
        stream.write(
            "import runpy, sys, torch\nfrom torch.utils import flop_counter\n"
            f"def broken(*a, **k):\n    raise {error}('broken formula')\n"
            f"flop_counter.flop_registry[torch.ops.aten.{op}] = broken\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_module('megatron_flops.run', run_name='__main__')\n")
    fixture = os.path.join(ROOT, "tests", "megatron", "fixtures", "bigscience_fork",
                           "pretrain_gpt.py")
    done = subprocess.run(
        [sys.executable, script, "megatron_flops.run", f"--count-flops={iteration}", fixture,
         "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
         "--vocab-size", "1000", "--seq-length", "32", "--micro-batch-size", "2",
         "--train-iters", "4", "--log-interval", "2", "--fake-seconds-per-iteration", "1e-6"],
        capture_output=True, text=True, env=env, timeout=600)
    if "Traceback" in done.stderr:
        return "traceback"
    lines = [line for line in done.stdout.splitlines() if line.startswith(" iteration ")]
    failed = done.stdout.count("counting mode failed")
    return "ok" if done.returncode == 0 and len(lines) == 2 and failed == 1 else "silent wrong"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--hook", action="store_true", help="add the counting-mode family")
    parser.add_argument("--family", default="", help="run only the families whose name has "
                        "this text")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src")] + sys.path))
    families = [("relog failing over an output", relog_failing, 200),
                ("relog succeeding over a CSV", relog_succeeding, 60),
                ("relog under a full disk", lambda r, f: relog_full_disk(r, f, env), 30),
                ("compare, corrupted records", compare_corrupted, 300),
                ("damaged TensorBoard file", tensorboard_damaged, 150),
                ("--moe-layer-freq expressions", moe_layer_freq, 300),
                ("over-long lines", long_lines, 40)]
    if args.hook:
        families.append(("counting mode, raising formula", counting_mode, 8))
    totals = collections.Counter()
    print(f"{'family':34} {'inputs':>6} " + " ".join(f"{o:>12}" for o in OUTCOMES))
    for name, family, count in families:
        if args.family not in name:
            continue
        tally = collections.Counter()
        for _ in range(max(1, int(count * args.scale))):
            with tempfile.TemporaryDirectory() as folder:
                tally[family(rng, folder)] += 1
        totals.update(tally)
        print(f"{name:34} {sum(tally.values()):>6} "
              + " ".join(f"{tally[o]:>12}" for o in OUTCOMES), flush=True)
    print(f"{'total':34} {sum(totals.values()):>6} "
          + " ".join(f"{totals[o]:>12}" for o in OUTCOMES))
    return 0 if all(totals[o] == 0 for o in ("traceback", "silent wrong", "data lost")) else 1


if __name__ == "__main__":
    sys.exit(main())
