"""torchrun with 2 gloo processes on the CPU: the same losses as one process with the same global batch,
exact resume after a SIGKILL of the whole process group, and an ordinary run folder afterwards."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from lm.checkpoint import SLOW_WRITE_ENV, load_checkpoint
from lm.cli import main
from lm.config import load_config, save_config
from lm.errors import UserError
from lm.train import Trainer, run_dir_for, train
from tests.conftest import tiny_overrides, write_tiny_corpus

ROOT = Path(__file__).resolve().parent.parent
LSTM = ROOT / "configs" / "ptb-lite-lstm.yaml"
NO_DROPOUT = {f"model.{k}": 0 for k in ("dropout_embedding", "dropout_input", "dropout_hidden", "dropout_output", "weight_drop")}
RUN = {"train.epochs": 2, "train.checkpoint_every": 3, "train.log_every": 1, **NO_DROPOUT}
CLOCK = {"tokens_per_second", "train_time_s", "wall_time_s"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(corpus: Path, out: Path, slow_write: float = 0.0, **popen) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    if slow_write:
        env[SLOW_WRITE_ENV] = str(slow_write)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "lm.cli", "train", str(LSTM), *tiny_overrides(corpus, out, **RUN), "--no-progress"]
    return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, **popen)


def kill_with_workers(pid: int) -> None:
    """SIGKILL torchrun's workers (it starts them in sessions of their own) and then torchrun."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        os.kill(int(child), signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    assert len(children) == 2, children


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    """``proc.communicate`` that kills torchrun's whole session if it does not end in time (so a hung run
    fails the test instead of outliving it)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():  # own sessions
            os.kill(int(child), signal.SIGKILL)
        proc.kill()
        proc.communicate()
        raise


def lines(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in CLOCK} for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted 2-process run and the 1-process run with the same global batch."""
    root = tmp_path_factory.mktemp("parallel")
    corpus = write_tiny_corpus(root / "corpus", n_lines=(80, 8, 8))
    proc = torchrun(corpus, root / "two", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = finish(proc)
    assert proc.returncode == 0, err[-3000:]
    config = load_config(LSTM, tiny_overrides(corpus, root / "one", **RUN))
    one = train(config)
    two_dir = root / "two" / run_dir_for(config).name
    return {"corpus": corpus, "one": (one, run_dir_for(config)), "two": (json.loads((two_dir / "result.json").read_text()), two_dir),
            "stdout": out}


def test_two_processes_give_the_losses_of_one_with_the_same_global_batch(runs):
    (one, one_dir), (two, two_dir) = runs["one"], runs["two"]
    assert runs["stdout"].count("test ppl") == 1, "process 0 alone talks"
    a = [r for r in lines(one_dir) if r["event"] == "train"]
    b = [r for r in lines(two_dir) if r["event"] == "train"]
    assert len(a) == len(b) == one["steps"]
    for x, y in zip(a[:5], b[:5]):  # the first steps: the same up to float rounding of the split batch
        assert (x["step"], x["lr"]) == (y["step"], y["lr"])
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5, abs=1e-6)
    assert two["training_tokens"] == one["training_tokens"] and two["processes"] == 2
    assert two["val_ppl"] == pytest.approx(one["val_ppl"], rel=1e-3)
    checkpoint = load_checkpoint(two_dir / "last.pt")
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng_by_process"]) == 2
    assert checkpoint["hidden"][0][0].shape[1] == 4, "the checkpoint holds the hidden state of all 4 columns"


def test_a_two_process_run_is_an_ordinary_run_folder(runs, capsys):
    (two, two_dir) = runs["two"]
    assert main(["evaluate", str(two_dir), "--split", "test"]) == 0
    assert f"test ppl {two['test_ppl']:.2f}" in capsys.readouterr().out
    assert not list(two_dir.glob(".*.tmp")) and (two_dir / "best.pt").exists()


def test_a_killed_two_process_run_resumes_to_the_same_numbers(runs, tmp_path):
    (two, two_dir) = runs["two"]
    out = tmp_path / "cut"
    run_dir = out / two_dir.name

    def logged_step(at_least: int) -> bool:
        try:
            return any(json.loads(line).get("step", 0) >= at_least
                       for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.endswith("}"))
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    proc = torchrun(runs["corpus"], out, slow_write=0.3, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not logged_step(8) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        kill_with_workers(proc.pid)
    finally:
        proc.wait(timeout=60)
    assert not (run_dir / "result.json").exists()
    assert load_checkpoint(run_dir / "last.pt")["trainer"]["step"] in (6, 9)
    proc = torchrun(runs["corpus"], out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = finish(proc)
    assert proc.returncode == 0, stderr[-3000:]
    assert "resuming" in stdout
    resumed = json.loads((run_dir / "result.json").read_text())
    for key in ("val_ppl", "test_ppl", "val_loss", "test_loss", "steps", "training_tokens"):
        assert resumed[key] == two[key], key
    assert lines(run_dir) == lines(two_dir)
    best, expected = load_checkpoint(run_dir / "best.pt")["model"], load_checkpoint(two_dir / "best.pt")["model"]
    assert all(torch.equal(best[k], expected[k]) for k in expected)


def test_resuming_with_another_number_of_processes_is_one_sentence(runs, tmp_path):
    (two, two_dir) = runs["two"]
    run_dir = shutil.copytree(two_dir, tmp_path / two_dir.name)
    (run_dir / "result.json").unlink()
    config = load_config(LSTM, tiny_overrides(runs["corpus"], tmp_path, **RUN))
    save_config(config, run_dir / "config.yaml")  # the saved config names the folder it was trained in

    with pytest.raises(UserError, match=r"written by a run of 2 process\(es\), this one has 1; resume it with the same number"):
        train(config)


def test_batch_not_divisible_by_the_processes(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; the check comes before any process group
    config = load_config(LSTM, tiny_overrides(runs["corpus"], tmp_path, **{**RUN, "train.batch_size": 3}))
    with pytest.raises(UserError, match=r"^train.batch_size=3 must be divisible by the 2 processes of torchrun\.$"):
        train(config)


def test_the_ddp_wrapper_goes_before_the_process_group(tmp_path):
    """Its Reducer must not be the group's last holder: destroyed after ``destroy_process_group`` (with the
    GIL held) it joins gloo's threads while one waits for the GIL, the hang at the end of a 2-process run."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        holder = SimpleNamespace(loss_module=torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2)))
        holder.loss_module(torch.ones(4, 3)).sum().backward()  # the Reducer's autograd hooks have fired
        wrapper = weakref.ref(holder.loss_module)
        with Trainer.reducer_released_before_teardown(holder):
            assert wrapper() is not None
        assert wrapper() is None and dist.is_initialized()
    finally:
        dist.destroy_process_group()
