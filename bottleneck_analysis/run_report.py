"""The bottleneck report of a trained run: ``rank.json`` and ``rank_spectrum.png`` in its folder.

Another report file name keeps a second report beside the first, e.g. the papers' protocol on the whole
split in ``rank-full.json`` (and ``rank-full_spectrum.png``) next to a suite's ``rank.json`` of a subset.

One pass over a split collects the model's log-probability matrix (:mod:`bottleneck_analysis.collect`,
float64 head) straight into the streaming rank computation (:mod:`bottleneck_analysis.rank`); then the
decoder's spectrum (:mod:`bottleneck_analysis.embedding`) and, for heads whose argmax is that of their
logits, the unargmaxable tokens (:mod:`bottleneck_analysis.unargmaxable`) within a box on the hidden
state whose default half-width is the largest absolute hidden coordinate seen on the split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from bottleneck_analysis.collect import DEFAULT_WINDOW, collect_log_probs
from bottleneck_analysis.embedding import decoder_spectrum
from bottleneck_analysis.plots import plot_spectrum
from bottleneck_analysis.rank import rank_report
from bottleneck_analysis.unargmaxable import head_unargmaxable
from lm.errors import UserError
from lm.io import atomic_write_json
from lm.provenance import provenance

SCHEMA_VERSION = 1
REPORT_FILE = "rank.json"
# The report of the papers' protocol (the whole split, state carried, float64 head) of selected runs: a file
# of its own so that the suite's rank.json, of the same rows in every run, stays comparable across runs.
FULL_RANK_FILE = "rank-full.json"


def plot_file(report_file: str) -> str:
    """The spectrum PNG beside a report: ``rank.json`` -> ``rank_spectrum.png``, ``rank-full.json`` ->
    ``rank-full_spectrum.png``."""
    return f"{Path(report_file).stem}_spectrum.png"


def check_report_file(report_file: str) -> None:
    """A report file name is a bare ``*.json`` name inside the run folder."""
    name = str(report_file)
    if "/" in name or "\\" in name or Path(name).suffix != ".json" or not Path(name).stem or name.startswith("."):
        raise UserError(f"the report file must be a plain file name ending in .json inside the run folder "
                        f"(e.g. {FULL_RANK_FILE}), not {name!r}.")


def softmax_rank_bound(head: torch.nn.Module) -> int:
    """``d_e + 2`` (``d_e + 1`` without an output bias): the largest rank a softmax head with this decoder
    can give its log-probability matrix (``H W^T + 1 b^T - lse 1^T``)."""
    decoder = head.decoder
    return decoder.in_features + 1 + (decoder.bias is not None)


def rank_run(
    run_dir: str | Path,
    split: str = "valid",
    max_rows: int | None = None,
    *,
    sample: int | None = None,
    seed: int = 0,
    batch_size: int = 1,
    window: int | None = None,
    relative_tolerances: Iterable[float] = (),
    smoothing: float | None = None,
    box: float | None = None,
    unargmaxable: bool = True,
    unargmaxable_seconds: float | None = None,
    unargmaxable_progress: Callable[[int, int], None] | None = None,
    block_rows: int = 2048,
    device: str = "cpu",
    data_path: str | None = None,
    report_file: str = REPORT_FILE,
) -> dict:
    """Measure the softmax bottleneck of a trained run; write ``report_file`` (default ``rank.json``) and
    its spectrum PNG (:func:`plot_file`) in the run folder; return the report.

    Args:
        run_dir: a run folder (config, checkpoint), loaded with :func:`lm.api.load_run`.
        split: ``train``, ``valid`` or ``test``.
        max_rows: only the first ``max_rows`` predicted positions; exclusive with ``sample``.
        sample: a seeded random subset of ``sample`` positions.
        seed: seed of the sample.
        batch_size: columns the split is cut into (1: the state is carried over the whole text, as in
            the MoS paper).
        window: tokens per body call (default: the run's evaluation window).
        relative_tolerances: extra relative rank tolerances.
        smoothing: ``eps`` of the sparse-row policy (default: the head's ``smoothing``, 0 for dense heads).
        box: half-width of the hidden-state box of the unargmaxable check (default: the largest absolute
            hidden coordinate seen).
        unargmaxable: run the unargmaxable check (heads with ``argmax_of_body_logits`` only).
        unargmaxable_seconds: time after which no further LP of that check is started (the tokens left
            are listed as undetermined); None (default) for no limit: the check determines every token.
        unargmaxable_progress: called with ``(n_determined, n_tokens)`` while that check runs.
        block_rows: rows per streamed block.
        device: where the body runs.
        data_path: the corpus folder, if it moved since training.
        report_file: name of the report in the run folder (a plain ``*.json`` name); other reports of the run
            stay as they are.
    Returns:
        the report of :func:`bottleneck_analysis.rank.rank_report` plus ``run_dir``, ``split``, ``head``,
        ``body``, ``protocol``, ``softmax_rank_bound``, ``embedding``, ``unargmaxable``, provenance
        (``schema_version``, ``seconds`` and the keys of :func:`lm.provenance.provenance`: ``git_commit``,
        ``git_dirty``, ``date``, the machine) and the written file names.
    """
    from lm.api import load_run  # the training side is only needed here

    if split not in ("train", "valid", "test"):
        raise UserError(f"split must be train, valid or test, not {split!r}.")
    check_report_file(report_file)
    plot_name = plot_file(report_file)
    started = time.perf_counter()
    run_dir = Path(run_dir)
    model, corpus, config = load_run(run_dir, device=device, data_path=data_path)
    head = model.head
    if smoothing is None:
        smoothing = float(getattr(head, "smoothing", 0.0))
    if window is None:
        train_config = getattr(config, "train", None)
        window = getattr(train_config, "eval_bptt", None) or getattr(train_config, "bptt", None) or DEFAULT_WINDOW
    hidden_range = {"max_abs": 0.0}

    def record_range(hidden: torch.Tensor) -> None:
        if hidden.numel():
            hidden_range["max_abs"] = max(hidden_range["max_abs"], float(hidden.abs().max()))

    blocks = collect_log_probs(
        model, corpus.split(split), batch_size=batch_size, max_rows=max_rows, sample=sample, seed=seed,
        block_rows=block_rows, window=window, on_hidden=record_range,
    )
    report = rank_report(blocks, relative_tolerances=relative_tolerances, smoothing=smoothing, block_rows=block_rows)
    collected = time.perf_counter()

    if unargmaxable and getattr(head, "argmax_of_body_logits", False):
        half_width = box if box is not None else hidden_range["max_abs"]
        unargmaxable_report = (
            head_unargmaxable(head, box=half_width, seed=seed, time_limit=unargmaxable_seconds,
                              progress=unargmaxable_progress) if half_width > 0.0
            else {"applicable": False, "reason": "every hidden state is zero"}
        )
    elif unargmaxable:
        unargmaxable_report = head_unargmaxable(head)
    else:
        unargmaxable_report = {"applicable": False, "reason": "not requested"}

    report.update(
        {
            "schema_version": SCHEMA_VERSION,
            "run_dir": str(run_dir),
            "split": split,
            "head": getattr(getattr(config, "head", None), "name", type(head).__name__),
            "body": getattr(getattr(config, "model", None), "body", type(model.body).__name__),
            "protocol": {
                "batch_size": batch_size, "window": window, "max_rows": max_rows, "sample": sample, "seed": seed,
                "head_dtype": "float64",
            },
            "softmax_rank_bound": softmax_rank_bound(head),
            "hidden_max_abs": hidden_range["max_abs"],
            "embedding": decoder_spectrum(head),
            "unargmaxable": unargmaxable_report,
            **provenance(next(model.parameters()).device),  # git_commit, git_dirty, date, device, torch_version, ... like result.json
            "seconds": {"rank": collected - started, "total": time.perf_counter() - started},
            "files": {"report": report_file, "plot": plot_name},
        }
    )
    plot_spectrum(
        report["singular_values"], run_dir / plot_name,
        title=f"{run_dir.name}: {split}, {report['n_rows']:,} x {report['n_cols']:,}",
        tolerances={name: report["tolerances"][name] for name in ("nr", "numpy")},
        bound=report["softmax_rank_bound"],
    )
    atomic_write_json(run_dir / report_file, report)
    return report


def summary_line(report: dict) -> str:
    """One line for the terminal."""
    ranks = report["rank"]
    line = (
        f"{report['split']}: {report['n_rows']:,} x {report['n_cols']:,} log-prob matrix has rank {ranks['nr']:,} "
        f"(nr tolerance; numpy {ranks['numpy']:,}) of at most {report['max_rank']:,}, effective rank "
        f"{report['effective_rank']:.1f}; softmax bound {report['softmax_rank_bound']}"
    )
    unargmaxable = report.get("unargmaxable", {})
    if unargmaxable.get("applicable"):
        line += f"; {unargmaxable['n_unargmaxable']} unargmaxable tokens (box {unargmaxable['box']:.3g})"
    return line
