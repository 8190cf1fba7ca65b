"""``softmax-bench rank RUN_DIR [--split valid] [--max-rows N] [--output NAME]``: the softmax-bottleneck report of a run.

Writes ``rank.json`` (or ``--output NAME``, e.g. ``rank-full.json`` for the whole split) and its spectrum PNG
in the run folder and prints a one-line summary (see :func:`bottleneck_analysis.run_report.rank_run`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bottleneck_analysis.progress import progress_bar
from bottleneck_analysis.run_report import FULL_RANK_FILE, REPORT_FILE, rank_run, summary_line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run folder written by softmax-bench train")
    parser.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    subset = parser.add_mutually_exclusive_group()
    subset.add_argument("--max-rows", type=int, default=None, help="only the first N predicted positions")
    subset.add_argument("--sample", type=int, default=None, help="a seeded random subset of N positions")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample and of the unargmaxable pre-pass")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="columns the split is cut into (1: state carried over the whole text, the MoS protocol)")
    parser.add_argument("--window", type=int, default=None, help="tokens per body call (default: the run's eval window)")
    parser.add_argument("--relative-tolerance", type=float, action="append", default=[], metavar="TOL",
                        help="also count singular values above TOL * s_max (repeatable)")
    parser.add_argument("--smoothing", type=float, default=None,
                        help="eps of the smoothed distribution for sparse heads (default: the head's own)")
    parser.add_argument("--box", type=float, default=None,
                        help="half-width of the hidden-state box for unargmaxable tokens (default: largest |hidden| seen)")
    parser.add_argument("--no-unargmaxable", action="store_true", help="skip the unargmaxable-token check")
    parser.add_argument("--unargmaxable-seconds", type=float, default=None,
                        help="stop starting new LPs of the unargmaxable check after this many seconds "
                             "(default: no limit; the check now determines every token)")
    parser.add_argument("--output", default=REPORT_FILE, metavar="NAME",
                        help=f"report file name in the run folder (default {REPORT_FILE}; e.g. {FULL_RANK_FILE} for the "
                             "whole split, which the summary shows in a table of its own)")
    parser.add_argument("--data", default=None, help="corpus folder, if it moved since training")
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    with progress_bar("unargmaxable tokens") as progress:
        report = _rank(args, progress)
    folder = Path(args.run_dir)
    files = report["files"]
    print(f"{summary_line(report)}; wrote {folder / files['report']} and {folder / files['plot']}")
    return 0


def _rank(args: argparse.Namespace, progress) -> dict:
    return rank_run(
        args.run_dir, args.split, args.max_rows, sample=args.sample, seed=args.seed, batch_size=args.batch_size,
        window=args.window, relative_tolerances=args.relative_tolerance, smoothing=args.smoothing, box=args.box,
        unargmaxable=not args.no_unargmaxable, unargmaxable_seconds=args.unargmaxable_seconds,
        device=args.device, data_path=args.data, unargmaxable_progress=progress, report_file=args.output,
    )
