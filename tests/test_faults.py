"""Runs survive faults: SIGKILL at any moment, damaged checkpoints, non-finite values, full or read-only disks.

The SIGKILL test starts ``python -m lm.cli train`` as a real subprocess and kills it (SIGKILL, from this
process) while it computes, while it writes ``last.pt`` and while it writes ``best.pt``; each time the same
command resumes it, and the finished run must equal an uninterrupted one bit for bit: validation and test
perplexity, the best weights and every line of ``metrics.jsonl`` but the timings.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lm.checkpoint
import lm.io
import lm.train
from lm.checkpoint import SLOW_WRITE_ENV, load_checkpoint, previous_path, run_lock
from lm.cli import main
from lm.config import load_config, save_config
from lm.errors import UserError
from lm.language_model import LanguageModel
from lm.train import MAX_ROLLBACKS, NonFiniteError, run_dir_for, train
from tests.conftest import tiny_overrides, write_tiny_corpus

ROOT = Path(__file__).resolve().parent.parent
LSTM = ROOT / "configs" / "ptb-lite-lstm.yaml"
# About 17 optimizer steps per epoch on the corpus below; checkpoints every 3 steps and at epoch ends.
RUN = {"train.epochs": 2, "train.checkpoint_every": 3, "train.log_every": 1}
TIMINGS = {"tokens_per_second", "train_time_s", "wall_time_s"}  # the clock, not the numbers


def overrides(corpus: Path, out: Path, **extra) -> list[str]:
    return tiny_overrides(corpus, out, **{**RUN, **extra})


def config_for(corpus: Path, out: Path, **extra):
    return load_config(LSTM, overrides(corpus, out, **extra))


def metrics(run_dir: Path) -> list[dict]:
    """The metric lines without their timings (every line must parse: no torn or duplicated lines)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]


def poll(condition, timeout: float, what: str, interval: float = 0.01):
    """The first truthy value of ``condition()``, polled for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A corpus and the uninterrupted run on it (in this process, one thread: as the subprocesses)."""
    root = tmp_path_factory.mktemp("faults")
    corpus = write_tiny_corpus(root / "corpus", n_lines=(80, 8, 8))
    config = config_for(corpus, root / "reference")
    result = train(config)
    return {"corpus": corpus, "result": result, "run_dir": run_dir_for(config), "root": root}


def assert_same_run(run_dir: Path, reference: dict) -> None:
    result = json.loads((run_dir / "result.json").read_text())
    expected = reference["result"]
    for key in ("val_ppl", "test_ppl", "val_loss", "test_loss", "steps", "training_tokens", "best_epoch"):
        assert result[key] == expected[key], key  # bit for bit
    best, expected_best = load_checkpoint(run_dir / "best.pt"), load_checkpoint(reference["run_dir"] / "best.pt")
    assert best["model"].keys() == expected_best["model"].keys()
    assert all(torch.equal(best["model"][k], expected_best["model"][k]) for k in best["model"])
    assert metrics(run_dir) == metrics(reference["run_dir"])
    assert not list(run_dir.glob(".*.tmp")), "temporary files of killed writers are cleaned up"


# --- real SIGKILLs ------------------------------------------------------------------------------


