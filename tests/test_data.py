"""Corpora and vocabularies: AWD-LSTM conventions, layouts, unicode, bad input, sentencepiece, downloads."""

from __future__ import annotations

import time
from pathlib import Path

import datasets
import pytest
import torch

import lm.data.hub as hub
from lm.data import Corpus, Vocabulary, load_corpus
from lm.data.corpus import LAYOUTS
from lm.errors import UserError

TEXTS = {
    "train": "the cat sat\n\non the mat\n",
    "valid": "the dog sat\n",
    "test": "a bird\nflew",  # no final line end: the last line still gets its <eos>
}


def write_corpus(folder: Path, texts: dict[str, str] = TEXTS, layout: str = "awd-lstm") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, split in zip(LAYOUTS[layout], ("train", "valid", "test")):
        content = texts[split]
        (folder / file_name).write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return folder


def words(corpus: Corpus, split: str) -> list[str]:
    return corpus.vocab.decode(corpus.split(split))


# --- word level: the AWD-LSTM convention ------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_eos_after_every_line_including_blank_ones(tmp_path, layout):
    corpus = load_corpus(str(write_corpus(tmp_path, layout=layout)))
    assert words(corpus, "train") == "the cat sat <eos> <eos> on the mat <eos>".split()
    assert words(corpus, "valid") == "the dog sat <eos>".split()
    assert words(corpus, "test") == "a bird <eos> flew <eos>".split()
    assert corpus.source == str(tmp_path.resolve())


def test_vocabulary_spans_all_splits_in_first_occurrence_order(tmp_path):
    corpus = load_corpus(str(write_corpus(tmp_path)))
    expected = "the cat sat <eos> on mat dog a bird flew".split()
    assert corpus.vocab.itos == expected
    assert [corpus.vocab.stoi[word] for word in expected] == list(range(len(expected)))
    assert all(split.dtype == torch.long and split.dim() == 1 for split in (corpus.train, corpus.valid, corpus.test))


def test_layouts_are_detected_in_order_when_several_are_present(tmp_path):
    write_corpus(tmp_path, layout="wikitext")
    write_corpus(tmp_path, {"train": "x\n", "valid": "y\n", "test": "z\n"}, layout="awd-lstm")
    assert words(load_corpus(str(tmp_path)), "train") == ["x", "<eos>"]


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"])
def test_line_ends_are_universal(tmp_path, line_end):
    texts = {split: text.replace("\n", line_end) for split, text in TEXTS.items()}
    corpus = load_corpus(str(write_corpus(tmp_path, texts)))
    assert words(corpus, "train") == "the cat sat <eos> <eos> on the mat <eos>".split()


def test_unicode_words_and_unicode_whitespace(tmp_path):
    texts = {
        "train": "ünïcödé 中文 🙂\tcafé\u00a0noir\n",  # tab and no-break space separate words
        "valid": "ελληνικά <unk> N\n",
        "test": "中文\n",
    }
    corpus = load_corpus(str(write_corpus(tmp_path, texts)))
    assert words(corpus, "train") == ["ünïcödé", "中文", "🙂", "café", "noir", "<eos>"]
    assert words(corpus, "valid") == ["ελληνικά", "<unk>", "N", "<eos>"]
    assert corpus.test.tolist() == [corpus.vocab.stoi["中文"], corpus.vocab.eos_id]


def test_byte_order_mark_is_not_a_word(tmp_path):
    texts = dict(TEXTS, train=b"\xef\xbb\xbfthe cat\n")
    assert words(load_corpus(str(write_corpus(tmp_path, texts))), "train") == ["the", "cat", "<eos>"]


def test_split_names():
    vocab = Vocabulary(["a", "<eos>"])
    ids = torch.tensor([0, 1])
    corpus = Corpus(vocab, ids, ids + 0, ids + 0, source="x")
    assert corpus.split("validation") is corpus.valid
    with pytest.raises(UserError, match="unknown split"):
        corpus.split("dev")


# --- bad input: one UserError sentence naming the file -----------------------------------------------


@pytest.mark.parametrize(
    ("split", "content", "message"),
    [
        ("train", b"", "is empty"),
        ("valid", b"a\x00b\n", "binary"),
        ("test", b"caf\xe9\n", "not valid UTF-8"),
        ("train", b"\n  \n\t\n", "no tokens"),
    ],
)
def test_bad_file_names_the_file(tmp_path, split, content, message):
    folder = write_corpus(tmp_path, dict(TEXTS, **{split: content}))
    with pytest.raises(UserError, match=message) as caught:
        load_corpus(str(folder))
    assert f"{split}.txt" in str(caught.value)


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_corpus(str(tmp_path / "nowhere"))


def test_path_is_a_file(tmp_path):
    (tmp_path / "train.txt").write_text("a\n")
    with pytest.raises(UserError, match="is a file"):
        load_corpus(str(tmp_path / "train.txt"))


