"""Time and peak memory of ``megatron-flops profile`` on a large generated trace, against
``json.load`` of the same file (the floor: what reading the whole document costs in Python).

The trace is made from a real one: one training step of a tiny reference GPT (2 layers,
h 64, 4 heads, vocab 256, 2 × 24 tokens) profiled on the CPU with ``record_shapes=True`` and
the component scopes, as tests/profile/test_attribution.py makes it.  Each of the 4
``ProfilerStep#N`` spans of the big trace holds K copies of that step's events (the
micro batches of one iteration), shifted in time, with their autograd ``Sequence number``,
``External id`` and flow ids offset so that every copy links only to itself; K is chosen to
reach ``--size-mb``.  The events are written one field per line, as Kineto writes them.
Without torch, the step is the hand-written GPU-format step of
tests/profile/test_gpu_trace_and_command.py (kernels linked by correlation ids).

Each measurement is a child process, one after the other, in this order (peak RSS is the
child's ``ru_maxrss`` from ``wait4``):

- ``json.load``: open the file, ``json.load`` it, exit;
- ``profile``: ``megatron-flops profile TRACE <the model's flags> --json > /dev/null``, from
  this tree's ``src``;
- ``profile (baseline)``: the same from ``--baseline-src`` (another version's ``src``, e.g.
  ``git archive <commit> src | tar -x -C /tmp/old``), when given; its ``--json`` output must
  equal this tree's (``trace_notes``, which earlier versions lack, left out).

The trace goes to a temporary folder (``--dir``, default the system's) and is deleted at the
end.

    python benchmarks/profile_trace.py                      # ~1 GB
    python benchmarks/profile_trace.py --size-mb 100 --baseline-src /tmp/old/src
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
STEPS = 4
SEQ, MICRO = 24, 2
FLAGS = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
         "--vocab-size", "256", "--seq-length", str(SEQ), "--micro-batch-size", str(MICRO),
         "--peak-tflops", "100"]
JSON_LOAD = "import json, sys\nwith open(sys.argv[1]) as f:\n    data = json.load(f)\n"


def torch_step():
    """(events inside the ProfilerStep span, its start, its duration, the other records),
    profiled in a child process: torch stays out of this one, whose memory its measuring
    children would inherit (Linux keeps a process's peak RSS across fork and exec)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "step.json")
        subprocess.run([sys.executable, os.path.abspath(__file__), "--template", path],
                       check=True, env={**os.environ, "PYTHONPATH": SRC},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(path) as f:
            return split_step(json.load(f))


def write_torch_step(path):
    """One step of the tiny reference GPT under torch.profiler, exported to ``path``."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from megatron_flops.profile.scopes import install_scopes
    from megatron_flops.reference.model import ReferenceGPT
    from megatron_flops.shapes import ModelShape, Recompute
    torch.manual_seed(0)
    gpt = ReferenceGPT(ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4,
                                  vocab_size=256), SEQ, Recompute())
    install_scopes(gpt)
    ids = torch.randint(0, 256, (MICRO, SEQ))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        with record_function("ProfilerStep#1"):
            gpt.loss(ids, ids).backward()
    prof.export_chrome_trace(path)


def hand_step():
    """The GPU-format step of tests/profile/test_gpu_trace_and_command.py (no torch)."""
    def op(name, ts, dur, cat="cpu_op", **args):
        return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": 1, "ts": ts, "dur": dur,
                "args": args}

    def kernel(name, ts, dur, correlation, stream=7):
        return {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": stream, "ts": ts,
                "dur": dur, "args": {"correlation": correlation}}
    events = [
        op("ProfilerStep#1", 0, 100, cat="user_annotation"),
        op("aten::linear", 1, 10),
        op("aten::addmm", 2, 8, **{"Input Dims": [[96], [48, 64], [64, 96], [], []],
                                   "Sequence number": 10, "External id": 3}),
        op("cudaLaunchKernel", 3, 2, cat="cuda_runtime", correlation=1),
        op("aten::layer_norm", 12, 5),
        op("cudaLaunchKernel", 13, 2, cat="cuda_runtime", correlation=2),
        op("record_param_comms", 20, 5),
        op("cudaLaunchKernel", 21, 2, cat="cuda_runtime", correlation=3),
        kernel("sm90_xmma_gemm_bf16bf16_bf16f32", 10, 30, 1),
        kernel("vectorized_layer_norm_kernel", 40, 10, 2),
        kernel("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 45, 20, 3, stream=8),
    ]
    return split_step({"deviceProperties": [], "traceEvents": events})


def split_step(data):
    events = data["traceEvents"]
    step = next(e for e in events if e.get("name") == "ProfilerStep#1")
    inside = [e for e in events if e is not step and e.get("ph") in ("X", "s", "f", "i")
              and step["ts"] <= float(e.get("ts", -1)) < step["ts"] + step["dur"]]
    header = {k: v for k, v in data.items() if k != "traceEvents"}
    meta = [e for e in events if e.get("ph") == "M"]
    return inside, float(step["ts"]), float(step["dur"]), header, meta, step


OFFSET_ARGS = ("Sequence number", "External id", "correlation", "Record function id", "Ev Idx")


def shifted(event, dt, copy):
    """``event`` moved by ``dt`` µs, its ids offset for copy number ``copy``."""
    out = dict(event)
    out["ts"] = round(float(event["ts"]) + dt, 3)
    if "id" in out and isinstance(out["id"], int):
        out["id"] = out["id"] + copy * 1_000_000
    args = event.get("args")
    if isinstance(args, dict):
        args = dict(args)
        for key in OFFSET_ARGS:
            if isinstance(args.get(key), int) and args[key] > 0:
                args[key] += copy * 1_000_000
        out["args"] = args
    return out


def kineto_text(event) -> str:
    """One event, one field per line (Kineto's layout, without its indentation depth)."""
    return "  {\n    " + json.dumps(event)[1:-1].replace(', "', ',\n    "') + "\n  }"


def generate(path, size_bytes, step):
    inside, t0, span, header, meta, step_event = step
    one = sum(len(kineto_text(e)) + 2 for e in inside)
    copies = max(1, size_bytes // (STEPS * one))
    gap = span * 1.01  # a copy after the other, inside its ProfilerStep
    with open(path, "w") as f:
        f.write("{\n" + json.dumps(header)[1:-1] + ',\n  "traceEvents": [\n')
        f.write(",\n".join(kineto_text(e) for e in meta))
        for number in range(STEPS):
            start = number * (copies + 1) * gap
            annotation = dict(step_event, name=f"ProfilerStep#{number + 1}",
                              ts=round(t0 + start, 3), dur=round(copies * gap, 3))
            f.write(",\n" + kineto_text(annotation))
            for copy in range(copies):
                dt = start + copy * gap
                k = number * copies + copy
                f.write(",\n" + ",\n".join(kineto_text(shifted(e, dt, k)) for e in inside))
        f.write("\n  ]\n}\n")
    return copies


def run_child(argv, src, output=None):
    """(wall seconds, CPU seconds, peak RSS in MiB) of a child process."""
    env = {**os.environ, "PYTHONPATH": src}
    with tempfile.TemporaryFile() as stderr:
        stdout = open(output, "w") if output else subprocess.DEVNULL
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        if output:
            stdout.close()
        stderr.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{argv[:4]} failed:\n{stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1024.0)
    parser.add_argument("--dir", default=None, help="where the trace is written (deleted after)")
    parser.add_argument("--baseline-src", default=None,
                        help="another version's src/ to run profile from as well")
    parser.add_argument("--hand", action="store_true", help="the hand-written GPU step, not torch's")
    parser.add_argument("--template", help=argparse.SUPPRESS)  # the child that profiles a step
    args = parser.parse_args()
    if args.template:
        write_torch_step(args.template)
        return
    try:
        import importlib.util
        if args.hand or importlib.util.find_spec("torch") is None:
            raise ImportError("torch")
        step, kind = torch_step(), "torch.profiler CPU step"
    except ImportError:
        step, kind = hand_step(), "hand-written GPU-format step"
    folder = tempfile.mkdtemp(prefix="profile_trace_", dir=args.dir)
    path = os.path.join(folder, "trace.json")
    outputs = {}
    try:
        copies = generate(path, int(args.size_mb * 2 ** 20), step)
        size = os.path.getsize(path)
        flags = FLAGS + ["--global-batch-size", str(MICRO * copies)]  # K micro batches
        print(f"trace: {size / 2 ** 20:.0f} MiB, {STEPS} ProfilerSteps of {copies} copies of a "
              f"{kind} ({len(step[0])} records each)")
        runs = [("json.load", [sys.executable, "-c", JSON_LOAD, path], SRC)]
        profile = [sys.executable, "-m", "megatron_flops", "profile", path, *flags, "--json"]
        runs.append(("profile", profile, SRC))
        if args.baseline_src:
            runs.append(("profile (baseline)", profile, os.path.abspath(args.baseline_src)))
        results = {}
        for name, argv, src in runs:
            output = os.path.join(folder, f"{len(outputs)}.out") if name != "json.load" else None
            results[name] = run_child(argv, src, output)
            if output:
                outputs[name] = output
            wall, cpu, rss = results[name]
            print(f"  {name:<20} {wall:8.1f} s wall {cpu:8.1f} s CPU {rss:9.0f} MiB peak RSS "
                  f"({rss * 2 ** 20 / size:.2f}× the file)", flush=True)
        floor = results["json.load"]
        for name in results:
            if name != "json.load":
                wall, cpu, rss = results[name]
                print(f"  {name}: {wall / floor[0]:.2f}× json.load's wall time, {cpu / floor[1]:.2f}× "
                      f"its CPU time, {rss / floor[2]:.2f}× its peak memory")
        if len(outputs) == 2:
            loaded = []
            for name in ("profile", "profile (baseline)"):
                with open(outputs[name]) as f:
                    data = json.load(f)
                data.pop("trace_notes", None)
                loaded.append(data)
            print("  outputs: " + ("identical" if loaded[0] == loaded[1] else "DIFFERENT"))
    finally:
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)


if __name__ == "__main__":
    main()
