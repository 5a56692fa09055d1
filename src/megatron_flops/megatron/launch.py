"""A pasted launch line's launcher, and the world size it (or the environment) gives.

``torchrun --nproc_per_node 8 --nnodes 4 pretrain_gpt.py …`` (also ``python -m
torch.distributed.run`` / ``.launch``), ``deepspeed --num_gpus 8 --num_nodes 2 …`` and
``srun --nodes 2 --ntasks-per-node 8 …`` start ``nproc × nodes`` processes: one per GPU, the
world size.  :func:`split_launcher` takes the launcher's words off the front of a command so the
script's flags are read alone; :func:`world_size` is the one resolver every command uses:
``--world-size``, else the launcher line, else the launcher's environment (``WORLD_SIZE``; under
SLURM ``SLURM_NTASKS``), else assumed (TP × PP × SP × CP, one replica) — each said as its source.
Standard library only.
"""

import os
from typing import List, Mapping, NamedTuple, Optional, Sequence, Tuple

__all__ = ["Launcher", "split_launcher", "world_size", "WorldSize"]

_PYTHON = ("python", "python3")
_LAUNCHER_MODULES = ("torch.distributed.run", "torch.distributed.launch")


class Launcher(NamedTuple):
    """The launcher words of a pasted command: its name, flags (name -> value) and words."""

    name: str
    options: dict
    words: Tuple[str, ...]

    def processes(self) -> Tuple[Optional[int], str]:
        """(processes started, how) — None when the line does not say."""
        o = self.options

        def number(*names):
            for name in names:
                value = o.get(name)
                if value is None:
                    continue
                text = str(value).split(":")[-1]  # elastic "1:4": the most it starts
                if text.isdigit():
                    return int(text), name
            return None, None

        if self.name == "srun":
            tasks, flag = number("--ntasks", "-n")
            if tasks:
                return tasks, f"srun {flag} {tasks}"
            per_node, flag = number("--ntasks-per-node")
            nodes, nodes_flag = number("--nodes", "-N")
            if per_node:
                nodes = nodes or 1
                return per_node * nodes, (f"srun {nodes_flag} {nodes} × {flag} {per_node}"
                                          if nodes_flag else f"srun {flag} {per_node}")
            return None, "srun without --ntasks or --ntasks-per-node"
        if self.name == "deepspeed":
            gpus, g_flag = number("--num_gpus", "--num-gpus")
            nodes, n_flag = number("--num_nodes", "--num-nodes")
            if gpus is None:
                return None, "deepspeed without --num_gpus (it uses every GPU it finds)"
            return gpus * (nodes or 1), f"deepspeed {g_flag} {gpus}" + (
                f" × {n_flag} {nodes}" if nodes else "")
        per_node, p_flag = number("--nproc_per_node", "--nproc-per-node")
        nodes, n_flag = number("--nnodes")
        if per_node is None:
            return None, f"{self.name} without --nproc_per_node"
        return per_node * (nodes or 1), f"{self.name} {p_flag} {per_node}" + (
            f" × {n_flag} {nodes}" if nodes else "")


def _launcher_options(words: Sequence[str]) -> dict:
    options, i = {}, 0
    while i < len(words):
        word = words[i]
        if word.startswith("-"):
            if "=" in word:
                name, value = word.split("=", 1)
                options[name] = value
            elif i + 1 < len(words) and not words[i + 1].startswith("-"):
                options[word] = words[i + 1]
                i += 1
            else:
                options[word] = True
        i += 1
    return options


def split_launcher(argv: Sequence[str]) -> Tuple[Optional[Launcher], List[str]]:
    """(the launcher, the rest): the launcher's words are those before the script (the first
    word ending in ``.py`` after a launcher name); without a launcher name, (None, argv)."""
    argv = [a for a in argv if a != "\\"]
    if not argv:
        return None, argv
    first = 0  # a pasted line may start with environment assignments (CUDA_…=1 torchrun …)
    while first < len(argv) and "=" in argv[first] and not argv[first].startswith("-") and \
            argv[first].split("=", 1)[0].replace("_", "").isalnum():
        first += 1
    if first == len(argv):
        return None, argv
    name = os.path.basename(argv[first])
    start = first + 1
    if name in _PYTHON:  # python [-u …] -m torch.distributed.run
        at = start
        while at < len(argv) and argv[at].startswith("-") and argv[at] != "-m":
            at += 1
        if not (at + 1 < len(argv) and argv[at] == "-m" and argv[at + 1] in _LAUNCHER_MODULES):
            return None, argv
        name, start = "torchrun", at + 2
    elif name not in ("torchrun", "deepspeed", "srun"):
        return None, argv
    end = start
    while end < len(argv) and not argv[end].endswith(".py"):
        end += 1
    if end == len(argv):  # no script: not a launch line this tool can split
        return None, argv
    words = argv[start:end]
    rest = argv[end:]
    # srun python pretrain_gpt.py / deepspeed script: the interpreter is a launcher word too
    if words and os.path.basename(words[-1]) in _PYTHON:
        words = words[:-1]
    return Launcher(name, _launcher_options(words), tuple(argv[:end])), rest


class WorldSize(NamedTuple):
    """The world size and where it came from (``assumed``: nothing gave it)."""

    value: Optional[int]
    source: str
    assumed: bool = False


def world_size(given: Optional[int], launcher: Optional[Launcher] = None,
               environ: Optional[Mapping[str, str]] = None,
               read_environment: bool = True) -> WorldSize:
    """``--world-size``, the launcher line, ``WORLD_SIZE``, ``SLURM_NTASKS``, else assumed."""
    from ..shapes import ShapeError
    if given is not None:
        return WorldSize(given, "--world-size")
    if launcher is not None:
        processes, how = launcher.processes()
        if processes:
            return WorldSize(processes, f"the launch line: {how}")
    if read_environment:
        environ = os.environ if environ is None else environ
        for variable in ("WORLD_SIZE", "SLURM_NTASKS"):
            text = str(environ.get(variable, "")).strip()
            if not text:
                continue
            if not text.isdigit() or int(text) <= 0:
                raise ShapeError(f"{variable} in the environment must be a positive integer, "
                                 f"got {text!r}", "--world-size")
            return WorldSize(int(text), f"{variable} in the environment")
    return WorldSize(None, "assumed", assumed=True)
