"""Diagnostics around the rank: collecting log-prob rows, the decoder spectrum, unargmaxable tokens, the
spectrum plot, and the `rank` report of a trained run through the API and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from bottleneck_analysis.collect import collect_log_probs, count_rows, iterate_log_probs
from bottleneck_analysis.embedding import decoder_spectrum, spectrum_summary
from bottleneck_analysis.plots import plot_spectrum
from bottleneck_analysis.rank import rank_report
from bottleneck_analysis.run_report import FULL_RANK_FILE, rank_run, softmax_rank_bound
from bottleneck_analysis.unargmaxable import head_unargmaxable, unargmaxable_tokens
from lm.api import load_run
from lm.config import load_config
from lm.errors import UserError
from lm.heads import HEADS, head_options
from lm.models.interface import BodyOutput
from lm.train import run_dir_for, train
from tests.conftest import tiny_overrides, write_tiny_corpus

SMALL_OPTIONS = {"n_components": 3, "dropout_latent": 0.0}  # for the heads that take them


class RecurrentBody(nn.Module):
    """``h_t = tanh(E x_t + 0.5 h_{t-1})``: a body whose output depends on the carried state."""

    def __init__(self, vocab_size: int, d: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d)
        self.d_output = d
        self.calls = 0

    def init_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_output)

    def forward(self, tokens: torch.Tensor, state: torch.Tensor) -> BodyOutput:
        self.calls += 1
        outputs = []
        for step in range(tokens.size(1)):
            state = torch.tanh(self.embedding(tokens[:, step]) + 0.5 * state)
            outputs.append(state)
        return BodyOutput(torch.stack(outputs, dim=1), state, torch.zeros(()))


class TinyModel(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body, self.head = body, head


def tiny_model(head_name: str = "softmax", vocab_size: int = 11, d: int = 4, seed: int = 0) -> TinyModel:
    torch.manual_seed(seed)
    head = HEADS[head_name](d, vocab_size, **{k: v for k, v in SMALL_OPTIONS.items() if k in head_options(head_name)})
    with torch.no_grad():  # spread the decoder so that the log-probs are far from uniform
        head.decoder.weight.normal_(0.0, 1.0)
        head.decoder.bias.normal_(0.0, 1.0)
    return TinyModel(RecurrentBody(vocab_size, d), head)


def reference_rows(model: TinyModel, columns: torch.Tensor) -> list[np.ndarray]:
    """One pass per column over its whole text; rows for every predicted position, float64 head."""
    head = model.head.double()
    try:
        with torch.no_grad():
            return [
                head(model.body(column[None, :-1], model.body.init_state(1)).hidden[0].double()).numpy()
                for column in columns
            ]
    finally:
        model.head.float()


def tokens_of(n: int, vocab_size: int = 11, seed: int = 1) -> torch.Tensor:
    return torch.randint(vocab_size, (n,), generator=torch.Generator().manual_seed(seed))


# ---- collect ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 7, 100])
def test_rows_equal_a_single_pass_with_the_state_carried(window):
    model, tokens = tiny_model(), tokens_of(50)
    blocks = list(collect_log_probs(model, tokens, window=window, block_rows=8))
    rows = np.concatenate(blocks)
    assert rows.dtype == np.float64 and rows.shape == (49, 11)
    assert all(block.shape[0] == 8 for block in blocks[:-1])
    assert np.allclose(rows, reference_rows(model, tokens[None])[0], rtol=0, atol=1e-12)


def test_columns_and_positions():
    model, tokens = tiny_model(), tokens_of(61)
    positions, rows = zip(*iterate_log_probs(model, tokens, batch_size=3, window=5))
    positions, rows = np.concatenate(positions), np.concatenate(rows)
    length = 61 // 3
    assert rows.shape[0] == count_rows(61, 3) == 3 * (length - 1)
    expected_positions = {column * length + t + 1 for column in range(3) for t in range(length - 1)}
    assert set(positions.tolist()) == expected_positions and len(set(positions.tolist())) == rows.shape[0]
    references = reference_rows(model, tokens[: 3 * length].view(3, length))
    for position, row in zip(positions, rows):
        column, step = divmod(int(position) - 1, length)
        assert np.allclose(row, references[column][step], atol=1e-12)


def test_first_rows_stop_the_scan_early():
    model, tokens = tiny_model(), tokens_of(200)
    rows = np.concatenate(list(collect_log_probs(model, tokens, max_rows=10, window=4)))
    assert model.body.calls == 3  # ceil(10 / 4) windows, not 50
    assert np.allclose(rows, reference_rows(model, tokens[None])[0][:10], atol=1e-12)


def test_seeded_sample():
    model, tokens = tiny_model(), tokens_of(80)
    reference = reference_rows(model, tokens[None])[0]

    def sample(seed):
        positions, rows = zip(*iterate_log_probs(model, tokens, sample=12, seed=seed, window=9, block_rows=5))
        return np.concatenate(positions), np.concatenate(rows)

    positions, rows = sample(3)
    assert positions.size == 12 and np.all(np.diff(positions) > 0)
    assert np.allclose(rows, reference[positions - 1], atol=1e-12)
    assert np.array_equal(sample(3)[0], positions)
    assert not np.array_equal(sample(4)[0], positions)


def test_grad_mode_of_the_caller_is_untouched_between_blocks():
    blocks = collect_log_probs(tiny_model(), tokens_of(40), block_rows=5, window=3)
    next(blocks)
    assert torch.is_grad_enabled()
    next(blocks)
    assert torch.is_grad_enabled()


def test_model_is_left_as_it_was():
    model = tiny_model()
    model.train()
    list(collect_log_probs(model, tokens_of(30)))
    assert model.body.training and model.head.training
    assert model.head.decoder.weight.dtype == torch.float32


@pytest.mark.parametrize("options", [{"max_rows": 3, "sample": 3}, {"batch_size": 0}, {"max_rows": 0}, {"window": 0}])
def test_bad_collect_options(options):
    with pytest.raises(UserError):
        list(collect_log_probs(tiny_model(), tokens_of(30), **options))


def test_too_short_stream():
    with pytest.raises(UserError):
        list(collect_log_probs(tiny_model(), tokens_of(3), batch_size=2))


@pytest.mark.parametrize("head_name", sorted(HEADS))
def test_softmax_bound_on_random_weights(head_name):
    """Heads of ``log_softmax(W x + b)``: rank <= d + 2 at every tolerance; the others are not bound by it."""
    d, vocab_size = 3, 24
    model = tiny_model(head_name, vocab_size=vocab_size, d=d)
    with torch.no_grad():  # every head parameter random (a learned pointwise map starts as the identity)
        for parameter in model.head.parameters():
            parameter.normal_(0.0, 1.0)
    smoothing = model.head.smoothing
    report = rank_report(collect_log_probs(model, tokens_of(300, vocab_size)), smoothing=smoothing)
    bound = softmax_rank_bound(model.head)
    assert bound == d + 2
    if HEADS[head_name].affine_log_softmax:
        assert max(report["rank"].values()) <= bound
    else:
        assert report["rank"]["nr"] > bound


def test_a_float32_head_would_look_full_rank():
    """Why the head runs in float64: float32 rounding makes a rank-5 matrix look full-rank."""
    model, tokens = tiny_model(vocab_size=24, d=3), tokens_of(300, 24)
    assert rank_report(collect_log_probs(model, tokens))["rank"]["nr"] <= 5
    with torch.no_grad():
        hidden = model.body(tokens[None, :-1], model.body.init_state(1)).hidden[0]
        float32_rows = model.head(hidden)
    assert rank_report(float32_rows)["rank"]["nr"] > 20


# ---- the decoder spectrum ----------------------------------------------------------------------------


def test_spectrum_of_known_singular_values():
    generator = np.random.default_rng(0)
    values = np.array([4.0, 2.0, 1.0, 0.5])
    left = scipy.linalg.qr(generator.standard_normal((30, 4)), mode="economic")[0]
    right = scipy.linalg.qr(generator.standard_normal((4, 4)))[0]
    summary = spectrum_summary((left * values) @ right.T)
    assert np.allclose(summary["singular_values"], values)
    p = values / values.sum()
    entropy = -(p * np.log(p)).sum()
    assert summary["spectral_entropy"] == pytest.approx(entropy)
    assert summary["normalized_spectral_entropy"] == pytest.approx(entropy / math.log(4))
    assert summary["effective_rank"] == pytest.approx(math.exp(entropy))


@pytest.mark.parametrize(
    "weight, expected",
    [(np.vstack([np.eye(5), -np.eye(5)]), 1.0), (np.outer(np.arange(1.0, 11.0), np.ones(5)), 0.0)],
)
def test_normalized_entropy_limits(weight, expected):
    assert spectrum_summary(weight)["normalized_spectral_entropy"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("head_name", sorted(HEADS))
def test_decoder_spectrum_of_every_head(head_name):
    head = HEADS[head_name](6, 40, **{k: v for k, v in SMALL_OPTIONS.items() if k in head_options(head_name)})
    summary = decoder_spectrum(head)
    assert summary["shape"] == [40, head.decoder.in_features]
    assert 0.0 < summary["normalized_spectral_entropy"] <= 1.0


def test_spectrum_bad_input():
    with pytest.raises(UserError):
        spectrum_summary(np.zeros(5))
    with pytest.raises(UserError):
        decoder_spectrum(nn.Identity())


# ---- unargmaxable tokens ------------------------------------------------------------------------------


def circle(n: int) -> np.ndarray:
    angles = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (n, 2)


@pytest.mark.parametrize("d", [2, 3, 6])
def test_a_token_inside_the_convex_hull_is_found(d):
    generator = np.random.default_rng(d)
    hull = generator.standard_normal((3 * d, d))
    hull /= np.linalg.norm(hull, axis=1, keepdims=True)
    mixture = generator.dirichlet(np.ones(3 * d))
    weight = np.vstack([hull[: 2 * d], mixture[: 2 * d] @ hull[: 2 * d] / mixture[: 2 * d].sum(), hull[2 * d :]])
    report = unargmaxable_tokens(weight, box=3.0)
    assert report["unargmaxable"] == [2 * d]
    assert report["n_unargmaxable"] == 1 and report["undetermined"] == []


@pytest.mark.parametrize("n_tokens", [4, 12, 40])
def test_well_spread_weights_have_none(n_tokens):
    report = unargmaxable_tokens(circle(n_tokens), box=1.0)
    assert report["n_unargmaxable"] == 0
    assert report["n_found_by_sampling"] + report["n_lp"] == n_tokens


def test_a_large_bias_makes_an_interior_token_argmaxable():
    weight = np.vstack([circle(8), [[0.0, 0.0]]])
    assert unargmaxable_tokens(weight)["unargmaxable"] == [8]
    bias = np.r_[np.zeros(8), 0.5]
    assert unargmaxable_tokens(weight, bias)["unargmaxable"] == []


def test_the_box_decides():
    """Token 1 (2x - 10) beats token 0 (x) only for x > 10."""
    weight, bias = np.array([[1.0], [2.0], [-1.0]]), np.array([0.0, -10.0, 0.0])
    assert unargmaxable_tokens(weight, bias, box=1.0)["unargmaxable"] == [1]
    assert unargmaxable_tokens(weight, bias, box=20.0)["unargmaxable"] == []


def test_pre_pass_agrees_with_solving_every_lp():
    generator = np.random.default_rng(5)
    weight, bias = generator.standard_normal((60, 3)), 0.3 * generator.standard_normal(60)
    with_pre_pass = unargmaxable_tokens(weight, bias, n_samples=512)
    lp_only = unargmaxable_tokens(weight, bias, witnesses=False)
    assert with_pre_pass["unargmaxable"] == lp_only["unargmaxable"]
    assert with_pre_pass["n_lp"] < lp_only["n_lp"] == 60
    assert 0 < with_pre_pass["n_unargmaxable"] < 60


def test_time_limit_leaves_tokens_undetermined():
    weight = np.vstack([circle(8), [[0.0, 0.0]], [[0.1, 0.0]]])
    report = unargmaxable_tokens(weight, time_limit=0.0)
    assert report["undetermined"] == [8, 9] and report["n_lp"] == 0 and report["unargmaxable"] == []


def test_heads_with_and_without_affine_argmax():
    assert head_unargmaxable(HEADS["softmax"](4, 20))["applicable"] is True
    assert head_unargmaxable(HEADS["mos"](4, 20, n_components=2))["applicable"] is False


def test_unargmaxable_bad_input():
    with pytest.raises(UserError):
        unargmaxable_tokens(circle(5), box=0.0)
    with pytest.raises(UserError):
        unargmaxable_tokens(circle(5), np.zeros(4))


# ---- plot --------------------------------------------------------------------------------------------


def test_spectrum_plot_is_a_png(tmp_path):
    path = plot_spectrum([3.0, 1.0, 1e-3, 0.0], tmp_path / "spectrum.png", title="t", tolerances={"nr": 1e-12}, bound=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- a trained run: API and CLI ------------------------------------------------------------------------


CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def train_tiny_run(root: Path, config_name: str, head: str) -> Path:
    corpus = write_tiny_corpus(root / "corpus")
    config = load_config(CONFIGS / config_name, tiny_overrides(corpus, root / "runs", **{"head.name": head, "train.max_steps": 3}))
    train(config)
    return run_dir_for(config)


@pytest.mark.parametrize("config_name, head", [("ptb-lite-lstm.yaml", "softmax"), ("ptb-lite-transformer.yaml", "r_softmax")])
def test_rank_run_writes_the_report_and_plot(tmp_path, config_name, head):
    run_dir = train_tiny_run(tmp_path, config_name, head)
    report = rank_run(run_dir, "valid", relative_tolerances=[1e-6])
    written = json.loads((run_dir / "rank.json").read_text())
    assert written["rank"] == report["rank"] and set(written["rank"]) == {"nr", "numpy", "relative_1e-06"}
    assert (run_dir / "rank_spectrum.png").read_bytes()[:4] == b"\x89PNG"
    assert written["head"] == head and written["split"] == "valid" and written["protocol"]["batch_size"] == 1
    result = json.loads((run_dir / "result.json").read_text())  # the same provenance helper as the trainer
    assert written["git_commit"] == result["git_commit"] and len(written["git_commit"]) == 40
    assert isinstance(written["git_dirty"], bool) and written["device"] == "cpu" and written["date"].endswith("+00:00")
    assert len(result["load_average_1_5_15_min"]) == 3 and min(result["load_average_1_5_15_min"]) >= 0
    n_valid = len(load_run(run_dir)[1].valid)
    assert written["n_rows"] == n_valid - 1
    assert written["softmax_rank_bound"] == 16 + 2
    assert written["embedding"]["shape"][1] == 16
    assert written["unargmaxable"]["applicable"] is True and written["unargmaxable"]["box"] > 0
    if head == "r_softmax":
        assert written["sparse"]["policy"] == "smooth" and written["sparse"]["smoothing"] > 0
    else:
        assert written["rank"]["nr"] <= written["softmax_rank_bound"]


def test_a_second_report_file_leaves_rank_json_alone(tmp_path):
    """The whole split into rank-full.json (and its own PNG) beside the suite's rank.json of a subset."""
    run_dir = train_tiny_run(tmp_path, "ptb-lite-lstm.yaml", "softmax")
    subset = rank_run(run_dir, "valid", max_rows=20, unargmaxable=False)
    before = {name: (run_dir / name).read_bytes() for name in ("rank.json", "rank_spectrum.png")}
    full = rank_run(run_dir, "valid", unargmaxable=False, report_file=FULL_RANK_FILE)
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    written = json.loads((run_dir / FULL_RANK_FILE).read_text())
    assert written["n_rows"] == full["n_rows"] == len(load_run(run_dir)[1].valid) - 1 > subset["n_rows"] == 20
    assert written["protocol"]["max_rows"] is None and written["protocol"]["batch_size"] == 1
    assert written["files"] == {"report": "rank-full.json", "plot": "rank-full_spectrum.png"}
    assert subset["files"] == {"report": "rank.json", "plot": "rank_spectrum.png"}
    assert (run_dir / "rank-full_spectrum.png").read_bytes()[:4] == b"\x89PNG"
    for bad in ("sub/rank.json", "rank-full.txt", "../rank.json", ".json"):
        with pytest.raises(UserError, match="plain file name ending in .json"):
            rank_run(run_dir, "valid", max_rows=5, unargmaxable=False, report_file=bad)


