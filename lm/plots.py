"""Figures of a results folder, written by :func:`lm.summary.write_summary` next to its tables.

Figures (``RESULTS/plots/``, 150 dpi, one set per corpus and body; heads in registry order and styles):

- ``test-ppl-vs-d-*.png``: test perplexity against d, log-log, one line per head (mean over seeds, bars
  = sample standard deviation, dots = seeds); sparse heads (r-softmax) in their own panel;
- ``test-ppl-*.png`` (runs at one d): test perplexity per head, each seed a dot, mean with the standard
  deviation, log scale;
- ``rank-vs-d-*.png``: rank of the log-probability matrix against d with the softmax bound d + 2;
- ``valid-vs-tokens-*.png``, ``valid-vs-time-*.png``: validation perplexity against training tokens and
  training seconds (the ``valid_subset`` evaluations of ``metrics.jsonl``, else the per-epoch ones);
- ``valid-ppl-*.png``: validation perplexity per epoch per head;
- ``spectrum-*.png``: normalized singular values s_i / s_1 of the log-prob matrix, log-log axes, a dashed
  line at d + 2 (the rank bound of a softmax head with output embedding size d and a bias);
- ``kl-vs-d-*.png``: for ground-truth runs, KL(P* || P_model) against d per head;
- ``sweeps-*.png``: test perplexity and rank against a head option swept at one d (MoS's K, r-softmax's r),
  with the softmax head at that d;
- ``valid-vs-KEY-*.png``: validation perplexity against a setting swept for the same head, e.g. the
  learning rate of a pilot sweep (``valid-vs-lr-*.png``).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from lm import io
from lm.summary import (  # grouping, statistics, head styles and words: one definition, shared with the tables
    LINESTYLES, MARKERS, _clean, _curve, _d_words, _head_rank, _kl_value, _rank_value, _setting_words, _sort_value,
    _stage, body_words, budget_words, column_name, comparison_keys, corpus_words, describe, group_runs,
    head_determined_keys, head_order, head_style, head_takes, head_words, is_sparse, key_words, rank_tolerances,
    value_words,
)

DPI = 150


# --- plot layout ----------------------------------------------------------------------------------------


def _local_keys(groups: list[dict], keys: list[str]) -> list[str]:
    """The keys whose value differs between these groups."""
    return [k for k in keys if len({json.dumps(g["sizes"][k], sort_keys=True) for g in groups}) > 1]


def _d_linked(groups: list[dict], key: str) -> bool:
    """Whether the key's value and d determine each other (e.g. the embedding size when d is the output
    embedding size): a plot against d needs no panel per value."""
    by_d: dict[Any, set] = {}
    by_value: dict[str, set] = {}
    for group in groups:
        value = json.dumps(group["sizes"][key], sort_keys=True)
        by_d.setdefault(group["d"], set()).add(value)
        by_value.setdefault(value, set()).add(group["d"])
    return all(len(v) == 1 for v in by_d.values()) and all(len(v) == 1 for v in by_value.values())


def _panel_keys(groups: list[dict], keys: list[str], with_d: bool) -> list[str]:
    """Keys that get their own panel: not head options, not fixed by the head; not tied to d when d is
    the x axis (``with_d`` False) or a panel of its own (``with_d`` True)."""
    local = _local_keys(groups, keys)
    determined = set(head_determined_keys(groups, local))
    return [k for k in local if not k.startswith("head.") and k not in determined and not _d_linked(groups, k)]


def _series_keys(groups: list[dict], keys: list[str]) -> dict[str, list[str]]:
    """Per head, the head options that vary between its groups (each value is a line of its own)."""
    found: dict[str, list[str]] = {}
    for head in dict.fromkeys(g["head"] for g in groups):
        members = [g for g in groups if g["head"] == head]
        found[head] = [k for k in keys if k.startswith("head.") and head_takes(head, k)
                       and len({json.dumps(g["sizes"][k], sort_keys=True) for g in members}) > 1]
    return found


def _series(groups: list[dict], keys: list[str], scope: list[dict] | None = None) -> list[tuple[str, tuple, list[dict]]]:
    """(label, style, groups) of every line among ``groups``: a head, or a head at one value of the options
    that vary within it. Labels and styles come from ``scope`` (all groups of the figure, default
    ``groups``), so a line looks the same in every panel; a head's line with the most points gets the
    head's own style, its other lines the head's colour with other markers and dashes."""
    scope = groups if scope is None else scope
    options = _series_keys(scope, keys)

    def ident(group: dict) -> tuple:
        return group["head"], tuple(json.dumps(group["sizes"][k], sort_keys=True) for k in options[group["head"]])

    lines: dict[tuple, list[dict]] = {}
    for group in scope:
        lines.setdefault(ident(group), []).append(group)
    ordered = sorted(lines.items(), key=lambda item: (_head_rank(item[0][0]),
                                                      [_sort_value(item[1][0]["sizes"][k]) for k in options[item[0][0]]]))
    styles: dict[tuple, tuple] = {}
    for head in dict.fromkeys(key[0] for key, _ in ordered):
        mine = sorted([(key, members) for key, members in ordered if key[0] == head], key=lambda item: -len(item[1]))
        color, marker, line = head_style(head)
        base = head_order().index(head) if head in head_order() else 0
        for extra, (key, _) in enumerate(mine):
            styles[key] = (color, marker, line) if extra == 0 else (
                color, MARKERS[(base + 2 + extra) % len(MARKERS)], LINESTYLES[(base + 2 + extra) % len(LINESTYLES)])
    wanted = {id(g) for g in groups}
    result = []
    for key, members in ordered:
        members = [g for g in members if id(g) in wanted]
        if not members:
            continue
        head = key[0]
        label = head_words(head) + (f" ({_setting_words(members[0]['sizes'], options[head])})" if options[head] else "")
        result.append((label, styles[key], sorted(members, key=lambda g: _sort_value(g["d"]))))
    return result


def _d_curves(lines: list[tuple[str, tuple, list[dict]]]) -> list[tuple[str, tuple, list[dict]]]:
    """The lines of a plot against d: a head's lines at a single d (a head option swept there, e.g. MoS's
    K = 2 and 10, drawn by the sweeps figure) are left out when the same head has a line over several d."""
    spans: dict[str, int] = {}
    for _, _, series in lines:
        spans[series[0]["head"]] = max(spans.get(series[0]["head"], 0), len({g["d"] for g in series}))
    return [line for line in lines if len({g["d"] for g in line[2]}) > 1 or spans[line[2][0]["head"]] < 2]


def _settings(groups: list[dict], keys: list[str], with_d: bool = True) -> list[tuple[str, list[dict]]]:
    """Groups split into panels by setting (d when asked, and the panel keys), each panel split again into
    dense and sparse heads so that a sparse head's perplexity does not squash the others."""
    panel_keys = _panel_keys(groups, keys, with_d)
    ds = sorted({g["d"] for g in groups}, key=_sort_value)
    panels: dict[str, list[dict]] = {}
    for group in sorted(groups, key=lambda g: ([_sort_value(g["sizes"][k]) for k in panel_keys], _sort_value(g["d"]))):
        words = ([f"d = {value_words(group['d'])}"] if with_d and len(ds) > 1 else [])
        if panel_keys:
            words.append(_setting_words(group["sizes"], panel_keys))
        panels.setdefault(", ".join(words), []).append(group)
    return list(panels.items())


