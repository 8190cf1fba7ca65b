"""Benchmark of the probe's streamed log-prob spectra; writes ``results/bench/probe.json``.

    python scripts/bench_probe.py                        # V = 50k, N = 4k and V = 10k, N = 73,760
    python scripts/bench_probe.py --cases 5000x2000x64   # quick (VxNxd)

Synthetic head and hidden states (no model runs; the model's forward is not what is measured): ``W``
``(V, d)`` and ``H`` ``(N, d)`` with standard normal entries (``W`` scaled by ``1 / sqrt(d)``), no bias.
Each case runs in a fresh process, which measures

1. ``statistics``: the first pass of :func:`bottleneck_analysis.probe.probe_model` over the rows (float64
   logits in blocks: ``lse``, row means, column sums);
2. ``spectra``: :func:`bottleneck_analysis.probe.logprob_spectra`, the one streamed QR pass (rows of
   ``L`` when ``N >= V``, rows of ``L^T`` otherwise) and the two SVDs of the ``min(N, V)`` triangle;

and its peak resident memory (``VmHWM``) against the size of one ``min(N, V)^2`` float64 triangle, the
``N x d`` hidden states and the ``N x V`` float64 matrix that is never held. The rank must come out as
``d + 1`` and the hidden-size estimate as ``d``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import atomic_write_json, header, run_case  # noqa: E402


def peak_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def worker(n_vocab: int, n_rows: int, n_dims: int, seed: int) -> dict:
    import torch

    from bottleneck_analysis.probe import HEAD_BLOCK_BYTES, Float64Head, largest_gap, logprob_spectra
    from bottleneck_analysis.rank import numerical_rank, tolerances

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    generator = torch.Generator().manual_seed(seed)
    head = Float64Head(torch.randn(n_vocab, n_dims, generator=generator, dtype=torch.float64) / n_dims**0.5, None)
    hidden = torch.randn(n_rows, n_dims, generator=generator, dtype=torch.float64)  # (N, d)
    baseline = peak_gb()
    started = time.perf_counter()
    lse, means = torch.empty(n_rows, dtype=torch.float64), torch.empty(n_rows, dtype=torch.float64)
    sums = torch.zeros(n_vocab, dtype=torch.float64)
    block = max(1, HEAD_BLOCK_BYTES // (8 * n_vocab))
    for start in range(0, n_rows, block):
        z = head.logits(hidden[start : start + block])  # (b, V)
        lse[start : start + block] = torch.logsumexp(z, dim=1)
        means[start : start + block] = z.mean(dim=1)
        sums += z.sum(dim=0)
    first_pass = time.perf_counter() - started
    started = time.perf_counter()
    spectra = logprob_spectra(head, hidden, lse, means, sums)
    seconds = time.perf_counter() - started
    values = spectra["log_probs"]
    limits = tolerances(float(values[0]), n_rows, n_vocab)
    k = min(n_rows, n_vocab)
    return {
        "V": n_vocab, "N": n_rows, "d": n_dims,
        "layout": "rows of L" if n_rows >= n_vocab else "rows of L^T",
        "seconds": {"statistics": first_pass, "spectra": seconds, "total": first_pass + seconds},
        "memory_gb": {
            "peak": peak_gb(), "before": baseline, "triangle_min_N_V_squared": 8 * k * k / 1e9,
            "hidden_states": 8 * n_rows * n_dims / 1e9, "output_embedding": 8 * n_vocab * n_dims / 1e9,
            "full_matrix_not_held": 8 * n_rows * n_vocab / 1e9,
        },
        "rank_nr": numerical_rank(values, limits["nr"]), "rank_numpy": numerical_rank(values, limits["numpy"]),
        "expected_rank": n_dims + 1,
        "hidden_size_estimate": largest_gap(spectra["double_centred"], n_structural_zeros=1)["index"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["50000x4000x768", "10000x73760x400"], help="VxNxd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="")
    parser.add_argument("--output", default=str(ROOT / "results" / "bench" / "probe.json"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(**json.loads(args.worker))))
        return 0

    cases = []
    for case in args.cases:
        n_vocab, n_rows, n_dims = (int(x) for x in case.lower().split("x"))
        result = run_case(__file__, {"n_vocab": n_vocab, "n_rows": n_rows, "n_dims": n_dims, "seed": args.seed})
        cases.append(result)
        print(json.dumps(result), flush=True)
        # after every case, so a long last case never loses the earlier ones
        atomic_write_json(args.output, {
            **header("probe", __file__), "note": args.note,
            "setup": "synthetic head W (V, d) and hidden states H (N, d), Gaussian, no bias; see the docstring",
            "cases": cases, "cases_not_run_yet": args.cases[len(cases):]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
