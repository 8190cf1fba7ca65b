"""Speed and memory of every output head's training loss at the MoS paper's PTB setting.

``d = 280``, ``V = 10,000``, 420 tokens per step (batch 12 x BPTT 35). Every head of the registry
``lm.heads.HEADS`` is built with its own defaults, which are its paper's settings (``K = 15`` components
of latent size ``d`` and latent dropout 0.29 for the MoS-type mixtures; see each head's options in the
JSON). For every head one step is ``head.loss(hidden, targets, "none").mean()`` and its backward pass,
in training mode (dropout on), with the hidden states and all parameters requiring gradients. Each head
is also reported relative to softmax (step time, and the peak memory a step adds beyond softmax's).
Also measured:

- ``mos_reference``: the probability-space formula of the official MoS code (softmax per
  component, mix the probabilities, then ``log(p + 1e-8)``), through plain autograd: the baseline.
- ``mos_logspace_autograd``: the exact log-space MoS (``head(hidden)``, then gather) through plain
  autograd, without the fused loss.

Reported per method: median tokens/s over the timed steps, peak memory of one step, and the share of
the machine's measured float32 GEMM rate (model FLOPs per token x tokens/s / GEMM FLOP/s, with model
FLOPs = 3 x the forward FLOPs that ``torch.utils.flop_counter`` counts for ``head(hidden)``).

Timing: all methods in one process, one step of each in turn for ``--steps`` rounds after a warm-up
step, so that the load of a shared machine affects them alike; the median step is reported.

Peak memory: each method runs in a fresh Python subprocess; after one warm-up step it resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``), runs one step and reports ``VmHWM - VmRSS``
from ``/proc/self/status``, the resident memory the step added at its peak. PyTorch's CPU allocator
does not cache, and the subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc maps every
allocation of 64 KiB or more separately and unmaps it on free: resident memory tracks live tensors.

Writes ``results/bench/heads.json``:

    python scripts/bench_heads.py [--steps 5] [--threads 2] [--out results/bench/heads.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lm.heads import HEADS
from lm.io import atomic_write_json
from lm.provenance import provenance
from lm.seed import seed_everything

ROOT = Path(__file__).resolve().parent.parent
D_MODEL, VOCAB = 280, 10_000
BATCH, BPTT = 12, 35
# glibc: a fixed mmap threshold of 64 KiB (no dynamic raise) puts every tensor of 64 KiB or more in its
# own mapping, returned to the kernel when freed, so that resident memory follows the live tensors.
CHILD_ENVIRONMENT = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
BASELINES = ("mos_reference", "mos_logspace_autograd")  # two ways of computing MoS without its fused loss
METHODS = (*HEADS, *BASELINES)


def build_head(method: str) -> torch.nn.Module:
    """The head a method trains, at its defaults (the MoS head for the two MoS baselines)."""
    return HEADS["mos" if method in BASELINES else method](D_MODEL, VOCAB).train()


def head_options_used(method: str) -> dict:
    """The options of the head a method trains (its defaults), as they end up on the built head."""
    from lm.heads import head_options

    head = build_head(method)
    name = "mos" if method in BASELINES else method
    return {option: getattr(head, option, default) for option, (_, default) in head_options(name).items()}


def mos_reference_nll(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL as the official MoS code computes it: mix probabilities, then ``log(p + 1e-8)``."""
    log_prior, latent = head.mixture_inputs(hidden)  # (B, T, K), (B, T, K, d)
    prior = log_prior.exp().view(-1, head.n_components)  # (B, T, K) -> (N, K)
    logits = head.decoder(latent.view(-1, head.d_latent))  # (B, T, K, d) -> (N K, d) -> (N K, V)
    prob = F.softmax(logits, dim=-1).view(-1, head.n_components, VOCAB)  # (N K, V) -> (N, K, V)
    prob = (prob * prior.unsqueeze(2).expand_as(prob)).sum(1)  # (N, V)
    log_prob = torch.log(prob.add_(1e-8))
    return F.nll_loss(log_prob, targets.reshape(-1), reduction="none")


def loss_function(method: str, head):
    """``(hidden, targets) -> per-token NLL`` for a method."""
    if method == "mos_reference":
        return lambda hidden, targets: mos_reference_nll(head, hidden, targets)
    if method == "mos_logspace_autograd":
        return lambda hidden, targets: -head(hidden).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return lambda hidden, targets: head.loss(hidden, targets, reduction="none")


def model_flops_per_token(method: str) -> float:
    """3 x the forward FLOPs per token (forward + backward) that PyTorch's FLOP counter finds in
    ``head(hidden)`` (matrix products; 2 FLOPs per multiply-add)."""
    head = build_head(method).eval()
    hidden = torch.randn(BATCH, BPTT, D_MODEL)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        head(hidden)
    return 3.0 * counter.get_total_flops() / (BATCH * BPTT)


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _setup(method: str):
    """The head, a step function (forward + backward of the mean NLL) and nothing else."""
    seed_everything(0)
    head = build_head(method)
    loss_of = loss_function(method, head)
    hidden = torch.randn(BATCH, BPTT, D_MODEL, requires_grad=True)
    targets = torch.randint(VOCAB, (BATCH, BPTT))

    def step() -> None:
        head.zero_grad(set_to_none=True)
        hidden.grad = None
        loss_of(hidden, targets).mean().backward()

    return head, hidden, step