def test_sigkill_at_several_points_then_resume_is_bit_identical(reference, tmp_path):
    corpus, out = reference["corpus"], tmp_path / "runs"
    command = [sys.executable, "-m", "lm.cli", "train", str(LSTM), *overrides(corpus, out), "--no-progress"]
    run_dir = out / reference["run_dir"].name
    last, best = run_dir / "last.pt", run_dir / "best.pt"

    def temporary(name: str):
        """The temporary file of an atomic write of ``name`` (not the hard link made for ``name.prev``)."""
        return lambda: next((p for p in run_dir.glob(f".{name}.*.tmp") if ".link." not in p.name), None)

    def logged_step(at_least: int):
        def condition():
            try:
                return any(json.loads(line).get("step", 0) >= at_least
                           for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.endswith("}"))
            except (FileNotFoundError, json.JSONDecodeError):
                return False
        return condition

    def session(slow_write: float, condition, what: str) -> None:
        """Start the command, wait for ``condition``, SIGKILL it and check that it died mid-run."""
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
        if slow_write:
            env[SLOW_WRITE_ENV] = str(slow_write)
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            poll(lambda: condition() or proc.poll() is not None, timeout=120, what=what)
            assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read().decode()}"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        assert not (run_dir / "result.json").exists()

    # 1. During the second write of last.pt (hook: half a temporary file, not yet renamed).
    session(1.0, lambda: last.exists() and temporary("last.pt")(), "the second write of last.pt")
    assert temporary("last.pt")() is not None, "killed before the rename"
    assert load_checkpoint(last)["trainer"]["step"] == 3
    assert load_checkpoint(previous_path(last))["trainer"]["step"] == 3  # hard link of the same file

    # 2. Just after step 8, while computing step 9 or writing its checkpoint (writes slowed a little so that
    #    the end of the epoch is far); the lines after the checkpoint are dropped on resume.
    session(0.3, logged_step(8), "step 8")
    assert load_checkpoint(last)["trainer"]["step"] in (6, 9)
    assert not best.exists()

    # 3. During the first write of best.pt (at the end of epoch 1; last.pt writes are slowed as well).
    session(0.5, temporary("best.pt"), "the write of best.pt")
    assert not best.exists() and temporary("best.pt")() is not None

    # 4. Resume to the end: the same numbers as a run never interrupted.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    assert_same_run(run_dir, reference)


# --- interruptions and damaged checkpoints, in this process ---------------------------------------


class Interrupt(Exception):
    pass


def interrupt_at_save(monkeypatch, n: int, before_writing: bool = False):
    """Raise :class:`Interrupt` at the ``n``-th save of last.pt (before or after it is written)."""
    real = lm.train.save_checkpoint
    calls = {"n": 0}

    def save(path, checkpoint, keep_previous=True):
        if Path(path).name == "last.pt":
            calls["n"] += 1
            if calls["n"] == n and before_writing:
                raise Interrupt
        real(path, checkpoint, keep_previous=keep_previous)
        if Path(path).name == "last.pt" and calls["n"] == n:
            raise Interrupt

    monkeypatch.setattr(lm.train, "save_checkpoint", save)
    return real


def test_killed_before_the_first_checkpoint_starts_over_cleanly(reference, tmp_path, monkeypatch):
    config = config_for(reference["corpus"], tmp_path)
    real = interrupt_at_save(monkeypatch, 1, before_writing=True)
    with pytest.raises(Interrupt):
        train(config)
    run_dir = run_dir_for(config)
    assert not (run_dir / "last.pt").exists() and len(metrics(run_dir)) == 3
    monkeypatch.setattr(lm.train, "save_checkpoint", real)
    train(config)
    assert_same_run(run_dir, reference)


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_or_missing_last_checkpoint_resumes_from_previous(reference, tmp_path, monkeypatch, damage):
    config = config_for(reference["corpus"], tmp_path)
    real = interrupt_at_save(monkeypatch, 3)
    with pytest.raises(Interrupt):
        train(config)
    run_dir = run_dir_for(config)
    last = run_dir / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:1000])
    else:  # what a kill between the two renames leaves where hard links are not supported
        os.replace(last, previous_path(last))
    monkeypatch.setattr(lm.train, "save_checkpoint", real)
    said = []
    train(config, say=said.append)
    expected = "is damaged" if damage == "truncated" else "does not exist"
    assert any(expected in line and "Using the previous checkpoint last.pt.prev instead." in line for line in said), said
    assert any(line.startswith("resuming") and "from last.pt.prev" in line for line in said), said
    assert_same_run(run_dir, reference)


