"""Two ranks of one command, as a launcher starts them, ended by Ctrl-C (issue 24).

:func:`interrupt_two_ranks` starts ``command`` twice with the environment torchrun gives its
workers (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``: a gloo group on this machine), both in one new process group, waits until
the last rank has printed ``ready`` (judged by progress: the children are killed only after
``STALL_SECONDS`` without a new line), then sends SIGINT to the process group — what a
terminal does on Ctrl-C — or to one rank, and waits for both.  (``tests/conftest.py`` puts this folder on
``sys.path``.)
"""

import os
import signal
import socket
import subprocess
import threading
import time
from typing import List, NamedTuple, Optional

from subprocess_progress import STALL_SECONDS


class RankResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def _sigint_as_a_terminal_gives_it() -> None:
    """In the child before exec: SIGINT at its default disposition.  A runner started as a
    background job of a non-interactive shell (``cmd &``) ignores SIGINT, its children inherit
    that, Python then installs no KeyboardInterrupt handler, and the ranks would train on
    through the Ctrl-C this test sends (seen: a ``.ci/run`` under load hung here)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def interrupt_two_ranks(command: List[str], env: dict, cwd: str, ready: str,
                        only_rank: Optional[int] = None,
                        stall_seconds: float = STALL_SECONDS, ready_count: int = 1
                        ) -> List[RankResult]:
    """``only_rank``: SIGINT to that rank alone (as torchrun passes it on, one worker at a
    time, or ``kill -INT`` of one process), else to the process group."""
    port = _free_port()
    processes, outputs, last_output = [], [], [time.monotonic()]
    group = 0   # the first child starts a new process group, the second joins it
    for rank in range(2):
        rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                        LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=rank_env, cwd=cwd, process_group=group,
                                   preexec_fn=_sigint_as_a_terminal_gives_it)
        group = group or process.pid
        processes.append(process)
        outputs.append(([], []))

    def drain(stream, into):
        for line in stream:
            into.append(line)
            last_output[0] = time.monotonic()

    readers = []
    for process, (out, err) in zip(processes, outputs):
        for stream, into in ((process.stdout, out), (process.stderr, err)):
            readers.append(threading.Thread(target=drain, args=(stream, into), daemon=True))
            readers[-1].start()

    def stalled() -> bool:
        return time.monotonic() - last_output[0] > stall_seconds

    try:
        while sum(ready in line for line in outputs[1][0]) < ready_count:
            if stalled() or any(p.poll() is not None for p in processes):
                raise AssertionError("the ranks never got ready: " + "".join(
                    outputs[1][0][-5:] + outputs[0][1][-5:] + outputs[1][1][-5:]))
            time.sleep(0.05)
        if only_rank is None:
            os.killpg(group, signal.SIGINT)
        else:
            os.kill(processes[only_rank].pid, signal.SIGINT)
        # after Ctrl-C only ending is progress: a rank that keeps logging iterations is not
        # ending, so the wait is bounded from the signal, not from the last line
        interrupted = time.monotonic()
        while any(p.poll() is None for p in processes):
            if time.monotonic() - interrupted > stall_seconds:
                raise AssertionError("a rank did not end after Ctrl-C")
            time.sleep(0.05)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    for reader in readers:
        reader.join()
    return [RankResult(p.returncode, "".join(out), "".join(err))
            for p, (out, err) in zip(processes, outputs)]
