"""``relog`` against the speed of reading: relog, a user's plain regex script and the floor.

Generates a console log (default 1 GiB, in a temporary folder, deleted afterwards) from the
real line formats kept in ``tests/data/logs/``:

- the arguments dump and the ``> padded vocab`` line of
  ``experiments__gpt2-meg-ds-3d__meg_ds_3d_gpt2_perf_n16-ds-on.out`` (bigscience-workshop/
  bigscience @ 9e64edec, experiments/gpt2-meg-ds-3d/meg_ds_3d_gpt2_perf_n16-ds-on.out:
  64 layers, hidden 8192, 64 GPUs, log interval 1);
- iteration lines in the BLOOM-176B format (``[default7]:`` prefix, seconds, consumed tokens,
  samples per second, TFLOPs) quoted in ``bigscience_quoted_lines.jsonl`` from
  train/tr11-176B-ml/chronicles.md line 45 (same repository and commit), every number
  replaced by this run's (iteration, consumed samples and tokens, time, samples/s);
- a restart halfway: the arguments dump printed again and the iterations going back 1,000.

Then it times, interleaved round by round (``--rounds``), each in a child process (wall and
CPU seconds, peak resident memory from ``wait4``):

- ``floor``: a Python loop that reads the file and splits every line on ``|``;
- ``regex``: a user's own script: one regular expression per iteration line, a closed formula
  (the bigscience fork's TFLOPs formula for this model), one printed line per interval;
- ``table``: ``megatron-flops relog LOG`` (stdout to a file);
- ``json``: ``megatron-flops relog LOG --json``.

and prints each mode's time as a ratio to ``regex`` and to ``floor`` (wall and CPU).
``--old SRC`` adds ``table@old`` and ``json@old``: the same runs with another checkout's
``src`` (the code before a change), interleaved in the same rounds on the same log.  The log
is written by a child process, so that the parent's memory does not show in the children's
peak (Linux's ``ru_maxrss`` starts from the forking process's).

    python benchmarks/relog_speed.py                    # 1 GiB, one round
    mkdir -p /tmp/old && git archive 670dca7 src | tar -x -C /tmp/old
    python benchmarks/relog_speed.py --size-mb 256 --rounds 2 --old /tmp/old/src
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "tests", "data", "logs")
DUMP_LOG = "experiments__gpt2-meg-ds-3d__meg_ds_3d_gpt2_perf_n16-ds-on.out"
QUOTED = ("train/tr11-176B-ml/chronicles.md", 45)

FLOOR = """
import sys
n = 0
with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
    for line in f:
        n += len(line.split("|"))
print(n)
"""

# what a user writes in twenty lines: the fields by one regular expression, the bigscience
# formula (72 b s l h^2 (1 + s/6h + V/12hl), checkpoint activations: ×4/3 of 3 passes)
REGEX = r"""
import re, sys
L, H, V, WORLD = 64, 8192, 50688, 64
line_re = re.compile(r"iteration\s+(\d+)/\s*\d+ \| consumed samples:\s+(\d+) .*?"
                     r"elapsed time per iteration \(s\): ([\d.]+) .*?global batch size:\s+(\d+)"
                     r".*?TFLOPs: ([\d.]+)")
out = sys.stdout
with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
    for line in f:
        if "iteration" not in line:
            continue
        m = line_re.search(line)
        if m is None:
            continue
        it, _, t, b, logged = m.groups()
        b, t, s = int(b), float(t), 1024
        flops = 96 * b * s * L * H * H * (1 + s / (6 * H) + V / (16 * L * H))
        tflops = flops / (t * WORLD * 1e12)
        out.write(f"{it} {tflops:.2f} {float(logged) / tflops - 1:+.3f}\n")
