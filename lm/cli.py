"""``softmax-bench``: one command with subcommands.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Bad input (:class:`lm.errors.UserError`) ends with one sentence on stderr and exit status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from lm.errors import UserError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("lm.commands.train", "train (or resume) one run from a YAML config"),
    "evaluate": ("lm.commands.evaluate", "perplexity of a trained run on a split"),
    "suite": ("lm.commands.suite", "run a grid of runs (default: the embedded ground-truth suite), then rank and summary"),
    "plot": ("lm.commands.plot", "summary tables and plots from run folders"),
    "rank": ("bottleneck_analysis.cli_rank", "rank and spectrum of a run's log-probability matrix"),
    "probe": ("bottleneck_analysis.cli_probe", "the softmax bottleneck of a pretrained Hugging Face causal LM (needs the hf extra)"),
    "synth": ("bottleneck_analysis.cli_synth", "write a ground-truth corpus of known rank"),
    "two-layer": ("bottleneck_analysis.cli_two_layer", "two-layer softmax network experiments (NTK, score matching)"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one sentence (no usage dump) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help).\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the module of ``command`` is imported (a training subprocess need not load the
    rank or two-layer code), or all of them when ``command`` is None."""
    parser = _Parser(
        prog="softmax-bench",
        description="Train language models with different output heads and measure the softmax bottleneck.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-sentence errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if command is None or command == name:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as error:
        if args.debug:
            traceback.print_exc()
        print(f"softmax-bench: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("softmax-bench: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
