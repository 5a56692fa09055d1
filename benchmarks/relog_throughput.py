"""Throughput and peak memory of ``megatron-flops relog`` on a generated console log.

Writes a log of the requested size (default 1 GB) in a temporary folder, in the microsoft
fork's format (or bigscience's with ``--fork bigscience``), made like a real multi-rank log:
an arguments dump, launcher prefixes, a batch-size ramp-up, curriculum sequence lengths,
timer and warning lines between the iteration lines, and some garbage, glued and truncated
lines.  Then it runs the pipeline in a child process per mode and reports lines per second
and the child's peak resident memory (``ru_maxrss`` from ``wait4``):

- ``parse``: the console parser alone (every record built, nothing computed);
- ``table``: ``megatron-flops relog LOG … > /dev/null`` (parse, recompute, the table);
- ``json``:  the same with ``--json``.

A second, 10× smaller log is run first with the same modes: peak memory must not grow with
the file size.  The log is deleted afterwards.

    python benchmarks/relog_throughput.py            # 1 GB
    python benchmarks/relog_throughput.py --size-mb 100 --modes table
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

WORLD = 64
FLAGS = ["--num-layers", "24", "--hidden-size", "2048", "--num-attention-heads", "16",
         "--num-key-value-heads", "4", "--swiglu", "--seq-length", "2048",
         "--global-batch-size", "512", "--micro-batch-size", "1", "--world-size", str(WORLD),
         "--bf16", "--gpu", "a100"]

PARSE_ONLY = """
import sys
from megatron_flops.logs.console import ParseStats, open_log, parse_console_log
stats = ParseStats()
with open_log(sys.argv[1]) as stream:
    for record in parse_console_log(stream, stats):
        pass
print(stats.lines, stats.records, stats.malformed)
"""


def iteration_line(fork, i, consumed, tokens, seconds, batch, seq):
    sps = batch / seconds
    head = (" iteration {:8d}/{:8d} | consumed samples: {:12d} | consumed tokens: {:12d} |"
            .format(i, 10_000_000, consumed, tokens))
    if fork == "bigscience":
        return (head + " elapsed time per iteration (s): {:.2f} | learning rate: {:.3E} |"
                " global batch size: {:5d} | lm loss: {:.6E} | loss scale: {:.1f} |"
                " grad norm: {:.3f} | curriculum seqlen: {:5d} |"
                " number of skipped iterations: {:3d} | number of nan iterations: {:3d} |"
                " samples per second: {:.3f} | TFLOPs: {:.2f} |").format(
            seconds, 3e-4, batch, 2.345678, 65536.0, 0.4321, seq, 0, 0, sps, 123.45)
    return (head + " elapsed time per iteration (ms): {:.1f} | learning rate: {:.3E} |"
            " global batch size: {:5d} | lm loss: {:.6E} | loss scale: {:.1f} |"
            " grad norm: {:.3f} | actual seqlen: {:5d} | number of skipped iterations: {:3d} |"
            " number of nan iterations: {:3d} | samples per second: {:.3f} |"
            " tokens per gpu per second (tgs): {:.3f} | TFLOPs: {:.2f} |").format(
        seconds * 1000.0, 3e-4, batch, 2.345678, 1.0, 0.4321, seq, 0, 0, sps,
        sps * seq / WORLD, 123.45)


def generate(path, size_bytes, fork):
    """Write the log; return (lines, bytes)."""
    lines = bytes_written = 0
    consumed = tokens = 0
    i = 0
    with open(path, "w", encoding="utf-8", buffering=1 << 22) as out:
        header = ["------------------------ arguments ------------------------"]
        for name, value in (("world_size", WORLD), ("num_layers", 24), ("hidden_size", 2048)):
            header.append(f"  {name} {'.' * (48 - len(name))} {value}")
        header.append("-------------------- end of arguments ---------------------")
        chunk = []
        for text in header:
            chunk.append(text)
        while bytes_written < size_bytes:
            i += 1
            batch = min(512, 64 + 64 * (i // 200))            # ramp-up
            seq = 2048 if i > 1000 else 256 * (1 + i // 150)  # curriculum
            consumed += batch
            tokens += batch * seq
            seconds = 1.5 + 0.001 * (i % 97)
            prefix = "[default63]:" if i % 2 else "63: "
            chunk.append(prefix + iteration_line(fork, i, consumed, tokens, seconds, batch, seq))
            if i % 4 == 0:
                chunk.append("[default12]: [2026-01-01 00:00:00,000] [INFO] [logging.py:96:"
                             "log_dist] [Rank 0] step=%d, skipped=0, lr=[0.0003], mom=[(0.9, "
                             "0.95)]" % i)
            if i % 10 == 0:
                chunk.append("time (ms) | forward-compute: 512.34 | backward-compute: "
                             "1024.56 | optimizer: 12.34")
            if i % 1000 == 0:
                line = iteration_line(fork, i, consumed, tokens, seconds, batch, seq)
                chunk.append(line[:len(line) // 3])                       # truncated
                cut = line.index("samples per second: ") + 22
                chunk.append(line[:cut] + "[default3]: WARNING glued " + line[cut:])
                chunk.append("\x00\x01 garbage ünïcödé ✓ \ufffd")
            if len(chunk) >= 4096:
                text = "\n".join(chunk) + "\n"
                out.write(text)
                bytes_written += len(text.encode("utf-8"))
                lines += len(chunk)
                chunk = []
        if chunk:
            text = "\n".join(chunk) + "\n"
            out.write(text)
            bytes_written += len(text.encode("utf-8"))
            lines += len(chunk)
    return lines, bytes_written


def run_child(argv):
    """(wall seconds, CPU seconds, peak RSS in MiB, stdout tail) of a child process."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"{argv[:4]} failed:\n{stderr.read().decode()[-2000:]}")
        stdout.seek(0, os.SEEK_END)
        size = stdout.tell()
        stdout.seek(max(0, size - 400))
        tail = stdout.read().decode(errors="replace").strip().splitlines()[-1:]
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, tail


