"""``softmax-bench two-layer``: the empirical side of the NTK analysis of two-layer softmax networks.

Runs the experiments of ``two_layer_experiments`` (loss curves and NTK diagnostics, width needed
against n, NTK concentration at initialization) and of ``score_matching`` (denoising score
matching on a 2-D Gaussian mixture), writes one JSON file per experiment with its provenance, the
PNG plots, and ``summary.md`` with the tables generated from the JSON files.

Until the lead wires it into ``softmax-bench``, run it as ``python -m bottleneck_analysis.cli_two_layer``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from bottleneck_analysis import two_layer_experiments as experiments
from bottleneck_analysis import two_layer_plots as plots
from bottleneck_analysis.score_matching import ScoreMatchingConfig, run_score_matching, summarize_score_errors
from bottleneck_analysis.two_layer import NETWORKS
from bottleneck_analysis.two_layer_gd import GradientDescentConfig
from lm.errors import UserError
from lm.provenance import code_version
from lm.seed import seed_everything

EXPERIMENTS = ("curves", "width", "concentration", "score")
SOURCE_FILES = ("bottleneck_analysis/two_layer.py", "bottleneck_analysis/two_layer_ntk.py",
                "bottleneck_analysis/two_layer_gd.py", "bottleneck_analysis/two_layer_experiments.py",
                "bottleneck_analysis/two_layer_plots.py", "bottleneck_analysis/score_matching.py",
                "bottleneck_analysis/cli_two_layer.py")

# Sizes of the committed run (a few minutes of one CPU core) and of --quick (seconds, for smoke tests).
FULL_SIZES = {
    "seeds": [0, 1, 2], "n_values": [8, 16, 32, 64, 128], "curve_n": 64, "curve_widths": [16, 64, 256, 1024, 4096],
    "curve_iterations": 500, "max_width": 4096, "iterations": 1000, "concentration_max_width": 32768,
    "score_width": 128, "score_train": 1024, "score_iterations": 2000, "score_seeds": [0, 1],
}
QUICK_SIZES = {
    "seeds": [0], "n_values": [4, 8, 16], "curve_n": 8, "curve_widths": [4, 16], "curve_iterations": 20,
    "max_width": 64, "iterations": 100, "concentration_max_width": 256, "score_width": 8, "score_train": 64,
    "score_iterations": 20, "score_seeds": [0],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``softmax-bench two-layer``; sizes left unset take the full (or --quick) defaults."""
    parser.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS),
                        help="which experiments to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("results/two_layer"), help="folder for JSON and PNG files")
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test in seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds of the regression experiments (0 1 2)")
    parser.add_argument("--input-dim", type=int, default=16, help="d: inputs on the unit sphere S^(d-1) (16)")
    parser.add_argument("--target-frequency", type=float, default=4.0, help="frequency of the smooth target (4)")
    parser.add_argument("--curve-n", type=int, help="n of the loss-curve experiment (64)")
    parser.add_argument("--curve-widths", type=int, nargs="+", help="widths of the loss-curve experiment")
    parser.add_argument("--curve-iterations", type=int, help="gradient-descent steps of the loss curves (500)")
    parser.add_argument("--n-values", type=int, nargs="+", help="training-set sizes of the width search")
    parser.add_argument("--max-width", type=int, help="top of the width-search grid, factor sqrt(2) from 1 (4096)")
    parser.add_argument("--iterations", type=int, help="gradient-descent budget of the width search (1000)")
    parser.add_argument("--threshold", type=float, default=1e-3, help="relative-loss threshold of the width search")
    parser.add_argument("--step-scale", type=float, default=1.0, help="step size = step_scale / lambda_max(H(0))")
    parser.add_argument("--concentration-max-width", type=int, help="top of the 2^k concentration grid (32768)")
    parser.add_argument("--noise-levels", type=float, nargs="+", default=[0.2, 0.5, 1.0], help="score-matching sigmas")
    parser.add_argument("--score-width", type=int, help="width of the score networks (128)")
    parser.add_argument("--score-train", type=int, help="training pairs of denoising score matching (1024)")
    parser.add_argument("--score-iterations", type=int, help="gradient-descent steps of score matching (2000)")
    parser.add_argument("--score-seeds", type=int, nargs="+", help="seeds of score matching (0 1)")


def _resolved(args: argparse.Namespace) -> dict:
    """Every size option, from the command line or else from FULL_SIZES / QUICK_SIZES."""
    defaults = QUICK_SIZES if args.quick else FULL_SIZES
    return {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in defaults.items()}