def test_disk_full_during_a_checkpoint_then_resume(reference, tmp_path, monkeypatch):
    config = config_for(reference["corpus"], tmp_path)
    run_dir = run_dir_for(config)
    real_write, calls, written = lm.checkpoint._write, {"n": 0}, {}

    def write(handle, data):
        calls["n"] += 1
        if calls["n"] == 3:
            handle.write(data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(handle, data)
        written["last"] = data

    monkeypatch.setattr(lm.checkpoint, "_write", write)
    with pytest.raises(UserError, match=r"^cannot write checkpoint .*last\.pt \(No space left on device\); the checkpoints already there are intact\.$"):
        train(config)
    assert (run_dir / "last.pt").read_bytes() == written["last"]
    assert load_checkpoint(run_dir / "last.pt")["trainer"]["step"] == 6
    assert not list(run_dir.glob(".*.tmp"))
    monkeypatch.setattr(lm.checkpoint, "_write", real_write)
    train(config)
    assert_same_run(run_dir, reference)


def test_disk_full_while_logging_is_one_sentence(reference, tmp_path, monkeypatch):
    config = config_for(reference["corpus"], tmp_path)
    real, calls = lm.io.append_jsonl, {"n": 0}

    def append(path, record):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, record)

    monkeypatch.setattr(lm.io, "append_jsonl", append)
    with pytest.raises(UserError, match=r"^cannot write under .* \(No space left on device\); the checkpoints already there are intact"):
        train(config)
    assert load_checkpoint(run_dir_for(config) / "last.pt")["trainer"]["step"] == 3


def test_too_little_disk_space_is_found_before_training(reference, tmp_path, monkeypatch):
    config = config_for(reference["corpus"], tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1024))
    with pytest.raises(UserError, match=r"^only 0 MiB free under .*, checkpoints need about \d+ MiB\.$"):
        train(config)
    assert not [p.name for p in run_dir_for(config).iterdir() if not p.name.startswith(".")]


