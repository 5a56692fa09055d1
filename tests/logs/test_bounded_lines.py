"""A file's lines read in chunks (issue 25: relog at the speed of reading) are the lines
``readline`` gives, cut lines included: the same text, the same :class:`CutLine` marks,
whatever the chunk size, the line-length bound and the newline style."""

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_flops.logs import console
from megatron_flops.logs.console import BoundedLines, CutLine


def _lines(data: bytes, chunked: bool):
    stream = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace")
    return [(type(line) is CutLine, line) for line in BoundedLines(stream, chunked=chunked)]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"bc", b"|", b"\n", b"\r", b"\r\n", b"\xc3\xa9",
                                 b"\xff", b"xxxxxxx"]), max_size=40),
       st.integers(2, 12), st.integers(1, 15))
def test_chunks_give_the_lines_readline_gives(pieces, limit, chunk):
    data = b"".join(pieces)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(console, "MAX_LINE_CHARACTERS", limit)
        patch.setattr(console, "CHUNK_CHARACTERS", chunk)
        assert _lines(data, chunked=True) == _lines(data, chunked=False)


def test_lines_at_the_bound(monkeypatch):
    """A line of the bound's length or more (its newline not counted) is cut to it; one
    character less is whole; the rest of a cut line is dropped, the next line is read."""
    monkeypatch.setattr(console, "MAX_LINE_CHARACTERS", 5)
    monkeypatch.setattr(console, "CHUNK_CHARACTERS", 3)
    data = b"abcd\nabcde\nabcdefghijk\nxy\nabcde"
    want = [(False, "abcd\n"), (True, "abcde"), (True, "abcde"), (False, "xy\n"),
            (True, "abcde")]
    assert _lines(data, chunked=False) == want
    assert _lines(data, chunked=True) == want
