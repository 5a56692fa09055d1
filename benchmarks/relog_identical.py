"""Prove ``relog``'s output unchanged between two checkouts: run both on every log in
``tests/data/logs/`` and ``tests/data/megatron_lm/`` (and any PATH given) in every output
form, and diff byte for byte.

For each log: the table (stdout and stderr), ``--json`` (stdout and stderr), and ``--csv``
(the file), each with ``--gpu a100`` so MFU/HFU columns are filled.  ``--old`` is the other
checkout's ``src`` folder (e.g. one made with ``git archive COMMIT src | tar -x -C DIR``);
``--new`` defaults to this checkout's.  Exit 1 and the first differing lines when anything
differs.

    mkdir -p /tmp/old && git archive 670dca7 src | tar -x -C /tmp/old
    python benchmarks/relog_identical.py --old /tmp/old/src [--drop-additions]

``--drop-additions`` first removes from the new output what issue 18 item 5 added on purpose
(the ``fork_formula`` key of each ``--json`` line, the summary's ``fork_formulas``, the
table summary's "Megatron-LM formula per line" line), so that everything else is compared.
"""

import argparse
import difflib
import glob
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MODES = {"table": [], "json": ["--json"], "csv": None}


def run(src, path, mode, folder):
    """{name: bytes} of one relog run."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    argv = [sys.executable, "-m", "megatron_flops", "relog", path, "--gpu", "a100"]
    csv_path = None
    if mode == "csv":
        csv_path = os.path.join(folder, "out.csv")
        argv += ["--csv", csv_path]
    else:
        argv += MODES[mode]
    done = subprocess.run(argv, capture_output=True, env=env, cwd=folder)
    out = {"rc": str(done.returncode).encode(), "stdout": done.stdout, "stderr": done.stderr}
    if csv_path is not None:   # none when relog refused the log (then its stderr says why)
        if os.path.exists(csv_path):
            with open(csv_path, "rb") as f:
                out["csv"] = f.read()
            os.remove(csv_path)
        else:
            out["csv"] = b"(no file)"
    return out


ADDED_LINE = b"Megatron-LM formula per line"


def drop_additions(output):
    """The new output without issue 18 item 5's additions (see the module's docstring)."""
    out = dict(output)
    lines = []
    for line in output["stdout"].split(b"\n"):
        if line.startswith(b"{") and b'"fork_formula": ' in line:
            item = json.loads(line)
            item.pop("fork_formula")
            line = json.dumps(item).encode()
        if not line.startswith(ADDED_LINE):
            lines.append(line)
    out["stdout"] = b"\n".join(lines)
    lines = []
    for line in output["stderr"].split(b"\n"):
        if line.startswith(b'{"summary": '):
            item = json.loads(line)
            item["summary"].pop("fork_formulas")
            line = json.dumps(item).encode()
        lines.append(line)
    out["stderr"] = b"\n".join(lines)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the other checkout's src folder")
    parser.add_argument("--new", default=os.path.join(ROOT, "src"))
    parser.add_argument("--drop-additions", action="store_true",
                        help="compare without issue 18 item 5's new keys and line")
    parser.add_argument("paths", nargs="*", help="more logs")
    args = parser.parse_args()
    data = os.path.join(ROOT, "tests", "data")
    paths = sorted(glob.glob(os.path.join(data, "logs", "*.out"))
                   + glob.glob(os.path.join(data, "megatron_lm", "**", "*.log"), recursive=True)
                   + glob.glob(os.path.join(data, "megatron_lm", "progress.txt"))) + args.paths
    differences = 0
    compared = 0
    with tempfile.TemporaryDirectory(prefix="relog-identical-") as folder:
        for path in paths:
            for mode in MODES:
                old = run(args.old, path, mode, folder)
                new = run(args.new, path, mode, folder)
                if args.drop_additions:
                    new = drop_additions(new)
                for name in old:
                    compared += 1
                    if old[name] != new[name]:
                        differences += 1
                        print(f"DIFFERENT: {os.path.basename(path)} {mode} {name}")
                        diff = difflib.unified_diff(
                            old[name].decode(errors="replace").splitlines(),
                            new[name].decode(errors="replace").splitlines(), "old", "new",
                            lineterm="", n=0)
                        for line in list(diff)[:12]:
                            print("   ", line)
            print(f"{os.path.basename(path)}: compared", flush=True)
    print(f"{compared} outputs compared over {len(paths)} logs: {differences} differ")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
