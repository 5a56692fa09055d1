"""How fast the demo trains per CPU thread count, on this machine as it is and under extra load.

Issue 24: on a loaded 2-core machine torch's default thread count (one per core) ran the demo
5.6x slower than ``--threads 1``: an OpenMP team waits at every barrier for its slowest thread,
and a thread that shares its core with another busy process is slow.  This script runs a few
demo iterations (default shape) at 1, 2 and torch's default thread count, once as the machine is
and once with ``--busy N`` extra busy processes (a ``stress``-style load: one pure-Python spin
loop each), and prints the steady-state milliseconds per iteration (the demo's own second
interval line) and the wall time of the whole run.  No ``--threads`` is the demo's default
(``auto_threads``: the cores the load average leaves free); torch's own default is one thread
per core, i.e. the row with ``--threads`` equal to the core count.

    python benchmarks/demo_threads.py [--iterations 6] [--busy 4] [--repeats 1]
"""

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import time

ITERATION_MS = re.compile(r"elapsed time per iteration \(ms\): ([0-9.]+)")


def spin(stop):
    while not stop.is_set():
        pass


def one_run(threads, iterations):
    """(steady ms per iteration, wall seconds of the whole command, the thread count used)."""
    half = max(1, iterations // 2)
    command = [sys.executable, "-m", "megatron_flops", "demo", "--train-iters", str(2 * half),
               "--log-interval", str(half), "--peak-tflops", "1"]
    if threads is not None:
        command += ["--threads", str(threads)]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    out = done.stdout
    wall = time.perf_counter() - started
    used = re.search(r"(\d+) CPU threads per process", out)
    return float(ITERATION_MS.findall(out)[-1]), wall, used.group(1) if used else "?"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--busy", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"{args.iterations} demo iterations per run (the second half timed)")
    print(f"{'background':<22}{'--threads':>10}{'used':>6}{'ms/iteration':>14}{'wall s':>9}")
    for busy in (0, args.busy):
        stop = multiprocessing.Event()
        workers = [multiprocessing.Process(target=spin, args=(stop,), daemon=True)
                   for _ in range(busy)]
        for worker in workers:
            worker.start()
        try:
            for threads in sorted({1, 2, os.cpu_count() or 1}) + [None]:
                for _ in range(args.repeats):
                    ms, wall, used = one_run(threads, args.iterations)
                    label = "default" if threads is None else str(threads)
                    print(f"{f'+{busy} busy processes':<22}{label:>10}{used:>6}{ms:>14.1f}"
                          f"{wall:>9.1f}", flush=True)
        finally:
            stop.set()
            for worker in workers:
                worker.join()


if __name__ == "__main__":
    main()