def _split_sparse(panels: list[tuple[str, list[dict]]]) -> list[tuple[str, list[dict]]]:
    """The panels of the dense heads, then those of the sparse heads (a row of their own when there are
    three settings or fewer)."""
    dense_panels, sparse_panels = [], []
    for label, members in panels:
        dense = [g for g in members if not is_sparse(g["head"])]
        sparse = [g for g in members if is_sparse(g["head"])]
        if dense:
            dense_panels.append((label, dense))
        if sparse:
            words = ", ".join(dict.fromkeys(head_words(g["head"]) for g in sparse))
            sparse_panels.append(((label + "; " if label else "") + f"{words} (sparse head, smoothed)", sparse))
    if sparse_panels and dense_panels and len(dense_panels) < 3 and len(dense_panels) + len(sparse_panels) > 3:
        dense_panels += [("", [])] * (3 - len(dense_panels))  # start the sparse panels on a new row
    return dense_panels + sparse_panels


# --- figures ------------------------------------------------------------------------------------------


def _figure(n_panels: int, width: float = 4.6, height: float = 3.6, columns: int = 3):
    """A grid of ``n_panels`` axes, at most ``columns`` to a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(n_panels, columns)
    rows = math.ceil(n_panels / columns)
    width = max(width, 6.4 / columns)  # room for the title and the legend below one panel
    with plt.rc_context({"font.size": 9}):
        fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows + 0.8), squeeze=False)
    for extra in axes.flat[n_panels:]:
        extra.remove()  # an empty grid cell: no axes at all
    return fig, list(axes.flat[:n_panels])


def _filled(axes: list, panels: list[tuple[str, list[dict]]]):
    """(axis, label, groups) of each panel with groups; a placeholder panel (no groups: it starts the next
    row) loses its axis."""
    for ax, (label, members) in zip(axes, panels):
        if members:
            yield ax, label, members
        else:
            ax.remove()


def _legend(fig, axes: list) -> None:
    """One legend for all panels, below them (it never hides a line)."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    columns = min(len(entries), max(2, int(fig.get_size_inches()[0] // 1.8)))
    fig.legend(list(entries.values()), list(entries), loc="lower center", ncol=columns, fontsize=8, frameon=False)


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` characters, broken after a semicolon where one is near enough (so that a
    phrase such as "budget 2.09 million training tokens (3,103 steps)" stays whole), else between words."""
    import textwrap

    lines = []
    for part in text.split("\n"):
        current = ""
        for chunk in part.split("; "):
            joined = f"{current}; {chunk}" if current else chunk
            if len(joined) <= width or not current:
                current = joined
            else:
                lines.append(current + ";")
                current = chunk
        lines.append(current)
    return [line for piece in lines for line in (textwrap.wrap(piece, width=width) if len(piece) > width else [piece])]


def _finish(fig, title: str) -> None:
    """Title (wrapped) and a layout that leaves room for a shared legend below the panels."""
    width_inches, height = fig.get_size_inches()
    lines = _wrap(title, max(40, int(width_inches * 12)))
    fig.suptitle("\n".join(lines), fontsize=10)
    n_legend_rows = math.ceil(len(fig.legends[0].get_texts()) / fig.legends[0]._ncols) if fig.legends else 0
    bottom = (0.1 + 0.22 * n_legend_rows) / height if n_legend_rows else 0.0
    top = 1.0 - max(0, len(lines) - 2) * 0.16 / height
    fig.tight_layout(rect=(0.0, bottom, 1.0, top))


def save_figure(fig, path: Path) -> Path:
    """Write a figure as PNG at 150 dpi (atomically) and close it."""
    import matplotlib.pyplot as plt

    io.atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI))
    plt.close(fig)
    return path


def _plain_log_ticks(axis) -> None:
    """Tick labels like 20, 30, 50 (or 1,200,000) instead of 2 x 10^1 on a log axis; call after plotting."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    formatter = FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1e4 else f"{value:g}")
    low, high = sorted(axis.get_view_interval())
    decades = math.log10(high / low) if low > 0 and high > 0 else 10.0
    subs = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0) if decades < 0.7 else (2.0, 3.0, 5.0) if decades < 2 else ()
    axis.set_major_formatter(formatter)
    axis.set_minor_locator(LogLocator(subs=subs) if subs else LogLocator(subs=(1.0,), numticks=1))
    axis.set_minor_formatter(formatter if subs else FuncFormatter(lambda value, _: ""))


def _log_panel(ax, ylabel: str, title: str = "", grid: str = "both") -> None:
    """A panel with a logarithmic y axis in plain numbers: its label (", log scale" added), its title if any
    and a light grid (``grid``: the axes it spans)."""
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_ylabel(f"{ylabel}, log scale")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, axis=grid, which="both", alpha=0.3)


def _count_ticks(axis) -> None:
    """Tick labels like 250k and 1.5M on a linear axis of counts."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins=5))
    axis.set_major_formatter(FuncFormatter(
        lambda value, _: f"{value / 1e6:g}M" if abs(value) >= 1e6 else f"{value / 1e3:g}k" if abs(value) >= 1e3 else f"{value:g}"))


def _d_axis(ax, ds: list, label: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ds)
    ax.set_xticklabels([value_words(d) for d in ds])
    ax.minorticks_off()
    ax.set_xlabel(f"{label}, log scale")


def _mean_line(ax, points: list[tuple[Any, dict]], style: tuple, label: str) -> None:
    """One line of means over seeds with bars of ± 1 s.d. through ``points`` ((x, :func:`describe` of the
    seeds' values)), leaving out the points without a mean."""
    points = [(x, spread) for x, spread in points if spread["mean"] is not None]
    if points:
        color, marker, line = style
        ax.errorbar([x for x, _ in points], [spread["mean"] for _, spread in points],
                    yerr=[spread["std"] or 0.0 for _, spread in points], color=color, marker=marker, linestyle=line,
                    linewidth=1.5, markersize=5, capsize=3, label=label)


def _title(what: str, groups: list[dict]) -> str:
    first = groups[0]
    budget = budget_words(groups)
    ds = {g["d"] for g in groups}
    one_d = f", d = {value_words(ds.pop())}" if len(ds) == 1 and None not in ds else ""
    return f"{what}\n{corpus_words(first['dataset'])}, {body_words(first['body'])}{one_d}" + (f"; {budget}" if budget else "")


def _seed_words(groups: list[dict]) -> str:
    counts = sorted({len(g["runs"]) for g in groups})
    return f"{'/'.join(map(str, counts))} seed{'' if counts == [1] else 's'}"


def _over_seeds(groups: list[dict], spread: str = "") -> str:
    """``mean of 3 seeds, <spread>``, or ``1 seed`` when no group has more (nothing to average or spread)."""
    if all(len(g["runs"]) == 1 for g in groups):
        return "1 seed"
    return f"mean of {_seed_words(groups)}" + (f", {spread}" if spread else "")


def _d_varies(groups: list[dict], keys: list[str]) -> bool:
    """Whether some line (a head at fixed options) has runs at two or more values of d."""
    return any(len({g["d"] for g in series if g["d"] is not None}) > 1 for _, _, series in _series(groups, keys))


def figure_test_ppl_vs_d(groups: list[dict], keys: list[str]):
    """Test perplexity against d, log-log: one line per head (mean over seeds, bars = standard deviation,
    dots = seeds); sparse heads in their own panel. None unless some head has runs at two values of d."""
    ds = sorted({g["d"] for g in groups if g["d"] is not None})
    if not _d_varies(groups, keys):
        return None
    panels = _split_sparse(_settings(groups, keys, with_d=False))
    fig, axes = _figure(len(panels))
    for ax, label, members in _filled(axes, panels):
        for name, style, series in _d_curves(_series(members, keys, groups)):
            points = [(g["d"], describe([run["result"].get("test_ppl") for run in g["runs"]]), g) for g in series if g["d"] is not None]
            _mean_line(ax, [(d, spread) for d, spread, _ in points], style, name)
            for d, spread, group in points:
                if spread["mean"] is not None:  # the seeds of each drawn mean
                    values = _clean([run["result"].get("test_ppl") for run in group["runs"]])
                    ax.scatter([d] * len(values), values, color=style[0], s=9, alpha=0.4, linewidths=0, zorder=3)
        _d_axis(ax, ds, _d_words(groups))
        _log_panel(ax, "test perplexity", label)
    _legend(fig, axes)
    _finish(fig, _title(f"Test perplexity against d ({_over_seeds(groups, 'bars ± 1 s.d., dots: seeds')})", groups))
    return fig


def figure_test_perplexity(groups: list[dict], keys: list[str]):
    """Test perplexity per head at each setting: one dot per seed, the mean with the standard deviation as
    error bar, log scale; sparse heads in their own panel."""
    panels = _settings(groups, keys, with_d=True)
    parts = _split_sparse([("", [g for _, members in panels for g in members])])
    fig, axes = _figure(len(parts), width=min(9.0, max(7.0 / len(parts), 0.45 * len(groups) + 2.5)))  # room for the title
    for ax, part_label, members in _filled(axes, parts):
        settings = [(label, [g for g in panel if g in members]) for label, panel in panels]
        settings = [(label, panel) for label, panel in settings if panel]
        lines = _series(members, keys, groups)
        width = 0.8 / len(lines) if len(settings) > 1 else 0.0
        for index, (name, (color, marker, _), series) in enumerate(lines):
            labelled = False
            for position, (_, panel) in enumerate(settings):
                for group in [g for g in series if g in panel]:
                    x = position + (index - (len(lines) - 1) / 2) * width if len(settings) > 1 else index
                    values = _clean([run["result"].get("test_ppl") for run in group["runs"]])
                    spread = describe(values)
                    if spread["mean"] is None:
                        continue
                    ax.scatter([x] * len(values), values, color=color, alpha=0.5, s=14, marker=marker, linewidths=0, zorder=3)
                    ax.errorbar([x], [spread["mean"]], yerr=[[spread["std"] or 0.0], [spread["std"] or 0.0]], color=color,
                                marker=marker, markersize=8, capsize=4, linewidth=1.5, markerfacecolor="none", zorder=2,
                                label=None if labelled else name)
                    labelled = True
        if len(settings) > 1:
            ax.set_xticks(range(len(settings)))
            ax.set_xticklabels([label for label, _ in settings], fontsize=8)
            ax.set_xlim(-0.6, len(settings) - 0.4)
        else:
            ax.set_xticks(range(len(lines)))
            ax.set_xticklabels([name for name, _, _ in lines], fontsize=8)
            ax.set_xlim(-0.6, len(lines) - 0.4)
            ax.set_xlabel("output head" + (f" ({settings[0][0]})" if settings and settings[0][0] else ""))
        _log_panel(ax, "test perplexity", part_label, grid="y")
    if len(panels) > 1:  # clusters of heads per setting: a legend names the heads
        _legend(fig, axes)
    spread = "; dots: seeds, open marker and bar: mean ± 1 s.d." if any(len(g["runs"]) > 1 for g in groups) else ""
    _finish(fig, _title(f"Test perplexity per head ({_seed_words(groups)}{spread})", groups))
    return fig


def _rank_name(runs: list[dict]) -> str | None:
    names = rank_tolerances(runs)
    return "nr" if "nr" in names else (names[0] if names else None)


def figure_rank_vs_d(groups: list[dict], keys: list[str]):
    """Rank of the log-probability matrix against d per head, log-log, with the softmax bound d + 2.
    None without rank reports or with fewer than two values of d."""
    runs = [run for g in groups for run in g["runs"]]
    name = _rank_name(runs)
    ds = sorted({g["d"] for g in groups if g["d"] is not None and any(_rank_value(r, name or "") is not None for r in g["runs"])})
    if name is None or len(ds) < 2 or not _d_varies(groups, keys):
        return None
    panels = _settings(groups, keys, with_d=False)
    fig, axes = _figure(len(panels))
    for ax, label, members in _filled(axes, panels):
        for series_name, style, series in _d_curves(_series(members, keys, groups)):
            _mean_line(ax, [(g["d"], describe([_rank_value(run, name) for run in g["runs"]])) for g in series if g["d"] is not None],
                       style, series_name)
        ax.plot(ds, [d + 2 for d in ds], color="gray", linestyle="-", linewidth=5, alpha=0.35, zorder=1,
                label="softmax bound d + 2")
        full = sorted({(run["rank"] or {}).get("max_rank") for g in members for run in g["runs"]} - {None})
        if len(full) == 1:
            ax.axhline(full[0], color="gray", linestyle=":", linewidth=1.0, label=f"largest possible rank ({full[0]:,})")
        _d_axis(ax, ds, _d_words(groups))
        _log_panel(ax, f"rank ({name} tolerance)", label)
    _legend(fig, axes)
    rows = sorted({(run["rank"] or {}).get("n_rows") for run in runs} - {None})
    where = f"; {'/'.join(f'{r:,}' for r in rows)} rows of the {runs[0]['rank'].get('split', 'valid')} split" if rows and runs[0]["rank"] else ""
    _finish(fig, _title(f"Rank against d ({_over_seeds(groups)}{where})", groups))
    return fig


FINETUNE_NOTE = "dotted: the fine-tuning stage"


def _epoch_curve(run: dict) -> list[tuple[float, float, int]]:
    """(epoch, validation perplexity, stage) of the per-epoch validations; fine-tuning epochs (numbered from
    1 again in the log) continue after the last training epoch."""
    last: dict[tuple, float] = {}  # a resumed run logs some epochs again: the last line wins
    for record in run["metrics"]:
        if record.get("event") == "valid" and isinstance(record.get("val_ppl"), (int, float)):
            last[(_stage(record), record["epoch"])] = float(record["val_ppl"])
    trained = max((epoch for stage, epoch in last if stage == 0), default=0)
    return [(epoch + trained * stage, last[(stage, epoch)], stage) for stage, epoch in sorted(last)]


def _draw_mean_curve(ax, curves: list[list[tuple[float, float, int]]], style: tuple, name: str) -> None:
    """The mean over seeds of curves evaluated at the same points (the shortest length), a band from the
    lowest to the highest seed, the fine-tuning stage dotted."""
    color, marker, line = style
    n = min(len(c) for c in curves)
    xs = [statistics.fmean(c[i][0] for c in curves) for i in range(n)]
    ys = [[c[i][1] for c in curves] for i in range(n)]
    means = [statistics.fmean(v) for v in ys]
    split = next((i for i in range(n) if curves[0][i][2]), n)  # first point of the fine-tuning stage
    ax.plot(xs[:split], means[:split], color=color, linestyle=line, marker=marker, markersize=3,
            markevery=max(1, split // 8), linewidth=1.4, label=name)
    if split < n:  # joined to the last training point, no legend entry of its own
        start = max(split - 1, 0)
        ax.plot(xs[start:], means[start:], color=color, linestyle=":", linewidth=1.4)
    if len(curves) > 1:
        ax.fill_between(xs, [min(v) for v in ys], [max(v) for v in ys], color=color, alpha=0.15, linewidth=0)


def _validation_figure(groups: list[dict], keys: list[str], curve_of, xlabel: str, title: str):
    """Validation perplexity (log axis) of every head against the x of ``curve_of(run)``: one panel per d
    and setting, sparse heads apart; None when no run has such a curve."""
    if not any(curve_of(run) for g in groups for run in g["runs"]):
        return None
    panels = _split_sparse(_settings(groups, keys, with_d=True))
    fig, axes = _figure(len(panels))
    finetuned = False
    for ax, label, members in _filled(axes, panels):
        for name, style, series in _series(members, keys, groups):
            for group in series:
                curves = [c for c in map(curve_of, group["runs"]) if c]
                if curves:
                    _draw_mean_curve(ax, curves, style, name)
                    finetuned = finetuned or any(point[2] for c in curves for point in c)
        ax.set_xlabel(xlabel)
        _log_panel(ax, "validation perplexity", label)
    _legend(fig, axes)
    over = _over_seeds(groups, "band: lowest to highest seed")
    _finish(fig, _title(title.format(over=over) + ("; " + FINETUNE_NOTE if finetuned else ""), groups))
    return fig, axes


def figure_validation_against(groups: list[dict], keys: list[str], x: str):
    """Validation perplexity against training tokens (``x="tokens"``) or training seconds (``x="time"``):
    per head the mean over seeds at each evaluation, band from the lowest to the highest seed; one panel
    per d and setting, sparse heads apart. None when no run logged such evaluations."""
    what = "training tokens" if x == "tokens" else "training time"
    made = _validation_figure(groups, keys, lambda run: _curve(run, x),
                              "training tokens" if x == "tokens" else "training time (seconds, wall clock)",
                              f"Validation perplexity against {what} ({{over}})")
    if made is None:
        return None
    fig, axes = made
    if x == "tokens":
        for ax in axes:
            _count_ticks(ax.xaxis)
    return fig


def figure_validation_curves(groups: list[dict], keys: list[str]):
    """Validation perplexity per epoch per head: mean over seeds, band from the lowest to the highest seed."""
    from matplotlib.ticker import MaxNLocator

    made = _validation_figure(groups, keys, _epoch_curve, "epoch",
                              "Validation perplexity per epoch ({over})")
    if made is None:
        return None
    fig, axes = made
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _singular_values(run: dict) -> list[float] | None:
    rank = run["rank"] or {}
    values = rank.get("singular_values")
    if values is None and rank.get("singular_values_file"):
        import numpy as np

        file = run["dir"] / rank["singular_values_file"]
        values = np.load(file).tolist() if file.is_file() else None
    return [float(v) for v in values] if values else None


def figure_spectra(groups: list[dict], keys: list[str]):
    """Normalized singular values s_i / s_1 of the log-prob matrix per head (first seed), one panel per d and
    setting, a dashed line at d + 2 (the rank bound of a softmax head with a bias). Both axes are logarithmic,
    so the first d values (where the heads are compared below the bound) get half the width, not 3%."""
    panels = [(label, [g for g in members if _singular_values(g["runs"][0])]) for label, members in _settings(groups, keys)]
    panels = [(label, members) for label, members in panels if members]
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    for ax, label, members in _filled(axes, panels):
        floor = 1.0
        for name, (color, _, line), series in _series(members, keys, groups):
            for group in series:
                run = group["runs"][0]
                values = sorted(_singular_values(run), reverse=True)
                top = values[0] if values and values[0] > 0 else 1.0
                normed = [v / top for v in values]
                positive = [v for v in normed if v > 0]
                floor = min(floor, min(positive) if positive else 1.0)
                ax.plot(range(1, len(normed) + 1), [max(v, 1e-300) for v in normed], color=color, linestyle=line,
                        linewidth=1.5, label=name)
        for d in sorted({g["d"] for g in members if g["d"]}):
            ax.axvline(d + 2, color="gray", linestyle="--", linewidth=1, label="softmax bound d + 2")
            ax.annotate(f"d + 2 = {d + 2}", xy=(d + 2, 0.45), xycoords=("data", "axes fraction"), xytext=(6, 0),
                        textcoords="offset points", fontsize=8, color="dimgray", ha="left", va="center",
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.0})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(max(floor, 1e-18) / 3, 3)
        ax.set_xlabel("index i of the singular value, log scale")
        ax.set_ylabel("s_i / s_1, log scale")
        if label:
            ax.set_title(label, fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    _legend(fig, axes)
    _finish(fig, _title("Normalized singular values of the log-prob matrix (first seed)", groups))
    return fig


def figure_kl_vs_d(groups: list[dict], keys: list[str]):
    """KL from the true distribution against d, one line per head (mean over seeds, bars ± 1 s.d.)."""
    lines = []  # (name, style, [(d, spread)]) of every head with a KL
    for name, style, series in _series(groups, keys):
        points = [(g["d"], describe([_kl_value(run["kl"]) for run in g["runs"]])) for g in series if g["d"] is not None]
        points = sorted([(d, spread) for d, spread in points if spread["mean"] is not None], key=lambda point: point[0])
        if points:
            lines.append((name, style, points))
    if not lines:
        return None
    fig, axes = _figure(1)
    ax = axes[0]
    positive = all(spread["mean"] > 0 for *_, points in lines for _, spread in points)
    for name, style, points in lines:
        _mean_line(ax, points, style, name)
    _d_axis(ax, sorted({d for *_, points in lines for d, _ in points}), _d_words(groups))
    if positive:
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
    ax.set_ylabel("KL(P* || P_model), nats/token" + (", log scale" if positive else ""))
    ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axes)
    _finish(fig, _title("KL from the true distribution against d", groups))
    return fig


def _sweeps(groups: list[dict], keys: list[str]) -> list[tuple[str, str, Any, list[dict]]]:
    """(head, option key, d, groups) of every sweep: a numeric head option with two or more values among
    the groups of one head at one d (and one value of the other keys); of several such, the widest."""
    found = []
    determined = head_determined_keys(groups, keys)  # e.g. K = 1's own learning rate: still one sweep
    for head in dict.fromkeys(g["head"] for g in groups):
        for key in [k for k in keys if k.startswith("head.") and head_takes(head, k)]:
            others = [k for k in keys if k != key and k not in determined]
            bins: dict[tuple, list[dict]] = {}
            for group in groups:
                value = group["sizes"][key]
                if group["head"] == head and isinstance(value, (int, float)) and not isinstance(value, bool):
                    ident = (json.dumps(group["d"]), json.dumps({k: group["sizes"][k] for k in others}, sort_keys=True))
                    bins.setdefault(ident, []).append(group)
            widest = max((len({g["sizes"][key] for g in members}) for members in bins.values()), default=0)
            for members in bins.values():  # the widest sweep (K 1 / 2 / 5 / 10 at d = 32, not K 1 / 5 at every d)
                if len({g["sizes"][key] for g in members}) == widest > 1:
                    found.append((head, key, members[0]["d"], sorted(members, key=lambda g: g["sizes"][key])))
    return found


def figure_option_sweeps(groups: list[dict], keys: list[str]):
    """Test perplexity (and rank, when measured) against a head option swept at one d (e.g. MoS's K, r-softmax's
    r): mean over seeds with ± 1 s.d., the softmax head at the same d and setting as a dashed line. None
    without such a sweep."""
    sweeps = _sweeps(groups, keys)
    if not sweeps:
        return None
    runs = [run for g in groups for run in g["runs"]]
    name = _rank_name(runs)
    with_rank = name is not None and any(_rank_value(run, name) is not None for _, _, _, members in sweeps
                                         for g in members for run in g["runs"])
    per_sweep = 2 if with_rank else 1
    fig, axes = _figure(len(sweeps) * per_sweep, columns=per_sweep if with_rank else 3)  # with rank: one sweep a row
    match = comparison_keys(groups, keys)
    for index, (head, key, d, members) in enumerate(sweeps):
        style = head_style(head)
        softmax = next((g for g in groups if g["head"] == "softmax" and g["d"] == d
                        and all(g["sizes"][k] == members[0]["sizes"][k] for k in match)), None)
        xs = [g["sizes"][key] for g in members]
        ppl_label = "test perplexity" + (" (smoothed)" if is_sparse(head) else "")
        panels = [("test_ppl", ppl_label)] + ([("rank", f"rank ({name} tolerance)")] if with_rank else [])
        for offset, (metric, ylabel) in enumerate(panels):
            ax = axes[index * len(panels) + offset]

            def values(group: dict) -> list:
                return [_rank_value(run, name) if metric == "rank" else run["result"].get("test_ppl") for run in group["runs"]]

            spread = [describe(values(g)) for g in members]
            _mean_line(ax, list(zip(xs, spread)), style, head_words(head))
            if softmax is not None and describe(values(softmax))["mean"] is not None:
                ax.axhline(describe(values(softmax))["mean"], color=head_style("softmax")[0], linestyle="--", linewidth=1.0,
                           label=f"softmax at d = {value_words(d)}")
            if metric == "rank" and d is not None:
                ax.axhline(d + 2, color="gray", linestyle=":", linewidth=1.0, label="softmax bound d + 2")
            positive = all(x > 0 for x in xs)
            if positive and max(xs) / min(xs) >= 4:
                ax.set_xscale("log")
                ax.set_xticks(xs)
                ax.set_xticklabels([value_words(x) for x in xs])
                ax.minorticks_off()
            else:
                ax.set_xticks(xs)
            ax.set_xlabel(f"{key_words(key)} of {head_words(head)}" + (", log scale" if ax.get_xscale() == "log" else ""))
            _log_panel(ax, ylabel, f"{head_words(head)}, d = {value_words(d)}")
    _legend(fig, axes)
    swept = [g for *_, members in sweeps for g in members]
    _finish(fig, _title(f"Head options swept at one d ({_over_seeds(swept, 'bars ± 1 s.d.')})", groups))
    return fig


def setting_sweep_keys(groups: list[dict], keys: list[str]) -> list[str]:
    """Numeric keys other than head options swept for the same head (a pilot sweep of the learning rate)."""
    found = []
    for key in _panel_keys(groups, keys, with_d=True):
        values = [g["sizes"][key] for g in groups]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            found.append(key)
    return found


def figure_validation_against_setting(groups: list[dict], keys: list[str], key: str):
    """Validation perplexity (what a pilot sweep selects on) against a swept setting such as the learning
    rate: one line per head (mean over seeds, bars ± 1 s.d.), one panel per d, sparse heads apart."""
    others = [k for k in keys if k != key]
    panels = _split_sparse(_settings(groups, others, with_d=True))
    fig, axes = _figure(len(panels))
    xs_all = sorted({g["sizes"][key] for g in groups})
    for ax, label, members in _filled(axes, panels):
        for name, style, series in _series(members, others, groups):
            _mean_line(ax, sorted(((g["sizes"][key], describe([run["result"].get("val_ppl") for run in g["runs"]])) for g in series),
                                  key=lambda point: point[0]), style, name)
        if all(x > 0 for x in xs_all) and max(xs_all) / min(xs_all) >= 4:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(xs_all)
        ax.set_xticklabels([value_words(x) for x in xs_all])
        ax.set_xlabel(key_words(key) + (", log scale" if ax.get_xscale() == "log" else ""))
        _log_panel(ax, "validation perplexity", label)
    _legend(fig, axes)
    _finish(fig, _title(f"Validation perplexity against {key_words(key)} ({_over_seeds(groups, 'bars ± 1 s.d.')})", groups))
    return fig


FIGURES = (  # file stem, figure function (None: nothing to draw)
    ("test-ppl-vs-d", figure_test_ppl_vs_d),
    ("rank-vs-d", figure_rank_vs_d),
    ("valid-vs-tokens", lambda groups, keys: figure_validation_against(groups, keys, "tokens")),
    ("valid-vs-time", lambda groups, keys: figure_validation_against(groups, keys, "time")),
    ("valid-ppl", figure_validation_curves),
    ("spectrum", figure_spectra),
    ("kl-vs-d", figure_kl_vs_d),
    ("sweeps", figure_option_sweeps),
)


def figures(runs: list[dict]) -> list[tuple[str, Any]]:
    """(file name, matplotlib figure) of every plot of these runs, one set per corpus and body; the test
    perplexity per head replaces the plot against d when the runs have one d."""
    keys, groups = group_runs(runs)
    made = []
    for (dataset, body) in dict.fromkeys((g["dataset"], g["body"]) for g in groups):
        members = [g for g in groups if (g["dataset"], g["body"]) == (dataset, body)]
        stem = f"{_slug(dataset)}-{_slug(body)}"
        for name, function in FIGURES:
            figure = function(members, keys)
            if figure is None and name == "test-ppl-vs-d":
                name, figure = "test-ppl", figure_test_perplexity(members, keys)
            if figure is not None:
                made.append((f"{name}-{stem}.png", figure))
        for key in setting_sweep_keys(members, keys):
            made.append((f"valid-vs-{_slug(column_name(key))}-{stem}.png", figure_validation_against_setting(members, keys, key)))
    return made


def _slug(text: Any) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


__all__ = ["figures", "save_figure", "figure_test_ppl_vs_d", "figure_test_perplexity", "figure_rank_vs_d",
           "figure_validation_against", "figure_validation_curves", "figure_spectra", "figure_kl_vs_d",
           "figure_option_sweeps", "figure_validation_against_setting"]
