"""The workflow scripts start and finish on a tiny corpus (a few steps per run), and the CPU suite lists its runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def run_script(name: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", **env)
    return subprocess.run(["bash", str(SCRIPTS / name), *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("script, head, seeds", [
    ("reproduce_awd_lstm.sh", "softmax", {141, 1882}),  # configs/ptb-awd-lstm.yaml, configs/wt2-awd-lstm.yaml
    ("reproduce_mos.sh", "mos", {28, 1882}),  # configs/ptb-mos.yaml, configs/wt2-mos.yaml
])
def test_paper_reproduction_scripts_run_a_few_steps(tiny_corpus, tmp_path, script, head, seeds):
    out = tmp_path / "paper"
    overrides = [item for item in tiny_overrides(tiny_corpus, out, head, **{"train.max_steps": 2, "train.epochs": 1,
                                                                        "model.d_last": 16, "train.batch_size": 2})
                 if not item.startswith(("run.output_dir=", "run.device="))]
    done = run_script(script, *overrides, cwd=tmp_path, OUTPUT_DIR=str(out), DEVICE="cpu")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run_dirs = sorted(p.parent for p in out.glob("*/result.json"))
    assert len(run_dirs) == 2
    results = [json.loads((run_dir / "result.json").read_text()) for run_dir in run_dirs]
    assert {r["seed"] for r in results} == seeds and {r["head"] for r in results} == {head}
    for run_dir, result in zip(run_dirs, results):
        assert result["steps"] == 2 and result["device"] == "cpu"
        assert result["config"]["model"]["d_embedding"] == 16 and result["config"]["train"]["batch_size"] == 2
        rank = json.loads((run_dir / "rank.json").read_text())
        assert rank["split"] == "valid" and rank["protocol"]["batch_size"] == 1 and rank["rank"]["nr"] >= 1
    assert (out / "summary.md").is_file() and (out / "summary.csv").read_text().count("\n") == 3
    assert "| " + head + " |" in done.stdout


def test_cpu_suite_lists_the_thirty_lite_runs(tmp_path):
    done = run_script("cpu_suite.sh", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    commands = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    assert len(commands) == 30 and "# 30 runs" in done.stdout
    for corpus in ("ptb-lite", "wikitext-2-lite"):
        for head in yaml.safe_load((ROOT / "configs/suites/lite-cpu.yaml").read_text())["grid"]["head.name"]:
            for seed in (1, 2, 3):
                assert sum(f"configs/{corpus}-lstm.yaml" in c and f"head.name={head} " in c and f"train.seed={seed} " in c
                           for c in commands) == 1, (corpus, head, seed)
    assert all("run.output_dir=results/lite-cpu" in c for c in commands)
    only = run_script("cpu_suite.sh", "--dry-run", "--only", "head=mos", "--only", "seed=1", cwd=tmp_path)
    assert only.returncode == 0 and "# 2 runs" in only.stdout


def test_scripts_are_executable_and_strict():
    for path in sorted(SCRIPTS.glob("*.sh")):
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text, path
        assert os.access(path, os.X_OK), f"{path} is not executable"


def test_check_reproduces_confirms_a_run_and_catches_a_changed_loss(tiny_corpus, tmp_path):
    """scripts/check_reproduces.py re-runs a finished run's config for its first steps: same losses pass,
    an altered committed loss fails."""
    from lm.config import load_config
    from lm.train import run_dir_for, train

    config = load_config(ROOT / "configs" / "ptb-lite-lstm.yaml",
                         tiny_overrides(tiny_corpus, tmp_path / "runs", **{"train.log_every": 2, "train.epochs": 2}))
    train(config)
    run_dir = run_dir_for(config)
    command = [sys.executable, str(SCRIPTS / "check_reproduces.py"), str(run_dir), "--steps", "6"]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" same") == 3 and "reproduce exactly" in done.stdout  # steps 2, 4, 6

    metrics = run_dir / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    changed = next(r for r in lines if r["event"] == "train" and r["step"] == 4)
    changed["loss"] += 1e-12
    metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 1 and "DIFFERENT" in done.stdout and "do NOT reproduce" in done.stdout


def test_machine_time_sums_training_and_rank_seconds(tmp_path):
    """scripts/machine_time.py adds each run's training seconds and its rank reports' seconds, per folder and
    over all, and divides by the runs that shared the machine; a missing folder is one sentence, exit 2."""
    def write(path: Path, record: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))

    write(tmp_path / "grid" / "a" / "result.json", {"wall_time_s": 3600.0})
    write(tmp_path / "grid" / "a" / "rank.json", {"seconds": {"rank": 100.0, "total": 1800.0}})
    write(tmp_path / "grid" / "a" / "rank-full.json", {"seconds": {"rank": 900.0, "total": 1800.0}})
    write(tmp_path / "grid" / "b" / "result.json", {"wall_time_s": 7200.0})
    write(tmp_path / "sweep" / "c" / "result.json", {"wall_time_s": 1800.0})
    script = [sys.executable, str(SCRIPTS / "machine_time.py")]
    done = subprocess.run([*script, "grid", "sweep", "--parallel", "2"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "| grid | 2 | 3.00 | 2 | 1.00 | 4.00 |" in done.stdout
    assert "| sweep | 1 | 0.50 | 0 | 0.00 | 0.50 |" in done.stdout
    assert "all folders: 4.5 run-hours; 2.2 hours of the machine at 2 run(s) at a time" in done.stdout
    missing = subprocess.run([*script, "grid", "nowhere"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.strip() == "error: no such results folder: nowhere"
