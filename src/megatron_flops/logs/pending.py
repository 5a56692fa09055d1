"""An output file that appears only when the whole command succeeded.

:class:`PendingFile` writes under a temporary name in the output's own folder (created with
``O_EXCL``: never an existing file or link) and renames it onto the final name in
:meth:`~PendingFile.commit`.  Until then the previous file at that name is untouched; a
failure (a bad log, a full disk, an interrupt) ends in :meth:`~PendingFile.discard`, which
removes the temporary file.  Concurrent writers of one name cannot splice: each writes its
own temporary file and the last rename wins, whole.

A link at the output's name stays a link: the file it points to is what gets replaced (in
that file's folder).  A hard link is not kept: the name gets a new file.

A write that fails is re-raised as :class:`OutputError` (an ``OSError``) whose message names
the flag and the path as the user typed them.
"""

import errno as errno_codes
import os
import stat
import tempfile
from typing import List, Optional

__all__ = ["OutputError", "PendingFile", "check_writable", "make_folder"]

TEMPORARY_SUFFIX = ".megatron-flops-tmp"


class OutputError(OSError):
    """An output that cannot be written: ``strerror`` is one line naming the flag."""

    def __init__(self, flag: str, path: str, error: OSError):
        reason = error.strerror or str(error) or type(error).__name__
        super().__init__(error.errno, f"{flag} {path!r} cannot be written ({reason}); "
                                      "nothing was replaced")


def check_writable(flag: str, path: str) -> None:
    """OutputError unless ``path`` can be replaced: not a folder, not a read-only file."""
    if os.path.isdir(path):
        raise OutputError(flag, path, OSError(errno_codes.EISDIR, "it is a folder"))
    if os.path.lexists(path) and not os.access(path, os.W_OK):
        raise OutputError(flag, path, OSError(errno_codes.EACCES, "the file is read-only"))


def make_folder(flag: str, folder: str) -> List[str]:
    """Create ``folder`` and its missing parents; the folders created, innermost first (to
    remove again when the command fails)."""
    created = []
    current = os.path.abspath(folder)
    while not os.path.isdir(current):
        if os.path.lexists(current):
            raise OutputError(flag, folder, OSError(errno_codes.ENOTDIR,
                                                    f"{current!r} is not a folder"))
        created.append(current)
        current = os.path.dirname(current)
    try:
        for path in reversed(created):
            os.mkdir(path)
    except OSError as error:
        remove_folders(created)
        raise OutputError(flag, folder, error) from None
    return created


def remove_folders(created: List[str]) -> None:
    """Remove the folders :func:`make_folder` created, those still empty."""
    for path in created:
        try:
            os.rmdir(path)
        except OSError:
            return


def _new_file_mode(path: str) -> int:
    """The replaced file's mode, else what ``open(path, "w")`` would give (0o666 − umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


class PendingFile:
    """``path`` written under a temporary name beside it (``prefix`` starts that name) and
    renamed into place by :meth:`commit`; ``file`` is the open file object."""

    def __init__(self, flag: str, path: str, binary: bool = False,
                 prefix: Optional[str] = None, shown: Optional[str] = None):
        self.shown = shown or path   # the path as the user typed it, for messages
        if os.path.islink(path):     # a link stays a link: its target is what is replaced
            path = os.path.realpath(path)
        self.flag, self.path = flag, path
        check_writable(flag, path)
        folder = os.path.dirname(os.path.abspath(path))
        name = prefix if prefix is not None else f".{os.path.basename(path)}."
        try:
            descriptor, self.temporary = tempfile.mkstemp(dir=folder, prefix=name,
                                                          suffix=TEMPORARY_SUFFIX)
        except OSError as error:
            raise OutputError(flag, self.shown, error) from None
        try:
            os.fchmod(descriptor, _new_file_mode(path))
            self.file = (os.fdopen(descriptor, "wb") if binary else
                         os.fdopen(descriptor, "w", newline="", encoding="utf-8"))
        except BaseException:
            os.close(descriptor)
            os.unlink(self.temporary)
            raise
        self.done = False

    def write(self, data) -> None:
        try:
            self.file.write(data)
        except OSError as error:
            raise OutputError(self.flag, self.shown, error) from None

    def finish(self) -> None:
        """Everything written out (flushed and closed); an error here leaves the old file."""
        try:
            self.file.close()
        except OSError as error:
            raise OutputError(self.flag, self.shown, error) from None

    def commit(self, path: Optional[str] = None) -> None:
        """Finish, then rename the temporary file onto ``path`` (default: the one given)."""
        self.finish()
        try:
            os.replace(self.temporary, path or self.path)
        except OSError as error:
            raise OutputError(self.flag, self.shown, error) from None
        self.done = True

    def discard(self) -> None:
        """Remove the temporary file (the command failed); never raises."""
        if self.done:
            return
        self.done = True
        try:
            self.file.close()
        except OSError:
            pass  # a full disk: the flush fails, the file goes anyway
        try:
            os.unlink(self.temporary)
        except OSError:
            pass
