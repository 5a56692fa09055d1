"""Run a child process to completion judged by its progress, not by wall time.

A loaded machine is slow, not wrong: issue 24 saw fixed subprocess timeouts (170 s, 60 s) fail
on busy machines.  :func:`run_with_progress` kills the child and raises
``subprocess.TimeoutExpired`` only when it prints nothing, on stdout or stderr, for
``stall_seconds``; :data:`STALL_SECONDS` (``MEGATRON_FLOPS_TEST_STALL_SECONDS``, default 600)
is the default.  (``tests/conftest.py`` puts this folder on ``sys.path``.)
"""

import os
import subprocess

STALL_SECONDS = float(os.environ.get("MEGATRON_FLOPS_TEST_STALL_SECONDS", "600"))


def run_with_progress(command, cwd=None, env=None, stall_seconds=None):
    """``command`` to completion, output captured as text: a ``CompletedProcess``."""
    import threading
    import time
    stall_seconds = stall_seconds or STALL_SECONDS
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=cwd)
    chunks = {"out": [], "err": []}
    last_output = [time.monotonic()]

    def drain(stream, into):
        for line in stream:
            into.append(line)
            last_output[0] = time.monotonic()

    readers = [threading.Thread(target=drain, args=(process.stdout, chunks["out"]), daemon=True),
               threading.Thread(target=drain, args=(process.stderr, chunks["err"]), daemon=True)]
    for reader in readers:
        reader.start()
    while process.poll() is None:
        if time.monotonic() - last_output[0] > stall_seconds:
            process.kill()
            process.wait()
            raise subprocess.TimeoutExpired(command, stall_seconds,
                                            output="".join(chunks["out"]),
                                            stderr="".join(chunks["err"]))
        time.sleep(0.5)
    for reader in readers:
        reader.join()
    return subprocess.CompletedProcess(command, process.returncode, "".join(chunks["out"]),
                                       "".join(chunks["err"]))
