"""A corpus: train, valid and test splits as 1-D token-id tensors over one vocabulary.

Word level follows the AWD-LSTM convention (Merity et al. 2017, arXiv 1708.02182, ``data.py``): each
line is split on whitespace and followed by one ``<eos>`` (a blank line is a lone ``<eos>``), and one
vocabulary is built over train, valid and test in order of first occurrence. Subword corpora use a
sentencepiece model trained on the training split only (:mod:`lm.data.subword`).

Accepted folder layouts (detected in this order):

=============  =====================================================================
``awd-lstm``   ``train.txt``, ``valid.txt``, ``test.txt`` (PTB as AWD-LSTM's ``data/penn``)
``wikitext``   ``wiki.train.tokens``, ``wiki.valid.tokens``, ``wiki.test.tokens``
``ptb``        ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt`` (Mikolov's archive)
=============  =====================================================================
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import torch

from lm.data.hub import download_corpus
from lm.data.subword import encode_lines, train_sentencepiece
from lm.data.text_file import read_lines
from lm.data.vocab import EOS, Vocabulary
from lm.errors import UserError

SPLITS = ("train", "valid", "test")
LAYOUTS: dict[str, tuple[str, str, str]] = {
    "awd-lstm": ("train.txt", "valid.txt", "test.txt"),
    "wikitext": ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"),
    "ptb": ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
}
TOKENIZERS = ("word", "sentencepiece")


@dataclass
class Corpus:
    """Token ids of the three splits, their vocabulary, and where they came from."""

    vocab: Vocabulary
    train: torch.Tensor  # (n_train,) long
    valid: torch.Tensor  # (n_valid,) long
    test: torch.Tensor  # (n_test,) long
    source: str  # the folder the text was read from
    files: dict[str, dict] = field(default_factory=dict)  # split -> {"file", "bytes", "sha256"} of the text read

    def split(self, name: str) -> torch.Tensor:
        """The split called ``train``, ``valid`` (or ``validation``) or ``test``."""
        name = "valid" if name == "validation" else name
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r}; the splits are train, valid and test.")
        return getattr(self, name)

    def record(self) -> dict:
        """What a result file records of the corpus: its folder, and per split the file, its size and
        SHA-256, and the number of tokens (the AWD-LSTM count: words plus one ``<eos>`` per line)."""
        splits = {name: {**self.files.get(name, {}), "tokens": int(self.split(name).numel())} for name in SPLITS}
        return {"source": self.source, "vocab_size": len(self.vocab), "splits": splits}


def find_split_files(folder: Path) -> tuple[Path, Path, Path]:
    """The train, valid and test files of the first complete layout in :data:`LAYOUTS`."""
    partial = None
    for names in LAYOUTS.values():
        present = [(folder / name).is_file() for name in names]
        if all(present):
            return tuple(folder / name for name in names)
        if any(present) and partial is None:
            partial = next(folder / name for name, here in zip(names, present) if not here)
    if partial is not None:
        raise UserError(f"the corpus file {partial} does not exist.")
    raise UserError(
        f"the corpus folder {folder} holds neither train.txt, valid.txt, test.txt "
        "nor wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens."
    )


def _words(lines: list[str]) -> list[str]:
    """Whitespace-split words of every line, each line followed by ``<eos>``."""
    words: list[str] = []
    for line in lines:
        words += line.split()
        words.append(EOS)
    return words


def load_corpus(
    path: str | None = None,
    name: str | None = None,
    tokenizer: str = "word",
    sp_vocab_size: int = 8000,
    cache_dir: str | None = None,
    root: str | None = None,
) -> Corpus:
    """Read a corpus from a local folder (``path``) or download a named one first (``name``).

    Args:
        path: a folder in one of the :data:`LAYOUTS`; it takes precedence over ``name``.
        name: ``ptb``, ``wikitext-2`` or ``wikitext-103``, fetched through Hugging Face ``datasets``
            once and cached (see :func:`lm.data.hub.download_corpus`).
        tokenizer: ``word`` (AWD-LSTM convention) or ``sentencepiece``.
        sp_vocab_size: number of sentencepiece pieces, ``<unk>`` and ``<eos>`` included.
        cache_dir: the folder a named corpus is kept in (default ``~/.cache/softmax-bench/<name>``).
        root: a folder of local corpora by name: with ``name`` and no ``path``, ``root/name`` is read and
            nothing is downloaded (one suite-level setting serves suites over several corpora).
    Returns:
        the :class:`Corpus`; every bad input is a :class:`UserError` naming the file or value.
    """
    if tokenizer not in TOKENIZERS:
        raise UserError(f"unknown tokenizer {tokenizer!r}; choose word or sentencepiece.")
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.exists():
            raise UserError(f"the corpus folder {folder} does not exist.")
        if not folder.is_dir():
            raise UserError(f"the corpus path {folder} is a file; give the folder that holds the splits.")
    elif name is not None and root is not None:
        folder = Path(root).expanduser() / name
        if not folder.is_dir():
            raise UserError(f"data.root {root} has no folder {name}; put the {name} splits there or set data.path to their folder.")
    elif name is not None:
        folder = download_corpus(name, cache_dir)
    else:
        raise UserError("give a corpus folder (data.path) or a corpus name (data.name).")

    files = find_split_files(folder)
    lines = [read_lines(file) for file in files]
    for file, split_lines in zip(files, lines):
        if not any(word != EOS for line in split_lines for word in line.split()):
            raise UserError(f"the corpus file {file} contains no tokens, only blank lines and line ends.")

    if tokenizer == "word":
        words = [_words(split_lines) for split_lines in lines]
        vocab = Vocabulary(list(dict.fromkeys(chain.from_iterable(words))))
        ids = [vocab.encode(split_words) for split_words in words]
    else:
        vocab = train_sentencepiece(lines[0], sp_vocab_size, source=str(files[0]))
        ids = [encode_lines(vocab, split_lines) for split_lines in lines]
    files_info = {
        split: {"file": file.name, "bytes": file.stat().st_size, "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
        for split, file in zip(SPLITS, files)
    }
    return Corpus(vocab, *ids, source=str(folder.resolve()), files=files_info)


def load_configured_corpus(data) -> Corpus:
    """The corpus of a run's ``data`` config block (:class:`lm.config.DataConfig`)."""
    return load_corpus(path=data.path, name=data.name, tokenizer=data.tokenizer, sp_vocab_size=data.sp_vocab_size,
                       cache_dir=data.cache_dir, root=data.root)
