"""Benchmark of the streaming rank report; writes ``results/bench/rank.json``.

    python scripts/bench_rank.py                       # the MoS paper's PTB size: 73,760 x 10,000
    python scripts/bench_rank.py --rows 20000 --cols 3000 --numpy-rows 8000 --numpy-cols 2000  # quick

Three measurements, each in a fresh process so that its peak resident memory (``VmHWM`` of
``/proc/self/status``) is its own:

1. ``gemm``: the machine's float64 matrix-multiply rate (SciPy's BLAS ``dgemm``, the library LAPACK's
   QR runs on), best of three ``n x n`` products.
2. ``stream``: the full :func:`bottleneck_analysis.rank.rank_report` of a ``rows x cols`` float64
   matrix whose row blocks are generated on the fly from a seed (never held whole): a softmax
   log-probability matrix ``log_softmax(H W^T + noise E)`` with ``H W^T`` of rank ``d = 400`` (a softmax
   head) and a tiny Gaussian ``E`` that makes the matrix full-rank at float64 tolerances while a
   relative tolerance of ``1e-6`` sees rank ``d + 1``. The time of the QR phase (``dtpqrt`` calls, about
   ``2 N V^2`` flops) is reported as a fraction of the GEMM rate; the time spent generating rows (the
   stand-in for running a model) is reported and subtracted from the report's time.
3. ``numpy`` vs ``ours``: on a matrix small enough for ``numpy.linalg.matrix_rank`` (which needs the
   whole matrix, plus LAPACK's copy, in memory), both counts and times, in two fresh processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOFTMAX_RANK = 400  # d of the generated softmax log-probabilities
NOISE = 1e-6


def reset_peak_memory() -> bool:
    """Reset ``VmHWM`` to the current resident size (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_status() -> dict[str, float]:
    """Peak and current resident memory of this process in GB (``VmHWM``, ``VmRSS``)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) * 1024 / 1e9
    return values


def generated_blocks(n_rows: int, n_cols: int, block_rows: int, seed: int, timer: dict):
    """Row blocks ``(b, n_cols)`` float64 of the matrix described in the module docstring."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    output_embedding = torch.randn(n_cols, SOFTMAX_RANK, generator=generator, dtype=torch.float64)
    output_embedding /= SOFTMAX_RANK**0.5
    for start in range(0, n_rows, block_rows):
        began = time.perf_counter()
        size = min(block_rows, n_rows - start)
        hidden = 2.0 * torch.randn(size, SOFTMAX_RANK, generator=generator, dtype=torch.float64)
        logits = hidden @ output_embedding.T  # (b, V)
        logits += NOISE * torch.randn(size, n_cols, generator=generator, dtype=torch.float64)
        block = torch.log_softmax(logits, dim=1).numpy()
        del logits, hidden
        timer["generate"] += time.perf_counter() - began
        yield block


def worker_gemm(size: int) -> dict:
    import numpy as np
    from scipy.linalg.blas import dgemm

    generator = np.random.default_rng(0)
    a = np.asfortranarray(generator.standard_normal((size, size)))
    b = np.asfortranarray(generator.standard_normal((size, size)))
    times = []
    for _ in range(3):
        began = time.perf_counter()
        dgemm(1.0, a, b)
        times.append(time.perf_counter() - began)
    return {"size": size, "seconds": times, "gflops": 2 * size**3 / min(times) / 1e9}


def worker_stream(n_rows: int, n_cols: int, block_rows: int, panel_width: int, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)  # generation only; keeps OpenMP threads from spinning against OpenBLAS
    import bottleneck_analysis.rank as rank_module

    baseline = memory_status()
    timer = {"generate": 0.0, "qr": 0.0, "singular_values": 0.0}
    fold, singular_values = rank_module.RFactorAccumulator._fold, rank_module.singular_values

    def timed_fold(self, block):
        began = time.perf_counter()
        fold(self, block)
        timer["qr"] += time.perf_counter() - began

    def timed_singular_values(*args, **kwargs):
        began = time.perf_counter()
        values = singular_values(*args, **kwargs)
        timer["singular_values"] += time.perf_counter() - began
        return values

    rank_module.RFactorAccumulator._fold = timed_fold
    rank_module.singular_values = timed_singular_values
    began = time.perf_counter()
    report = rank_module.rank_report(
        generated_blocks(n_rows, n_cols, block_rows, seed, timer),
        relative_tolerances=[1e-6], block_rows=block_rows, panel_width=panel_width,
    )
    total = time.perf_counter() - began
    values = report["singular_values"]
    return {
        "n_rows": n_rows, "n_cols": n_cols, "block_rows": block_rows, "panel_width": panel_width,
        "generated": f"log_softmax(H W^T + {NOISE:g} E), H W^T of rank {SOFTMAX_RANK}, seed {seed}",
        "rank": report["rank"], "effective_rank": report["effective_rank"],
        "s_max": values[0], "s_min": values[-1],
        "seconds_total": total, "seconds_generate": timer["generate"],
        "seconds_report": total - timer["generate"], "seconds_qr": timer["qr"],
        "seconds_singular_values": timer["singular_values"],
        "qr_flops": 2.0 * n_rows * n_cols**2,
        "band_reduction_flops": 8.0 / 3.0 * n_cols**3,
        "memory_gb": {"baseline_after_imports": baseline["VmRSS"], "peak": memory_status()["VmHWM"]},
    }


def worker_in_memory(kind: str, n_rows: int, n_cols: int, block_rows: int, seed: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    timer = {"generate": 0.0}
    matrix = np.empty((n_rows, n_cols))  # (N, V)
    start = 0
    for block in generated_blocks(n_rows, n_cols, block_rows, seed, timer):
        matrix[start : start + block.shape[0]] = block
        start += block.shape[0]
    del block
    peak_reset = reset_peak_memory()  # the peak below is that of the rank computation, matrix included
    baseline = memory_status()
    began = time.perf_counter()
    if kind == "numpy":
        rank = int(np.linalg.matrix_rank(matrix))
    else:
        from bottleneck_analysis.rank import rank_report

        rank = rank_report(matrix, block_rows=block_rows)["rank"]["numpy"]
    seconds = time.perf_counter() - began
    return {
        "kind": kind, "n_rows": n_rows, "n_cols": n_cols, "rank": rank, "seconds": seconds,
        "memory_gb": {"with_matrix": baseline["VmRSS"], "peak": memory_status()["VmHWM"],
                      "matrix": matrix.nbytes / 1e9, "peak_excludes_generation": peak_reset},
    }


def run_worker(name: str, threads: int | None, **kwargs) -> dict:
    """Run one measurement in a fresh Python process and return its JSON result."""
    env = dict(os.environ)
    if threads:
        env.update({"OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)})
    command = [sys.executable, __file__, "--worker", name, "--worker-args", json.dumps(kwargs)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine(threads: int | None) -> dict:
    import numpy as np
    import scipy
    import torch

    blas = scipy.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
        "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
        "blas": f"{blas.get('name')} {blas.get('version')}",
        "blas_threads": threads or "library default",
        "device": "cpu",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=73_760, help="rows of the streamed matrix (PTB valid: 73,760)")
    parser.add_argument("--cols", type=int, default=10_000, help="columns (PTB vocabulary: 10,000)")
    parser.add_argument("--numpy-rows", type=int, default=40_000, help="rows of the NumPy comparison matrix")
    parser.add_argument("--numpy-cols", type=int, default=5_000, help="columns of the NumPy comparison matrix")
    parser.add_argument("--block-rows", type=int, default=2048)
    parser.add_argument("--panel-width", type=int, default=128, help="nb of LAPACK dtpqrt")
    parser.add_argument("--gemm-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--skip-numpy", action="store_true")
    parser.add_argument("--note", default="", help="free text recorded in the result, e.g. who else used the machine")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "rank.json"))
    parser.add_argument("--update", action="store_true",
                        help="keep the sections of an existing --out file that --skip-* leaves out")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        kwargs = json.loads(args.worker_args)
        workers = {"gemm": worker_gemm, "stream": worker_stream}
        result = (worker_in_memory(args.worker, **kwargs) if args.worker in ("numpy", "ours")
                  else workers[args.worker](**kwargs))
        print(json.dumps(result))
        return 0

    command = " ".join([Path(sys.executable).name, *sys.argv])
    previous = json.loads(Path(args.out).read_text()) if args.update and Path(args.out).exists() else {}
    sys.path.insert(0, str(ROOT))
    from lm.provenance import code_version, now

    result: dict = {
        "benchmark": "rank",
        "command": command,
        **code_version(),  # git_commit, git_dirty: the same helper as every result file
        "date": now(),
        "machine": machine(args.threads),
        "note": args.note,
    }

    def measured(section: dict, load_before: tuple) -> dict:
        section["provenance"] = {"date": now(), "command": command, "blas_threads": args.threads or "library default",
                                 "load_average_before": load_before, "load_average_after": os.getloadavg(),
                                 "note": args.note}
        return section

    load = os.getloadavg()
    gemm = result["gemm"] = measured(run_worker("gemm", args.threads, size=args.gemm_size), load)
    if args.skip_stream:
        carry(previous, result, "stream")
    else:
        load = os.getloadavg()
        stream = run_worker("stream", args.threads, n_rows=args.rows, n_cols=args.cols, block_rows=args.block_rows,
                            panel_width=args.panel_width, seed=args.seed)
        stream["qr_gflops"] = stream["qr_flops"] / stream["seconds_qr"] / 1e9
        stream["gemm_gflops"] = gemm["gflops"]
        stream["qr_fraction_of_gemm"] = stream["qr_gflops"] / gemm["gflops"]
        stream["matrix_gb"] = args.rows * args.cols * 8 / 1e9
        result["stream"] = measured(stream, load)
    if args.skip_numpy:
        carry(previous, result, "versus_numpy")
    else:
        load = os.getloadavg()
        sizes = {"n_rows": args.numpy_rows, "n_cols": args.numpy_cols, "block_rows": args.block_rows, "seed": args.seed}
        numpy_result = run_worker("numpy", args.threads, **sizes)
        ours = run_worker("ours", args.threads, **sizes)
        result["versus_numpy"] = measured({
            "numpy": numpy_result, "ours": ours,
            "same_rank": numpy_result["rank"] == ours["rank"],
            "time_ratio_ours_over_numpy": ours["seconds"] / numpy_result["seconds"],
        }, load)
    result["targets"] = targets(result)

    from lm.io import atomic_write_json

    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))
    return 0


