"""The tokenizer's vocabulary size, read the way the framework builds it (standard library only).

Megatron pads the tokenizer's size (:func:`megatron_flops.megatron.args.padded_vocab_size`);
the size itself comes from the tokenizer the command names.  :func:`tokenizer_vocab` reads it
from the files the command points to where they are readable here — a Hugging Face
``tokenizer.json`` or tokenizer directory, a SentencePiece ``.model`` (a protobuf: its pieces
are counted by :func:`sentencepiece_piece_count`, a few lines of wire-format reading), a GPT-2
``vocab.json`` — and by the framework's own rule where it has one (TikTokenizer: ``--vocab-size``
or 2**17; NullTokenizer: ``--vocab-size``).  Otherwise it returns ``None`` with the reason, and
the caller labels what it assumes.
"""

import json
import os
from typing import Iterator, List, NamedTuple, Optional, Tuple

__all__ = ["TokenizerSize", "tokenizer_vocab", "sentencepiece_piece_count",
           "huggingface_vocab_size", "GPT2_BPE_VOCAB_SIZE", "LLAMA2_VOCAB_SIZE"]

GPT2_BPE_VOCAB_SIZE = 50257   # GPT-2's BPE encoder.json: 50,000 merges + 256 bytes + <|endoftext|>
LLAMA2_VOCAB_SIZE = 32000     # Llama 2's tokenizer.model: 32,000 SentencePiece pieces
TIKTOKEN_DEFAULT_VOCAB = 2 ** 17  # Megatron-LM tiktoken_tokenizer.py DEFAULT_TIKTOKEN_MAX_VOCAB


class TokenizerSize(NamedTuple):
    """``size``: the tokenizer's vocabulary before padding (None: not known); ``source``: how
    it was found, or why not; ``assumed``: a guess (warned, refused by ``--strict``)."""

    size: Optional[int]
    source: str
    assumed: bool = False


