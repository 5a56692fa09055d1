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

**Links.**  The patcher writes only inside the checkout and follows no link it did not expect:

- the new content goes to a temporary file created exclusively (``O_CREAT | O_EXCL |
  O_NOFOLLOW``, an unpredictable name beside the training module: :func:`tempfile.mkstemp`),
  given the module's mode and owner through its descriptor and renamed over the module; on any
  failure (a full disk) it is removed and the module is as it was;
- a training module that is a symbolic link is edited at its target when the target is inside
  the checkout, and refused with one line when it is outside (so is a ``megatron/`` folder
  that links out of the checkout);
- a training module with more than one hard link is refused with one line: editing it in
  place would change its other names (which may be outside the checkout), replacing it would
  split them;
- the file is checked again just before the rename (same inode, same bytes as planned): a
  change in between is refused, nothing written.

**Earlier versions.**  The first version of the command appended a block that caught only
``ImportError`` (:data:`LEGACY_BODIES`).  A checkout holding it is ``outdated``: ``patch``
replaces the block with this version's, ``--revert`` removes it byte for byte, ``--check``
says so (exit 1).
"""

import difflib
import os
import re
import stat
import tempfile
from typing import NamedTuple, Optional, Tuple

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
# the blocks earlier versions of the command appended (newest first): recognised to upgrade
# or revert a checkout they patched.  The first version (commit 9d44bdb) caught ImportError only.
LEGACY_BODIES = (
    (
        "try:",
        "    import megatron_flops.megatron as _megatron_flops",
        "    _megatron_flops.install(training_module=__name__)",
        "except ImportError as _megatron_flops_error:",
        "    print('megatron-flops: not importable (%s); throughput as the fork computes it'"
        " % _megatron_flops_error, flush=True)",
    ),
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


def block(newline: bytes = b"\n", had_final_newline: bool = True, body=_BODY) -> bytes:
    """The bytes appended to a file (for one newline style and final-newline case; ``body``:
    this version's, or one of :data:`LEGACY_BODIES`)."""
    header = BEGIN + (_HEADER if had_final_newline else _HEADER_NO_EOL)
    lines = ["", header, *body, END]
    text = newline.decode().join(lines) + newline.decode()
    if not had_final_newline:
        text = newline.decode() + text
    return text.encode("ascii")


class Plan(NamedTuple):
    path: str                  # the file written (a symbolic link's target inside the checkout)
    fork: str
    original: bytes
    patched: bytes
    upgrade: bool = False      # an earlier version's block replaced by this version's


def _newline(data: bytes) -> bytes:
    return b"\r\n" if b"\r\n" in data else b"\n"


def training_path(checkout: str) -> str:
    """The training module a checkout is patched in (the forks' or Megatron-LM's): the file
    itself, or the target of a symbolic link that stays inside the checkout.  PatchError for a
    link out of the checkout or a file with several hard links (see the module's docstring)."""
    for relative in (TRAINING, MEGATRON_LM_TRAINING):
        path = os.path.join(checkout, relative)
        if os.path.isfile(path):
            return _inside(checkout, relative, path)
    raise PatchError(f"CHECKOUT {checkout!r} has no {TRAINING} (nor {MEGATRON_LM_TRAINING}): "
                     "not a Megatron-DeepSpeed or Megatron-LM checkout")


def _inside(checkout: str, relative: str, path: str) -> str:
    real = os.path.realpath(path)
    root = os.path.realpath(checkout)
    if os.path.commonpath([root, real]) != root:
        raise PatchError(f"{path} is a link to {real}, outside CHECKOUT {checkout!r}: refusing to "
                         "edit a file outside the checkout (nothing written); copy it into the "
                         "checkout to patch it there")
    if os.stat(real).st_nlink > 1:
        raise PatchError(f"{path} has {os.stat(real).st_nlink} hard links: editing it would change "
                         "its other names too (possibly outside the checkout), replacing it would "
                         f"split them; refusing (nothing written): make {relative} a file of its own "
                         "(cp it aside and back) to patch it")
    return path if real == os.path.abspath(path) else real


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


def _suffix(data: bytes) -> Optional[Tuple[bytes, bool, bool]]:
    """(the block ending ``data``, whether an earlier version wrote it, had_final_newline)."""
    for current, body in ((True, _BODY), *((False, b) for b in LEGACY_BODIES)):
        for newline in (b"\n", b"\r\n"):
            for had_final_newline in (True, False):
                suffix = block(newline, had_final_newline, body)
                if data.endswith(suffix):
                    return suffix, not current, had_final_newline
    return None


def patched_suffix(data: bytes) -> Optional[bytes]:
    """The appended block at the end of ``data`` (exact bytes, this version's or an earlier
    one's), or None when not patched."""
    found = _suffix(data)
    return found[0] if found is not None else None


def status(checkout: str) -> str:
    """``"patched"``, ``"outdated"`` (an earlier version's block), ``"unpatched"`` or
    ``"modified"`` (a marker without an exact block)."""
    with open(training_path(checkout), "rb") as f:
        data = f.read()
    found = _suffix(data)
    if found is not None:
        return "outdated" if found[1] else "patched"
    return "modified" if BEGIN.encode() in data else "unpatched"


def plan_apply(checkout: str) -> Optional[Plan]:
    """What applying would write (None when already patched)."""
    fork = detect_fork(checkout)
    path = training_path(checkout)
    with open(path, "rb") as f:
        original = f.read()
    found = _suffix(original)
    if found is not None and not found[1]:
        return None
    if found is not None:  # an earlier version's block: replaced by this version's
        suffix, _, had_final_newline = found
        newline = b"\r\n" if suffix.endswith(b"\r\n") else b"\n"
        return Plan(path, fork, original,
                    original[:-len(suffix)] + block(newline, had_final_newline), upgrade=True)
    if BEGIN.encode() in original:
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
    # a link's target is named from the checkout's real path (it was resolved)
    base = os.path.realpath(checkout) if os.path.realpath(plan.path) == plan.path else checkout
    relative = os.path.relpath(plan.path, base)
    before = plan.original.decode("utf-8", "replace").splitlines(keepends=True)
    after = plan.patched.decode("utf-8", "replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, f"a/{relative}", f"b/{relative}"))


def write(plan: Plan) -> None:
    """Write the planned bytes through a temporary file created exclusively beside the module
    (never half-written, never through a link; removed on failure).  PatchError when the
    module changed since it was planned or cannot be written (nothing changed then)."""
    folder, name = os.path.split(plan.path)
    before = os.lstat(plan.path)
    if not stat.S_ISREG(before.st_mode) or before.st_nlink > 1:
        raise PatchError(f"{plan.path} is no longer a file of its own: nothing written")
    try:
        # mkstemp: O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600, a name no one can plant in advance
        descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".megatron-flops.tmp",
                                                 dir=folder or ".")
    except OSError as error:
        raise PatchError(f"{plan.path}: cannot create a temporary file in {folder or '.'} "
                         f"({error.strerror or error}); nothing written") from None
    try:
        with os.fdopen(descriptor, "wb") as f:
            f.write(plan.patched)
            f.flush()
            os.fsync(f.fileno())
            created = os.fstat(f.fileno())
            if hasattr(os, "fchown") and (before.st_uid, before.st_gid) != (created.st_uid,
                                                                             created.st_gid):
                try:  # keep the owner; only root may give a file away
                    os.fchown(f.fileno(), before.st_uid, before.st_gid)
                except OSError:
                    pass
            os.fchmod(f.fileno(), before.st_mode & 0o7777)  # keep the mode
        now = os.lstat(plan.path)
        with open(plan.path, "rb") as f:
            unchanged = f.read() == plan.original
        if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino) or not unchanged:
            raise PatchError(f"{plan.path} changed while it was being patched: nothing written "
                             "(run the command again)")
        os.replace(temporary, plan.path)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(error, OSError):
            raise PatchError(f"{plan.path}: cannot write the patched file "
                             f"({error.strerror or error}); nothing changed") from None
        raise
