"""The work of ``megatron-flops patch CHECKOUT [--dry-run] [--check | --revert]``
(:mod:`megatron_flops.commands.patch`): a reversible one-block edit of a Megatron-DeepSpeed checkout that routes its throughput reporting through
megatron-flops, for teams that launch ``pretrain_gpt.py`` in ways a wrapper cannot reach.

The edit appends one marked block to ``megatron/training.py`` (NVIDIA Megatron-LM:
``megatron/training/training.py``)::

    # megatron-flops: begin …
    try:
        import megatron_flops.megatron as _megatron_flops
        _megatron_flops.install(training_module=__name__)
    except Exception as _megatron_flops_error:
        print(…)  # the fork's own numbers stay
    # megatron-flops: end

so every entry point that imports the training module (pretrain_gpt.py, pretrain_bert.py, …)
gets the runtime hook of :mod:`megatron_flops.megatron.hook`, installed when the module has
finished defining its functions.  Nothing else changes; the patched module still imports
when megatron-flops is not installed, or when an installed version cannot install the hook
(any exception, not only ImportError: a monitoring hook never stops a training run).

The fork is detected from the source (the microsoft fork's ``throughput_calculator(model,
args, iteration_time, total_iterations)`` in ``megatron/utils.py`` imported by
``training.py``; bigscience's inline ``TFLOPs:`` field in ``training_log``; Megatron-LM's
``num_floating_point_operations`` beside ``training_log``); an unknown
layout is refused before anything is written.  Applying twice changes nothing;
``--revert`` removes exactly the appended bytes, so the file is restored byte for byte.
"""

import difflib
import os
import re
from typing import NamedTuple, Optional

from ..errors import UsageError

TRAINING = os.path.join("megatron", "training.py")
MEGATRON_LM_TRAINING = os.path.join("megatron", "training", "training.py")  # NVIDIA Megatron-LM
UTILS = os.path.join("megatron", "utils.py")
BEGIN = "# megatron-flops: begin"
END = "# megatron-flops: end"
_BODY = (
    "try:",
    "    import megatron_flops.megatron as _megatron_flops",
    "    _megatron_flops.install(training_module=__name__)",
    "except Exception as _megatron_flops_error:",
    "    print('megatron-flops: hook not installed (%r); throughput as the fork computes it'"
    " % (_megatron_flops_error,), flush=True)",
)
_HEADER = (" (added by `megatron-flops patch`: exact throughput reporting; "
           "`megatron-flops patch --revert` removes this block)")
_HEADER_NO_EOL = _HEADER[:-1] + "; the file had no final newline)"



class PatchError(UsageError):
    """Bad input or a checkout that cannot be patched as asked; nothing was written.  (A
    UsageError: the command prints its message as one line, exit code 2.)"""


_MICROSOFT_CALCULATOR = re.compile(
    rb"def\s+throughput_calculator\s*\(\s*model\s*,\s*args\s*,\s*iteration_time\s*,"
    rb"\s*total_iterations\s*\)")
_MICROSOFT_IMPORT = re.compile(rb"from\s+megatron\.utils\s+import\s[^\n]*\bthroughput_calculator\b")


def block(newline: bytes = b"\n", had_final_newline: bool = True) -> bytes:
    """The bytes appended to a file (for one newline style and final-newline case)."""
    header = BEGIN + (_HEADER if had_final_newline else _HEADER_NO_EOL)
    lines = ["", header, *_BODY, END]
    text = newline.decode().join(lines) + newline.decode()
    if not had_final_newline:
        text = newline.decode() + text
    return text.encode("ascii")


class Plan(NamedTuple):
    path: str
    fork: str
    original: bytes
    patched: bytes


def _newline(data: bytes) -> bytes:
    return b"\r\n" if b"\r\n" in data else b"\n"


def training_path(checkout: str) -> str:
    """The training module a checkout is patched in (the forks' or Megatron-LM's)."""
    for relative in (TRAINING, MEGATRON_LM_TRAINING):
        path = os.path.join(checkout, relative)
        if os.path.isfile(path):
            return path
    raise PatchError(f"CHECKOUT {checkout!r} has no {TRAINING} (nor {MEGATRON_LM_TRAINING}): "
                     "not a Megatron-DeepSpeed or Megatron-LM checkout")


