"""Tables and plots from run folders: ``summary.csv``, ``summary.md``, ``summary.json`` and PNG figures.

Every run folder under a results folder (any depth; a folder with ``result.json``) contributes its
``result.json``, ``metrics.jsonl``, ``rank.json`` and ``kl.json``. Runs are grouped by (dataset, body,
head, and the config keys that vary between the runs other than the seed); each group reports the mean
and the sample standard deviation over its seeds with the seed count. Nothing is typed by hand: the
numbers are read from the run files, and ``summary.json`` records the command, the git commits and dirty
flags of the runs and the command of every run (from the suite's ``suite.json`` when there is one).

Figures (``RESULTS/plots/``, 150 dpi, one per dataset and body):

- ``valid-ppl-*.png``: validation perplexity per epoch per head (mean over seeds, band = min..max);
- ``test-ppl-*.png``: test perplexity per head, each seed a dot, mean with the standard deviation;
- ``spectrum-*.png``: singular values of the log-prob matrix over the largest, log scale, one line per
  head, a dashed line at d + 1 (the rank bound of a softmax head with input size d);
- ``kl-vs-d-*.png``: for ground-truth runs, KL(P* || P_model) against the head input size d per head.
"""

from __future__ import annotations

import csv
import datetime
import io as _io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from lm import io
from lm.errors import UserError

# Keys that identify a group by other columns, or that never make runs differ in kind.
IDENTITY_KEYS = ("train.seed", "head.name", "model.body", "data.path", "data.name", "run.output_dir", "run.name",
                 "run.device", "data.cache_dir")
# Heads in the order of the registry; each gets the style of its registry index: an Okabe-Ito colour (readable
# by colour-blind readers), a marker and a line style, so that grey print still tells heads apart.
HEAD_PALETTE = ("#000000", "#E69F00", "#0072B2", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442")
HEAD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "p")
HEAD_LINES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)))


def _registry_styles() -> tuple[tuple[str, ...], dict[str, tuple]]:
    from lm.heads import HEADS

    order = tuple(HEADS)
    return order, {name: (HEAD_PALETTE[i % len(HEAD_PALETTE)], HEAD_MARKERS[i % len(HEAD_MARKERS)],
                          HEAD_LINES[i % len(HEAD_LINES)]) for i, name in enumerate(order)}


HEAD_ORDER, HEAD_STYLE = _registry_styles()
OTHER_STYLES = [("#CC79A7", "P", "-"), ("#56B4E9", "X", "--"), ("#F0E442", "*", "-.")]
DPI = 150


# --- reading ------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON; delete it and run the command that writes it again.") from None
    return data


def _flat(config: dict) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in (config or {}).items() if isinstance(values, dict)
            for key, value in values.items()}


def head_input_size(config: dict) -> int | None:
    """The size d of the hidden vector that the head receives (the body's output size)."""
    m = config.get("model", {})
    if m.get("body") == "transformer":
        return m.get("d_model")
    if m.get("d_last") is not None:
        return m["d_last"]
    from lm.heads import HEADS

    head = HEADS.get(config.get("head", {}).get("name"))
    tied_direct = m.get("tie_weights") and head is not None and head.decoder_reads_body
    return m.get("d_embedding") if tied_direct else m.get("d_hidden")