def command(mode, path):
    if mode == "parse":
        return [sys.executable, "-c", PARSE_ONLY, path]
    argv = [sys.executable, "-m", "megatron_flops", "relog", path, *FLAGS]
    return argv + (["--json"] if mode == "json" else [])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1024.0)
    parser.add_argument("--fork", choices=("microsoft", "bigscience"), default="microsoft")
    parser.add_argument("--modes", default="parse,table,json")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    modes = args.modes.split(",")
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="relog-bench-") as folder:
        for size_mb in (args.size_mb / 10.0, args.size_mb):
            path = os.path.join(folder, f"{args.fork}-{size_mb:g}MB.log")
            start = time.perf_counter()
            lines, size = generate(path, int(size_mb * 1024 * 1024), args.fork)
            print(f"generated {path}: {size / 2**20:.0f} MiB, {lines} lines "
                  f"in {time.perf_counter() - start:.1f} s", flush=True)
            for mode in modes:
                seconds, cpu, rss, tail = run_child(command(mode, path))
                results.append((size, lines, mode, seconds, cpu, rss))
                print(f"  {mode:<6} {seconds:7.1f} s wall, {cpu:7.1f} s CPU  "
                      f"{lines / seconds:10,.0f} lines/s  {size / 2**20 / seconds:6.1f} MiB/s  "
                      f"peak RSS {rss:6.1f} MiB  {' '.join(tail)[:120]}", flush=True)
            os.remove(path)
    print("\nlines/s and MiB/s per wall-clock second (and per CPU second: the machine may be "
          "shared)")
    print("size MiB       lines  mode      lines/s  lines/CPU-s    MiB/s  peak RSS MiB")
    for size, lines, mode, seconds, cpu, rss in results:
        print(f"{size / 2**20:8.0f} {lines:11,d}  {mode:<6} {lines / seconds:10,.0f} "
              f"{lines / cpu:12,.0f} {size / 2**20 / seconds:8.1f} {rss:13.1f}")


if __name__ == "__main__":
    main()
