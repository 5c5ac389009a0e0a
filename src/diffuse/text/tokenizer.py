"""A word-level tokenizer whose vocabulary is fitted on a corpus of captions.

Small synthetic caption sets have a few dozen words, so whole words are the natural
unit: no merges to learn, nothing to download, and the vocabulary is readable JSON
that a checkpoint stores beside the weights.

Ids 0-3 are reserved: padding (always 0, so ``ids != 0`` is the attention mask),
unknown, begin and end of text. Text is lowercased and split into runs of letters and
digits, each other non-space character standing alone ("red, circle" -> "red" "," "circle").
Special tokens cannot be written in text: "<pad>" splits into "<", "pad", ">".
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
KIND = "word"

_WORD = re.compile(r"\w+|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Lowercased words and punctuation marks, in order."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class WordTokenizer:
    """A vocabulary: ``vocab[i]`` is the token with id i, the first four being SPECIALS."""

    vocab: tuple[str, ...]

    # Positions of SPECIALS, the same in every vocabulary (class constants, not fields).
    pad_id = 0
    unk_id = 1
    bos_id = 2
    eos_id = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocab", tuple(self.vocab))
        if self.vocab[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {self.vocab[:len(SPECIALS)]}")
        if len(set(self.vocab)) != len(self.vocab):
            repeated = sorted(w for w, c in Counter(self.vocab).items() if c > 1)
            raise ValueError(f"vocabulary repeats {repeated}")
        object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.vocab)})

    @classmethod
    def fit(cls, texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> WordTokenizer:
        """The words of ``texts`` seen at least ``min_count`` times, most frequent first
        (ties alphabetical), at most ``max_size`` ids in all including the specials."""
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        if max_size is not None and max_size < len(SPECIALS):
            raise ValueError(f"max_size must leave room for the {len(SPECIALS)} special tokens, got {max_size}")
        counts = Counter(w for text in texts for w in split_words(text))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - len(SPECIALS)]
        return cls((*SPECIALS, *words))

    def __len__(self) -> int:
        return len(self.vocab)

    def token_ids(self, text: str) -> list[int]:
        """Ids of one text's words, unknown words as ``unk_id``, without begin/end."""
        return [self._ids.get(w, self.unk_id) for w in split_words(text)]

    def encode(self, texts: str | Sequence[str], max_length: int | None = None, truncate: bool = False) -> torch.Tensor:
        """int64 [B, L]: <bos> words <eos>, right-padded with 0 to the longest text or ``max_length``.

        A text longer than ``max_length`` (counting <bos> and <eos>) is an error unless
        ``truncate``, which keeps its first words and still ends it with <eos>.
        A single string is a batch of one.
        """
        if isinstance(texts, str):
            texts = [texts]
        rows = [[self.bos_id, *self.token_ids(t), self.eos_id] for t in texts]
        length = max((len(r) for r in rows), default=2) if max_length is None else max_length
        if length < 2:
            raise ValueError(f"max_length must hold <bos> and <eos>, got {max_length}")
        out = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            if len(row) > length:
                if not truncate:
                    raise ValueError(
                        f"text {texts[i]!r} takes {len(row)} tokens with <bos> and <eos>, "
                        f"more than max_length={length}; pass truncate=True to cut it"
                    )
                row = [*row[: length - 1], self.eos_id]
            out[i, : len(row)] = torch.tensor(row)
        return out

    def attention_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """True where ``ids`` holds a token, False at padding."""
        return ids != self.pad_id

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Texts of a batch of id rows; padding, <bos> and <eos> are dropped, unknown words
        come back as "<unk>", and tokens are joined by single spaces."""
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if not all(isinstance(r, (list, tuple)) for r in rows):
            raise ValueError("decode takes a batch of id rows [B, L]; wrap a single row in a list")
        skip = {self.pad_id, self.bos_id, self.eos_id}
        texts = []
        for row in rows:
            bad = [i for i in row if not 0 <= i < len(self.vocab)]
            if bad:
                raise ValueError(f"ids {bad} are outside the vocabulary of {len(self.vocab)}")
            texts.append(" ".join(self.vocab[i] for i in row if i not in skip))
        return texts

    def to_dict(self) -> dict:
        """A JSON-ready description; ``from_dict`` inverts it."""
        return {"kind": KIND, "vocab": list(self.vocab)}

    @classmethod
    def from_dict(cls, config: dict) -> WordTokenizer:
        if config.get("kind") != KIND:
            raise ValueError(f"not a word tokenizer config: kind {config.get('kind')!r}, expected {KIND!r}")
        return cls(tuple(config["vocab"]))