def canonical_command(args: argparse.Namespace) -> str:
    """The ``softmax-bench two-layer`` command line that reproduces this run, every option spelled out."""
    sizes = _resolved(args)
    parts = ["softmax-bench", "two-layer", "--experiments", *args.experiments, "--out", str(args.out),
             "--networks", *args.networks, "--threads", str(args.threads), "--input-dim", str(args.input_dim),
             "--target-frequency", f"{args.target_frequency:g}", "--threshold", f"{args.threshold:g}",
             "--step-scale", f"{args.step_scale:g}", "--noise-levels", *(f"{s:g}" for s in args.noise_levels)]
    for key, value in sizes.items():
        flag = "--" + key.replace("_", "-")
        parts += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return shlex.join(parts)


def _git(*command: str) -> str:
    try:
        return subprocess.run(["git", *command], capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(args: argparse.Namespace, wall_seconds: float, cpu_seconds: float) -> dict:
    """Command, versions, machine, date and timing of a run (DESIGN section 7)."""
    return {
        "command": canonical_command(args),
        "argv": shlex.join(sys.argv),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(wall_seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": "cpu"},
        **code_version(),  # git_commit, git_dirty (lm.provenance, like every result file)
        "source_dirty": bool(_git("status", "--porcelain", "--", *SOURCE_FILES)),
        "dtype": "float64",
    }


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, allow_nan=True) + "\n")