def detect_fork(checkout: str) -> str:
    """``"microsoft"`` or ``"bigscience"`` from the sources; PatchError otherwise."""
    if not os.path.isdir(checkout):
        raise PatchError(f"CHECKOUT must be a directory (a Megatron-DeepSpeed checkout), got {checkout!r}")
    path = training_path(checkout)
    with open(path, "rb") as f:
        training = f.read()
    if path.endswith(MEGATRON_LM_TRAINING):
        if b"def num_floating_point_operations(" in training and b"def training_log(" in training:
            return "megatron-lm"
        raise PatchError(f"CHECKOUT {checkout!r}: unknown layout, nothing written (expected "
                         f"num_floating_point_operations and training_log in {MEGATRON_LM_TRAINING})")
    utils = b""
    utils_path = os.path.join(checkout, UTILS)
    if os.path.isfile(utils_path):
        with open(utils_path, "rb") as f:
            utils = f.read()
    if _MICROSOFT_CALCULATOR.search(utils) and _MICROSOFT_IMPORT.search(training) \
            and b"throughput_calculator(" in training:
        return "microsoft"
    if b"def training_log(" in training and b"TFLOPs:" in training \
            and b"print_rank_last(" in training and b"throughput_calculator" not in training:
        return "bigscience"
    raise PatchError(
        f"CHECKOUT {checkout!r}: unknown layout, nothing written (expected the microsoft fork's "
        "megatron/utils.py throughput_calculator(model, args, iteration_time, total_iterations) "
        "imported by megatron/training.py, or the bigscience fork's inline 'TFLOPs:' field in "
        "megatron/training.py training_log)")


def patched_suffix(data: bytes) -> Optional[bytes]:
    """The appended block at the end of ``data`` (exact bytes), or None when not patched."""
    for newline in (b"\n", b"\r\n"):
        for had_final_newline in (True, False):
            suffix = block(newline, had_final_newline)
            if data.endswith(suffix):
                return suffix
    return None


def status(checkout: str) -> str:
    """``"patched"``, ``"unpatched"`` or ``"modified"`` (a marker without our exact block)."""
    with open(training_path(checkout), "rb") as f:
        data = f.read()
    if patched_suffix(data) is not None:
        return "patched"
    return "modified" if BEGIN.encode() in data else "unpatched"


def plan_apply(checkout: str) -> Optional[Plan]:
    """What applying would write (None when already patched)."""
    fork = detect_fork(checkout)
    path = training_path(checkout)
    with open(path, "rb") as f:
        original = f.read()
    state = status(checkout)
    if state == "patched":
        return None
    if state == "modified":
        raise PatchError(f"{path} holds a '{BEGIN}' marker but not the block this version writes: "
                         "edit it out by hand (nothing written)")
    newline = _newline(original)
    ends = original.endswith(b"\n") or not original
    return Plan(path, fork, original, original + block(newline, ends))


def plan_revert(checkout: str) -> Optional[Plan]:
    """What reverting would write (None when not patched)."""
    path = training_path(checkout)
    with open(path, "rb") as f:
        current = f.read()
    suffix = patched_suffix(current)
    if suffix is None:
        if BEGIN.encode() in current:
            raise PatchError(f"{path}: the megatron-flops block was edited; cannot restore the "
                             "original byte for byte (nothing written)")
        return None
    return Plan(path, "", current, current[:-len(suffix)])


def unified_diff(plan: Plan, checkout: str) -> str:
    relative = os.path.relpath(plan.path, checkout)
    before = plan.original.decode("utf-8", "replace").splitlines(keepends=True)
    after = plan.patched.decode("utf-8", "replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, f"a/{relative}", f"b/{relative}"))


def write(plan: Plan) -> None:
    """Write the planned bytes (through a temporary file: never half-written)."""
    temporary = plan.path + ".megatron-flops.tmp"
    with open(temporary, "wb") as f:
        f.write(plan.patched)
    original, created = os.stat(plan.path), os.stat(temporary)  # keep the mode and owner
    if hasattr(os, "chown") and (original.st_uid, original.st_gid) != (created.st_uid, created.st_gid):
        try:
            os.chown(temporary, original.st_uid, original.st_gid)
        except OSError:  # only root may give a file away; the mode is kept all the same
            pass
    os.chmod(temporary, original.st_mode & 0o7777)
    os.replace(temporary, plan.path)
