"""Training end to end on tiny corpora: learning, determinism, resume, results, bad input through the CLI."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lm.cli import main
from lm.config import load_config
from lm.heads import HEADS
from lm.train import run_dir_for, train
from tests.conftest import interrupt_training, tiny_overrides, write_tiny_corpus

ROOT = Path(__file__).resolve().parent.parent
LSTM = ROOT / "configs" / "ptb-lite-lstm.yaml"
TRANSFORMER = ROOT / "configs" / "ptb-lite-transformer.yaml"


def tiny_config(corpus, out, path=LSTM, **extra):
    return load_config(path, tiny_overrides(corpus, out, **extra))


NO_DROPOUT = {f"model.{k}": 0 for k in ("dropout_embedding", "dropout_input", "dropout_hidden", "dropout_output", "weight_drop")}


def test_loss_decreases_and_result_is_complete(tmp_path):
    corpus = write_tiny_corpus(tmp_path / "corpus", n_lines=(200, 20, 20))
    config = tiny_config(corpus, tmp_path / "runs", **{"train.epochs": 4, "train.lr": 10, **NO_DROPOUT})
    result = train(config)
    run_dir = run_dir_for(config)
    val = [r["val_ppl"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == "valid"]
    assert len(val) == 4 and val[-1] < 0.5 * val[0]
    for key in ("val_ppl", "test_ppl", "n_params", "tokens_per_second", "train_time_s", "git_commit", "config",
                "eval_batch_size", "test_batch_size", "torch_version", "device", "schema_version", "wall_time_s"):
        assert key in result
    assert result["test_batch_size"] == 1 and result["eval_batch_size"] == 2
    assert json.loads((run_dir / "result.json").read_text())["test_ppl"] == result["test_ppl"]
    assert (run_dir / "best.pt").exists() and (run_dir / "config.yaml").exists()
    import hashlib

    splits = result["corpus"]["splits"]  # the corpus the numbers came from: token counts and checksums
    assert splits["train"]["sha256"] == hashlib.sha256((corpus / "train.txt").read_bytes()).hexdigest()
    assert splits["valid"]["tokens"] == sum(len(line.split()) + 1 for line in (corpus / "valid.txt").read_text().splitlines())


def test_same_seed_gives_identical_numbers(tiny_corpus, tmp_path):
    a = train(tiny_config(tiny_corpus, tmp_path / "a"))
    b = train(tiny_config(tiny_corpus, tmp_path / "b"))
    c = train(tiny_config(tiny_corpus, tmp_path / "c", **{"train.seed": 7}))
    assert (a["val_ppl"], a["test_ppl"]) == (b["val_ppl"], b["test_ppl"])
    assert a["val_ppl"] != c["val_ppl"]



@pytest.mark.parametrize("stop_after_saves", [1, 2, 3])
def test_interrupted_then_resumed_equals_uninterrupted(tiny_corpus, tmp_path, monkeypatch, stop_after_saves):
    reference = train(tiny_config(tiny_corpus, tmp_path / "ref", **{"train.epochs": 3, "train.checkpoint_every": 3}))
    config = tiny_config(tiny_corpus, tmp_path / "cut", **{"train.epochs": 3, "train.checkpoint_every": 3})
    saves = iter(range(1, 1000))  # last.pt saves so far
    interrupt_training(config, monkeypatch, lambda state: next(saves) == stop_after_saves)
    resumed = train(config)
    assert resumed["val_ppl"] == reference["val_ppl"]
    assert resumed["test_ppl"] == reference["test_ppl"]
    # A finished run is not trained again.
    assert train(config)["test_ppl"] == reference["test_ppl"]


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("config_path", [LSTM, TRANSFORMER], ids=["awd_lstm", "transformer"])
def test_every_head_trains_with_every_body(tiny_corpus, tmp_path, head, config_path):
    result = train(tiny_config(tiny_corpus, tmp_path, config_path, **{"head.name": head, "train.max_steps": 4}))
    assert result["steps"] == 4 and torch.isfinite(torch.tensor(result["test_ppl"]))
    if head == "r_softmax":
        assert 0.0 <= result["test_zero_target_fraction"] <= 1.0 and result["test_smoothing"] > 0


def test_averaged_sgd_switch(tiny_corpus, tmp_path):
    # lr so large that validation stops improving quickly: the AWD-LSTM rule switches to averaging.
    result = train(tiny_config(tiny_corpus, tmp_path, **{"train.epochs": 5, "train.nonmono": 1, "train.lr": 200}))
    assert result["averaged_sgd"] is True


def test_cosine_schedule_decays_the_sgd_rate_to_zero_at_the_budget(tiny_corpus, tmp_path):
    """lr_schedule: cosine multiplies AWD-LSTM's window scaling by 0.5 (1 + cos(pi s / S)) at step s of S;
    the default (constant) leaves the rate at lr for every full-length window."""
    fixed = {"train.variable_bptt": False, "train.log_every": 1, "train.max_steps": 12, "train.lr": 8.0}
    rates = {}
    for schedule in ("constant", "cosine"):
        config = tiny_config(tiny_corpus, tmp_path / schedule, **fixed, **{"train.lr_schedule": schedule})
        train(config)
        records = map(json.loads, (run_dir_for(config) / "metrics.jsonl").read_text().splitlines())
        rates[schedule] = {r["step"]: r["lr"] for r in records if r["event"] == "train"}
    assert sorted(rates["cosine"]) == list(range(1, 13))
    assert all(rate == 8.0 for rate in rates["constant"].values())
    for step, rate in rates["cosine"].items():  # logged after the step; its rate was set at step - 1
        assert rate == pytest.approx(8.0 * 0.5 * (1 + math.cos(math.pi * (step - 1) / 12)), rel=1e-12)


def test_unknown_lr_schedule_is_one_sentence(tiny_corpus, tmp_path):
    with pytest.raises(Exception, match="train.lr_schedule must be constant or cosine"):
        tiny_config(tiny_corpus, tmp_path, **{"train.lr_schedule": "linear"})


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lm.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_train_evaluate_and_bad_input(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "runs"
    done = run_cli("train", LSTM, *tiny_overrides(tiny_corpus, out, **{"train.max_steps": 3}), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "test ppl" in done.stdout
    run_dir = next(out.iterdir())
    evaluated = run_cli("evaluate", run_dir, "--split", "valid")
    assert evaluated.returncode == 0 and "valid ppl" in evaluated.stdout
    before = (run_dir / "result.json").read_bytes()

    other = write_tiny_corpus(tmp_path / "other", seed=3)
    (other / "train.txt").write_text("completely different words here\n")
    cases = [
        ("train", LSTM, *tiny_overrides(tmp_path / "missing", out)),
        ("train", LSTM, *tiny_overrides(tiny_corpus, out, **{"head.name": "nope"})),
        ("train", LSTM, *tiny_overrides(tiny_corpus, out, **{"model.d_hidden": -3})),
        ("train", LSTM, *tiny_overrides(tiny_corpus, out, **{"train.bptt": 100000})),
        ("train", LSTM, *tiny_overrides(tiny_corpus, out, **{"train.max_steps": 3, "train.lr": 3})),  # other config, same folder
        ("evaluate", run_dir, "--data", other),
        ("evaluate", tmp_path / "no-such-run"),
        ("train", tmp_path / "no-such.yaml"),
    ]
    for case in cases:  # in-process: the same main() as the console command, without 5 s of torch import each
        capsys.readouterr()
        status = main([str(a) for a in case])
        err = capsys.readouterr().err
        assert status == 2, (case, err)
        assert err.strip().count("\n") == 0 and err.startswith("softmax-bench: error:"), err
    proc = run_cli("train", tmp_path / "no-such.yaml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("softmax-bench: error:")
    assert (run_dir / "result.json").read_bytes() == before, "nothing already written is destroyed"


def test_empty_corpus_file_is_refused(tiny_corpus, tmp_path, capsys):
    (tiny_corpus / "valid.txt").write_text("")
    assert main(["train", str(LSTM), *tiny_overrides(tiny_corpus, tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "valid" in err and err.count("\n") == 1


def test_bad_cli_arguments_are_one_sentence(capsys):
    for argv in (["evaluate"], ["train", "x.yaml", "--bogus"], ["evaluate", "r", "--split", "dev"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err and "usage" not in err