def _timed(function, *arguments) -> tuple[dict, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*arguments)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _build_configs(args: argparse.Namespace) -> dict:
    sizes = _resolved(args)
    if min(sizes["n_values"]) < 1 or sizes["curve_n"] < 1 or args.threads < 1:
        raise UserError("Training-set sizes and the thread count must be at least 1.")
    if min(sizes["curve_widths"]) < 1 or sizes["max_width"] < 1 or sizes["concentration_max_width"] < 16:
        raise UserError("Widths must be at least 1 and the concentration grid must reach at least 16.")
    data = experiments.RegressionDataConfig(input_dim=args.input_dim, target_frequency=args.target_frequency)
    networks, seeds = tuple(args.networks), tuple(sizes["seeds"])
    concentration_widths = tuple(2**k for k in range(4, int(math.log2(sizes["concentration_max_width"])) + 1))
    return {
        "curves": experiments.LossCurveConfig(
            n_points=sizes["curve_n"], widths=tuple(sizes["curve_widths"]), networks=networks, seeds=seeds, data=data,
            gradient_descent=GradientDescentConfig(iterations=sizes["curve_iterations"], step_scale=args.step_scale,
                                                   record_every=max(1, sizes["curve_iterations"] // 100), ntk_checkpoints=4)),
        "width": experiments.WidthSearchConfig(
            n_values=tuple(sizes["n_values"]), widths=experiments.geometric_widths(1, sizes["max_width"], math.sqrt(2)),
            networks=networks, seeds=seeds, threshold=args.threshold, data=data,
            gradient_descent=GradientDescentConfig(iterations=sizes["iterations"], step_scale=args.step_scale,
                                                   record_every=sizes["iterations"], ntk_checkpoints=0)),
        "concentration": experiments.ConcentrationConfig(
            n_values=tuple(sizes["n_values"]), widths=concentration_widths, networks=networks, seeds=seeds, data=data,
            fit_from_width=max(16, sizes["concentration_max_width"] // 32)),
        "score": ScoreMatchingConfig(
            noise_levels=tuple(args.noise_levels), networks=networks, seeds=tuple(sizes["score_seeds"]),
            width=sizes["score_width"], n_train=sizes["score_train"], n_test=1000 if args.quick else 10000,
            gradient_descent=GradientDescentConfig(iterations=sizes["score_iterations"], step_scale=args.step_scale,
                                                   record_every=max(1, sizes["score_iterations"] // 200), ntk_checkpoints=0)),
    }


RUNNERS = {
    "curves": experiments.run_loss_curves,
    "width": experiments.run_width_search,
    "concentration": experiments.run_concentration,
    "score": run_score_matching,
}
FILE_NAMES = {"curves": "loss_curves.json", "width": "width_needed.json",
              "concentration": "ntk_concentration.json", "score": "score_matching.json"}


def run(args: argparse.Namespace) -> int:
    """Run the chosen experiments, write JSON, plots and summary.md under ``args.out``; return 0."""
    torch.set_num_threads(args.threads)
    configs = _build_configs(args)
    seed_everything(_resolved(args)["seeds"][0])  # every random draw below uses its own seeded generator
    results = {}
    for name in args.experiments:
        payload, wall, cpu = _timed(RUNNERS[name], configs[name])
        payload["provenance"] = provenance(args, wall, cpu)
        _write_json(args.out / FILE_NAMES[name], payload)
        results[name] = payload
        print(f"two-layer {name}: {wall:.1f} s wall, {cpu:.1f} s CPU -> {args.out / FILE_NAMES[name]}")
    _plot(results, args.out)
    summary = summary_markdown(args.out)
    (args.out / "summary.md").write_text(summary)
    print(summary)
    return 0


def _plot(results: dict, out: Path) -> None:
    if "curves" in results:
        plots.plot_loss_curves(results["curves"], out / "loss_curves.png")
        plots.plot_ntk_diagnostics(results["curves"], out / "ntk_diagnostics.png")
    if "width" in results:
        plots.plot_width_needed(results["width"], results.get("concentration"), out / "width_needed.png")
    if "score" in results:
        plots.plot_score_quiver(results["score"], out / "score_quiver.png")


def summary_markdown(out: Path) -> str:
    """Markdown tables generated from the JSON files present in ``out``."""
    lines = ["# Two-layer networks: generated summary", "",
             "Generated by `softmax-bench two-layer` from the JSON files beside it; do not edit by hand.", ""]
    loaded = {name: json.loads((out / file).read_text()) for name, file in FILE_NAMES.items() if (out / file).exists()}
    commands = {payload["provenance"]["command"] for payload in loaded.values()}
    shared_command = len(commands) == 1
    if shared_command:
        lines += ["Command:", "", "```", next(iter(commands)), "```", ""]
    for name, payload in loaded.items():
        record = payload["provenance"]
        command = "" if shared_command else f": `{record['command']}`"
        lines += [f"- `{FILE_NAMES[name]}`{command} ({record['cpu_seconds']} s CPU, {record['wall_seconds']} s wall, "
                  f"{record['date_utc']}, torch {record['torch_version']}, commit {str(record['git_commit'])[:10]}"
                  f"{' + uncommitted changes' if record['source_dirty'] else ''})"]
    lines.append("")
    if "curves" in loaded:
        lines += _curves_table(loaded["curves"])
    if "width" in loaded:
        lines += _width_table(loaded["width"])
    if "concentration" in loaded:
        lines += _concentration_table(loaded["concentration"])
    if "score" in loaded:
        lines += _score_table(loaded["score"])
    return "\n".join(lines) + "\n"


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _curves_table(curves: dict) -> list[str]:
    config = curves["config"]
    early = config["gradient_descent"]["iterations"] // 10
    lines = [f"## Gradient descent at n = {config['n_points']} ({config['gradient_descent']['iterations']} steps, "
             f"mean over {len(config['seeds'])} seeds)", "",
             f"| network | m | λ_min(H(0))/s(m) | λ_min(H∞) | loss at step {early} | final loss | NTK drift ‖ΔH‖₂/λ_min | "
             "‖ΔW‖_F/‖W‖_F | max_r ‖Δw_r‖ |", "|---|---|---|---|---|---|---|---|---|"]
    for name in config["networks"]:
        limit = _mean([k["lambda_min"] for k in curves["limit_kernels"] if k["network"] == name])
        for width in config["widths"]:
            runs = [r for r in curves["runs"] if r["network"] == name and r["width"] == width]
            at_early = [r["relative_loss"][min(range(len(r["steps"])), key=lambda i: abs(r["steps"][i] - early))] for r in runs]
            lines.append(
                f"| {name} | {width} | {_mean([r['lambda_min_init'] / r['ntk_scale'] for r in runs]):.3g} | {limit:.3g} | "
                f"{_mean(at_early):.2e} | {_mean([r['relative_loss'][-1] for r in runs]):.2e} | "
                f"{_mean([r['ntk_change'][-1] for r in runs]):.3g} | {_mean([r['weight_change'] for r in runs]):.3g} | "
                f"{_mean([r['max_neuron_move'] for r in runs]):.3g} |")
    lines += ["", "Fitted exponents b of quantity ∝ m^b over all seeds and widths m ≥ 64 (lazy training predicts "
                  "−1/2 for the three movements):", "",
              "| network | NTK drift | ‖ΔW‖_F/‖W‖_F | max_r ‖Δw_r‖ | λ_min(H∞) − λ_min(H(0))/s(m) |", "|---|---|---|---|---|"]
    for name in config["networks"]:
        runs = [r for r in curves["runs"] if r["network"] == name and r["width"] >= 64]
        limit = _mean([k["lambda_min"] for k in curves["limit_kernels"] if k["network"] == name])
        widths = [r["width"] for r in runs]
        gaps = [(r["width"], limit - r["lambda_min_init"] / r["ntk_scale"]) for r in runs]
        cells = [experiments.fit_power_law(widths, values) for values in (
            [r["ntk_change"][-1] for r in runs], [r["weight_change"] for r in runs], [r["max_neuron_move"] for r in runs])]
        cells.append(experiments.fit_power_law([w for w, g in gaps if g > 0], [g for _, g in gaps if g > 0]))
        lines.append(f"| {name} | " + " | ".join(f"{c['slope']:.2f} ± {c['slope_stderr']:.2f}" for c in cells) + " |")
    return lines + [""]


def _width_table(width: dict) -> list[str]:
    config = width["config"]
    lines = [f"## Width needed: smallest m (grid factor √2) with relative loss ≤ {config['threshold']:g} within "
             f"{config['gradient_descent']['iterations']} steps", "",
             "| target | network | " + " | ".join(f"n={n}" for n in config["n_values"]) + " | slope of log m* on log n |",
             "|---|---|" + "---|" * len(config["n_values"]) + "---|"]
    for fit in width["fits"]:
        cells = []
        for n_points in config["n_values"]:
            found = [r["width_needed"] for r in width["runs"]
                     if r["target"] == fit["target"] and r["network"] == fit["network"] and r["n_points"] == n_points]
            cells.append("/".join("–" if m is None else str(m) for m in found))
        lines.append(f"| {fit['target']} | {fit['network']} | " + " | ".join(cells)
                     + f" | {fit['slope']:.2f} ± {fit['slope_stderr']:.2f} |")
    return lines + ["", "Cells list m* per seed; – means not reached on the grid. ± is the standard error of the "
                        "least-squares slope over all (n, m*) pairs.", ""]


def _concentration_table(concentration: dict) -> list[str]:
    config = concentration["config"]
    lines = [f"## NTK at initialization: width with ‖H(0)/s(m) − H∞‖₂ ≤ {config['fraction']:g} λ_min(H∞)", "",
             "| network | " + " | ".join(f"n={n}" for n in config["n_values"])
             + " | slope of m on n | slope of m·λ² on n | slope of λ on n | free error exponent in m |",
             "|---|" + "---|" * len(config["n_values"]) + "---|---|---|---|"]
    for fit in concentration["fits"]:
        cells = []
        for n_points in config["n_values"]:
            runs = [r for r in concentration["runs"] if r["network"] == fit["network"] and r["n_points"] == n_points]
            cells.append(f"{_mean([r['fitted_width'] for r in runs]):.3g}")
        exponents = [r["error_exponent"] for r in concentration["runs"] if r["network"] == fit["network"]]
        lines.append(f"| {fit['network']} | " + " | ".join(cells)
                     + f" | {fit['fitted_width']['slope']:.2f} ± {fit['fitted_width']['slope_stderr']:.2f}"
                     + f" | {fit['fitted_width_times_lambda_squared']['slope']:.2f}"
                     + f" | {fit['lambda_min_limit']['slope']:.2f} | {_mean(exponents):.2f} |")
    return lines + ["", "Cells: crossing width (C / "
                        f"{config['fraction']:g})² (mean over seeds) from the fit error ≈ C m^(-1/2) on "
                        f"m = {config['fit_from_width']} … {config['widths'][-1]}; crossings beyond "
                        f"{config['widths'][-1]} are extrapolations. Last column: exponent of a free power-law fit "
                        "on the same widths (−1/2 expected).", ""]


def _score_table(score: dict) -> list[str]:
    config = score["config"]
    lines = [f"## Denoising score matching (m = {config['width']}, n = {config['n_train']}, "
             f"{config['gradient_descent']['iterations']} steps, {len(config['seeds'])} seeds)", "",
             "| σ | network | relative score error (mean, [min, max]) | DSM loss | DSM floor (true score) |",
             "|---|---|---|---|---|"]
    for row in summarize_score_errors(score):
        lines.append(f"| {row['noise_std']:g} | {row['network']} | {row['relative_score_error_mean']:.3f} "
                     f"[{row['relative_score_error_min']:.3f}, {row['relative_score_error_max']:.3f}] | "
                     f"{row['dsm_loss_mean']:.3f} | {row['dsm_floor_mean']:.3f} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m bottleneck_analysis.cli_two_layer ...``."""
    parser = argparse.ArgumentParser(prog="softmax-bench two-layer", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except UserError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