"""


def _dump_lines():
    """The arguments dump and the padded-vocab line of the test log, as they are."""
    lines = []
    with open(os.path.join(DATA, DUMP_LOG), encoding="utf-8") as f:
        for line in f:
            if "iteration" in line and "|" in line:
                break
            lines.append(line)
    return "".join(lines)


def _iteration_template():
    """The quoted BLOOM line with its numbers as fields."""
    with open(os.path.join(DATA, "bigscience_quoted_lines.jsonl"), encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            if (entry["path"], entry["line"]) == QUOTED:
                text = entry["text"]
                break
        else:
            raise SystemExit(f"{QUOTED} not in bigscience_quoted_lines.jsonl")
    numbers = [("iteration    12695/", "iteration {it:8d}/"),
               ("consumed samples:      9841584", "consumed samples: {samples:12d}"),
               ("consumed tokens:  20155564032", "consumed tokens: {tokens:12d}"),
               ("(s): 105.22", "(s): {seconds:.2f}"),
               ("global batch size:  2048", "global batch size: {batch:5d}"),
               ("samples per second: 19.463", "samples per second: {sps:.3f}"),
               ("TFLOPs: 149.02", "TFLOPs: {tflops:.2f}")]
    text = text.replace("{", "{{").replace("}", "}}")
    for old, new in numbers:
        if old not in text:
            raise SystemExit(f"{old!r} not in the quoted line")
        text = text.replace(old, new)
    return text + "\n"


def generate(path, size_bytes):
    """Write the log (the dump, iteration lines, a restart halfway); return (lines, bytes)."""
    dump = _dump_lines()
    template = _iteration_template()
    batch, seq = 1024, 1024
    line_bytes = len(template.format(it=1, samples=1, tokens=1, seconds=1.0, batch=batch,
                                     sps=1.0, tflops=1.0).encode())
    total_iterations = size_bytes // line_bytes + 1
    restart_at = total_iterations // 2
    lines = bytes_written = 0
    with open(path, "w", encoding="utf-8", buffering=1 << 22) as out:
        def write(text):
            nonlocal lines, bytes_written
            out.write(text)
            lines += text.count("\n")
            bytes_written += len(text.encode("utf-8"))

        write(dump)
        chunk = []
        it = 0
        written_iterations = 0
        while bytes_written < size_bytes or written_iterations < 2:
            it += 1
            written_iterations += 1
            seconds = 130.0 + (it % 97) * 0.13
            chunk.append(template.format(it=it, samples=it * batch, tokens=it * batch * seq,
                                         seconds=seconds, batch=batch, sps=batch / seconds,
                                         tflops=150.0 + (it % 7)))
            if written_iterations == restart_at:   # a resumed run: the dump again, 1000 back
                write("".join(chunk))
                chunk = []
                write(dump)
                it = max(0, it - 1000)
            if len(chunk) >= 4096:
                write("".join(chunk))
                chunk = []
        write("".join(chunk))
    return lines, bytes_written


def run_child(argv, env):
    """(wall seconds, CPU seconds, peak RSS MiB, output bytes) of a child process."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            stderr.seek(0)
            raise SystemExit(f"{argv[:5]} failed:\n{stderr.read().decode()[-2000:]}")
        size = stdout.seek(0, os.SEEK_END)
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, size


def command(mode, path):
    mode = mode.split("@")[0]
    if mode == "floor":
        return [sys.executable, "-c", FLOOR, path]
    if mode == "regex":
        return [sys.executable, "-c", REGEX, path]
    argv = [sys.executable, "-m", "megatron_flops", "relog", path, "--gpu", "a100"]
    return argv + (["--json"] if mode == "json" else [])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1024.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", default="floor,regex,table,json")
    parser.add_argument("--src", default=os.path.join(ROOT, "src"),
                        help="the megatron_flops source the relog children run")
    parser.add_argument("--old", help="another checkout's src: adds table@old and json@old")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--generate", nargs=2, metavar=("PATH", "BYTES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        lines, size = generate(args.generate[0], int(args.generate[1]))
        print(lines, size)
        return
    modes = args.modes.split(",")
    if args.old:
        modes += [mode + "@old" for mode in ("table", "json") if mode in modes]
    envs = {"": {**os.environ, "PYTHONPATH": os.path.abspath(args.src)}}
    if args.old:
        envs["old"] = {**os.environ, "PYTHONPATH": os.path.abspath(args.old)}
    times = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="relog-speed-") as folder:
        path = os.path.join(folder, "bloom-format.log")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--generate", path,
                               str(int(args.size_mb * 2**20))], check=True,
                              capture_output=True, text=True)
        lines, size = map(int, done.stdout.split())
        print(f"generated {size / 2**20:.0f} MiB, {lines:,} lines in "
              f"{time.perf_counter() - start:.1f} s; relog from {envs['']['PYTHONPATH']}"
              + (f", old from {envs['old']['PYTHONPATH']}" if args.old else ""), flush=True)
        for round_ in range(args.rounds):
            for mode in modes:
                env = envs[mode.partition("@")[2]]
                wall, cpu, rss, out = run_child(command(mode, path), env)
                times[mode].append((wall, cpu, rss))
                print(f"  round {round_ + 1} {mode:<9} {wall:7.1f} s wall {cpu:7.1f} s CPU "
                      f"{lines / wall:11,.0f} lines/s  peak RSS {rss:6.1f} MiB  "
                      f"output {out / 2**20:.1f} MiB", flush=True)
    best = {mode: min(runs) for mode, runs in times.items()}
    print(f"\nbest of {args.rounds} round(s) by wall time; ratios to regex and floor")
    print("mode         wall s    CPU s  peak RSS MiB  ×regex wall  ×regex CPU  "
          "×floor wall  ×floor CPU")
    for mode in modes:
        wall, cpu, rss = best[mode]
        ratios = []
        for base in ("regex", "floor"):
            for position, value in ((0, wall), (1, cpu)):
                ratios.append(value / best[base][position] if base in best else float("nan"))
        print(f"{mode:<9} {wall:9.1f} {cpu:8.1f} {rss:13.1f} {ratios[0]:12.2f} {ratios[1]:11.2f}"
              f" {ratios[2]:12.2f} {ratios[3]:11.2f}")


if __name__ == "__main__":
    main()