def load_runs(results_dir: str | Path) -> list[dict]:
    """Every finished run under ``results_dir``: a dict with its folder, result, metrics, rank and KL."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"results folder {results_dir} does not exist.")
    runs = []
    for result_path in sorted(results_dir.rglob("result.json")):
        run_dir = result_path.parent
        result = _read_json(result_path)
        if not isinstance(result, dict) or "test_ppl" not in result:
            continue
        config = result.get("config") or {}
        rank = _read_json(run_dir / "rank.json")
        d = result.get("head_input_size") or (rank or {}).get("d") or head_input_size(config)
        runs.append({
            "dir": run_dir,
            "result": result,
            "config": _flat(config),
            "metrics": io.read_jsonl(run_dir / "metrics.jsonl"),
            "rank": rank,
            "kl": _read_json(run_dir / "kl.json"),
            "d": d,
        })
    return runs


def _suite_commands(results_dir: Path) -> dict[str, str]:
    """Run folder (resolved) -> the command that trained it, from every ``suite.json`` below."""
    commands = {}
    for path in sorted(results_dir.rglob("suite.json")):
        suite = _read_json(path) or {}
        for cell in suite.get("cells", []):
            if "run_dir" in cell and "command" in cell:
                commands[str(Path(cell["run_dir"]).resolve())] = cell["command"]
    return commands


# --- grouping -----------------------------------------------------------------------------------------


def varying_keys(runs: list[dict]) -> list[str]:
    """Config keys (other than seed, head, body, corpus, output) whose value differs between runs."""
    keys: dict[str, set] = {}
    for run in runs:
        for key, value in run["config"].items():
            keys.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    for run in runs:  # a key missing from some runs varies too (not a head option: each head has its own)
        for key in keys:
            if key not in run["config"] and not key.startswith("head."):
                keys[key].add("missing")
    return [k for k, values in keys.items() if len(values) > 1 and k not in IDENTITY_KEYS]


def column_name(key: str) -> str:
    """``model.d_last`` -> ``d_last`` (the config key's last part)."""
    return key.rpartition(".")[2]


def _head_rank(head: str) -> tuple:
    return (HEAD_ORDER.index(head), "") if head in HEAD_ORDER else (len(HEAD_ORDER), head)


def _sort_value(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, json.dumps(value))


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    mean = statistics.fmean(values) if len(values) > 1 else values[0]
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def _kl_value(kl: dict | None) -> float | None:
    if not kl:
        return None
    for key in ("mean_kl", "kl"):
        if isinstance(kl.get(key), (int, float)):
            return float(kl[key])
    return None


def group_runs(runs: list[dict]) -> tuple[list[str], list[dict]]:
    """The varying keys and the groups: ``{"dataset", "body", "head", "sizes", "runs"}`` in table order."""
    keys = varying_keys(runs)
    groups: dict[tuple, dict] = {}
    for run in runs:
        r = run["result"]
        sizes = {k: run["config"].get(k) for k in keys}
        ident = (r.get("dataset"), r.get("body"), r.get("head"), json.dumps(sizes, sort_keys=True))
        groups.setdefault(ident, {"dataset": r.get("dataset"), "body": r.get("body"), "head": r.get("head"),
                                  "sizes": sizes, "runs": []})["runs"].append(run)
    ordered = sorted(groups.values(), key=lambda g: (str(g["dataset"]), str(g["body"]),
                                                     [_sort_value(g["sizes"][k]) for k in keys], _head_rank(g["head"])))
    for group in ordered:
        group["runs"].sort(key=lambda run: run["result"].get("seed", 0))
    return keys, ordered


def rank_tolerances(runs: list[dict]) -> list[str]:
    """The tolerance names of the ``rank`` dicts in the runs' rank reports, in first-seen order."""
    names: list[str] = []
    for run in runs:
        for name in ((run["rank"] or {}).get("rank") or {}):
            if name not in names:
                names.append(name)
    return names


def summarize(runs: list[dict]) -> tuple[list[str], list[dict]]:
    """The rows of ``summary.csv`` (one per group) and the column order."""
    keys, groups = group_runs(runs)
    tolerances = rank_tolerances(runs)
    any_kl = any(_kl_value(run["kl"]) is not None for run in runs)
    any_sparse = any("test_zero_target_fraction" in run["result"] for run in runs)
    columns = ["dataset", "body", "head", *[column_name(k) for k in keys], "d", "n_params", "n_seeds", "seeds",
               "val_ppl_mean", "val_ppl_std", "test_ppl_mean", "test_ppl_std"]
    columns += [f"rank_{name}" for name in tolerances] + (["effective_rank"] if tolerances else [])
    if any_kl:
        columns += ["kl_mean", "kl_std"]
    if any_sparse:
        columns += ["test_zero_target_fraction", "test_smoothing"]
    columns += ["tokens_per_second", "wall_time_s", "git_commits", "git_dirty", "runs"]
    rows = []
    for group in groups:
        results = [run["result"] for run in group["runs"]]
        row: dict[str, Any] = {"dataset": group["dataset"], "body": group["body"], "head": group["head"]}
        for key in keys:
            row[column_name(key)] = group["sizes"][key]
        ds = sorted({run["d"] for run in group["runs"] if run["d"] is not None})
        row["d"] = ds[0] if len(ds) == 1 else "/".join(map(str, ds))
        params = sorted({r.get("n_params") for r in results})
        row["n_params"] = params[0] if len(params) == 1 else "/".join(map(str, params))
        row["n_seeds"] = len(results)
        row["seeds"] = " ".join(str(r.get("seed")) for r in results)
        row["val_ppl_mean"], row["val_ppl_std"] = _mean_std([r.get("val_ppl") for r in results])
        row["test_ppl_mean"], row["test_ppl_std"] = _mean_std([r.get("test_ppl") for r in results])
        for name in tolerances:
            values = [((run["rank"] or {}).get("rank") or {}).get(name) for run in group["runs"]]
            row[f"rank_{name}"] = _mean_std(values)[0]
        if tolerances:
            row["effective_rank"] = _mean_std([(run["rank"] or {}).get("effective_rank") for run in group["runs"]])[0]
        if any_kl:
            row["kl_mean"], row["kl_std"] = _mean_std([_kl_value(run["kl"]) for run in group["runs"]])
        if any_sparse:
            row["test_zero_target_fraction"] = _mean_std([r.get("test_zero_target_fraction") for r in results])[0]
            row["test_smoothing"] = results[0].get("test_smoothing")
        row["tokens_per_second"] = _mean_std([r.get("tokens_per_second") for r in results])[0]
        row["wall_time_s"] = _mean_std([r.get("wall_time_s") for r in results])[0]
        row["git_commits"] = " ".join(sorted({str(r.get("git_commit"))[:12] for r in results}))
        row["git_dirty"] = any(bool(r.get("git_dirty")) for r in results)
        row["runs"] = " ".join(run["dir"].name for run in group["runs"])
        rows.append(row)
    return columns, rows


# --- tables -------------------------------------------------------------------------------------------


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float) else row[k])
                         for k in columns})
    return buffer.getvalue()


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e15 and digits == 0:
            return f"{int(value):,}"
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _spread(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def _kl_digits(rows: list[dict]) -> int:
    values = [abs(r["kl_mean"]) for r in rows if r.get("kl_mean")]
    smallest = min(values) if values else 1.0
    return max(3, min(6, 2 - math.floor(math.log10(smallest)))) if smallest > 0 else 3


def markdown_tables(columns: list[str], rows: list[dict]) -> str:
    """One markdown table per (dataset, body), the way ``summary.md`` shows them."""
    size_columns = columns[columns.index("head") + 1: columns.index("d")]
    tolerances = [c for c in columns if c.startswith("rank_")]
    kl = "kl_mean" in columns
    sparse = "test_zero_target_fraction" in columns
    blocks = []
    for (dataset, body) in dict.fromkeys((r["dataset"], r["body"]) for r in rows):
        part = [r for r in rows if (r["dataset"], r["body"]) == (dataset, body)]
        header = ["head", *size_columns, "d", "parameters", "valid ppl", "test ppl", "seeds"]
        header += [f"rank ({c[len('rank_'):]})" for c in tolerances] + (["effective rank"] if tolerances else [])
        if kl:
            header.append("KL (nats/token)")
        if sparse:
            header.append("zero-prob targets")
        header += ["tokens/s", "wall time (s)"]
        lines = [f"### {dataset} ({body})", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
        digits = _kl_digits(part)
        for r in part:
            cells = [str(r["head"]), *[_fmt(r[c]) for c in size_columns], _fmt(r["d"]), _fmt(r["n_params"]),
                     _spread(r["val_ppl_mean"], r["val_ppl_std"]), _spread(r["test_ppl_mean"], r["test_ppl_std"]),
                     str(r["n_seeds"])]
            cells += [_fmt(r[c], 0 if r[c] is None or float(r[c]).is_integer() else 1) for c in tolerances]
            if tolerances:
                cells.append(_fmt(r["effective_rank"], 1))
            if kl:
                cells.append(_spread(r["kl_mean"], r["kl_std"], digits))
            if sparse:
                value = r["test_zero_target_fraction"]
                cells.append("-" if value is None else f"{value:.2%}")
            cells += [_fmt(r["tokens_per_second"], 0), _fmt(r["wall_time_s"], 1)]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# --- plots --------------------------------------------------------------------------------------------


def _style(head: str, others: dict) -> tuple:
    if head in HEAD_STYLE:
        return HEAD_STYLE[head]
    return others.setdefault(head, OTHER_STYLES[len(others) % len(OTHER_STYLES)])


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


def _size_label(sizes: dict) -> str:
    return ", ".join(f"{column_name(k)}={v}" for k, v in sizes.items())


def _panels(groups: list[dict]) -> list[tuple[str, list[dict]]]:
    """Groups split into panels by their varying sizes (one panel when nothing varies)."""
    panels: dict[str, list[dict]] = {}
    for group in groups:
        panels.setdefault(_size_label(group["sizes"]), []).append(group)
    return list(panels.items())


def _figure(n_panels: int, width: float = 4.2, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(n_panels, 3)
    rows = math.ceil(n_panels / columns)
    with plt.rc_context({"font.size": 9}):
        fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for extra in axes.flat[n_panels:]:
        extra.set_visible(False)
    return plt, fig, list(axes.flat[:n_panels])


def _legend(fig, axes: list) -> None:
    """One legend: inside a single panel, or shared below several panels."""
    if len(axes) == 1:
        axes[0].legend(fontsize=8)
        return
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc="lower center", ncol=min(len(entries), 5), fontsize=8,
               frameon=False)


def _save(plt, fig, path: Path, title: str, shared_legend: bool = False) -> Path:
    import textwrap

    width_inches = fig.get_size_inches()[0]
    fig.suptitle(textwrap.fill(title, width=max(30, int(width_inches * 10))), fontsize=11)
    n_legend_rows = 0
    if shared_legend and fig.legends:
        n_legend_rows = math.ceil(len(fig.legends[0].get_texts()) / 5)
    bottom = 0.04 + 0.06 * n_legend_rows if n_legend_rows else 0.0
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
    io.atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI))
    plt.close(fig)
    return path


