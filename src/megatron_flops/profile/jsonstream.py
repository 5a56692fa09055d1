"""An incremental JSON reader (standard library only): one document from a text stream, read
in chunks, its outer object and arrays walked member by member, each value decoded whole.

Memory is what the caller keeps plus the largest single value, not the file: a trace of a
few million events is read one event at a time.  Each value is decoded by :mod:`json`'s C
scanner (the speed of ``json.load``); a value nested too deeply for it (a
``RecursionError``) is decoded again by :func:`parse_iterative`, which keeps its own stack, so
no input depth makes the reader recurse.

A value that runs past the end of the buffer is decoded again once more text is read (at
least as much again as it already spans, so a large value costs linear time).  The end of the
stream inside a value is :class:`Truncated` (with what cut the stream: a compressed file that
ends before its end marker raises ``EOFError`` in :mod:`gzip`, caught here); any other
malformed text is :class:`JSONStreamError` with the character position.
"""

import codecs
import json
import re
from json.decoder import JSONDecodeError, scanstring
from json.scanner import NUMBER_RE
from typing import Any, Iterator, List, Optional

CHUNK = 1 << 20          # characters read at a time (at least)
PIECE = 1 << 16          # bytes per read() call
_MARGIN = 16             # an error this close to the buffer's end may be the buffer's end
_NONSPACE = re.compile(r"[^ \t\n\r]")
_CONSTANTS = {"true": True, "false": False, "null": None, "NaN": float("nan"),
              "Infinity": float("inf"), "-Infinity": float("-inf")}


class JSONStreamError(ValueError):
    """Malformed JSON, at ``position`` (characters from the start of the document)."""

    def __init__(self, message: str, position: int):
        super().__init__(f"{message} (character {position:,})")
        self.position = position


class Truncated(JSONStreamError):
    """The stream ended inside a value (``cut``: what ended it early, when known)."""

    def __init__(self, position: int, cut: Optional[str]):
        why = cut or "the text ends inside an unfinished value"
        ValueError.__init__(self, f"truncated at character {position:,}: {why}")
        self.position, self.cut = position, cut


def parse_iterative(s: str, idx: int):
    """``(value, end)`` of the JSON value starting at ``s[idx]``, as ``json``'s scanner returns
    it, with an explicit stack instead of recursion (any depth).  ``JSONDecodeError`` with
    the position where it stopped (the end of ``s`` when the value runs past it)."""
    stack: List[Any] = []     # open containers: [list] or [dict, pending key]
    n = len(s)
    while True:
        # one value at idx
        while idx < n and s[idx] in " \t\n\r":
            idx += 1
        if idx >= n:
            raise JSONDecodeError("Expecting value", s, idx)
        char = s[idx]
        if char == "{" or char == "[":
            container = {} if char == "{" else []
            idx += 1
            while idx < n and s[idx] in " \t\n\r":
                idx += 1
            if idx < n and s[idx] == ("}" if char == "{" else "]"):
                value, idx = container, idx + 1
            else:
                if char == "{":
                    key, idx = _key(s, idx)
                    stack.append([container, key])
                else:
                    stack.append([container, None])
                continue
        elif char == '"':
            value, idx = scanstring(s, idx + 1)
        else:
            match = NUMBER_RE.match(s, idx)
            if match is not None:
                integer, fraction, exponent = match.groups()
                value = (float(integer + (fraction or "") + (exponent or ""))
                         if fraction or exponent else int(integer))
                idx = match.end()
            else:
                for text, constant in _CONSTANTS.items():
                    if s.startswith(text, idx):
                        value, idx = constant, idx + len(text)
                        break
                else:
                    raise JSONDecodeError("Expecting value", s, idx)
        # place the value in the open containers, closing those that end
        while True:
            if not stack:
                return value, idx
            top = stack[-1]
            container = top[0]
            if top[1] is None:
                container.append(value)
            else:
                container[top[1]] = value
            while idx < n and s[idx] in " \t\n\r":
                idx += 1
            if idx >= n:
                raise JSONDecodeError("Expecting ',' delimiter", s, idx)
            char = s[idx]
            closing = "]" if top[1] is None else "}"
            if char == ",":
                idx += 1
                if top[1] is not None:
                    while idx < n and s[idx] in " \t\n\r":
                        idx += 1
                    top[1], idx = _key(s, idx)
                break                      # the next value
            if char == closing:
                idx += 1
                stack.pop()
                value = container          # closed: it is the value placed one level up
                continue
            raise JSONDecodeError("Expecting ',' delimiter", s, idx)


def _key(s: str, idx: int):
    """An object's key at ``idx`` and the position after its ``:``."""
    n = len(s)
    if idx >= n or s[idx] != '"':
        raise JSONDecodeError("Expecting property name enclosed in double quotes", s, idx)
    key, idx = scanstring(s, idx + 1)
    while idx < n and s[idx] in " \t\n\r":
        idx += 1
    if idx >= n or s[idx] != ":":
        raise JSONDecodeError("Expecting ':' delimiter", s, idx)
    return key, idx + 1


