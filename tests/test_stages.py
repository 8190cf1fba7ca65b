"""Mixed precision (bf16 on the CPU), the fine-tuning stage (exact resume after a kill) and dynamic
evaluation (the update rule against a hand-written formula; it lowers the perplexity of a repetitive text)."""

import json
import math
from pathlib import Path

import pytest
import torch

import lm.train
from lm.api import evaluate_run
from lm.build import build_model
from lm.checkpoint import load_checkpoint
from lm.cli import main
from lm.config import load_config
from lm.data import load_corpus
from lm.dynamic_eval import DynamicEvaluation
from lm.evaluate import evaluate
from lm.train import run_dir_for, train
from tests.conftest import interrupt_training, tiny_overrides, write_tiny_corpus

ROOT = Path(__file__).resolve().parent.parent
LSTM = ROOT / "configs" / "ptb-lite-lstm.yaml"
TRANSFORMER = ROOT / "configs" / "ptb-lite-transformer.yaml"
CLOCK = {"tokens_per_second", "train_time_s", "wall_time_s"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("stages") / "corpus", n_lines=(80, 8, 8))


def lines(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in CLOCK} for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- mixed precision -------------------------------------------------------------------------------


def test_bf16_on_cpu_trains_close_to_fp32_and_evaluates_in_float32(corpus, tmp_path):
    extra = {"train.optimizer": "adamw", "train.lr": 0.003, "train.max_steps": 6, "train.log_every": 1}
    fp32 = train(load_config(TRANSFORMER, tiny_overrides(corpus, tmp_path / "fp32", **extra)))
    config = load_config(TRANSFORMER, tiny_overrides(corpus, tmp_path / "bf16", **extra, **{"train.precision": "bf16"}))
    bf16 = train(config)
    run_dir = run_dir_for(config)
    a = [r["loss"] for r in lines(run_dir_for(load_config(TRANSFORMER, tiny_overrides(corpus, tmp_path / "fp32", **extra)))) if r["event"] == "train"]
    b = [r["loss"] for r in lines(run_dir) if r["event"] == "train"]
    assert a[0] != b[0], "the body really ran in bfloat16"
    assert b == pytest.approx(a, rel=2e-2)
    assert bf16["precision"] == "bf16" and "precision" not in fp32
    weights = load_checkpoint(run_dir / "best.pt")["model"]
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    # Evaluation is the float32 path whatever the training precision: the ordinary command agrees.
    assert evaluate_run(run_dir, "test")["ppl"] == bf16["test_ppl"]


def test_bf16_keeps_the_head_in_float32(corpus):
    config = load_config(LSTM, tiny_overrides(corpus, Path("unused"), **{"head.name": "mos"}))
    model = build_model(config, 30)
    seen = []
    real = model.head.loss

    def spy(hidden, targets, reduction="mean"):
        seen.append((hidden.dtype, torch.is_autocast_enabled("cpu")))
        return real(hidden, targets, reduction=reduction)

    model.head.loss = spy
    tokens = torch.randint(0, 30, (2, 6))
    with lm.train._cpu_autocast(torch.bfloat16):
        nll, _, _ = model.loss(tokens, tokens)
    assert seen == [(torch.float32, False)] and nll.dtype == torch.float32


