"""Shared fixtures: tiny corpora and tiny configs built in a temporary folder (tests never read ../shared)."""

from __future__ import annotations

import os

# Tiny matrices: BLAS threads only add contention (5-20x slower on a busy 2-core machine). Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import random
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tiny tensors: threads only add noise and contention on the 2-core CI machine


def write_tiny_corpus(folder: Path, n_lines=(60, 12, 12), seed: int = 0, layout: str = "ptb") -> Path:
    """A small corpus with learnable structure (a noisy repeating grammar), in either layout."""
    rng = random.Random(seed)
    subjects, verbs, objects = ["the cat", "a dog", "my friend", "the bird"], ["sees", "eats", "likes"], ["fish", "bread", "the ball", "a tree"]
    names = {"ptb": ("train.txt", "valid.txt", "test.txt"), "wiki": ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")}[layout]
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in zip(names, n_lines):
        lines = []
        for _ in range(n):
            words = [rng.choice(subjects), rng.choice(verbs), rng.choice(objects)]
            if rng.random() < 0.3:
                words += ["and", rng.choice(verbs), rng.choice(objects)]
            lines.append(" ".join(words))
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    return write_tiny_corpus(tmp_path / "corpus")


def tiny_overrides(corpus: Path, output_dir: Path, head: str | None = None, **extra) -> list[str]:
    """Overrides that turn any shipped config into a seconds-long CPU run on ``corpus``.

    The head's sizes go to ``head.shared`` (for whichever head takes them), which a config's own options
    for its chosen head outrank; name that ``head`` to set them as its own options instead.
    """
    from lm.heads import head_options

    sizes = {"n_components": 3, "d_latent": 16}
    if head is None:
        head_sizes = {f"head.shared.{k}": v for k, v in sizes.items()}
    else:
        head_sizes = {"head.name": head, **{f"head.{k}": v for k, v in sizes.items() if k in head_options(head)}}
    values = {
        "data.path": str(corpus),
        "model.d_embedding": 16,
        "model.d_hidden": 24,
        "model.n_layers": 2,
        "model.d_model": 16,
        "model.n_heads": 2,
        "model.d_ff": 32,
        "model.context_length": 16,
        **head_sizes,
        "train.batch_size": 4,
        "train.bptt": 8,
        "train.max_seq_len_delta": 4,
        "train.epochs": 2,
        "train.eval_batch_size": 2,
        "train.test_batch_size": 1,
        "train.checkpoint_every": 5,
        "train.log_every": 5,
        "train.warmup_steps": 5,
        "run.output_dir": str(output_dir),
        "run.device": "cpu",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


class Interrupt(Exception):
    """Raised inside training right after a checkpoint is saved, as a kill at that moment would stop it."""


def interrupt_training(config, monkeypatch, stop) -> dict:
    """Train ``config`` until ``stop(trainer_state)`` holds right after a ``last.pt`` save, then stop there
    (``Interrupt``); return the trainer state of that checkpoint. Saving works normally afterwards."""
    import lm.train

    real, stopped = lm.train.save_checkpoint, {}

    def save(path, checkpoint, keep_previous=True):
        real(path, checkpoint, keep_previous=keep_previous)
        state = checkpoint.get("trainer", {})
        if Path(path).name == "last.pt" and not stopped and stop(state):
            stopped.update(state)
            raise Interrupt

    monkeypatch.setattr(lm.train, "save_checkpoint", save)
    try:
        with pytest.raises(Interrupt):
            lm.train.train(config)
    finally:
        monkeypatch.setattr(lm.train, "save_checkpoint", real)
    return stopped
