"""How much machine time the runs under some results folders took, from their own result files.

    python scripts/machine_time.py results/study results/study-ptb-lr-sweep [--parallel 2]

Per folder: the runs (``*/result.json``) and their training seconds (``wall_time_s``: every session of a
resumed run, up to its last checkpoint), the rank reports (``*/rank*.json``) and their seconds, and the
sum in hours. ``--parallel N`` divides the total by the number of runs that shared the machine (the suites
run two one-thread cells at a time on the 2-core reference machine), which is the machine's wall time if
the runs kept it busy. Work lost to an interruption after a run's last checkpoint is not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def folder_seconds(folder: Path) -> dict:
    """``{"runs", "train_s", "rank_reports", "rank_s"}`` of one results folder."""
    results = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*/result.json"))]
    ranks = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*/rank*.json"))]
    rank_seconds = [report["seconds"]["total"] for report in ranks if isinstance(report.get("seconds"), dict)]
    return {"runs": len(results), "train_s": sum(result.get("wall_time_s") or 0.0 for result in results),
            "rank_reports": len(rank_seconds), "rank_s": sum(rank_seconds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="results folders (each holds run folders)")
    parser.add_argument("--parallel", type=int, default=1, help="runs that shared the machine at a time")
    args = parser.parse_args(argv)
    missing = [str(folder) for folder in args.folders if not folder.is_dir()]
    if missing or args.parallel < 1:
        print(f"error: no such results folder: {', '.join(missing)}" if missing else
              "error: --parallel must be at least 1", file=sys.stderr)
        return 2
    rows = [(folder, folder_seconds(folder)) for folder in args.folders]
    print("| folder | runs | training h | rank reports | rank h | total h |")
    print("|---|---:|---:|---:|---:|---:|")
    for folder, row in rows:
        hours = (row["train_s"] + row["rank_s"]) / 3600
        print(f"| {folder} | {row['runs']} | {row['train_s'] / 3600:.2f} | {row['rank_reports']} | "
              f"{row['rank_s'] / 3600:.2f} | {hours:.2f} |")
    total = sum(row["train_s"] + row["rank_s"] for _, row in rows) / 3600
    print(f"\nall folders: {total:.1f} run-hours; {total / args.parallel:.1f} hours of the machine "
          f"at {args.parallel} run(s) at a time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
