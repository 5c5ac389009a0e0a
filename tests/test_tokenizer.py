"""Tests for the word tokenizer in diffuse.text."""

from __future__ import annotations

import json

import pytest
import torch

from diffuse.data.shapes import all_captions
from diffuse.text import WordTokenizer, split_words
from diffuse.text.tokenizer import SPECIALS

CAPTIONS = ["a red circle above a blue square", "a green triangle", "a red square left of a red circle"]


@pytest.fixture
def tokenizer() -> WordTokenizer:
    return WordTokenizer.fit(CAPTIONS)


def test_splitting_lowercases_and_separates_punctuation():
    words = split_words("A Red  circle,above\ta BLUE square!")
    assert words == ["a", "red", "circle", ",", "above", "a", "blue", "square", "!"]
    assert split_words("  ") == []


def test_fit_puts_specials_first_then_words_by_frequency(tokenizer):
    assert tokenizer.vocab[:4] == SPECIALS == ("<pad>", "<unk>", "<bos>", "<eos>")
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    # "a" 5 times, "red" 3, "circle" and "square" 2 (alphabetical), then the singletons.
    assert tokenizer.vocab[4:] == ("a", "red", "circle", "square", "above", "blue", "green", "left", "of", "triangle")
    assert WordTokenizer.fit(reversed(CAPTIONS)) == tokenizer
    assert WordTokenizer.fit(CAPTIONS, min_count=2).vocab[4:] == ("a", "red", "circle", "square")
    assert WordTokenizer.fit(CAPTIONS, max_size=6).vocab == (*SPECIALS, "a", "red")
    with pytest.raises(ValueError, match="min_count"):
        WordTokenizer.fit(CAPTIONS, min_count=0)
    with pytest.raises(ValueError, match="max_size"):
        WordTokenizer.fit(CAPTIONS, max_size=3)


def test_shapes_captions_round_trip():
    captions = [str(c) for c in all_captions()]
    tokenizer = WordTokenizer.fit(captions)
    assert len(tokenizer) == 4 + 1 + 4 + 3 + 5  # specials, "a", colours, shapes, left right of above below
    ids = tokenizer.encode(captions)
    assert ids.dtype == torch.long and ids.shape == (len(captions), 2 + 8)
    assert tokenizer.decode(ids) == captions
    assert (ids[:, 0] == tokenizer.bos_id).all()


def test_unknown_words_map_to_the_unknown_token(tokenizer):
    ids = tokenizer.encode("a purple circle")
    a, circle = tokenizer.vocab.index("a"), tokenizer.vocab.index("circle")
    assert ids.tolist() == [[tokenizer.bos_id, a, tokenizer.unk_id, circle, tokenizer.eos_id]]
    assert tokenizer.decode(ids) == ["a <unk> circle"]
    # Special tokens cannot be smuggled in as text.
    smuggled = tokenizer.encode("<pad> <eos>")[0, 1:-1]
    assert tokenizer.pad_id not in smuggled.tolist() and tokenizer.eos_id not in smuggled.tolist()
    assert (smuggled == tokenizer.unk_id).all()


def test_padding_and_attention_mask(tokenizer):
    ids = tokenizer.encode(["a green triangle", "a red circle above a blue square"])
    assert ids.shape == (2, 9)
    assert ids[0, 4].item() == tokenizer.eos_id and (ids[0, 5:] == tokenizer.pad_id).all()
    assert tokenizer.attention_mask(ids).sum(dim=1).tolist() == [5, 9]
    wide = tokenizer.encode(["a green triangle"], max_length=12)
    assert wide.shape == (1, 12) and torch.equal(wide[0, :9], ids[0])


def test_too_long_texts_are_an_error_unless_truncated(tokenizer):
    with pytest.raises(ValueError, match="max_length=4"):
        tokenizer.encode(["a red circle above a blue square"], max_length=4)
    cut = tokenizer.encode(["a red circle above a blue square"], max_length=4, truncate=True)
    assert tokenizer.decode(cut) == ["a red"] and cut[0, -1].item() == tokenizer.eos_id
    with pytest.raises(ValueError, match="max_length"):
        tokenizer.encode(["a"], max_length=1, truncate=True)


def test_json_round_trip(tokenizer):
    restored = WordTokenizer.from_dict(json.loads(json.dumps(tokenizer.to_dict())))
    assert restored == tokenizer
    assert torch.equal(restored.encode(CAPTIONS), tokenizer.encode(CAPTIONS))


def test_bad_vocabularies_and_ids_are_rejected(tokenizer):
    with pytest.raises(ValueError, match="kind"):
        WordTokenizer.from_dict({"kind": "bpe", "vocab": list(tokenizer.vocab)})
    with pytest.raises(ValueError, match="must start with"):
        WordTokenizer(("a", "b"))
    with pytest.raises(ValueError, match="repeats"):
        WordTokenizer((*SPECIALS, "a", "a"))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([[2, 99, 3]])
    with pytest.raises(ValueError, match="batch"):
        tokenizer.decode([2, 4, 3])
