"""The shipped corpus is ours: the generator in the package reproduces it byte for byte."""

import pytest

from megatron_flops.demo.corpus import (DEFAULT_CORPUS_BYTES, default_corpus_path,
                                        generate_corpus, load_corpus)


def test_shipped_corpus_is_regenerated_exactly():
    shipped = default_corpus_path().read_bytes()
    assert shipped == generate_corpus().encode("utf-8")
    assert len(shipped) >= DEFAULT_CORPUS_BYTES
    assert len(shipped) < 2 * DEFAULT_CORPUS_BYTES


def test_corpus_is_plain_text_with_paragraphs():
    text = default_corpus_path().read_text(encoding="ascii")  # bytes 0-127 only
    paragraphs = text.split("\n\n")
    assert len(paragraphs) > 500
    # varied: many distinct sentences, not one line repeated
    sentences = set(text.replace("\n", " ").split(". "))
    assert len(sentences) > 2000


def test_generator_is_deterministic_per_seed():
    assert generate_corpus(5000, seed=1) == generate_corpus(5000, seed=1)
    assert generate_corpus(5000, seed=1) != generate_corpus(5000, seed=2)


def test_load_corpus(tmp_path):
    assert load_corpus() == default_corpus_path().read_bytes()
    mine = tmp_path / "mine.txt"
    mine.write_bytes(b"\x00\xffbytes")
    assert load_corpus(str(mine)) == b"\x00\xffbytes"
    with pytest.raises(ValueError, match="--data-path"):
        load_corpus(str(tmp_path / "missing.txt"))
