"""Real console lines BigScience published (chronicles, READMEs, experiment logs) parse.

Test data: ``tests/data/logs/bigscience_quoted_lines.jsonl``, one line per record with its
repo, commit, path and line number in bigscience-workshop/bigscience; the argument dumps of
its ``experiments/**.out`` logs sit beside it (``provenance.json`` says where each came from).
"""

import json
import re
from pathlib import Path

import pytest

from megatron_flops.logs.console import Malformed, parse_line

DATA = Path(__file__).resolve().parents[1] / "data" / "logs"
QUOTED = [json.loads(line) for line in (DATA / "bigscience_quoted_lines.jsonl").read_text().splitlines()]
ELAPSED = re.compile(r"elapsed time per iteration \((m?s)\):\s*([0-9.]+)")


def test_the_quotes_cover_the_big_runs():
    paths = {q["path"] for q in QUOTED}
    assert {"train/tr11-176B-ml/chronicles.md", "train/tr8-104B-wide/chronicles.md",
            "train/tr1-13B-base/chronicles.md"} <= paths
    assert len(QUOTED) >= 250


@pytest.mark.parametrize("quote", QUOTED, ids=lambda q: f"{q['path']}:{q['line']}")
def test_every_published_line_parses(quote):
    elapsed = ELAPSED.search(quote["text"])
    if elapsed is None:  # the quote is cut before the elapsed time's value
        with pytest.raises(Malformed):
            parse_line(quote["text"], quote["line"])
        return
    record = parse_line(quote["text"], quote["line"])
    unit, value = elapsed.groups()
    assert record.seconds_per_iteration == pytest.approx(float(value) / (1000 if unit == "ms" else 1))
    iteration = int(re.search(r"iteration\s+(\d+)", quote["text"]).group(1))
    assert record.iteration == iteration


def test_argument_dumps_are_kept_with_provenance():
    provenance = json.loads((DATA / "provenance.json").read_text())
    assert provenance
    for name, where in provenance.items():
        text = (DATA / name).read_text()
        assert "------------------------ arguments ------------------------" in text
        assert where["repo"] == "bigscience-workshop/bigscience" and len(where["commit"]) == 40