def test_fp16_keeps_its_gradient_scaler_in_the_checkpoint(corpus, tmp_path):
    config = load_config(LSTM, tiny_overrides(corpus, tmp_path, **{"train.precision": "fp16", "train.max_steps": 4}))
    result = train(config)
    assert math.isfinite(result["test_ppl"])
    scaler = load_checkpoint(run_dir_for(config) / "last.pt")["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] == 4  # 4 steps without overflow


# --- the fine-tuning stage -------------------------------------------------------------------------

FINETUNE = {"train.epochs": 2, "train.finetune_epochs": 4, "train.finetune_lr": 15, "train.checkpoint_every": 5,
            "train.log_every": 1, "train.nonmono": 1}



@pytest.fixture(scope="module")
def finetuned(corpus, tmp_path_factory):
    config = load_config(LSTM, tiny_overrides(corpus, tmp_path_factory.mktemp("ft"), **FINETUNE))
    return train(config), run_dir_for(config)


def test_finetuning_restarts_averaged_sgd_from_the_best_weights(finetuned):
    result, run_dir = finetuned
    records = lines(run_dir)
    start = next(i for i, r in enumerate(records) if r["event"] == "finetune")
    assert all("stage" not in r for r in records[:start])
    after = records[start + 1:]
    assert after and all(r.get("stage") == "finetune" for r in after)
    valid = [r for r in after if r["event"] == "valid"]
    assert all(r["averaging"] for r in valid) and 1 <= len(valid) <= 4
    assert result["finetune_epochs_completed"] == len(valid) and len([r for r in records[:start] if r["event"] == "valid"]) == 2
    # lr of the stage: finetune_lr scaled by window length / bptt, as in training
    windows = [r["lr"] / 15 * 8 for r in after if r["event"] == "train"]
    assert all(abs(w - round(w)) < 1e-9 and 1 <= round(w) <= 12 for w in windows)
    # The nonmono trigger with nonmono=1: the stage stops at the first validation worse than the best of
    # all validations but the last one.
    losses = [r["val_loss"] for r in valid]
    fired = [i for i in range(2, len(losses)) if losses[i] > min(losses[: i - 1])]
    assert fired == ([len(losses) - 1] if len(losses) < 4 else fired[:1]) and (len(losses) == 4 or fired)
    best = load_checkpoint(run_dir / "best.pt")
    assert result["best_stage"] == best.get("stage", "train")
    best_loss = min(r["val_loss"] for r in records if r["event"] == "valid")
    assert best["val_loss"] == best_loss and result["val_loss"] == pytest.approx(best_loss, rel=1e-12)


@pytest.mark.parametrize("where", ["at the switch", "inside the stage"])
def test_finetuning_resumes_exactly_after_a_kill(corpus, finetuned, tmp_path, monkeypatch, where):
    expected, expected_dir = finetuned
    config = load_config(LSTM, tiny_overrides(corpus, tmp_path, **FINETUNE))
    interrupt_training(config, monkeypatch, lambda state: state.get("stage") == "finetune" and (
        where == "at the switch" or state["step"] > state["stage_start_step"] + 3))
    resumed = train(config)
    for key in ("val_ppl", "test_ppl", "val_loss", "steps", "finetune_epochs_completed", "best_stage", "best_epoch"):
        assert resumed[key] == expected[key], key
    assert lines(run_dir_for(config)) == lines(expected_dir)


# --- dynamic evaluation ----------------------------------------------------------------------------


def tiny_model(corpus, seed=0):
    config = load_config(LSTM, tiny_overrides(corpus, Path("unused"), **{f"model.{k}": 0 for k in (
        "dropout_embedding", "dropout_input", "dropout_hidden", "dropout_output", "weight_drop")}))
    data = load_corpus(path=str(corpus))
    torch.manual_seed(seed)
    return build_model(config, len(data.vocab)), data


def test_one_dynamic_step_follows_the_formula(corpus):
    model, data = tiny_model(corpus)
    dynamic = DynamicEvaluation(lr=0.01, lam=0.5, epsilon=0.001, bptt=4, stat_batch_size=4, max_batches=3)
    dynamic.collect_statistics(model, data.train)
    # The statistics by hand: sqrt of the summed squared gradients of 3 windows of 4 columns.
    squares = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    columns = data.train[: (data.train.numel() // 4) * 4].view(4, -1)
    state = model.init_state(4)
    model.eval()
    for position in (0, 4, 8):
        model.zero_grad()
        nll, state, _ = model.loss(columns[:, position:position + 4], columns[:, position + 1:position + 5], state)
        state = [tuple(t.detach() for t in layer) for layer in state]
        nll.mean().backward()
        for n, p in model.named_parameters():
            squares[n] += p.grad ** 2
    ms = {n: s.sqrt() for n, s in squares.items()}
    total = sum(m.mean() for m in ms.values())
    for n in ms:
        torch.testing.assert_close(dynamic.ms[n], ms[n])
        torch.testing.assert_close(dynamic.decay[n], torch.clamp(ms[n] / total, max=2.0))
    # One update on a window, by hand: W + lam * r * (W0 - W) - lr * g / (MS + eps), here with W != W0.
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.zero_grad()
    nll, _, _ = model.loss(columns[:1, :4], columns[:1, 1:5], model.init_state(1))
    nll.mean().backward()
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    dynamic._update(dict(model.named_parameters()), w0)
    for n, p in model.named_parameters():
        expected = w[n] + 0.5 * dynamic.decay[n] * (w0[n] - w[n]) - 0.01 * grads[n] / (ms[n] + 0.001)
        torch.testing.assert_close(p.detach(), expected)


def test_dynamic_evaluation_lowers_the_perplexity_of_a_repetitive_text(corpus):
    model, data = tiny_model(corpus)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    columns = data.train[: (data.train.numel() // 4) * 4].view(4, -1)
    model.train()
    for position in range(0, columns.size(1) - 9, 8):  # one short epoch: a model, not a good one
        nll, _, _ = model.loss(columns[:, position:position + 8], columns[:, position + 1:position + 9])
        optimizer.zero_grad()
        nll.mean().backward()
        optimizer.step()
    generator = torch.Generator().manual_seed(3)
    phrase = torch.randint(0, len(data.vocab), (12,), generator=generator)
    text = phrase.repeat(15)  # a random phrase, 15 times: nothing the training text taught
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    static = evaluate(model, text, 1, 5)
    dynamic = DynamicEvaluation(stat_batch_size=4)  # the MoS settings (eta 0.002, lambda 0.02) ...
    dynamic.collect_statistics(model, data.train)
    adapted = dynamic.evaluate(model, text)
    assert adapted["n_tokens"] == static["n_tokens"] == text.numel() - 1
    assert adapted["ppl"] < 0.95 * static["ppl"], (adapted, static)
    dynamic.lr = 0.02  # ... and a step size for a model this small: 14.2 -> 10.0
    assert dynamic.evaluate(model, text)["ppl"] < 0.75 * static["ppl"]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "the weights are restored"


def test_a_run_reports_dynamic_next_to_static_perplexity(corpus, tmp_path, capsys):
    overrides = tiny_overrides(corpus, tmp_path, **{"train.max_steps": 4, "train.dynamic_eval": True,
                                                    "train.dynamic_eval_stat_batch_size": 4, "train.dynamic_eval_max_batches": 5})
    assert main(["train", str(LSTM), *overrides, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "dynamic evaluation: valid ppl" in out
    result = json.loads(next(tmp_path.glob("*/result.json")).read_text())
    assert result["dynamic_eval"]["max_batches"] == 5 and result["dynamic_eval"]["lam"] == 0.02
    assert math.isfinite(result["test_ppl_dynamic"]) and result["test_ppl_dynamic"] != result["test_ppl"]
    run_dir = next(tmp_path.glob("*/result.json")).parent
    assert main(["evaluate", str(run_dir), "--dynamic"]) == 0
    printed = capsys.readouterr().out
    assert f"dynamic {result['test_ppl_dynamic']:.2f}" in printed and f"test ppl {result['test_ppl']:.2f}" in printed
