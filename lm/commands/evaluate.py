"""``softmax-bench evaluate RUN_DIR [--split test]``: perplexity of a run's best checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from lm.api import evaluate_run
from lm.io import atomic_write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run folder written by softmax-bench train")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's eval/test batch size")
    parser.add_argument("--data", default=None, help="corpus folder, if it moved since training")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dynamic", action="store_true",
                        help="also dynamic evaluation (Krause et al. 2018; settings train.dynamic_eval_* of the run's config)")


def run(args: argparse.Namespace) -> int:
    result = evaluate_run(args.run_dir, args.split, args.batch_size, args.device, args.data, dynamic=args.dynamic)
    atomic_write_json(Path(args.run_dir) / f"eval-{args.split}{'-dynamic' if args.dynamic else ''}.json", result)
    dynamic = f", dynamic {result['ppl_dynamic']:.2f}" if args.dynamic else ""
    print(f"{args.split} ppl {result['ppl']:.2f}{dynamic} over {result['n_tokens']:,} tokens (batch size {result['batch_size']})")
    return 0
