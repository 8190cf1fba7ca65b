"""The training engine: periodic evaluation on a validation subset leaves the training trajectory alone,
resumes exactly, and the metric lines and result carry what the study reads."""

import json
from pathlib import Path

import pytest
import torch

from lm.build import build_model
from lm.checkpoint import load_checkpoint
from lm.config import load_config
from lm.data import load_corpus
from lm.errors import UserError
from lm.evaluate import evaluate
from lm.train import TrainState, run_dir_for, train
from tests.conftest import interrupt_training, tiny_overrides, write_tiny_corpus

ROOT = Path(__file__).resolve().parent.parent
LSTM = ROOT / "configs" / "ptb-lite-lstm.yaml"
CLOCK = {"tokens_per_second", "train_time_s", "wall_time_s"}
# lr 100 and nonmono 1: validation gets worse, so averaged SGD starts after epoch 3 (17 steps per epoch).
AVERAGING = {"train.epochs": 4, "train.nonmono": 1, "train.lr": 100, "train.checkpoint_every": 6, "train.log_every": 1}
SUBSET = {"train.eval_every": 4, "train.eval_subset_tokens": 40}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("engine") / "corpus", n_lines=(80, 8, 8))


def config_for(corpus, out, **extra):
    return load_config(LSTM, tiny_overrides(corpus, out, **{**AVERAGING, **extra}))


def lines(run_dir: Path, drop_clock: bool = True) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not (drop_clock and k in CLOCK)} for r in records]


@pytest.fixture(scope="module")
def plain_and_subset(corpus, tmp_path_factory):
    """The same averaged-SGD run without and with an evaluation on a validation subset every 4 steps."""
    root = tmp_path_factory.mktemp("runs")
    plain = config_for(corpus, root / "plain")
    subset = config_for(corpus, root / "subset", **SUBSET)
    return {"plain": (train(plain), run_dir_for(plain)), "subset": (train(subset), run_dir_for(subset)), "corpus": corpus}


