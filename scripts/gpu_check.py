"""The CUDA paths of the trainer, for a machine with a GPU (run through scripts/gpu_check.sh, < 5 minutes).

Checks, each reported as passed / failed with its numbers:
  1. device placement: a tiny run on ``cuda`` trains there, and its checkpoint holds the CUDA generator state;
  2. resume: killed (in-process) after a checkpoint and resumed, it ends with the numbers of a run never
     interrupted (bit for bit is reported; cuDNN kernels need not be deterministic, so close is the test);
  3. bf16 and fp16 (with its gradient scaler) train with finite losses close to fp32;
  4. dynamic evaluation runs on the GPU;
  5. with two GPUs or more: torchrun with 2 NCCL processes gives the first losses of one process;
  6. throughput of the MoS PTB paper config (configs/ptb-mos.yaml: 3-layer AWD-LSTM 960/620, 15 components,
     batch 12, BPTT 70) on a synthetic corpus with PTB's vocabulary size, fp32 and bf16, in training tokens/s.
Writes results/bench/gpu_check.json. Without CUDA it stops at once with one sentence (exit 1);
``--cpu-self-test`` runs the same code on the CPU at tiny sizes, to check the script itself.
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

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lm.train  # noqa: E402
from lm.checkpoint import load_checkpoint  # noqa: E402
from lm.config import load_config  # noqa: E402
from lm.io import atomic_write_json  # noqa: E402
from lm.provenance import provenance  # noqa: E402
from lm.train import run_dir_for, train  # noqa: E402

LSTM = ROOT / "configs" / "ptb-lite-lstm.yaml"
MOS = ROOT / "configs" / "ptb-mos.yaml"


def write_corpus(folder: Path, vocab: int, n_train: int, n_eval: int, seed: int = 0) -> Path:
    """Zipf-distributed words in lines of 20 (a stand-in for PTB where the corpus cannot be downloaded)."""
    generator = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.txt", n_train), ("valid.txt", n_eval), ("test.txt", n_eval)):
        ids = torch.multinomial(weights, n, replacement=True, generator=generator).view(-1, 20).tolist()
        (folder / name).write_text("\n".join(" ".join(f"w{i}" for i in line) for line in ids) + "\n")
    return folder


def tiny(corpus: Path, out: Path, device: str, **extra) -> list[str]:
    values = {"data.path": corpus, "model.d_embedding": 32, "model.d_hidden": 48, "model.n_layers": 2,
              "train.batch_size": 8, "train.bptt": 12, "train.epochs": 2, "train.eval_batch_size": 4,
              "train.test_batch_size": 1, "train.checkpoint_every": 5, "train.log_every": 1,
              "run.output_dir": out, "run.device": device, **extra}
    return [f"{k}={v}" for k, v in values.items()]


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["event"] == "train"]


class Interrupt(Exception):
    pass


def check_placement_and_resume(corpus: Path, out: Path, device: str) -> dict:
    reference = train(load_config(LSTM, tiny(corpus, out / "ref", device)))
    config = load_config(LSTM, tiny(corpus, out / "cut", device))
    real = lm.train.save_checkpoint

    def save(path, checkpoint, keep_previous=True):
        real(path, checkpoint, keep_previous=keep_previous)
        if Path(path).name == "last.pt" and checkpoint["trainer"]["step"] == 10:
            raise Interrupt

    lm.train.save_checkpoint = save
    try:
        train(config)
    except Interrupt:
        pass
    finally:
        lm.train.save_checkpoint = real
    checkpoint = load_checkpoint(run_dir_for(config) / "last.pt")
    resumed = train(config)
    return {
        "device_in_result": reference["device"],
        "cuda_generator_in_checkpoint": "cuda" in checkpoint["rng"],
        "resumed_val_ppl": resumed["val_ppl"], "uninterrupted_val_ppl": reference["val_ppl"],
        "bit_identical": resumed["val_ppl"] == reference["val_ppl"] and resumed["test_ppl"] == reference["test_ppl"],
        "passed": (device == "cpu" or ("cuda" in checkpoint["rng"] and "cuda" in str(reference["device"]).lower()))
        and abs(resumed["val_ppl"] / reference["val_ppl"] - 1) < 1e-3,
    }


def check_precisions(corpus: Path, out: Path, device: str) -> dict:
    report = {}
    base = losses(run_dir_for(load_config(LSTM, tiny(corpus, out / "ref", device))))
    for precision in ("bf16", "fp16"):
        config = load_config(LSTM, tiny(corpus, out / precision, device, **{"train.precision": precision}))
        result = train(config)
        got = losses(run_dir_for(config))
        close = all(abs(a - b) < 0.05 * abs(b) for a, b in zip(got[:5], base[:5]))
        report[precision] = {"first_losses": got[:3], "fp32_first_losses": base[:3], "test_ppl": result["test_ppl"],
                             "passed": close and all(map(lambda v: v == v and abs(v) < float("inf"), got))}
    return report


def check_dynamic(corpus: Path, out: Path, device: str) -> dict:
    config = load_config(LSTM, tiny(corpus, out / "dyn", device, **{
        "train.max_steps": 6, "train.dynamic_eval": True, "train.dynamic_eval_max_batches": 20}))
    result = train(config)
    return {"test_ppl": result["test_ppl"], "test_ppl_dynamic": result["test_ppl_dynamic"],
            "passed": result["test_ppl_dynamic"] == result["test_ppl_dynamic"]}


def check_ddp(corpus: Path, out: Path, device: str) -> dict:
    if device != "cpu" and torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU: 2-GPU DDP needs two", "passed": True}
    nodrop = {f"model.{k}": 0 for k in ("dropout_embedding", "dropout_input", "dropout_hidden", "dropout_output", "weight_drop")}
    extra = {"train.max_steps": 5, **nodrop}
    one = load_config(LSTM, tiny(corpus, out / "ddp1", device, **extra))
    train(one)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29611", "-m", "lm.cli",
               "train", str(LSTM), *tiny(corpus, out / "ddp2", device, **extra), "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    if done.returncode:
        return {"passed": False, "stderr": done.stderr[-2000:]}
    a, b = losses(run_dir_for(one)), losses(out / "ddp2" / run_dir_for(one).name)
    return {"one_process": a, "two_processes": b, "passed": all(abs(x - y) < 1e-4 * abs(x) for x, y in zip(a, b))}


def throughput(out: Path, device: str, steps: int) -> dict:
    small = device == "cpu"
    corpus = write_corpus(out / "ptb-like", vocab=500 if small else 10000, n_train=4_000 if small else 400_000,
                          n_eval=400 if small else 4_000)
    report = {}
    for precision in ("fp32", "bf16"):
        overrides = [f"data.path={corpus}", "data.name=null", f"train.max_steps={steps}", f"train.precision={precision}",
                     f"run.output_dir={out / ('mos-' + precision)}", f"run.device={device}", "train.checkpoint_every=0",
                     "train.test_batch_size=10", "train.finetune_epochs=0", "train.dynamic_eval=false"]
        if small:  # self-test: the paper config at a tiny size
            overrides += ["model.d_embedding=16", "model.d_hidden=24", "model.d_last=16", "head.d_latent=16", "train.bptt=10"]
        started = time.perf_counter()
        result = train(load_config(MOS, overrides))
        report[precision] = {"tokens_per_second": result["tokens_per_second"], "steps": result["steps"],
                             "seconds_with_evaluation": time.perf_counter() - started}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-self-test", action="store_true", help="run on the CPU at tiny sizes (checks the script)")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of each throughput run")
    parser.add_argument("--output", default=str(ROOT / "results" / "bench" / "gpu_check.json"))
    args = parser.parse_args()
    if not args.cpu_self_test and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available (torch.cuda.is_available() is False); this check needs a GPU.",
              file=sys.stderr)
        return 1
    device = "cpu" if args.cpu_self_test else "cuda"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        corpus = write_corpus(out / "corpus", vocab=200, n_train=3_000 if args.cpu_self_test else 20_000, n_eval=400)
        checks = {}
        for name, check in (("placement_and_resume", check_placement_and_resume), ("precision", check_precisions),
                            ("dynamic_eval", check_dynamic), ("ddp_2_processes", check_ddp)):
            began = time.perf_counter()
            checks[name] = check(corpus, out, device)
            checks[name]["seconds"] = round(time.perf_counter() - began, 1)
            print(f"{name}: {json.dumps(checks[name])}", flush=True)
        speed = throughput(out, device, 10 if args.cpu_self_test else args.steps)
    print(f"MoS PTB paper config, training tokens/s: {json.dumps(speed)}")
    passed = all(c["passed"] if "passed" in c else all(v["passed"] for v in c.values() if isinstance(v, dict))
                 for c in checks.values())
    report = {"benchmark": "gpu_check", "command": "scripts/gpu_check.sh" + (" --cpu-self-test" if args.cpu_self_test else ""),
              "passed": passed, "checks": checks, "mos_ptb_paper_config_throughput": speed,
              "throughput_corpus": "synthetic, Zipf words, vocabulary 10,000 (PTB's size), 400,000 training tokens",
              "seconds": time.perf_counter() - started, **provenance(torch.device(device))}
    if not args.cpu_self_test:
        atomic_write_json(args.output, report)
    print(f"gpu_check: {'passed' if passed else 'FAILED'} in {report['seconds']:.0f} s")
    return 0 if passed else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
