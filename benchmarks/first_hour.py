"""A newcomer's first run of the demo: time to its first log line and in all, idle and loaded.

Issue 24: the README's main command is ``megatron-flops demo`` (after the install).  This
script runs that demo as a newcomer does (no flags, a fresh measured-peak cache unless
``--keep-cache``) and prints, per run, the seconds from the start of the command to the
first iteration line (``iteration 20/200``: the first log line) and to its end, once as the
machine is and once with ``--load N`` extra busy processes (a ``stress``-style load: one
pure-Python spin loop each), with the load average at the start of each run.  The install
step is not timed here (it depends on the network and pip's cache): time it with the
README's line itself.

    python benchmarks/first_hour.py [--load 4] [--repeats 1] [-- DEMO FLAGS…]

Flags after ``--`` go to the demo (e.g. ``-- --train-iters 40`` for a quick look).
"""

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time


def spin(stop):
    while not stop.is_set():
        pass


def one_run(demo_flags, keep_cache):
    """(seconds to the first log line or None, seconds in all, the threads the demo chose)."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)    # a newcomer's shell does not set it
    with tempfile.TemporaryDirectory() as cache:
        if not keep_cache:
            env["MEGATRON_FLOPS_CACHE_DIR"] = cache
        command = [sys.executable, "-m", "megatron_flops", "demo", *demo_flags]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, env=env)
        first, threads = None, "?"
        for line in process.stdout:
            if first is None and line.startswith(" iteration "):
                first = time.perf_counter() - started
            if "CPU threads per process" in line:
                threads = line.split("CPU threads per process")[0].split(";")[-1].strip()
        code = process.wait()
        total = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited {code}")
    return first, total, threads


def main():
    argv = sys.argv[1:]
    demo_flags = []
    if "--" in argv:
        at = argv.index("--")
        argv, demo_flags = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, default=4,
                        help="busy background processes for the loaded runs (0: idle only)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--keep-cache", action="store_true",
                        help="use this machine's measured-peak cache (a newcomer has none)")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs; megatron-flops demo {' '.join(demo_flags)}".rstrip())
    print(f"{'background':<14}{'load avg':>9}{'threads':>9}{'first log line s':>18}"
          f"{'total s':>9}")
    for busy in sorted({0, args.load}):
        stop = multiprocessing.Event()
        spinners = [multiprocessing.Process(target=spin, args=(stop,), daemon=True)
                    for _ in range(busy)]
        for spinner in spinners:
            spinner.start()
        try:
            if busy:
                time.sleep(5)          # let the load average see them
            for _ in range(args.repeats):
                load = os.getloadavg()[0]
                first, total, threads = one_run(demo_flags, args.keep_cache)
                shown = "none" if first is None else f"{first:.1f}"
                print(f"{f'{busy} busy':<14}{load:>9.2f}{threads:>9}{shown:>18}{total:>9.1f}",
                      flush=True)
        finally:
            stop.set()
            for spinner in spinners:
                spinner.join()


if __name__ == "__main__":
    main()