def carry(previous: dict, result: dict, key: str) -> None:
    """Keep a section of an earlier result file (``--update``), with its own provenance."""
    if key not in previous:
        return
    section = previous[key]
    section.setdefault("provenance", {
        "date": previous.get("date"), "command": previous.get("command"), "note": previous.get("note"),
        "blas_threads": previous.get("machine", {}).get("blas_threads"),
        "load_average_before": previous.get("load_average", {}).get("before"),
        "load_average_after": previous.get("load_average", {}).get("after"),
    })
    if key == "stream" and "gemm_gflops" not in section and "gemm" in previous:
        section["gemm_gflops"] = previous["gemm"]["gflops"]  # the rate its qr_fraction_of_gemm refers to
    result[key] = section


def targets(result: dict) -> dict:
    """The issue's performance targets, checked against the numbers in ``result``."""
    checks = {}
    stream = result.get("stream")
    if stream and (stream["n_rows"], stream["n_cols"]) == (73_760, 10_000):
        checks["ptb_size_report_under_10_minutes"] = stream["seconds_report"] < 600
        checks["ptb_size_peak_memory_under_3_gb"] = stream["memory_gb"]["peak"] < 3.0
    versus = result.get("versus_numpy")
    if versus:
        checks["same_rank_as_numpy"] = versus["same_rank"]
        checks["no_slower_than_numpy"] = versus["time_ratio_ours_over_numpy"] <= 1.0
    return checks


if __name__ == "__main__":
    sys.exit(main())