def _plain_log_ticks(axis) -> None:
    """Tick labels like 20, 30, 50 instead of 2 x 10^1 on a log axis."""
    from matplotlib.ticker import FuncFormatter

    formatter = FuncFormatter(lambda value, _: f"{value:g}")
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(formatter)


def plot_validation_curves(groups: list[dict], title: str, path: Path) -> Path | None:
    """Validation perplexity per epoch per head: mean over seeds, band from the lowest to the highest seed."""
    panels = _panels(groups)
    if not any(r["event"] == "valid" for g in groups for run in g["runs"] for r in run["metrics"]):
        return None
    from matplotlib.ticker import MaxNLocator

    plt, fig, axes = _figure(len(panels))
    others: dict = {}
    for ax, (label, members) in zip(axes, panels):
        for group in members:
            by_epoch: dict[int, list[float]] = {}
            for run in group["runs"]:
                for record in run["metrics"]:
                    if record.get("event") == "valid":
                        by_epoch.setdefault(record["epoch"], []).append(record["val_ppl"])
            if not by_epoch:
                continue
            epochs = sorted(by_epoch)
            color, marker, line = _style(group["head"], others)
            means = [statistics.fmean(by_epoch[e]) for e in epochs]
            ax.plot(epochs, means, color=color, marker=marker, linestyle=line, markersize=4, linewidth=1.5,
                    label=f"{group['head']} (n={len(group['runs'])})")
            if len(group["runs"]) > 1:
                ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs],
                                color=color, alpha=0.15, linewidth=0)
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation perplexity (log scale)")
        if label:
            ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axes)
    return _save(plt, fig, path, title, shared_legend=len(axes) > 1)