def test_read_only_output_folder_is_one_sentence(reference, tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where the output folder should be")
    assert main(["train", str(LSTM), *overrides(reference["corpus"], blocker / "runs"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("softmax-bench: error: cannot write to run folder"), err
    assert blocker.read_text().startswith("a regular file")


def test_a_folder_in_use_is_refused(reference, tmp_path):
    config = config_for(reference["corpus"], tmp_path)
    run_dir = run_dir_for(config)
    run_dir.mkdir(parents=True)
    with run_lock(run_dir):
        with pytest.raises(UserError, match="is in use by another softmax-bench process"):
            train(config)
    assert not (run_dir / "config.yaml").exists()


# --- numerical guards ---------------------------------------------------------------------------


def nan_loss_at(monkeypatch, calls_with_nan):
    """Make the training loss NaN at the given calls of ``LanguageModel.loss`` (1-based; a set or 'all')."""
    real, count = LanguageModel.loss, {"n": 0}

    def loss(self, tokens, targets, state=None):
        nll, state, penalty = real(self, tokens, targets, state)
        count["n"] += 1
        if calls_with_nan == "all" or count["n"] in calls_with_nan:
            nll = nll * float("nan")
        return nll, state, penalty

    monkeypatch.setattr(LanguageModel, "loss", loss)


def test_nan_loss_stops_at_its_step_and_keeps_the_checkpoint(reference, tmp_path, monkeypatch, capsys):
    nan_loss_at(monkeypatch, {8, 10})  # step 8, and step 8 again when the --debug run resumes from step 6
    args = ["train", str(LSTM), *overrides(reference["corpus"], tmp_path), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("softmax-bench: error: the training loss became nan at step 8 (epoch 1); the run stopped")
    assert "last good checkpoint" in err[0] and "train.on_nonfinite=rollback" in err[0]
    run_dir = run_dir_for(config_for(reference["corpus"], tmp_path))
    checkpoint = load_checkpoint(run_dir / "last.pt")
    assert checkpoint["trainer"]["step"] == 6
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())
    assert not (run_dir / "result.json").exists()
    assert main(["--debug", *args]) == 2
    assert "Traceback" in capsys.readouterr().err, "--debug shows the traceback"


def test_nonfinite_gradient_stops_at_its_step(reference, tmp_path, monkeypatch):
    real, count = torch.nn.utils.clip_grad_norm_, {"n": 0}

    def clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        count["n"] += 1
        if count["n"] == 5:
            parameters[0].grad.fill_(float("inf"))
        return real(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    config = config_for(reference["corpus"], tmp_path)
    with pytest.raises(NonFiniteError, match=r"^the gradient became non-finite at step 5 \(epoch 1\)"):
        train(config)
    assert load_checkpoint(run_dir_for(config) / "last.pt")["trainer"]["step"] == 3


def test_overflowing_weights_are_never_checkpointed(reference, tmp_path, monkeypatch):
    """A finite gradient whose update overflows: the checkpoint due at that step is refused."""
    real, count = torch.nn.utils.clip_grad_norm_, {"n": 0}

    def clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        norm = real(parameters, max_norm, *args, **kwargs)
        count["n"] += 1
        if count["n"] == 6:
            parameters[0].grad.fill_(3e38)  # finite; times the learning rate it is not
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    config = config_for(reference["corpus"], tmp_path)
    with pytest.raises(NonFiniteError, match=r"^the weights became non-finite by step 6 \(epoch 1\); the run stopped"):
        train(config)
    checkpoint = load_checkpoint(run_dir_for(config) / "last.pt")
    assert checkpoint["trainer"]["step"] == 3
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())


def rollback_config(corpus: Path, out: Path, factor: float = 0.5):
    config = config_for(corpus, out)
    config.train.on_nonfinite = "rollback"  # read with getattr: works before and after the config field exists
    config.train.rollback_lr_factor = factor
    return config


def test_rollback_goes_back_to_the_last_checkpoint_with_a_lower_learning_rate(reference, tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, {8})
    said = []
    result = train(rollback_config(reference["corpus"], tmp_path), say=said.append)
    assert result["steps"] == reference["result"]["steps"]
    assert torch.isfinite(torch.tensor([result["val_ppl"], result["test_ppl"]])).all()
    assert any(line.startswith("the training loss became nan at step 8 (epoch 1); rolled back to step 6") for line in said), said
    records = metrics(run_dir_for(rollback_config(reference["corpus"], tmp_path)))
    rollbacks = [r for r in records if r["event"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["to_step"] == 6 and rollbacks[0]["lr_scale"] == 0.5
    train_steps = [r["step"] for r in records if r["event"] == "train"]
    assert train_steps == sorted(train_steps) and len(train_steps) == len(set(train_steps)), "lines after the checkpoint are dropped"
    before = {r["step"]: r["lr"] for r in metrics(reference["run_dir"]) if r["event"] == "train"}
    after = {r["step"]: r["lr"] for r in records if r["event"] == "train"}
    assert all(after[s] == before[s] for s in range(1, 7)) and all(after[s] == 0.5 * before[s] for s in range(7, 12))
    assert load_checkpoint(run_dir_for(rollback_config(reference["corpus"], tmp_path)) / "last.pt")["trainer"]["rollbacks"] == 1


def test_rollback_before_any_periodic_checkpoint_and_its_bound(reference, tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, "all")
    said = []
    with pytest.raises(NonFiniteError, match=rf"^the training loss became nan at step 1 \(epoch 1\) after {MAX_ROLLBACKS} rollbacks"):
        train(rollback_config(reference["corpus"], tmp_path), say=said.append)
    assert sum("rolled back to step 0" in line for line in said) == MAX_ROLLBACKS
    assert load_checkpoint(run_dir_for(rollback_config(reference["corpus"], tmp_path)) / "last.pt")["trainer"]["step"] == 0


# --- bad input end to end: one sentence, exit 2, nothing overwritten ---------------------------------


def finished_run(reference, tmp_path) -> tuple[list[str], Path]:
    out = tmp_path / "runs"
    run_dir = shutil.copytree(reference["run_dir"], out / reference["run_dir"].name)
    config = load_config(run_dir / "config.yaml")
    config.run.output_dir = str(out)  # the saved config names the folder it was trained in
    save_config(config, run_dir / "config.yaml")
    return ["train", str(LSTM), *overrides(reference["corpus"], out), "--no-progress"], out / reference["run_dir"].name


@pytest.mark.parametrize("content, fragment", [
    ('{"schema_version": 99, "test_ppl": 1.0}', "has result schema version 99, this version writes 1"),
    ("[1, 2, 3]", "is not a result file"),
    ('{"schema_version": 1, "tes', "is damaged"),
])
def test_result_files_from_elsewhere_are_refused(reference, tmp_path, capsys, content, fragment):
    args, run_dir = finished_run(reference, tmp_path)
    (run_dir / "result.json").write_text(content)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_finished_run_is_not_trained_again(reference, tmp_path, capsys):
    args, run_dir = finished_run(reference, tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert main(args) == 0
    assert "already finished" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_vocabulary_mismatch_with_the_checkpoint(reference, tmp_path, monkeypatch, capsys):
    corpus = shutil.copytree(reference["corpus"], tmp_path / "corpus")
    args = ["train", str(LSTM), *overrides(corpus, tmp_path / "runs"), "--no-progress"]
    interrupt_at_save(monkeypatch, 1)
    with pytest.raises(Interrupt):
        main(args)
    monkeypatch.undo()
    with open(corpus / "train.txt", "a", encoding="utf-8") as handle:
        handle.write("a zebra appears\n")
    run_dir = run_dir_for(config_for(corpus, tmp_path / "runs"))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained with another vocabulary" in err[0], err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("content", [b"\x00\x01binary\x02", b"caf\xe9 latin-1\n", b"\n\n  \n"])
def test_bad_corpus_files_through_the_cli(reference, tmp_path, capsys, content):
    corpus = shutil.copytree(reference["corpus"], tmp_path / "corpus")
    (corpus / "valid.txt").write_bytes(content)
    assert main(["train", str(LSTM), *overrides(corpus, tmp_path / "runs"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("softmax-bench: error: the corpus file") and "valid.txt" in err[0], err
    assert not (tmp_path / "runs").exists()


# --- exact resume of every piece of optimizer state --------------------------------------------------

TRANSFORMER = ROOT / "configs" / "ptb-lite-transformer.yaml"


@pytest.mark.parametrize("case", ["averaged_sgd", "adamw_transformer"])
def test_resume_inside_averaged_sgd_and_adamw_is_bit_identical(reference, tmp_path, monkeypatch, case):
    """Interrupted after the switch to averaged SGD (its average in the checkpoint), or during AdamW's warm-up."""
    if case == "averaged_sgd":
        # lr 100: the validation loss goes 4.6 -> 10.1 from epoch 1 to 2, so averaging starts after epoch 2
        path, extra = LSTM, {"train.epochs": 4, "train.nonmono": 1, "train.lr": 100}

        def stop_here(checkpoint):
            return checkpoint["trainer"]["averaging"] and checkpoint["trainer"]["n_averaged"] > 1
    else:
        path, extra = TRANSFORMER, {"train.optimizer": "adamw", "train.lr": 0.003, "train.warmup_steps": 8}

        def stop_here(checkpoint):
            return checkpoint["trainer"]["step"] == 6

    def config(out):
        return load_config(path, overrides(reference["corpus"], out, **extra))

    expected = train(config(tmp_path / "reference"))
    real, stopped = lm.train.save_checkpoint, []

    def save(target, checkpoint, keep_previous=True):
        real(target, checkpoint, keep_previous=keep_previous)
        if Path(target).name == "last.pt" and not stopped and stop_here(checkpoint):
            stopped.append(checkpoint["trainer"]["step"])
            raise Interrupt

    monkeypatch.setattr(lm.train, "save_checkpoint", save)
    with pytest.raises(Interrupt):
        train(config(tmp_path / "cut"))
    monkeypatch.setattr(lm.train, "save_checkpoint", real)
    resumed = train(config(tmp_path / "cut"))
    assert stopped and stopped[0] < expected["steps"]
    if case == "averaged_sgd":
        assert expected["averaged_sgd"] is True
    for key in ("val_ppl", "test_ppl", "steps", "averaged_sgd"):
        assert resumed[key] == expected[key], key
