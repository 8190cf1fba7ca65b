"""Plots and comparison tables of pretrained-model probes (``probe.json`` folders).

- :func:`plot_probe`: ``head_spectrum.png`` (``s_k / s_1`` of the output embedding, with the bias column
  where there is one) and ``logprob_spectrum.png`` (the log-prob matrix and its doubly centred version,
  the rank tolerances, the softmax bound and the hidden-size estimate).
- :func:`compare_probes`: every ``probe.json`` under a folder (any depth, e.g. one per revision) in one
  table (``probe_comparison.md``, ``probe_comparison.csv``) and two overlaid plots
  (``probe_head_spectra.png``, ``probe_logprob_spectra.png``), as Godey et al.'s checkpoint figure.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lm.errors import UserError
from lm.io import atomic_write, atomic_write_text

REPORT_FILE = "probe.json"
HEAD_PLOT = "head_spectrum.png"
LOGPROB_PLOT = "logprob_spectrum.png"
TINY = float(np.finfo(np.float64).tiny)


def _figure():
    figure = Figure(figsize=(6.4, 4.0), dpi=120)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure, axes, path: Path, title: str, legend: str = "lower left") -> None:
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, loc=legend)
    figure.tight_layout()
    atomic_write(path, lambda handle: figure.savefig(handle, format="png"))


def _normalized(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    s_max = values[0] if values.size and values[0] > 0 else 1.0
    return np.maximum(values / s_max, TINY)


def report_label(report: dict) -> str:
    model = report.get("model", {})
    label = str(model.get("id") or model.get("class") or "model")
    return label + (f"@{model['revision']}" if model.get("revision") else "")


def plot_probe(report: dict, folder: str | Path) -> dict:
    """Write the two PNGs of one probe report into ``folder``; returns ``{"head_plot", "logprob_plot"}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    label = report_label(report)
    head = report["head"]

    figure, axes = _figure()
    spectrum = head["spectrum"]
    axes.semilogy(np.arange(1, len(spectrum["singular_values"]) + 1), _normalized(spectrum["singular_values"]),
                  label=f"W ({head['V']:,} x {head['d']}): effective rank {spectrum['effective_rank']:.1f}, "
                        f"entropy {spectrum['normalized_spectral_entropy']:.3f}")
    if head.get("spectrum_with_bias"):
        with_bias = head["spectrum_with_bias"]
        axes.semilogy(np.arange(1, len(with_bias["singular_values"]) + 1), _normalized(with_bias["singular_values"]),
                      ls="--", label=f"[W, b]: effective rank {with_bias['effective_rank']:.1f}")
    axes.set_xlabel("index k")
    axes.set_ylabel("s_k / s_1")
    _save(figure, axes, folder / HEAD_PLOT, f"{label}: output embedding ({'tied' if head['tied'] else 'untied'})")

    figure, axes = _figure()
    log_probs, estimate = report["log_probs"], report["hidden_size_estimate"]
    values = np.asarray(log_probs["singular_values"])
    axes.semilogy(np.arange(1, values.size + 1), _normalized(values), color="tab:blue",
                  label=f"log-probs L ({log_probs['n_rows']:,} x {log_probs['n_cols']:,})")
    centred = np.asarray(estimate["singular_values"])
    axes.semilogy(np.arange(1, centred.size + 1), _normalized(centred), color="tab:orange", ls="--",
                  label="doubly centred P L P")
    s_max = values[0] if values.size and values[0] > 0 else 1.0
    for index, name in enumerate(("nr", "model_dtype")):
        tolerance = log_probs["tolerances"][name]
        axes.axhline(max(tolerance / s_max, TINY), lw=0.8, ls=":", color=f"C{index + 2}",
                     label=f"tolerance {name}: rank {log_probs['rank'][name]}")
    axes.axvline(log_probs["softmax_rank_bound"], lw=0.8, color="black", ls=":",
                 label=f"affine bound d + {log_probs['softmax_rank_bound'] - head['d']} = {log_probs['softmax_rank_bound']}")
    axes.axvline(estimate["estimate"], lw=0.8, color="tab:red", ls="-.",
                 label=f"hidden-size estimate {estimate['estimate']} (d = {head['d']})")
    positive = values[values > 0] / s_max
    if positive.size:
        axes.set_ylim(bottom=max(positive.min(), 1e-20) / 10.0, top=2.0)
    axes.set_xlabel("index k")
    axes.set_ylabel("s_k / s_1")
    _save(figure, axes, folder / LOGPROB_PLOT, f"{label}: log-probability matrix", legend="upper right")
    return {"head_plot": HEAD_PLOT, "logprob_plot": LOGPROB_PLOT}