def plot_test_perplexity(groups: list[dict], title: str, path: Path) -> Path:
    """Test perplexity per head: one dot per seed, the mean with the sample standard deviation as error bar.

    Without varying sizes the x axis lists the heads; with them, each setting is a cluster of heads.
    """
    panels = _panels(groups)
    clustered = len(panels) > 1 or bool(panels[0][0])
    heads = sorted({g["head"] for g in groups}, key=_head_rank)
    plt, fig, axes = _figure(1, width=min(9.0, max(4.2, 0.4 * len(groups) + 2.5)))
    ax = axes[0]
    others: dict = {}
    width = 0.8 / len(heads) if clustered else 0.0
    labelled = set()
    for position, (label, members) in enumerate(panels):
        for group in members:
            index = heads.index(group["head"])
            x = position + (index - (len(heads) - 1) / 2) * width if clustered else index
            values = [run["result"]["test_ppl"] for run in group["runs"]]
            mean, std = _mean_std(values)
            color, marker, _ = _style(group["head"], others)
            ax.scatter([x] * len(values), values, color=color, alpha=0.5, s=14, marker=marker, linewidths=0, zorder=3)
            ax.errorbar([x], [mean], yerr=[[std or 0.0], [std or 0.0]], color=color, marker=marker, markersize=8,
                        capsize=4, linewidth=1.5, markerfacecolor="none", zorder=2,
                        label=group["head"] if group["head"] not in labelled else None)
            labelled.add(group["head"])
    if clustered:
        ax.set_xticks(range(len(panels)))
        ax.set_xticklabels([label for label, _ in panels])
        ax.set_xlim(-0.6, len(panels) - 0.4)
        ax.set_xlabel("setting (clusters of heads)")
        ax.legend(fontsize=8, title="head", title_fontsize=8)
    else:
        ax.set_xticks(range(len(heads)))
        ax.set_xticklabels(heads)
        ax.set_xlim(-0.6, len(heads) - 0.4)
        ax.set_xlabel("output head")
    seeds = sorted({len(g["runs"]) for g in groups})
    ax.set_ylabel("test perplexity")
    ax.set_title(f"filled dots: seeds (n = {'/'.join(map(str, seeds))}); open marker and bar: mean ± std", fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(plt, fig, path, title)


def _singular_values(run: dict) -> list[float] | None:
    rank = run["rank"] or {}
    values = rank.get("singular_values")
    if values is None and rank.get("singular_values_file"):
        import numpy as np

        file = run["dir"] / rank["singular_values_file"]
        values = np.load(file).tolist() if file.is_file() else None
    return [float(v) for v in values] if values else None


def plot_spectra(groups: list[dict], title: str, path: Path) -> Path | None:
    """Singular values over the largest per head (first seed), log scale, dashed at d + 1."""
    panels = [(label, [g for g in members if _singular_values(g["runs"][0])]) for label, members in _panels(groups)]
    panels = [(label, members) for label, members in panels if members]
    if not panels:
        return None
    plt, fig, axes = _figure(len(panels))
    others: dict = {}
    for ax, (label, members) in zip(axes, panels):
        floor = 1.0
        for group in members:
            run = group["runs"][0]
            values = sorted(_singular_values(run), reverse=True)
            top = values[0] if values and values[0] > 0 else 1.0
            normed = [v / top for v in values]
            positive = [v for v in normed if v > 0]
            floor = min(floor, min(positive) if positive else 1.0)
            color, _, line = _style(group["head"], others)
            ax.plot(range(1, len(normed) + 1), [max(v, 1e-300) for v in normed], color=color, linestyle=line,
                    linewidth=1.5, label=f"{group['head']} (seed {run['result'].get('seed')})")
        ds = sorted({g["runs"][0]["d"] for g in members if g["runs"][0]["d"]})
        for d in ds:
            ax.axvline(d + 1, color="gray", linestyle="--", linewidth=1)
            ax.annotate(f"d + 1 = {d + 1}", xy=(d + 1, 0.45), xycoords=("data", "axes fraction"), xytext=(8, 0),
                        textcoords="offset points", fontsize=8, color="dimgray", ha="left", va="center",
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.0})
        ax.set_yscale("log")
        ax.set_ylim(max(floor, 1e-18) / 3, 3)
        ax.set_xlabel("index i of the singular value")
        ax.set_ylabel("singular value σ_i / σ_1 (log scale)")
        if label:
            ax.set_title(label)
        ax.grid(True, which="major", alpha=0.3)
    _legend(fig, axes)
    return _save(plt, fig, path, title, shared_legend=len(axes) > 1)