class JSONStream:
    """One JSON document read from ``handle`` (a binary stream of UTF-8 text, e.g. a
    ``gzip.open(path, "rb")``) piece by piece.  (Binary, decoded here: ``gzip`` hands out
    every byte before the cut and only then raises ``EOFError``, which a text wrapper's
    ``read`` would lose with the piece it was decoding.)"""

    def __init__(self, handle, chunk: Optional[int] = None):
        # read1: one read of the raw stream at a time, so what was decompressed before a cut is
        # handed out before the error (a buffered read() of several loses it)
        self._read = getattr(handle, "read1", handle.read)
        self._chunk = CHUNK if chunk is None else chunk
        self._piece = PIECE if chunk is None else min(PIECE, chunk)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""
        self._pos = 0
        self._base = 0          # characters dropped from the buffer's front
        self._eof = False
        self.cut: Optional[str] = None   # why the stream ended early, when it did
        self._scan = json.JSONDecoder().scan_once

    @property
    def position(self) -> int:
        """Characters consumed from the start of the document."""
        return self._base + self._pos

    def _more(self, at_least: int = 0) -> bool:
        """Read at least a chunk (and ``at_least`` characters) more; False at the end."""
        if self._eof:
            return False
        if self._pos:
            self._base += self._pos
            self._buf, self._pos = self._buf[self._pos:], 0
        want, parts, got = max(self._chunk, at_least), [], 0
        while got < want:
            try:
                data = self._read(self._piece)
            except EOFError as error:  # gzip: the compressed stream ends before its end marker
                self.cut = f"the compressed stream ends early ({error})"
                data = b""
            if not data:
                self._eof = True
                if self.cut is None:  # a character cut in two is a cut text: Truncated then
                    parts.append(self._utf8.decode(b"", final=True))
                break
            text = self._utf8.decode(data)
            parts.append(text)
            got += len(text)
        if parts:
            self._buf += "".join(parts)
        return got > 0

    def _error(self, message: str, position: Optional[int] = None) -> JSONStreamError:
        return JSONStreamError(message, self._base + (self._pos if position is None else position))

    def peek(self) -> str:
        """The next character that is not white space ("" at the end of the stream)."""
        while True:
            match = _NONSPACE.search(self._buf, self._pos)
            if match is not None:
                self._pos = match.start()
                return self._buf[self._pos]
            self._pos = len(self._buf)
            if not self._more():
                return ""

    def take(self, char: str, expected: str) -> None:
        """Consume ``char`` (the next non-space character) or fail saying ``expected``."""
        found = self.peek()
        if found == char:
            self._pos += 1
            return
        if not found:
            raise Truncated(self.position, self.cut)
        raise self._error(f"Expecting {expected}")

    def value(self) -> Any:
        """The next value, decoded whole."""
        if not self.peek():
            raise Truncated(self.position, self.cut)
        while True:
            buf, start = self._buf, self._pos
            try:
                try:
                    value, end = self._scan(buf, start)
                except StopIteration as stop:
                    raise JSONDecodeError("Expecting value", buf, stop.value) from None
                except RecursionError:
                    value, end = parse_iterative(buf, start)
                if buf[start] in '{["' or end + _MARGIN < len(buf) or self._eof:
                    self._pos = end
                    return value
                # a number or constant near the buffer's end may go on in the next chunk
                # ("0" of "0.5e3"): decoded again with more text
            except JSONDecodeError as error:
                near_end = error.pos >= len(buf) - _MARGIN or error.msg.startswith("Unterminated")
                if self._eof and near_end:
                    raise Truncated(self._base + len(buf), self.cut) from None
                if not near_end or self._eof:
                    raise self._error(error.msg, error.pos) from None
            self._more(at_least=len(self._buf) - self._pos)

    def items(self) -> Iterator[Any]:
        """The values of the array whose ``[`` was just taken."""
        if self.peek() == "]":
            self._pos += 1
            return
        while True:
            yield self.value()
            found = self.peek()
            self._pos += 1
            if found == ",":
                continue
            if found == "]":
                return
            self._pos -= 1
            if not found:
                raise Truncated(self.position, self.cut)
            raise self._error("Expecting ',' delimiter")

    def keys(self) -> Iterator[str]:
        """The keys of the object whose ``{`` was just taken; the caller reads each key's value
        (:meth:`value`, or :meth:`take` ``[`` and :meth:`items`) before asking for the next."""
        if self.peek() == "}":
            self._pos += 1
            return
        while True:
            if self.peek() != '"':
                if not self.peek():
                    raise Truncated(self.position, self.cut)
                raise self._error("Expecting property name enclosed in double quotes")
            key = self.value()
            self.take(":", "':' delimiter")
            yield key
            found = self.peek()
            if found == ",":
                self._pos += 1
                continue
            if found == "}":
                self._pos += 1
                return
            if not found:
                raise Truncated(self.position, self.cut)
            raise self._error("Expecting ',' delimiter")

    def end(self) -> None:
        """Nothing but white space may follow the document."""
        if self.peek():
            raise self._error("Extra data")