def test_missing_file_of_a_layout_is_named(tmp_path):
    write_corpus(tmp_path, layout="wikitext")
    (tmp_path / "wiki.test.tokens").unlink()
    with pytest.raises(UserError, match=r"wiki\.test\.tokens does not exist"):
        load_corpus(str(tmp_path))


def test_folder_without_any_layout(tmp_path):
    (tmp_path / "corpus.txt").write_text("a\n")
    with pytest.raises(UserError, match="holds neither"):
        load_corpus(str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "data.path"),
        ({"path": ".", "tokenizer": "bpe"}, "unknown tokenizer"),
        ({"name": "enwik8"}, "unknown corpus"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(UserError, match=message):
        load_corpus(**kwargs)


# --- vocabulary -------------------------------------------------------------------------------------


def test_vocabulary_encode_decode_and_unknown_token():
    vocab = Vocabulary(["<eos>", "a", "b"])
    assert vocab.encode(["b", "a", "<eos>"]).tolist() == [2, 1, 0]
    assert vocab.decode(torch.tensor([[1, 2]])) == ["a", "b"]
    with pytest.raises(UserError, match="'c' is not in the vocabulary"):
        vocab.encode(["a", "c"])
    with pytest.raises(UserError, match="twice"):
        Vocabulary(["a", "a"])


def test_fingerprint_depends_on_the_token_order_only():
    assert Vocabulary(["a", "b"]).fingerprint() == Vocabulary(["a", "b"]).fingerprint()
    assert Vocabulary(["a", "b"]).fingerprint() != Vocabulary(["b", "a"]).fingerprint()
    assert Vocabulary(["ab"]).fingerprint() != Vocabulary(["a", "b"]).fingerprint()
    assert len(Vocabulary(["a"]).fingerprint()) == 64


@pytest.mark.parametrize("model", [None, b"\x00\x01binary\xff"])
def test_vocabulary_state_dict_loads_with_weights_only(tmp_path, model):
    vocab = Vocabulary(["<eos>", "ünï", "🙂"], sentencepiece_model=model)
    torch.save({"vocab": vocab.state_dict()}, tmp_path / "checkpoint.pt")
    restored = Vocabulary.from_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["vocab"])
    assert restored == vocab
    assert restored.fingerprint() == vocab.fingerprint()
    assert restored.sentencepiece_model == model


# --- sentencepiece ----------------------------------------------------------------------------------

SP_TEXTS = {
    "train": "".join(f"the quick brown fox number {i} jumps over the lazy dog\n\n" for i in range(30)),
    "valid": "the lazy fox jumps\n",
    "test": "a quick dog\n\nover\n",
}


def test_sentencepiece_round_trip_and_eos_per_line(tmp_path):
    corpus = load_corpus(str(write_corpus(tmp_path, SP_TEXTS)), tokenizer="sentencepiece", sp_vocab_size=40)
    vocab = corpus.vocab
    assert len(vocab) == 40 and vocab.is_sentencepiece
    assert vocab.itos[:2] == ["<unk>", "<eos>"] and vocab.eos_id == 1
    for split, text in SP_TEXTS.items():
        ids = corpus.split(split).tolist()
        lines = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
        assert ids.count(vocab.eos_id) == len(lines) and ids[-1] == vocab.eos_id
        per_line, current = [], []
        for index in ids:
            if index == vocab.eos_id:
                per_line.append(current)
                current = []
            else:
                current.append(index)
        # valid and test only use characters seen in training, so decoding gives the text back
        assert [vocab.sentencepiece.decode(piece_ids) for piece_ids in per_line] == lines


def test_sentencepiece_is_deterministic_and_saved_with_the_vocabulary(tmp_path):
    folder = write_corpus(tmp_path, SP_TEXTS)
    first = load_corpus(str(folder), tokenizer="sentencepiece", sp_vocab_size=40)
    second = load_corpus(str(folder), tokenizer="sentencepiece", sp_vocab_size=40)
    assert first.vocab.fingerprint() == second.vocab.fingerprint()
    assert torch.equal(first.train, second.train)
    restored = Vocabulary.from_state_dict(first.vocab.state_dict())
    assert restored.sentencepiece.encode("the lazy dog", out_type=int) == first.vocab.sentencepiece.encode(
        "the lazy dog", out_type=int
    )


def test_sentencepiece_trains_on_the_training_split_only(tmp_path):
    texts = dict(SP_TEXTS, valid="ωψ fox\n")  # Greek letters never occur in train
    corpus = load_corpus(str(write_corpus(tmp_path, texts)), tokenizer="sentencepiece", sp_vocab_size=40)
    assert 0 in corpus.valid.tolist()  # <unk>
    assert not any("ω" in piece or "ψ" in piece for piece in corpus.vocab.itos)


def test_sentencepiece_vocabulary_too_large(tmp_path):
    with pytest.raises(UserError, match="at most"):
        load_corpus(str(write_corpus(tmp_path)), tokenizer="sentencepiece", sp_vocab_size=5000)


# --- downloads through Hugging Face datasets (never the network in tests) ---------------------------

