"""``softmax-bench probe MODEL``: the softmax bottleneck of a pretrained Hugging Face causal LM.

MODEL is a local folder (``save_pretrained`` layout) or a Hub id; several ``--revision`` give one folder
per revision and their comparison (see :mod:`bottleneck_analysis.pretrained`). Needs the ``hf`` extra.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from bottleneck_analysis.probe import DEFAULT_N_CONTEXTS
from bottleneck_analysis.progress import staged_progress

STAGES = {"tokens": "forward over the text", "rank": "log-prob QR", "unargmaxable": "unargmaxable tokens"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a Hugging Face model id or a local model folder (config.json, weights, tokenizer)")
    parser.add_argument("--revision", action="append", default=None, metavar="R",
                        help="a Hub branch, tag or commit (repeatable: one sub-folder per revision and a comparison)")
    parser.add_argument("--data", default="wikitext-2",
                        help="a text file, a corpus folder (its test split) or a corpus name: ptb, wikitext-2, wikitext-103")
    parser.add_argument("--n-contexts", type=int, default=DEFAULT_N_CONTEXTS,
                        help="rows N of the log-prob matrix: the first N predicted positions")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="only the first tokens of the text (perplexity and bits per byte are over these)")
    parser.add_argument("--context-length", type=int, default=None,
                        help="tokens per window (default: the model's maximum positions, at most 1024)")
    parser.add_argument("--stride", type=int, default=None, help="new tokens per window (default: half the context)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float64", "float16", "bfloat16"],
                        help="dtype the model runs in (the head is always recomputed in float64)")
    parser.add_argument("--relative-tolerance", type=float, action="append", default=[], metavar="TOL",
                        help="also count singular values above TOL * s_max (repeatable)")
    parser.add_argument("--box", type=float, default=None,
                        help="half-width of the hidden-state box for unargmaxable tokens (default: largest |hidden| seen)")
    parser.add_argument("--no-unargmaxable", action="store_true", help="skip the unargmaxable-token check")
    parser.add_argument("--unargmaxable-seconds", type=float, default=None,
                        help="stop starting LPs of that check after this many seconds (default: no limit)")
    parser.add_argument("--workers", type=int, default=None, help="processes for that check's LPs (default: 2 cores)")
    parser.add_argument("--output-dir", default=None, help="the output folder (default: probes/<model>[@<revision>])")


def run(args: argparse.Namespace) -> int:
    from bottleneck_analysis.pretrained import probe_revisions

    for name in ("n_contexts", "max_tokens", "context_length", "stride", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            from lm.errors import UserError

            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    command = _command(args)
    options = dict(
        data=args.data, n_contexts=args.n_contexts, context_length=args.context_length, stride=args.stride,
        max_tokens=args.max_tokens, device=args.device, dtype=args.dtype, relative_tolerances=args.relative_tolerance,
        unargmaxable=not args.no_unargmaxable, box=args.box, unargmaxable_seconds=args.unargmaxable_seconds,
        n_workers=args.workers, command=command,
    )
    with staged_progress(STAGES) as progress:
        reports = probe_revisions(args.model, args.revision or [None], output_dir=args.output_dir,
                                  progress=progress, **options)
    for report in reports:
        print(summary_line(report))
    if len(reports) > 1:
        from bottleneck_analysis.pretrained import default_output_dir

        root = Path(args.output_dir) if args.output_dir else default_output_dir(args.model, None)
        print(f"comparison: {root / 'probe_comparison.md'}")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (every option that differs from its default)."""
    words = ["softmax-bench", "probe", args.model]
    for revision in args.revision or []:
        words += ["--revision", revision]
    defaults = {"data": "wikitext-2", "n_contexts": DEFAULT_N_CONTEXTS, "device": "cpu", "dtype": "auto"}
    for name in ("data", "n_contexts", "max_tokens", "context_length", "stride", "device", "dtype", "box",
                 "unargmaxable_seconds", "workers", "output_dir"):
        value = getattr(args, name)
        if value is not None and value != defaults.get(name):
            words += [f"--{name.replace('_', '-')}", str(value)]
    for tolerance in args.relative_tolerance:
        words += ["--relative-tolerance", str(tolerance)]
    if args.no_unargmaxable:
        words.append("--no-unargmaxable")
    return shlex.join(words)


def summary_line(report: dict) -> str:
    head, log_probs = report["head"], report["log_probs"]
    lm = report["language_modeling"]
    unargmaxable = report["unargmaxable"]
    model = report["model"]
    parts = [
        f"{model.get('id')}{'@' + model['revision'] if model.get('revision') else ''}: V = {head['V']:,}, "
        f"d = {head['d']} ({'tied' if head['tied'] else 'untied'}{', bias' if head['output_bias'] else ''})",
        f"head effective rank {head['spectrum']['effective_rank']:.1f} "
        f"(normalized entropy {head['spectrum']['normalized_spectral_entropy']:.3f})",
        f"log-prob rank {log_probs['rank']['nr']} of {log_probs['n_rows']:,} x {log_probs['n_cols']:,} "
        f"(affine bound {log_probs['softmax_rank_bound']})",
        f"hidden-size estimate {report['hidden_size_estimate']['estimate']}",
    ]
    if unargmaxable.get("applicable"):
        parts.append(f"{unargmaxable['n_unargmaxable']} unargmaxable tokens")
    ppl = f"perplexity {lm['perplexity']:.3f}"
    if lm.get("bits_per_byte") is not None:
        ppl += f", {lm['bits_per_byte']:.4f} bits per byte"
    parts.append(ppl)
    return "; ".join(parts) + f"; wrote {report['files']['report']} in {report.get('output_dir', 'the output folder')}"
