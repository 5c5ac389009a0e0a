"""Text for conditional models: a word tokenizer fitted offline on a data set's captions."""

from .tokenizer import WordTokenizer, split_words

__all__ = ["WordTokenizer", "split_words"]