def test_subset_evaluation_leaves_the_trajectory_bit_identical(plain_and_subset):
    (plain, plain_dir), (subset, subset_dir) = plain_and_subset["plain"], plain_and_subset["subset"]
    assert plain["averaged_sgd"] is True, "the run must cover averaged SGD"
    for key in ("val_ppl", "test_ppl", "val_loss", "test_loss", "steps", "best_epoch"):
        assert subset[key] == plain[key], key
    assert [r for r in lines(subset_dir) if r["event"] != "valid_subset"] == lines(plain_dir)
    for name in ("best.pt", "last.pt"):
        a, b = load_checkpoint(plain_dir / name), load_checkpoint(subset_dir / name)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    a, b = load_checkpoint(plain_dir / "last.pt"), load_checkpoint(subset_dir / "last.pt")
    assert all(torch.equal(a["average"][k], b["average"][k]) for k in a["average"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) and torch.equal(a["rng"]["bptt"], b["rng"]["bptt"])


def test_subset_lines_have_every_field_and_the_right_loss(plain_and_subset):
    result, run_dir = plain_and_subset["subset"]
    records = lines(run_dir, drop_clock=False)
    subset = [r for r in records if r["event"] == "valid_subset"]
    assert [r["step"] for r in subset] == list(range(4, result["steps"] + 1, 4))
    expected_keys = {"event", "epoch", "step", "tokens", "train_time_s", "wall_time_s", "val_loss", "val_ppl", "subset_tokens"}
    assert all(set(r) == expected_keys and r["subset_tokens"] == 40 for r in subset)
    assert all(0 < r["train_time_s"] <= r["wall_time_s"] for r in subset)
    times = [r["wall_time_s"] for r in subset]
    assert times == sorted(times) and [r["tokens"] for r in subset] == sorted({r["tokens"] for r in subset})
    # The last line (at the last step) is the loss of the final weights (averaged: the average) on the
    # first 40 validation tokens, computed here from the final checkpoint.
    last = load_checkpoint(run_dir / "last.pt")
    assert result["steps"] % 4 == 0 and last["trainer"]["n_averaged"] > 4 and subset[-1]["step"] == result["steps"]
    config = load_config(run_dir / "config.yaml")
    corpus = load_corpus(path=config.data.path)
    model = build_model(config, len(corpus.vocab))
    model.load_state_dict(last["model"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(last["average"][name])
    expected = evaluate(model, corpus.valid[:40], config.train.eval_batch_size, config.train.eval_bptt or config.train.bptt)
    assert subset[-1]["val_loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert subset[-1]["val_ppl"] == pytest.approx(expected["ppl"], rel=1e-6)


def test_epoch_validation_lines_carry_tokens_and_times(plain_and_subset):
    result, run_dir = plain_and_subset["plain"]
    valid = [r for r in lines(run_dir, drop_clock=False) if r["event"] == "valid"]
    assert len(valid) == 4 and valid[-1]["tokens"] == result["training_tokens"]
    assert all(0 < r["train_time_s"] <= r["wall_time_s"] for r in valid)
    assert valid[-1]["train_time_s"] == result["train_time_s"]


def test_result_names_the_output_embedding_size(corpus, tmp_path, plain_and_subset):
    assert plain_and_subset["plain"][0]["output_embedding_size"] == 16  # tied softmax: d_embedding
    mos = train(config_for(corpus, tmp_path, **{"head.name": "mos", "head.d_latent": 12, "model.tie_weights": False, "train.max_steps": 2}))
    assert mos["output_embedding_size"] == 12 and mos["head_input_size"] == 24



@pytest.mark.parametrize("where", ["epoch 1", "averaging"])
def test_resume_with_subset_evaluation_is_exact(plain_and_subset, tmp_path, monkeypatch, where):
    reference, reference_dir = plain_and_subset["subset"]
    config = config_for(plain_and_subset["corpus"], tmp_path, **SUBSET)
    stopped = interrupt_training(config, monkeypatch,
                                 lambda state: state["step"] == 12 if where == "epoch 1" else state["n_averaged"] > 1)
    said = []
    resumed = train(config, say=said.append)
    assert any(line.startswith("resuming") and f"step {stopped['step']} (" in line for line in said), said
    assert lines(run_dir_for(config)) == lines(reference_dir)
    for key in ("val_ppl", "test_ppl", "steps", "averaged_sgd"):
        assert resumed[key] == reference[key], key


def test_training_state_round_trips_and_refuses_unknown_fields(tmp_path):
    state = TrainState(epoch=3, step=7, val_history=[4.0, 3.5], best_val=3.5, averaging=True, n_averaged=2)
    assert TrainState.from_dict(state.as_dict(), tmp_path) == state
    old = {k: v for k, v in state.as_dict().items() if k not in ("lr_scale", "rollbacks")}  # an older checkpoint
    assert TrainState.from_dict(old, tmp_path).lr_scale == 1.0
    with pytest.raises(UserError, match="training state this version does not know"):
        TrainState.from_dict({**state.as_dict(), "future_field": 1}, tmp_path)


@pytest.mark.parametrize("override, fragment", [
    ("train.eval_every=-1", "train.eval_every must not be negative"),
    ("train.eval_subset_tokens=1", "train.eval_subset_tokens must be at least 2"),
])
def test_bad_subset_settings(corpus, tmp_path, override, fragment):
    with pytest.raises(UserError, match=fragment):
        load_config(LSTM, tiny_overrides(corpus, tmp_path) + [override])


def test_subset_too_short_for_the_batch_is_one_sentence(corpus, tmp_path):
    config = config_for(corpus, tmp_path, **{"train.eval_every": 2, "train.eval_subset_tokens": 3, "train.eval_batch_size": 2})
    with pytest.raises(UserError, match="too short for batch size 2"):
        train(config)
