"""``softmax-bench plot RESULTS_DIR [--readme README.md]``: summary tables (CSV, markdown, JSON) and PNG plots from
run folders; with ``--readme`` also the marked tables of that folder in a README (:mod:`lm.readme`)."""

from __future__ import annotations

import argparse
import shlex

from lm.errors import UserError
from lm.readme import update_readme
from lm.summary import write_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", help="a folder holding run folders or probe folders (any depth), e.g. runs/ground-truth")
    parser.add_argument("--readme", action="append", default=[], metavar="FILE",
                        help="also rewrite the tables of this folder in FILE (between <!-- table:FOLDER --> and "
                             "<!-- /table:FOLDER -->, FOLDER relative to FILE; see lm/readme.py); repeatable")


def run(args: argparse.Namespace) -> int:
    from bottleneck_analysis.probe_plots import find_probe_reports

    if find_probe_reports(args.results_dir):  # folders written by softmax-bench probe
        from bottleneck_analysis.probe_plots import compare_probes

        comparison = compare_probes(args.results_dir)
        print(comparison["table"])
        print()
        print(f"probe comparison: {comparison['markdown']} and {comparison['csv']}")
        print(f"plots: {', '.join(str(p) for p in comparison['plots'])}")
        return 0
    summary = write_summary(args.results_dir, command=shlex.join(["softmax-bench", "plot", args.results_dir]))
    print(summary["tables"])
    print()
    if summary["full_rank_table"]:
        print(summary["full_rank_table"])
        print()
    print(f"summary: {summary['markdown']} and {summary['csv']}")
    print(f"plots: {', '.join(str(p) for p in summary['plots'])}")
    for readme in args.readme:
        names, changed = update_readme(readme, only=args.results_dir)
        if not names:
            raise UserError(f"{readme} has no table marker for {args.results_dir} (<!-- table:FOLDER --> with FOLDER "
                            "relative to the README).")
        print(f"{readme}: {', '.join(names)} {'updated' if changed else 'up to date'}")
    return 0