def find_probe_reports(root: str | Path) -> list[tuple[Path, dict]]:
    """``(folder, report)`` of every ``probe.json`` under ``root`` (any depth), sorted by path."""
    found = []
    for path in sorted(Path(root).rglob(REPORT_FILE)):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(report, dict) and "log_probs" in report and "head" in report:
            found.append((path.parent, report))
    return found


COLUMNS = ("model", "V", "d", "tied", "bias", "head effective rank", "head normalized entropy", "rows N",
           "log-prob rank (nr)", "log-prob rank (model dtype)", "affine bound", "hidden-size estimate",
           "unargmaxable", "perplexity", "bits per byte")


def _row(report: dict) -> dict:
    head, log_probs = report["head"], report["log_probs"]
    unargmaxable = report.get("unargmaxable", {})
    lm = report.get("language_modeling", {})
    return {
        "model": report_label(report), "V": head["V"], "d": head["d"], "tied": head["tied"],
        "bias": head["output_bias"],
        "head effective rank": round(head["spectrum"]["effective_rank"], 2),
        "head normalized entropy": round(head["spectrum"]["normalized_spectral_entropy"], 4),
        "rows N": log_probs["n_rows"], "log-prob rank (nr)": log_probs["rank"]["nr"],
        "log-prob rank (model dtype)": log_probs["rank"].get("model_dtype"),
        "affine bound": log_probs["softmax_rank_bound"],
        "hidden-size estimate": report["hidden_size_estimate"]["estimate"],
        "unargmaxable": unargmaxable.get("n_unargmaxable") if unargmaxable.get("applicable") else None,
        "perplexity": None if lm.get("perplexity") is None else round(lm["perplexity"], 3),
        "bits per byte": None if lm.get("bits_per_byte") is None else round(lm["bits_per_byte"], 4),
    }


def compare_probes(root: str | Path) -> dict:
    """Write the comparison table and plots of every probe under ``root`` into ``root``; returns paths
    (``markdown``, ``csv``, ``plots``) and the ``table`` text."""
    root = Path(root)
    found = find_probe_reports(root)
    if not found:
        raise UserError(f"{root} holds no probe reports ({REPORT_FILE}); run softmax-bench probe first.")
    rows = [_row(report) for _, report in found]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join("" if row[c] is None else str(row[c]) for c in COLUMNS) + " |" for row in rows]
    sources = [f"- `{folder.relative_to(root) if folder != root else '.'}`: {report.get('provenance', {}).get('command') or ''}"
               for folder, report in found]
    table = "\n".join(lines)
    markdown = root / "probe_comparison.md"
    atomic_write_text(markdown, "# Probes of pretrained models\n\n" + table + "\n\nFrom:\n\n" + "\n".join(sources) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = root / "probe_comparison.csv"
    atomic_write_text(csv_path, buffer.getvalue())

    plots = []
    for name, key, title in (("probe_head_spectra.png", "head", "output embedding spectra"),
                             ("probe_logprob_spectra.png", "log_probs", "log-probability spectra")):
        figure, axes = _figure()
        for index, (_, report) in enumerate(found):
            values = report["head"]["spectrum"]["singular_values"] if key == "head" else report["log_probs"]["singular_values"]
            axes.semilogy(np.arange(1, len(values) + 1), _normalized(values), color=f"C{index % 10}",
                          label=report_label(report))
        axes.set_xlabel("index k")
        axes.set_ylabel("s_k / s_1")
        _save(figure, axes, root / name, title)
        plots.append(root / name)
    return {"markdown": markdown, "csv": csv_path, "plots": plots, "table": table, "n_reports": len(found)}
