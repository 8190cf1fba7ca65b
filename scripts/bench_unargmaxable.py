"""Benchmark of the unargmaxable-token check; writes ``results/bench/unargmaxable.json``.

    python scripts/bench_unargmaxable.py                      # V = 10k and 50k, d = 400
    python scripts/bench_unargmaxable.py --sizes 2000x100     # quick

Synthetic heads (no model is needed; the weights are what the check sees):

- ``gaussian``: ``W`` ``(V, d)`` with standard normal entries, no bias: in ``d = 400`` dimensions every
  token is a vertex of the convex hull, so every token is argmaxable and needs a witness.
- ``interior``: the same, but ``n_interior`` tokens (at seeded random positions) replaced by convex
  combinations (Dirichlet weights) of 5 other tokens: those lie in the convex hull of the others (on
  a face of it at least), so they are never the strict argmax, whatever the box; every other token stays argmaxable. The check must return exactly
  the replaced ids, each with a dual certificate.
- ``near_hull``: as ``interior`` but the combinations are pushed out by 2% (``1.02 sum_j a_j w_j``): no
  known answer, but the cheap witnesses rarely decide these tokens, so it exercises the LP path.

Each case runs in a fresh process so that its peak resident memory (``VmHWM``) is its own. Box
half-width 1, tolerance 1e-9 relative, 2 worker processes for the LPs (the machine has 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import atomic_write_json, header, run_case  # noqa: E402
N_PARTS = 5  # tokens per convex combination


def head(kind: str, n_tokens: int, n_dims: int, n_interior: int, seed: int):
    """``(weight (V, d), known unargmaxable ids or None)`` of one construction."""
    import numpy as np

    generator = np.random.default_rng(seed)
    weight = generator.standard_normal((n_tokens, n_dims))
    if kind == "gaussian":
        return weight, []
    inside = np.sort(generator.choice(n_tokens, size=n_interior, replace=False))
    vertices = np.setdiff1d(np.arange(n_tokens), inside)
    for token in inside:
        parts = generator.choice(vertices, size=N_PARTS, replace=False)
        weight[token] = generator.dirichlet(np.ones(N_PARTS)) @ weight[parts]
    if kind == "near_hull":
        weight[inside] *= 1.02
        return weight, None
    return weight, inside.tolist()


def worker(kind: str, n_tokens: int, n_dims: int, n_interior: int, seed: int, n_workers: int) -> dict:
    Path("/proc/self/clear_refs").write_text("5")
    from bottleneck_analysis.unargmaxable import unargmaxable_tokens

    weight, known = head(kind, n_tokens, n_dims, n_interior, seed)
    started = time.perf_counter()
    report = unargmaxable_tokens(weight, box=1.0, n_workers=n_workers)
    seconds = time.perf_counter() - started
    peak = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM")) * 1024 / 1e9
    return {
        "construction": kind, "V": n_tokens, "d": n_dims, "n_interior": n_interior if kind != "gaussian" else 0,
        "seconds": seconds, "peak_memory_gb_main_process": peak,
        "n_unargmaxable": report["n_unargmaxable"], "n_undetermined": len(report["undetermined"]),
        "every_token_determined": not report["undetermined"],
        "matches_known_answer": None if known is None else report["unargmaxable"] == known,
        "all_certificates_verified": all(c["certified"] for c in report["certificates"]),
        "n_found_by_sampling": report["n_found_by_sampling"], "n_found_by_lp": report["n_found_by_lp"],
        "n_lp": report["n_lp"], "n_lp_solves": report["n_lp_solves"], "n_workers": report["n_workers"],
        "min_witness_margin": report["min_witness_margin"], "margin_tolerance": report["margin_tolerance"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["10000x400", "50000x400"], help="VxD sizes")
    parser.add_argument("--kinds", nargs="+", default=["gaussian", "interior", "near_hull"])
    parser.add_argument("--n-interior", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. the machine's load)")
    parser.add_argument("--output", default=str(ROOT / "results" / "bench" / "unargmaxable.json"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(**json.loads(args.worker))))
        return 0

    cases = []
    for size in args.sizes:
        n_tokens, n_dims = (int(x) for x in size.lower().split("x"))
        for kind in args.kinds:
            case = run_case(__file__, {"kind": kind, "n_tokens": n_tokens, "n_dims": n_dims,
                                       "n_interior": args.n_interior, "seed": args.seed, "n_workers": args.workers})
            cases.append(case)
            print(json.dumps(case), flush=True)
    atomic_write_json(args.output, {
        **header("unargmaxable", __file__), "note": args.note,
        "setup": "synthetic heads (see the script's docstring), box half-width 1, tolerance 1e-9 relative",
        "cases": cases})
    return 0


if __name__ == "__main__":
    sys.exit(main())