# ---- SentencePiece: ModelProto { repeated SentencePiece pieces = 1; ... } -------------------
def _varint(data: bytes, at: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(message: bytes) -> Iterator[Tuple[int, Optional[bytes]]]:
    """(field number, payload) of each field of a protobuf message: the bytes of a
    length-delimited field (wire type 2), None for the others (skipped)."""
    at = 0
    while at < len(message):
        key, at = _varint(message, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, at = _varint(message, at)
            yield number, None
        elif wire == 1:
            at += 8
            yield number, None
        elif wire == 5:
            at += 4
            yield number, None
        elif wire == 2:
            length, at = _varint(message, at)
            if at + length > len(message):
                raise ValueError("truncated field")
            yield number, message[at:at + length]
            at += length
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _sentencepiece_pieces(data: bytes) -> List[bytes]:
    """Each ``pieces`` entry's ``piece`` string (field 1 of the SentencePiece message)."""
    return [_piece_text(payload) for number, payload in _fields(data)
            if number == 1 and payload is not None]


def _piece_text(message: bytes) -> bytes:
    for number, payload in _fields(message):
        if number == 1 and payload is not None:
            return payload
    return b""


def sentencepiece_piece_count(path: str) -> int:
    """``get_piece_size()`` of a SentencePiece ``.model`` file: its ``pieces`` entries."""
    with open(path, "rb") as stream:
        return len(_sentencepiece_pieces(stream.read()))


# ---- Hugging Face ------------------------------------------------------------------------
def huggingface_vocab_size(path: str) -> int:
    """``len(tokenizer)`` of a ``tokenizer.json``: the distinct ids of the model's vocabulary
    (a dict for BPE/WordPiece/WordLevel, a list of ``[piece, score]`` for Unigram) and of
    ``added_tokens`` (an added token already in the vocabulary is not counted twice)."""
    with open(path, encoding="utf-8") as stream:
        data = json.load(stream)
    vocab = (data.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        ids = set(int(i) for i in vocab.values())
    elif isinstance(vocab, list):
        ids = set(range(len(vocab)))
    else:
        raise ValueError("no model.vocab")
    ids |= {int(token["id"]) for token in data.get("added_tokens") or ()}
    return len(ids)


def _json_vocab_size(path: str, added: Optional[str] = None) -> int:
    """A ``vocab.json`` (token -> id) and, when present, ``added_tokens.json``."""
    with open(path, encoding="utf-8") as stream:
        ids = set(int(i) for i in json.load(stream).values())
    if added and os.path.isfile(added):
        with open(added, encoding="utf-8") as stream:
            ids |= set(int(i) for i in json.load(stream).values())
    return len(ids)


def _readable(path: Optional[str]) -> bool:
    return bool(path) and os.path.exists(path)


def _read(path: str, kind: str) -> TokenizerSize:
    """The size of a tokenizer file or directory ``path`` of ``kind`` (hf, sentencepiece, gpt2)."""
    try:
        if os.path.isdir(path):
            for name, reader in (("tokenizer.json", huggingface_vocab_size),
                                 ("tokenizer.model", sentencepiece_piece_count)):
                candidate = os.path.join(path, name)
                if os.path.isfile(candidate):
                    size = reader(candidate)
                    if name == "tokenizer.model":
                        added = os.path.join(path, "added_tokens.json")
                        if os.path.isfile(added):
                            with open(added, encoding="utf-8") as stream:
                                size += len(json.load(stream))
                    return TokenizerSize(size, f"{candidate} ({size} tokens)")
            candidate = os.path.join(path, "vocab.json")
            if os.path.isfile(candidate):
                size = _json_vocab_size(candidate, os.path.join(path, "added_tokens.json"))
                return TokenizerSize(size, f"{candidate} ({size} tokens)")
            return TokenizerSize(None, f"{path} holds no tokenizer.json, tokenizer.model or "
                                       "vocab.json")
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as stream:
                data = json.load(stream)
            if isinstance(data, dict) and "model" in data:
                size = huggingface_vocab_size(path)
            elif isinstance(data, dict):
                size = len(set(int(i) for i in data.values()))
            elif isinstance(data, list):  # Megatron-LM's tiktoken JSON: one rank per entry
                size = len(data)
            else:
                raise ValueError("not a tokenizer file")
            return TokenizerSize(size, f"{path} ({size} tokens)")
        if kind == "sentencepiece" or path.endswith(".model"):
            size = sentencepiece_piece_count(path)
            return TokenizerSize(size, f"{path} ({size} SentencePiece pieces)")
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        return TokenizerSize(None, f"{path} could not be read ({error})")
    return TokenizerSize(None, f"{path}: not a tokenizer file this tool reads")


def tokenizer_vocab(ns, null_tokenizer_adds_eod: bool = False) -> TokenizerSize:
    """The tokenizer's size before padding, as the command names it (``ns``: its flags).

    ``--vocab-size`` is the size outright except for TikTokenizer (its own size too) and
    NullTokenizer (``null_tokenizer_adds_eod``: Megatron-LM before 2026-04 adds the eod token).
    """
    kind = getattr(ns, "tokenizer_type", None)
    model = getattr(ns, "tokenizer_model", None)
    vocab_file = getattr(ns, "vocab_file", None)
    name_or_path = getattr(ns, "tokenizer_name_or_path", None)  # bigscience's HF tokenizer
    given = getattr(ns, "vocab_size", None)
    if kind == "NullTokenizer":
        if given is None:
            return TokenizerSize(None, "NullTokenizer needs --vocab-size (Megatron-LM requires "
                                       "it)")
        if null_tokenizer_adds_eod:
            return TokenizerSize(int(given) + 1, f"NullTokenizer: --vocab-size {given} + 1 for "
                                                 "the eod token")
        return TokenizerSize(int(given), f"NullTokenizer: --vocab-size {given}")
    if given is not None:
        return TokenizerSize(int(given), "--vocab-size")
    if kind == "TikTokenizer":
        return TokenizerSize(TIKTOKEN_DEFAULT_VOCAB,
                             f"TikTokenizer without --vocab-size: Megatron-LM's default "
                             f"{TIKTOKEN_DEFAULT_VOCAB}")
    path = model or name_or_path
    if kind in (None, "GPT2BPETokenizer") and not path:
        if kind == "GPT2BPETokenizer" or vocab_file:
            if _readable(vocab_file):
                read = _read(vocab_file, "gpt2")
                if read.size is not None:
                    return read
            return TokenizerSize(GPT2_BPE_VOCAB_SIZE,
                                 f"GPT2BPETokenizer: GPT-2's BPE vocabulary "
                                 f"({GPT2_BPE_VOCAB_SIZE})")
        return TokenizerSize(GPT2_BPE_VOCAB_SIZE, "no tokenizer named (no --tokenizer-type, "
                             f"--tokenizer-model or --vocab-size): GPT-2's BPE "
                             f"{GPT2_BPE_VOCAB_SIZE}", assumed=True)
    if path and _readable(path):
        read = _read(path, "sentencepiece" if kind and "SentencePiece" in kind or
                     kind == "Llama2Tokenizer" else "hf")
        if read.size is not None:
            return read._replace(size=read.size + _extra_special_tokens(ns, path, kind))
        return TokenizerSize(None, read.source)
    where = f" ({path} is not readable here)" if path else ""
    if kind == "Llama2Tokenizer":
        return TokenizerSize(LLAMA2_VOCAB_SIZE, f"Llama2Tokenizer{where}: Llama 2's "
                             f"{LLAMA2_VOCAB_SIZE}-piece SentencePiece model", assumed=True)
    return TokenizerSize(None, f"{kind or 'the tokenizer'}{where}")


def _extra_special_tokens(ns, path: str, kind: Optional[str]) -> int:
    """SentencePieceTokenizer's legacy mode adds ``--tokenizer-special-tokens`` that are not
    pieces already (Megatron-LM sentencepiece_tokenizer.py add_special_tokens)."""
    special = getattr(ns, "special_tokens", None)
    if not special or kind not in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer") or \
            not getattr(ns, "tokenizer_sentencepiece_legacy", False):
        return 0
    try:
        with open(path, "rb") as stream:
            pieces = set(_sentencepiece_pieces(stream.read()))
    except (OSError, ValueError):
        return 0
    return len({t for t in special if t.encode() not in pieces})
