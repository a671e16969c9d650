"""Tokenizers: a byte-level one for the embedded tiny model, and a checkpoint's own `tokenizer.json`
through the optional `tokenizers` package. Token ids always work without either."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from prfaas.model.tiny import BYTE_VOCAB, TINY_NAME


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes are token ids 0..255; ids above are special tokens and decode to nothing."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < BYTE_VOCAB).decode("utf-8", errors="replace")


class HFTokenizer:
    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as _Tok  # optional dependency

        self._tok = _Tok.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids))


def load_tokenizer(model: str, folder: Path) -> Tokenizer | None:
    """The tokenizer for a model, or None when only token ids can be used."""
    if model == TINY_NAME:
        return ByteTokenizer()
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        return HFTokenizer(path)
    except ImportError:
        return None
