"""Corpora and vocabularies: local folders, Hugging Face downloads, word or sentencepiece tokens.

``load_corpus(path=..., name=..., tokenizer=...) -> Corpus`` with ``corpus.vocab`` and the splits
``corpus.train / valid / test`` as 1-D LongTensors. Batching lives in :mod:`lm.data.batching`.
"""

from lm.data.corpus import Corpus, load_configured_corpus, load_corpus
from lm.data.vocab import Vocabulary

__all__ = ["Corpus", "Vocabulary", "load_configured_corpus", "load_corpus"]
