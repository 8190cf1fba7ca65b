"""``softmax-bench plot RESULTS_DIR``: summary tables (CSV, markdown, JSON) and PNG plots from run folders."""

from __future__ import annotations

import argparse
import shlex

from lm.summary import write_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", help="a folder holding run folders or probe folders (any depth), e.g. runs/ground-truth")


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
    print(f"summary: {summary['markdown']} and {summary['csv']}")
    print(f"plots: {', '.join(str(p) for p in summary['plots'])}")
    return 0