FAKE_HUB = {
    "train": {"text": [" = Title = \n", "", " one two \n"]},  # WikiText rows keep "\n", blank rows are ""
    "validation": {"text": [" two three \n"]},
    "test": {"text": [" three \n", ""]},
}


def failing_load_dataset(*args, **kwargs):
    raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")


def test_offline_download_fails_fast_with_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", failing_load_dataset)
    start = time.perf_counter()
    with pytest.raises(UserError) as caught:
        load_corpus(name="wikitext-2", cache_dir=str(tmp_path / "cache"))
    message = str(caught.value)
    assert time.perf_counter() - start < 5.0
    assert "download" in message and "data.path" in message and "ConnectionError" in message
    assert "\n" not in message and message.count(". ") == 0
    assert not (tmp_path / "cache").exists()  # nothing half-written


def test_unreachable_hub_does_not_call_load_dataset(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a))
    with pytest.raises(UserError, match="cannot be reached.*data.path"):
        load_corpus(name="ptb", cache_dir=str(tmp_path / "cache"))
    assert calls == []


def test_download_writes_the_layout_once_then_loads_offline(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(dataset, config=None):
        calls.append((dataset, config))
        return FAKE_HUB

    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cache = tmp_path / "cache"
    corpus = load_corpus(name="wikitext-2", cache_dir=str(cache))
    assert calls == [("wikitext", "wikitext-2-v1")]
    assert (cache / "wiki.train.tokens").read_text(encoding="utf-8") == " = Title = \n\n one two \n"
    assert words(corpus, "train") == "= Title = <eos> <eos> one two <eos>".split()
    assert words(corpus, "test") == "three <eos> <eos>".split()

    monkeypatch.setattr(datasets, "load_dataset", failing_load_dataset)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    again = load_corpus(name="wikitext-2", cache_dir=str(cache))
    assert torch.equal(again.train, corpus.train) and again.vocab == corpus.vocab

    with pytest.raises(UserError, match="holds the corpus 'wikitext-2', not 'ptb'"):
        load_corpus(name="ptb", cache_dir=str(cache))


def test_download_refuses_a_foreign_non_empty_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: FAKE_HUB)
    write_corpus(tmp_path / "mine")
    with pytest.raises(UserError, match="not empty"):
        load_corpus(name="ptb", cache_dir=str(tmp_path / "mine"))


def test_corpus_record_has_token_counts_and_checksums_of_each_split(tmp_path):
    import hashlib

    folder = write_corpus(tmp_path / "c", layout="ptb")
    record = load_corpus(str(folder)).record()
    assert record["source"] == str(folder.resolve()) and record["vocab_size"] == 10  # the cat sat <eos> on mat dog a bird flew
    # Hand counts: train "the cat sat / (blank) / on the mat" = 3 + 1 + 1 + 3 + 1 words and <eos>.
    assert {s: record["splits"][s]["tokens"] for s in ("train", "valid", "test")} == {"train": 9, "valid": 4, "test": 5}
    for split, name in zip(("train", "valid", "test"), LAYOUTS["ptb"]):
        raw = (folder / name).read_bytes()
        assert record["splits"][split] == {"file": name, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                                           "tokens": record["splits"][split]["tokens"]}


def test_a_config_naming_a_corpus_without_network_fails_with_one_sentence_naming_data_path(tmp_path, capsys):
    """Offline (HF_HUB_OFFLINE, an empty cache), ``data.name`` ends with one sentence saying to set data.path."""
    import os

    from lm.cli import main

    environment = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        hub_constants = __import__("huggingface_hub").constants
        old_flags = (hub_constants.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
        hub_constants.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
        status = main(["train", str(Path(__file__).parent.parent / "configs" / "ptb-lite-lstm.yaml"),
                       "data.path=null", "data.name=wikitext-2", f"data.cache_dir={tmp_path / 'cache'}",
                       f"run.output_dir={tmp_path / 'runs'}", "--no-progress"])
    finally:
        hub_constants.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = old_flags
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    err = capsys.readouterr().err
    assert status == 2 and err.strip().count("\n") == 0, err
    assert err.startswith("softmax-bench: error: downloading the corpus 'wikitext-2'") and "data.path" in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("last.pt"))


def test_a_data_root_serves_named_corpora_without_a_download(tmp_path, monkeypatch):
    """data.root: with a corpus name and no path, ROOT/NAME is read; nothing touches the Hub; a missing
    folder is one sentence naming the root, the name and data.path."""
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a))
    write_corpus(tmp_path / "data" / "ptb")
    from_root = load_corpus(name="ptb", root=str(tmp_path / "data"))
    by_path = load_corpus(path=str(tmp_path / "data" / "ptb"))
    assert torch.equal(from_root.train, by_path.train) and from_root.vocab == by_path.vocab and calls == []
    with pytest.raises(UserError) as caught:
        load_corpus(name="wikitext-2", root=str(tmp_path / "data"))
    message = str(caught.value)
    assert "has no folder wikitext-2" in message and "data.path" in message and "\n" not in message and calls == []