def test_cli_rank_and_synth(tmp_path, capsys):
    from lm.cli import main

    run_dir = train_tiny_run(tmp_path, "ptb-lite-lstm.yaml", "mos")
    assert main(["rank", str(run_dir), "--max-rows", "25", "--split", "test"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("test: 25 x ") and "rank.json" in line and "\n" not in line
    assert json.loads((run_dir / "rank.json").read_text())["unargmaxable"]["applicable"] is False
    assert main(["rank", str(tmp_path / "missing")]) == 2
    assert main(["rank", str(run_dir), "--max-rows", "25", "--no-unargmaxable", "--output", "rank-full.json"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"wrote {run_dir / 'rank-full.json'} and {run_dir / 'rank-full_spectrum.png'}")
    assert json.loads((run_dir / "rank.json").read_text())["n_rows"] == 25 and (run_dir / "rank-full.json").is_file()
    capsys.readouterr()
    assert main(["rank", str(run_dir), "--output", "out/rank.json"]) == 2
    error = capsys.readouterr().err.strip()
    assert "plain file name ending in .json" in error and "\n" not in error and "Traceback" not in error
    assert main(["rank", str(run_dir), "--sample", "5", "--relative-tolerance", "2"]) == 2
    assert "relative tolerance" in capsys.readouterr().err

    out = tmp_path / "synthetic"
    assert main(["synth", str(out), "--vocab-size", "12", "--rank", "4", "--train-tokens", "3000",
                 "--valid-tokens", "300", "--test-tokens", "300"]) == 0
    assert {p.name for p in out.iterdir()} == {"train.txt", "valid.txt", "test.txt", "truth.npz"}
    assert main(["synth", str(out), "--vocab-size", "12", "--rank", "13"]) == 2
