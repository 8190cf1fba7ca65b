"""``softmax-bench train CONFIG [key=value ...]``: train, or resume, one run."""

from __future__ import annotations

import argparse
import sys

from lm.config import load_config, valid_keys
from lm.distributed import world_from_environment
from lm.train import run_dir_for, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML experiment file (see configs/)")
    from lm.heads import HEADS

    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. train.seed=2 head.name=mos (keys: " + ", ".join(valid_keys()[:6]) + ", ...); "
                             f"head.name is one of {', '.join(HEADS)}, head.OPTION sets an option of that head "
                             "(lm/heads/README.md lists them)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Train; under ``torchrun --nproc_per_node=N`` every process runs this and process 0 talks."""
    config = load_config(args.config, args.overrides)
    quiet = not world_from_environment().is_main
    say = (lambda message: None) if quiet else (lambda message: print(message, flush=True))  # noqa: E731
    say(f"run folder: {run_dir_for(config)}")
    result = train(config, progress=not args.no_progress and sys.stderr.isatty(), say=say)
    if quiet:
        return 0
    line = f"{result['run']}: valid ppl {result['val_ppl']:.2f}, test ppl {result['test_ppl']:.2f}"
    if "test_zero_target_fraction" in result:
        line += f" (smoothed, eps={result['test_smoothing']:g}; zero-prob targets {result['test_zero_target_fraction']:.2%})"
    if "test_ppl_dynamic" in result:
        line += f"; dynamic evaluation: valid ppl {result['val_ppl_dynamic']:.2f}, test ppl {result['test_ppl_dynamic']:.2f}"
    print(f"{line}, {result['n_params']:,} parameters, {result['tokens_per_second']:.0f} training tokens/s")
    return 0
