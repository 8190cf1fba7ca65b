"""Re-run a finished run's config for its first N optimizer steps and compare the training losses.

    python scripts/check_reproduces.py RESULTS/RUN_DIR [--steps 50]

The config comes from ``RUN_DIR/result.json`` (exactly what trained the run), the output goes to a temporary
folder, and the training process is stopped once its metrics file holds the line of step N (the learning-rate
schedule is that of the whole run, so the first N steps are the same computation). Every ``train`` line up
to step N must carry exactly the same loss as the committed ``metrics.jsonl``. Exit 0 when they do, 1 when
they do not, 2 on bad input. CPU only (GPU kernels are not bitwise deterministic).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def train_losses(metrics: Path, steps: int) -> dict[int, float]:
    """``step -> loss`` of the ``train`` lines up to ``steps`` (the last copy of a line wins, as on resume)."""
    losses = {}
    if metrics.exists():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            if record.get("event") == "train" and record["step"] <= steps:
                losses[record["step"]] = record["loss"]
    return losses


def rerun(config: dict, steps: int, folder: Path, timeout_s: float) -> dict[int, float]:
    """Train ``config`` into ``folder`` until the metrics line of step ``steps`` is written, then stop."""
    config = json.loads(json.dumps(config))
    config["run"].update(output_dir=str(folder / "runs"), name="rerun", device="cpu")
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    metrics = folder / "runs" / "rerun" / "metrics.jsonl"
    log_every = config["train"]["log_every"]
    last_logged = steps - steps % log_every
    environment = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                       PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen([sys.executable, "-m", "lm.cli", "train", str(config_path), "--no-progress"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment)
    deadline = time.monotonic() + timeout_s
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if last_logged in train_losses(metrics, steps):
                break
            time.sleep(0.2)
        if process.poll() not in (None, 0):
            raise SystemExit(f"check_reproduces: the re-run failed: {process.stderr.read().strip()}")
    finally:
        process.kill()
        process.wait()
    return train_losses(metrics, steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps to compare (default 50)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before giving up (default 1800)")
    args = parser.parse_args(argv)
    result_path = args.run_dir / "result.json"
    if not result_path.is_file() or not (args.run_dir / "metrics.jsonl").is_file():
        print(f"check_reproduces: {args.run_dir} holds no result.json and metrics.jsonl of a finished run.", file=sys.stderr)
        return 2
    result = json.loads(result_path.read_text(encoding="utf-8"))
    expected = train_losses(args.run_dir / "metrics.jsonl", args.steps)
    if not expected:
        print(f"check_reproduces: {args.run_dir}/metrics.jsonl has no train line up to step {args.steps}.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rerun-") as folder:
        got = rerun(result["config"], args.steps, Path(folder), args.timeout)
    for step, loss in sorted(expected.items()):
        same = got.get(step) == loss
        print(f"step {step:5d}: committed {loss!r}, re-run {got.get(step)!r} {'same' if same else 'DIFFERENT'}")
    ok = all(got.get(step) == loss for step, loss in expected.items())
    print(f"{args.run_dir.name}: the first {args.steps} steps {'reproduce exactly' if ok else 'do NOT reproduce'}.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