def peak_memory_mb(method: str) -> float:
    """Resident memory that one step adds at its peak, measured in this (fresh) process."""
    head, hidden, step = _setup(method)
    step()  # warm-up
    head.zero_grad(set_to_none=True)
    hidden.grad = None
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before_kib = _proc_status_kib("VmRSS")
    step()
    return (_proc_status_kib("VmHWM") - before_kib) / 1024


def step_seconds(methods: list[str], steps: int) -> dict[str, list[float]]:
    """Seconds per step of every method, timed round-robin so that load changes hit all alike."""
    steppers = {method: _setup(method)[2] for method in methods}
    for step in steppers.values():
        step()  # warm-up
    seconds: dict[str, list[float]] = {method: [] for method in methods}
    for _ in range(steps):
        for method, step in steppers.items():
            started = time.perf_counter()
            step()
            seconds[method].append(time.perf_counter() - started)
    return seconds


def gemm_rate(size: int = 2048, repeats: int = 5) -> float:
    """Best float32 FLOP/s of a square matrix product over ``repeats`` trials."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "heads.json"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)  # peak memory, JSON to stdout
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps({"peak_memory_mb": peak_memory_mb(args.child)}))
        return 0

    load_before = os.getloadavg()  # the machine may be shared: record how busy it was
    memory = {}
    for method in args.methods:
        child = [sys.executable, __file__, "--child", method, "--threads", str(args.threads)]
        output = subprocess.run(child, check=True, capture_output=True, text=True, env=CHILD_ENVIRONMENT).stdout
        memory[method] = json.loads(output.strip().splitlines()[-1])["peak_memory_mb"]
    rate_before = gemm_rate()
    seconds = step_seconds(args.methods, args.steps)
    rate = max(rate_before, gemm_rate())  # the best the machine reached, before or after
    results = {}
    for method in args.methods:
        median = statistics.median(seconds[method])
        results[method] = {
            "tokens_per_s": BATCH * BPTT / median,
            "median_step_s": median,
            "peak_memory_mb": memory[method],
            "model_gflop_per_token": model_flops_per_token(method) / 1e9,
            "step_seconds": seconds[method],
        }
    for result in results.values():
        result["gemm_fraction"] = result["model_gflop_per_token"] * 1e9 * result["tokens_per_s"] / rate

    if "softmax" in results:  # the cost of each head over softmax's
        for result in results.values():
            result["step_time_over_softmax"] = result["median_step_s"] / results["softmax"]["median_step_s"]
            result["extra_peak_memory_mb_over_softmax"] = result["peak_memory_mb"] - results["softmax"]["peak_memory_mb"]
    for method, result in results.items():
        result["options"] = head_options_used(method)

    checks = {}
    if {"mos", "mos_reference"} <= results.keys():
        mos, reference = results["mos"], results["mos_reference"]
        checks["mos_memory_over_reference"] = mos["peak_memory_mb"] / reference["peak_memory_mb"]
        checks["mos_memory_at_most_one_fifth"] = checks["mos_memory_over_reference"] <= 0.2
        checks["mos_speedup_over_reference"] = mos["tokens_per_s"] / reference["tokens_per_s"]
        checks["mos_at_least_as_fast"] = checks["mos_speedup_over_reference"] >= 1.0
    if {"softmax", "mos", "mixtape"} <= results.keys():
        # Yang et al. 2019 report Mixtape 3.5-10.5x faster than MoS and 20-34% slower than softmax (whole
        # networks on accelerators, V = 10-30k); here: the head alone on this CPU.
        mixtape = results["mixtape"]
        checks["mixtape_step_time_over_softmax"] = mixtape["step_time_over_softmax"]
        checks["mixtape_speedup_over_mos"] = results["mos"]["median_step_s"] / mixtape["median_step_s"]
        checks["mixtape_extra_peak_memory_mb_over_softmax"] = mixtape["extra_peak_memory_mb_over_softmax"]
        checks["mixtape_memory_over_mos"] = mixtape["peak_memory_mb"] / results["mos"]["peak_memory_mb"]
    if {"softmax", "sigsoftmax"} <= results.keys():
        checks["sigsoftmax_cost_over_softmax"] = results["softmax"]["tokens_per_s"] / results["sigsoftmax"]["tokens_per_s"]
        checks["sigsoftmax_at_most_1.3x"] = checks["sigsoftmax_cost_over_softmax"] <= 1.3
    report = {
        "command": shlex.join(["python", *sys.argv]),
        **provenance("cpu"),  # git_commit, git_dirty, date and machine, like every result file
        "settings": {
            "d_model": D_MODEL,
            "vocab_size": VOCAB,
            "head_options": "each head's defaults (its paper's settings), listed per head under options",
            "tokens_per_step": BATCH * BPTT,
            "batch_size": BATCH,
            "bptt": BPTT,
            "dtype": "float32",
            "timed_steps": args.steps,
            "threads": args.threads,
            "peak_memory": "VmHWM - VmRSS of one step in a fresh subprocess (MALLOC_MMAP_THRESHOLD_=65536), after a warm-up step",
        },
        "gemm_gflop_per_s": rate / 1e9,
        "load_average_1_5_15_min": {"before": list(load_before), "after": list(os.getloadavg())},
        "heads": results,
        "checks": checks,
    }
    atomic_write_json(args.out, report)
    for method, result in results.items():
        print(
            f"{method:22s} {result['tokens_per_s']:9.0f} tok/s  {result['peak_memory_mb']:8.1f} MB  "
            f"{100 * result['gemm_fraction']:5.1f}% of GEMM"
        )
    print(json.dumps(checks, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