def plot_kl_vs_d(groups: list[dict], title: str, path: Path) -> Path | None:
    """KL from the true distribution against the head input size d, one line per head."""
    heads: dict[str, list[tuple[int, float, float | None]]] = {}
    for group in groups:
        values = [_kl_value(run["kl"]) for run in group["runs"]]
        ds = {run["d"] for run in group["runs"]}
        mean, std = _mean_std(values)
        if mean is None or len(ds) != 1 or None in ds:
            continue
        heads.setdefault(group["head"], []).append((ds.pop(), mean, std))
    if not heads:
        return None
    plt, fig, axes = _figure(1, width=4.8, height=3.6)
    ax = axes[0]
    others: dict = {}
    positive = all(mean > 0 for points in heads.values() for _, mean, _ in points)
    for head in sorted(heads, key=_head_rank):
        points = sorted(heads[head])
        color, marker, line = _style(head, others)
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] or 0.0 for p in points], color=color,
                    marker=marker, linestyle=line, linewidth=1.5, markersize=5, capsize=3, label=head)
    ds = sorted({p[0] for points in heads.values() for p in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ds)
    ax.set_xticklabels([str(d) for d in ds])
    ax.minorticks_off()
    if positive:
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("head input size d (log scale)")
    ax.set_ylabel("KL(P* || P_model) (nats/token" + (", log scale)" if positive else ")"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path, title)


# --- the whole summary --------------------------------------------------------------------------------


def _provenance(runs: list[dict], commands: dict[str, str]) -> list[dict]:
    return [{
        "run": str(run["dir"]),
        "git_commit": run["result"].get("git_commit"),
        "git_dirty": run["result"].get("git_dirty"),
        "date": run["result"].get("date"),
        "device": run["result"].get("device"),
        "torch_version": run["result"].get("torch_version"),
        "command": commands.get(str(run["dir"].resolve())),
    } for run in runs]


def write_summary(results_dir: str | Path, command: str | None = None) -> dict:
    """Write ``summary.csv``, ``summary.md``, ``summary.json`` and the plots; return their paths and the table."""
    results_dir = Path(results_dir)
    runs = load_runs(results_dir)
    if not runs:
        raise UserError(f"{results_dir} holds no finished run (no result.json below it).")
    columns, rows = summarize(runs)
    keys, groups = group_runs(runs)
    plots_dir = results_dir / "plots"
    plots: list[Path] = []
    for (dataset, body) in dict.fromkeys((g["dataset"], g["body"]) for g in groups):
        members = [g for g in groups if (g["dataset"], g["body"]) == (dataset, body)]
        stem = f"{_slug(dataset)}-{_slug(body)}"
        where = f"{dataset}, {body}"
        for made in (
            plot_validation_curves(members, f"Validation perplexity per epoch ({where})", plots_dir / f"valid-ppl-{stem}.png"),
            plot_test_perplexity(members, f"Test perplexity per head ({where})", plots_dir / f"test-ppl-{stem}.png"),
            plot_spectra(members, f"Singular values of the log-prob matrix ({where})", plots_dir / f"spectrum-{stem}.png"),
            plot_kl_vs_d(members, f"KL from the true distribution vs d ({where})", plots_dir / f"kl-vs-d-{stem}.png"),
        ):
            if made is not None:
                plots.append(made)

    commits = {}
    for run in runs:
        commit = str(run["result"].get("git_commit"))
        entry = commits.setdefault(commit, {"runs": 0, "dirty_runs": 0})
        entry["runs"] += 1
        entry["dirty_runs"] += bool(run["result"].get("git_dirty"))
    provenance = _provenance(runs, _suite_commands(results_dir))
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    tables = markdown_tables(columns, rows)
    commit_text = ", ".join(f"`{c[:12]}` ({e['runs']} run{'' if e['runs'] == 1 else 's'}"
                            f"{', ' + str(e['dirty_runs']) + ' from a dirty tree' if e['dirty_runs'] else ''})"
                            for c, e in commits.items())
    md = [
        f"# Summary of {results_dir}",
        "",
        f"Written by `{command or 'lm.summary.write_summary'}` on {date} from {len(runs)} runs; code: {commit_text}.",
        "Perplexity: mean ± sample standard deviation over the seeds (their number in the seeds column). "
        "Rank: numerical rank of the log-probability matrix at each tolerance of the rank report (mean over seeds). "
        "d: size of the hidden vector that the head receives; a softmax head's rank is at most d + 1 (d + 2 with a bias)."
        + (" KL: KL(P* || P_model) from the true next-token distribution, nats per token." if "kl_mean" in columns else ""),
        "",
        tables,
        "",
        "## Plots",
        "",
        *[f"- [{p.name}](plots/{p.name})" for p in plots],
        "",
        "## Provenance",
        "",
        "| run | git commit | dirty | date | command |",
        "|---|---|---|---|---|",
        *[f"| {Path(p['run']).name} | {str(p['git_commit'])[:12]} | {p['git_dirty']} | {p['date']} | "
          f"{('`' + p['command'] + '`') if p['command'] else '`softmax-bench train ' + p['run'] + '/config.yaml`'} |"
          for p in provenance],
        "",
    ]
    io.atomic_write_text(results_dir / "summary.csv", _csv_text(columns, rows))
    io.atomic_write_text(results_dir / "summary.md", "\n".join(md))
    io.atomic_write_json(results_dir / "summary.json", {
        "results_dir": str(results_dir),
        "command": command,
        "date": date,
        "n_runs": len(runs),
        "varying_keys": keys,
        "git_commits": commits,
        "columns": columns,
        "rows": rows,
        "runs": provenance,
        "plots": [str(p) for p in plots],
    })
    return {"csv": results_dir / "summary.csv", "markdown": results_dir / "summary.md",
            "json": results_dir / "summary.json", "plots": plots, "tables": tables, "rows": rows, "columns": columns}


def read_summary_csv(path: str | Path) -> list[dict]:
    """Rows of a ``summary.csv`` as written (strings; floats round-trip through ``float``)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


__all__ = ["load_runs", "summarize", "group_runs", "markdown_tables", "write_summary", "head_input_size",
                          "plot_validation_curves", "plot_test_perplexity", "plot_spectra", "plot_kl_vs_d"]
