"""Tables, statistics and plots from run folders: ``summary.csv``, ``summary.md``, ``summary.json`` and PNGs.

Every run folder under a results folder (any depth; a folder with ``result.json``) contributes its
``result.json``, ``metrics.jsonl``, ``rank.json``, ``rank-full.json`` and ``kl.json``. Runs are grouped by (corpus, body,
head, d, and the config keys that vary between the runs other than the seed); each group reports over
its seeds the mean, the sample standard deviation, the 95% confidence interval of the mean (Student t)
and the number of seeds, and every head is compared with the softmax head at the same setting (same
corpus, body, d and other keys, head options aside): the difference of the means and the p-value of
Welch's t-test. The table is a :class:`pandas.DataFrame` (:func:`summarize`, also
:func:`lm.api.summarize`). Nothing is typed by hand: the numbers are read from the run files, and
``summary.json`` records the command, the git commits and dirty flags of the runs and of the summary
code, and the command of every run (from the suite's ``suite.json`` when there is one).

The rank columns come from ``rank.json`` (a suite ranks the same first rows of every run) with the
number of rows it used; runs that also have ``rank-full.json`` (``softmax-bench rank RUN --output
rank-full.json``: the papers' protocol on the whole split) get a table of their own (:func:`full_rank_frame`,
``full_rank`` in ``summary.json``; ``summary.csv`` holds the main table only).

Matched compute (:func:`matched_compute`, columns of the main table, shown in a table of their own): from
the validation curves against training seconds, each head's validation perplexity at the seconds the softmax
head beside it took for its whole budget, and the seconds it needs to reach softmax's final perplexity.

d is the width of the head's output embedding (the d of the softmax rank bound ``rank <= d + 2``):
``output_embedding_size`` of ``result.json``, or for older run files ``head_input_size`` (the size of
the hidden vector the head receives) or the size derived from the config.

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

import csv
import inspect
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from lm import io
from lm.errors import UserError

# --- heads: order, names and styles, all derived from the registry lm.heads.HEADS (one place) -----------

# Okabe-Ito colours (readable by colour-blind readers), markers and dashes so that grey print still
# tells heads apart; the head at registry index i gets entry i of each (cycled).
PALETTE = ("#000000", "#E69F00", "#0072B2", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (5, 2)))
HEAD_WORDS = {"mos": "MoS", "moss": "MoSS", "moc": "MoC", "r_softmax": "r-softmax"}  # plot labels; others: the name


def _registry() -> dict:
    from lm.heads import HEADS

    return HEADS


def head_order() -> list[str]:
    """Head names in registry order (the order of every table and legend)."""
    return list(_registry())


def head_style(head: str) -> tuple[str, str, Any]:
    """(colour, marker, line style) of a head: by its registry index; heads not registered come after."""
    order = head_order()
    index = order.index(head) if head in order else len(order) + sum(map(ord, str(head))) % len(PALETTE)
    return PALETTE[index % len(PALETTE)], MARKERS[index % len(MARKERS)], LINESTYLES[index % len(LINESTYLES)]


def head_words(head: str) -> str:
    return HEAD_WORDS.get(head, str(head).replace("_", "-"))


def is_sparse(head: str) -> bool:
    """Whether the head can give a target probability 0 (class attribute ``sparse`` of the registry)."""
    return bool(getattr(_registry().get(head), "sparse", False))


def head_takes(head: str, key: str) -> bool:
    """Whether head ``head`` takes the option of config key ``head.X`` (every other key, and any key of an
    unknown head: True); a head's options are the parameters of its ``__init__``. The per-head blocks of
    the config apply to their own head (``head.mos.n_components``), ``head.shared.X`` to the heads that
    take X."""
    parts = key.split(".")
    registry = _registry()
    cls = registry.get(head)
    if parts[0] != "head" or key == "head.name" or cls is None or len(parts) not in (2, 3):
        return True
    if len(parts) == 3:
        block, option = parts[1], parts[2]
        if block in registry:
            return block == head and head_takes(head, f"head.{option}")
        return head_takes(head, f"head.{option}") if block == "shared" else True
    parameters = inspect.signature(cls.__init__).parameters
    return parts[1] in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _head_rank(head: str) -> tuple:
    order = head_order()
    return (order.index(head), "") if head in order else (len(order), str(head))


# Keys that identify a group by other columns, or that never make runs differ in kind.
IDENTITY_KEYS = ("train.seed", "head.name", "model.body", "data.path", "data.name", "run.output_dir", "run.name",
                 "run.device", "data.cache_dir", "data.root")
# Words for config keys in plot titles and legends; other keys: their last part, underscores as spaces.
KEY_WORDS = {"model.d_embedding": "embedding size", "model.d_last": "last-layer size", "model.d_hidden": "hidden size",
             "model.n_layers": "layers", "model.d_model": "model width", "head.n_components": "K", "head.r": "r",
             "head.d_latent": "latent size", "head.dropout_latent": "latent dropout", "train.lr": "learning rate",
             "train.epochs": "epochs", "train.max_steps": "steps", "train.batch_size": "batch size", "train.bptt": "BPTT",
             "train.optimizer": "optimizer"}
CORPUS_WORDS = {"ptb": "Penn Treebank", "wikitext-2": "WikiText-2", "wikitext-103": "WikiText-103",
                "ptb-lite": "PTB-lite", "wikitext-2-lite": "WikiText-2-lite"}
BODY_WORDS = {"awd_lstm": "AWD-LSTM", "transformer": "Transformer"}
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
    """The size of the hidden vector that the head receives (the body's output size)."""
    m = config.get("model", {})
    if m.get("body") == "transformer":
        return m.get("d_model")
    if m.get("d_last") is not None:
        return m["d_last"]
    head = _registry().get(config.get("head", {}).get("name"))
    reads_body = getattr(head, "decoder_reads_body", getattr(head, "logits_affine", False))  # older registries
    tied_direct = m.get("tie_weights") and head is not None and reads_body
    return m.get("d_embedding") if tied_direct else m.get("d_hidden")


def output_embedding_size(result: dict, rank: dict | None = None) -> tuple[int | None, str]:
    """d of a run and where it came from: the width of the head's output embedding, from
    ``output_embedding_size`` of ``result.json``, else (older run files) the decoder shape in ``rank.json``,
    else the config (a mixture head's ``d_latent``: its option, the tied embedding size or the head's input
    size, as the head builds it; other heads: their input size)."""
    if result.get("output_embedding_size") is not None:
        return result["output_embedding_size"], "output embedding size"
    shape = ((rank or {}).get("embedding") or {}).get("shape")
    if isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int):
        return shape[1], "output embedding size"
    config = result.get("config") or {}
    head_in = result.get("head_input_size") or head_input_size(config)
    cls = _registry().get(config.get("head", {}).get("name"))
    if cls is None:
        return head_in, "head input size"
    if "d_latent" in inspect.signature(cls.__init__).parameters:
        m, h = config.get("model", {}), config.get("head", {})
        tied = m.get("tie_weights") and m.get("body") != "transformer"
        return h.get("d_latent") or (m.get("d_embedding") if tied else None) or head_in, "output embedding size"
    return head_in, "output embedding size"


def load_runs(results_dir: str | Path) -> list[dict]:
    """Every finished run under ``results_dir``: a dict with its folder, result, flat config, metrics,
    rank reports (``rank``: ``rank.json``, ``rank_full``: ``rank-full.json``), KL report and d (``d_source``
    says which size d is)."""
    from bottleneck_analysis.run_report import FULL_RANK_FILE, REPORT_FILE

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"results folder {results_dir} does not exist.")
    runs = []
    for result_path in sorted(results_dir.rglob("result.json")):
        run_dir = result_path.parent
        result = _read_json(result_path)
        if not isinstance(result, dict) or "test_ppl" not in result:
            continue
        rank = _read_json(run_dir / REPORT_FILE)
        d, source = output_embedding_size(result, rank)
        runs.append({
            "dir": run_dir,
            "result": result,
            "config": _flat(result.get("config") or {}),
            "metrics": io.read_jsonl(run_dir / "metrics.jsonl"),
            "rank": rank,
            "rank_full": _read_json(run_dir / FULL_RANK_FILE),
            "kl": _read_json(run_dir / "kl.json"),
            "d": d,
            "d_source": source,
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


def _setting(run: dict, key: str) -> Any:
    """The run's value of a config key; None for a head option its head does not take."""
    return run["config"].get(key) if head_takes(run["result"].get("head"), key) else None


def varying_keys(runs: list[dict]) -> list[str]:
    """Config keys (other than seed, head, body, corpus, output) whose value differs between the runs that
    have them; a head option counts only among the heads that take it. A key missing from some runs (a
    setting added to the config after those runs, at its default) does not vary by that alone."""
    keys: dict[str, set] = {}
    for run in runs:
        for key, value in run["config"].items():
            if head_takes(run["result"].get("head"), key):
                keys.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    return [k for k, values in keys.items() if len(values) > 1 and k not in IDENTITY_KEYS]


def column_name(key: str) -> str:
    """``model.d_last`` -> ``d_last`` (the config key's last part)."""
    return key.rpartition(".")[2]


def _sort_value(value: Any) -> tuple:
    if value is None:
        return (2, 0, "")
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, json.dumps(value))


def group_runs(runs: list[dict]) -> tuple[list[str], list[dict]]:
    """The varying keys and the groups ``{"dataset", "body", "head", "d", "sizes", "runs"}`` in table order
    (corpus, body, sizes, d, registry order of the heads)."""
    keys = varying_keys(runs)
    groups: dict[tuple, dict] = {}
    for run in runs:
        r = run["result"]
        sizes = {k: _setting(run, k) for k in keys}
        ident = (r.get("dataset"), r.get("body"), r.get("head"), run["d"], json.dumps(sizes, sort_keys=True))
        groups.setdefault(ident, {"dataset": r.get("dataset"), "body": r.get("body"), "head": r.get("head"),
                                  "d": run["d"], "sizes": sizes, "runs": []})["runs"].append(run)
    determined = head_determined_keys(list(groups.values()), keys)
    setting = [k for k in keys if not k.startswith("head.") and k not in determined]
    ordered = sorted(groups.values(), key=lambda g: (
        str(g["dataset"]), str(g["body"]), [_sort_value(g["sizes"][k]) for k in setting], _sort_value(g["d"]),
        _head_rank(g["head"]), [_sort_value(g["sizes"][k]) for k in keys if k not in setting]))
    for group in ordered:
        group["runs"].sort(key=lambda run: (run["result"].get("seed") or 0, str(run["dir"])))
    return keys, ordered


def head_determined_keys(groups: list[dict], keys: list[str]) -> list[str]:
    """Varying keys other than head options whose value the head with its options fixes (one value per head
    and options, e.g. a learning rate chosen per head, another for MoS with K = 1 than with K = 5): a
    comparison with softmax does not match on them."""
    found = []
    options = [k for k in keys if k.startswith("head.")]
    for key in keys:
        if key.startswith("head."):
            continue
        values: dict[str, set] = {}
        for group in groups:
            head = json.dumps([group["head"], [group["sizes"][k] for k in options]])
            values.setdefault(head, set()).add(json.dumps(group["sizes"][key], sort_keys=True))
        if all(len(v) == 1 for v in values.values()) and len(set().union(*values.values())) > 1:
            found.append(key)
    return found


def comparison_keys(groups: list[dict], keys: list[str]) -> list[str]:
    """The keys a head's group must share with a softmax group to be compared with it (besides corpus,
    body and d): every varying key except head options and keys that the head fixes."""
    skip = set(head_determined_keys(groups, keys))
    return [k for k in keys if not k.startswith("head.") and k not in skip]


def rank_tolerances(runs: list[dict]) -> list[str]:
    """The tolerance names of the ``rank`` dicts in the runs' rank reports, in first-seen order."""
    names: list[str] = []
    for run in runs:
        for name in ((run["rank"] or {}).get("rank") or {}):
            if name not in names:
                names.append(name)
    return names


# --- statistics ---------------------------------------------------------------------------------------


def _clean(values: list) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def describe(values: list) -> dict[str, float | int | None]:
    """Mean, sample standard deviation, 95% confidence interval of the mean (Student t with n - 1 degrees
    of freedom) and n of the finite values; the spread is None for fewer than two values."""
    values = _clean(values)
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "ci95_low": None, "ci95_high": None, "n": 0}
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "std": None, "ci95_low": None, "ci95_high": None, "n": n}
    std = statistics.stdev(values)
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half, "n": n}


def welch(values: list, reference: list) -> dict[str, float | None]:
    """Difference of the means (``values`` minus ``reference``) and the two-sided p-value of Welch's t-test
    (:func:`scipy.stats.ttest_ind` with ``equal_var=False``); p is None below two values a side or when
    both sides have no spread."""
    values, reference = _clean(values), _clean(reference)
    if not values or not reference:
        return {"diff": None, "p": None}
    diff = statistics.fmean(values) - statistics.fmean(reference)
    if len(values) < 2 or len(reference) < 2 or (statistics.pvariance(values) == 0 and statistics.pvariance(reference) == 0):
        return {"diff": diff, "p": None}
    return {"diff": diff, "p": float(stats.ttest_ind(values, reference, equal_var=False).pvalue)}


def _kl_value(kl: dict | None) -> float | None:
    if not kl:
        return None
    for key in ("mean_kl", "kl"):
        if isinstance(kl.get(key), (int, float)):
            return float(kl[key])
    return None


def _rank_value(run: dict, name: str) -> Any:
    return ((run["rank"] or {}).get("rank") or {}).get(name)


def _rank_rows(run: dict) -> Any:
    """The number of rows (predicted positions) of the run's rank report."""
    return (run["rank"] or {}).get("n_rows")


def _joined(values: list) -> Any:
    """One value when all agree, else the distinct values joined by ``/``."""
    distinct = sorted({v for v in values if v is not None}, key=_sort_value)
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else "/".join(map(str, distinct))


def _typical(values: list) -> Any:
    """The value when all seeds agree, else their mean."""
    values = _clean(values)
    if not values:
        return None
    return int(values[0]) if len(set(values)) == 1 and float(values[0]).is_integer() else statistics.fmean(values)


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """Rows as a DataFrame with nullable column types (integers stay integers beside missing values)."""
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    for column in columns:
        values = [v for v in frame[column] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if values and all(isinstance(v, bool) for v in values):
            frame[column] = frame[column].astype("boolean")
        elif values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            frame[column] = frame[column].astype("Int64")
        elif values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            frame[column] = frame[column].astype("Float64")
        elif values and all(isinstance(v, str) for v in values):
            frame[column] = frame[column].astype("string")
        elif not values and column.endswith(("_mean", "_std", "_low", "_high", "_p", "_softmax")):
            frame[column] = frame[column].astype("Float64")
    return frame


def runs_frame(runs: list[dict]) -> pd.DataFrame:
    """One row per run: corpus, body, head, the varying keys, d, seed and every measured number."""
    keys = varying_keys(runs)
    tolerances = rank_tolerances(runs)
    columns = ["dataset", "body", "head", *[column_name(k) for k in keys], "d", "seed", "val_ppl", "test_ppl",
               *[f"rank_{t}" for t in tolerances], "effective_rank", "rank_rows", "kl", "test_zero_target_fraction",
               "training_tokens", "steps", "tokens_per_second", "train_time_s", "wall_time_s", "n_params",
               "git_commit", "git_dirty", "run"]
    rows = []
    for run in runs:
        r = run["result"]
        row = {"dataset": r.get("dataset"), "body": r.get("body"), "head": r.get("head"), "d": run["d"],
               "seed": r.get("seed"), "kl": _kl_value(run["kl"]), "run": run["dir"].name,
               "effective_rank": (run["rank"] or {}).get("effective_rank"), "rank_rows": _rank_rows(run)}
        row.update({column_name(k): _setting(run, k) for k in keys})
        row.update({f"rank_{t}": _rank_value(run, t) for t in tolerances})
        for name in ("val_ppl", "test_ppl", "test_zero_target_fraction", "training_tokens", "steps", "tokens_per_second",
                     "train_time_s", "wall_time_s", "n_params", "git_commit", "git_dirty"):
            row[name] = r.get(name)
        rows.append(row)
    return _frame(rows, columns)


def last_fifth_drop(run: dict) -> float | None:
    """Relative fall of the validation-subset perplexity over the last fifth of a run's training steps,
    ``(ppl(s0) - ppl(end)) / ppl(s0)`` with ``s0`` the last evaluation at or before 80% of the final one's
    step (issue 11's plateau check: below about 2% counts as plateaued); None without such evaluations."""
    curve: dict[int, float] = {}  # a resumed run logs some steps again: the last line wins
    for record in run["metrics"]:
        if record.get("event") == "valid_subset" and _stage(record) == 0 and isinstance(record.get("val_ppl"), (int, float)):
            curve[int(record.get("step") or 0)] = float(record["val_ppl"])
    steps = sorted(curve)
    before = [step for step in steps if step <= 0.8 * steps[-1]] if len(steps) >= 2 else []
    return (curve[before[-1]] - curve[steps[-1]]) / curve[before[-1]] if before else None


MATCHED_COMPUTE = ("softmax_train_time_s", "softmax_final_valid_ppl", "valid_ppl_at_softmax_time",
                   "time_to_softmax_valid_ppl_s", "seeds_reaching_softmax_valid_ppl")


def _training_curve(run: dict) -> list[tuple[float, float]]:
    """(training seconds, validation perplexity) at each evaluation of a run's training stage."""
    return [(x, y) for x, y, stage in _curve(run, "time") if stage == 0]


def matched_compute(curves: list[list[tuple[float, float]]], reference_curves: list[list[tuple[float, float]]]) -> dict[str, Any]:
    """Where a group of runs stands at softmax's compute (issue 11's matched-compute question, as numbers),
    from their validation curves against training seconds (:func:`_training_curve`, one per seed): softmax's
    seconds for its whole budget and its final validation perplexity (means over the ``reference_curves``);
    the group's validation perplexity at its last evaluation within those seconds (mean over seeds; None if a
    seed had none by then); the training seconds of its first evaluation at or below softmax's final
    perplexity (mean over seeds; None unless every seed got there) and how many seeds got there. Empty when
    a run has no curve."""
    if not reference_curves or not curves or not all(reference_curves) or not all(curves):
        return {}
    budget = statistics.fmean(curve[-1][0] for curve in reference_curves)
    target = statistics.fmean(curve[-1][1] for curve in reference_curves)
    within = [[ppl for seconds, ppl in curve if seconds <= budget] for curve in curves]
    reached = [next((seconds for seconds, ppl in curve if ppl <= target), None) for curve in curves]
    return {"softmax_train_time_s": budget, "softmax_final_valid_ppl": target,
            "valid_ppl_at_softmax_time": statistics.fmean(w[-1] for w in within) if all(within) else None,
            "time_to_softmax_valid_ppl_s": statistics.fmean(reached) if None not in reached else None,
            "seeds_reaching_softmax_valid_ppl": sum(seconds is not None for seconds in reached)}


def summarize(runs: list[dict]) -> pd.DataFrame:
    """The summary table: one row per group (corpus, body, head, d, varying keys) with the statistics over
    its seeds and the comparison with softmax. ``frame.attrs["varying_keys"]`` lists the dotted keys
    behind the size columns, ``frame.attrs["compared_on"]`` the keys a softmax group must share."""
    keys, groups = group_runs(runs)
    tolerances = rank_tolerances(runs)
    any_kl = any(_kl_value(run["kl"]) is not None for run in runs)
    any_sparse = any("test_zero_target_fraction" in run["result"] for run in runs)
    drops = {id(run): last_fifth_drop(run) for run in runs}  # the plateau check, once per run
    curves = {id(run): _training_curve(run) for run in runs}  # matched compute's curves, once per run
    any_curve = any(drop is not None for drop in drops.values())
    metrics = ["val_ppl", "test_ppl"] + (["kl"] if any_kl else [])
    compared = ["test_ppl"] + (["kl"] if any_kl else [])
    columns = ["dataset", "body", "head", *[column_name(k) for k in keys], "d", "n_params", "n_seeds", "seeds"]
    for metric in metrics:
        columns += [f"{metric}_{s}" for s in ("mean", "std", "ci95_low", "ci95_high")]
        if metric in compared:
            columns += [f"{metric}_diff_vs_softmax", f"{metric}_welch_p"]
    columns += [f"rank_{name}" for name in tolerances] + (["effective_rank", "rank_rows"] if tolerances else [])
    if any_sparse:
        columns += ["test_zero_target_fraction", "test_zero_fraction", "test_smoothing"]
    columns += ["last_fifth_drop", *MATCHED_COMPUTE] if any_curve else []
    columns += ["training_tokens", "steps", "tokens_per_second", "wall_time_s", "git_commits", "git_dirty", "runs"]

    def values_of(group: dict, metric: str) -> list:
        if metric == "kl":
            return [_kl_value(run["kl"]) for run in group["runs"]]
        return [run["result"].get(metric) for run in group["runs"]]

    match = comparison_keys(groups, keys)

    def softmax_of(group: dict) -> dict | None:
        for other in groups:
            if (other["head"] == "softmax" and (other["dataset"], other["body"], other["d"]) ==
                    (group["dataset"], group["body"], group["d"]) and all(other["sizes"][k] == group["sizes"][k] for k in match)):
                return other
        return None

    rows = []
    for group in groups:
        results = [run["result"] for run in group["runs"]]
        row: dict[str, Any] = {"dataset": group["dataset"], "body": group["body"], "head": group["head"], "d": group["d"]}
        for key in keys:
            row[column_name(key)] = group["sizes"][key]
        row["n_params"] = _joined([r.get("n_params") for r in results])
        row["n_seeds"] = len(results)
        row["seeds"] = " ".join(str(r.get("seed")) for r in results)
        reference = softmax_of(group) if group["head"] != "softmax" else None
        for metric in metrics:
            spread = describe(values_of(group, metric))
            for name in ("mean", "std", "ci95_low", "ci95_high"):
                row[f"{metric}_{name}"] = spread[name]
            if metric in compared:
                test = welch(values_of(group, metric), values_of(reference, metric)) if reference else {"diff": None, "p": None}
                row[f"{metric}_diff_vs_softmax"], row[f"{metric}_welch_p"] = test["diff"], test["p"]
        for name in tolerances:
            row[f"rank_{name}"] = describe([_rank_value(run, name) for run in group["runs"]])["mean"]
        if tolerances:
            row["effective_rank"] = describe([(run["rank"] or {}).get("effective_rank") for run in group["runs"]])["mean"]
            row["rank_rows"] = _joined([_rank_rows(run) for run in group["runs"]])
        if any_sparse:
            for name in ("test_zero_target_fraction", "test_zero_fraction"):
                row[name] = describe([r.get(name) for r in results])["mean"]
            row["test_smoothing"] = results[0].get("test_smoothing")
        if any_curve:
            row["last_fifth_drop"] = describe([drops[id(run)] for run in group["runs"]])["mean"]
            if reference:  # softmax's own row and heads without a softmax beside them: none
                row.update(matched_compute([curves[id(run)] for run in group["runs"]],
                                           [curves[id(run)] for run in reference["runs"]]))
        for name in ("training_tokens", "steps"):
            row[name] = _typical([r.get(name) for r in results])
        row["tokens_per_second"] = describe([r.get("tokens_per_second") for r in results])["mean"]
        row["wall_time_s"] = describe([r.get("wall_time_s") for r in results])["mean"]
        row["git_commits"] = " ".join(sorted({str(r.get("git_commit"))[:12] for r in results}))
        row["git_dirty"] = any(bool(r.get("git_dirty")) for r in results)
        row["runs"] = " ".join(run["dir"].name for run in group["runs"])
        rows.append(row)
    frame = _frame(rows, columns)
    frame.attrs["varying_keys"] = keys
    frame.attrs["compared_on"] = ["dataset", "body", "d", *match]
    return frame


# --- tables -------------------------------------------------------------------------------------------


def _records(frame: pd.DataFrame) -> list[dict]:
    """The rows as plain Python values (missing: None), for JSON."""
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in records]


def _csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, na_rep="", lineterminator="\n")


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, digits: int = 2) -> str:
    if _missing(value):
        return "-"
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e15 and digits == 0:
            return f"{int(value):,}"
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _spread(mean: Any, std: Any, digits: int = 2) -> str:
    if _missing(mean):
        return "-"
    return f"{mean:,.{digits}f} ± {std:,.{digits}f}" if not _missing(std) else f"{mean:,.{digits}f}"


def _interval(low: Any, high: Any, digits: int = 2) -> str:
    return "-" if _missing(low) else f"{low:,.{digits}f} to {high:,.{digits}f}"


def _versus(diff: Any, p: Any, digits: int = 2) -> str:
    if _missing(diff):
        return "-"
    text = f"{diff:+,.{digits}f}"
    if _missing(p):
        return text
    return f"{text} (p < 0.001)" if p < 0.001 else f"{text} (p = {p:.3f})"


def _kl_digits(frame: pd.DataFrame) -> int:
    values = [abs(v) for v in frame.get("kl_mean", []) if not _missing(v) and v]
    smallest = min(values) if values else 1.0
    return max(3, min(6, 2 - math.floor(math.log10(smallest)))) if smallest > 0 else 3


def _table_lines(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """A markdown table: the header, its separator (the first ``left`` columns left-aligned, the others
    right-aligned) and the rows."""
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|",
            *("| " + " | ".join(cells) + " |" for cells in rows)]


def _blocks(frame: pd.DataFrame):
    """The (corpus, body) blocks of a summary table, in table order: yields the corpus, the body, the block's
    rows, the size columns constant in the block and those that vary in it."""
    columns = list(frame.columns)
    size_columns = columns[columns.index("head") + 1: columns.index("d")]
    for (dataset, body) in dict.fromkeys(zip(frame["dataset"], frame["body"])):
        part = frame[(frame["dataset"] == dataset) & (frame["body"] == body)]
        same = [c for c in size_columns if len({_fmt(v) for v in part[c]}) == 1]
        yield dataset, body, part, same, [c for c in size_columns if c not in same]


def _size_cells(row: pd.Series, size_columns: list[str]) -> list[str]:
    return ["-" if _missing(row[c]) else value_words(row[c]) for c in size_columns]


def markdown_tables(frame: pd.DataFrame, headings: bool = True) -> str:
    """One markdown table per (corpus, body) of a summary table, the way ``summary.md`` shows them."""
    columns = list(frame.columns)
    tolerances = [c for c in columns if c.startswith("rank_") and c != "rank_rows"]
    rank_rows = "rank_rows" in columns  # summaries written before the column have no rank rows
    kl = "kl_mean" in columns
    sparse = "test_zero_target_fraction" in columns
    zeros = "test_zero_fraction" in columns  # summaries written before the column have only the targets' share
    curve = "last_fifth_drop" in columns
    blocks = []
    for dataset, body, part, same, size_columns in _blocks(frame):
        header = ["head", *size_columns, "d", "parameters", "valid ppl", "test ppl", "seeds", "test ppl 95% CI",
                  "test ppl vs softmax"]
        header += [f"rank ({c[len('rank_'):]})" for c in tolerances] + (["effective rank"] if tolerances else [])
        header += ["rank rows"] if rank_rows else []
        if kl:
            header += ["KL (nats/token)", "KL vs softmax"]
        if sparse:
            header += ["zero-prob targets"] + (["zero probabilities"] if zeros else [])
        header += ["valid ppl fall, last fifth"] if curve else []
        header += ["tokens/s", "wall time (s)"]
        common = "Every row: " + ", ".join(f"{c} {'-' if _missing(part[c].iloc[0]) else value_words(part[c].iloc[0])}"
                                           for c in same) + "." if same else ""
        digits = _kl_digits(part)
        rows = []
        for _, r in part.iterrows():
            cells = [str(r["head"]), *_size_cells(r, size_columns), _fmt(r["d"]), _fmt(r["n_params"]),
                     _spread(r["val_ppl_mean"], r["val_ppl_std"]), _spread(r["test_ppl_mean"], r["test_ppl_std"]),
                     str(r["n_seeds"]), _interval(r["test_ppl_ci95_low"], r["test_ppl_ci95_high"]),
                     _versus(r["test_ppl_diff_vs_softmax"], r["test_ppl_welch_p"])]
            cells += [_fmt(r[c], 0 if _missing(r[c]) or float(r[c]).is_integer() else 1) for c in tolerances]
            if tolerances:
                cells.append(_fmt(r["effective_rank"], 1))
            if rank_rows:
                cells.append(_fmt(r["rank_rows"]))
            if kl:
                cells += [_spread(r["kl_mean"], r["kl_std"], digits), _versus(r["kl_diff_vs_softmax"], r["kl_welch_p"], digits)]
            for name, shown in (("test_zero_target_fraction", sparse), ("test_zero_fraction", zeros), ("last_fifth_drop", curve)):
                if shown:
                    cells.append("-" if _missing(r[name]) else f"{r[name]:.2%}")
            cells += [_fmt(r["tokens_per_second"], 0), _fmt(r["wall_time_s"], 1)]
            rows.append(cells)
        lines = [f"### {dataset} ({body})", "", *([common, ""] if common else [])] if headings else []
        blocks.append("\n".join(lines + _table_lines(header, rows)))
    return "\n\n".join(blocks)


MATCHED_COMPUTE_TITLE = "At softmax's compute (validation subset against training seconds)"


def matched_compute_markdown(frame: pd.DataFrame, title: bool = True) -> str:
    """One table per (corpus, body) of the matched-compute columns of a summary (:func:`matched_compute`):
    every head beside a softmax head with validation curves, softmax's own numbers in each row; its title
    and a sentence unless ``title`` is false (a README says it in its own words). "" without such rows."""
    if "valid_ppl_at_softmax_time" not in frame.columns:
        return ""
    shown = frame[frame["softmax_train_time_s"].notna()]
    blocks = []
    for dataset, body, part, _, size_columns in _blocks(shown):
        header = ["head", *size_columns, "d", "seeds", "softmax: training s", "softmax: final valid ppl",
                  "valid ppl at softmax's seconds", "training s to softmax's final valid ppl", "× softmax's seconds"]
        rows = []
        for _, r in part.iterrows():
            seconds, n = r["time_to_softmax_valid_ppl_s"], int(r["n_seeds"])
            reached = (f"{seconds:,.0f}" if not _missing(seconds) else
                       f"not reached ({r['seeds_reaching_softmax_valid_ppl']} of {n} seeds)")
            rows.append([str(r["head"]), *_size_cells(r, size_columns), _fmt(r["d"]), str(n),
                         f"{r['softmax_train_time_s']:,.0f}", _fmt(r["softmax_final_valid_ppl"]),
                         _fmt(r["valid_ppl_at_softmax_time"]), reached,
                         "-" if _missing(seconds) else f"{seconds / r['softmax_train_time_s']:.2f}"])
        lines = [f"### {dataset} ({body})", ""] if len(set(zip(shown["dataset"], shown["body"]))) > 1 else []
        blocks.append("\n".join(lines + _table_lines(header, rows)))
    if not blocks:
        return ""
    intro = [f"## {MATCHED_COMPUTE_TITLE}", "",
             "Each head against the softmax head at the same setting, on the validation-subset evaluations logged "
             "during training (`valid_subset` in metrics.jsonl): softmax's training seconds for its whole budget and "
             "its final validation perplexity (means over its seeds); the head's validation perplexity at its last "
             "evaluation within those seconds, and the training seconds of its first evaluation at or below softmax's "
             "final perplexity (means over the head's seeds; not reached: some seed never got there). Seconds are "
             "the runs' own training time on the machine that trained them.", ""] if title else []
    return "\n".join([*intro, "\n\n".join(blocks)])


FULL_RANK_TITLE = "Rank of the whole split (state carried, float64 head)"
FULL_RANK_WORDS = {"dataset": "corpus", "split": "split", "batch_size": "columns", "rank_rows": "rows",
                   "effective_rank": "effective rank", "softmax_bound": "softmax bound"}


def full_rank_frame(runs: list[dict]) -> pd.DataFrame:
    """One row per run with a ``rank-full.json``, in table order: corpus, body, head, the head options that
    vary among these runs, d, seed, split, columns the split was cut into (1: state carried), rows, the rank
    at each tolerance, the effective rank and the report's softmax bound (d + 2; d + 1 without an output
    bias). ``frame.attrs["options"]`` lists the dotted keys of the head-option columns."""
    chosen = [{**run, "rank": run["rank_full"]} for group in group_runs(runs)[1] for run in group["runs"] if run["rank_full"]]
    if not chosen:
        return pd.DataFrame()
    frame = runs_frame(chosen)
    options = [k for k in varying_keys(chosen) if k.startswith("head.")]
    frame["split"] = [run["rank"].get("split") for run in chosen]
    frame["batch_size"] = [(run["rank"].get("protocol") or {}).get("batch_size") for run in chosen]
    frame["softmax_bound"] = [run["rank"].get("softmax_rank_bound") or run["d"] and run["d"] + 2 for run in chosen]
    ranks = [f"rank_{t}" for t in rank_tolerances(chosen)]
    frame = frame[["dataset", "body", "head", *map(column_name, options), "d", "seed", "split", "batch_size",
                   "rank_rows", *ranks, "effective_rank", "softmax_bound", "run"]]
    frame.attrs["options"] = options
    return frame


def full_rank_markdown(frame: pd.DataFrame, title: bool = True) -> str:
    """The table of :func:`full_rank_frame` for ``summary.md``: its title and a sentence (unless ``title`` is
    false, as in a README that says it in its own words), then the rows."""
    columns = [c for c in frame.columns if c != "run"]
    options = {column_name(k): key_words(k) for k in frame.attrs.get("options", [])}
    header = [FULL_RANK_WORDS.get(c) or options.get(c) or (f"rank ({c[len('rank_'):]})" if c.startswith("rank_") else c)
              for c in columns]
    lines = [f"## {FULL_RANK_TITLE}", "",
             "Runs with a `rank-full.json` (`softmax-bench rank RUN --output rank-full.json`), the papers' protocol: "
             "the rank of the log-probability matrix over the whole split, read as one column of text with the state "
             "carried over it (columns 1), the head in float64; the main table's rank uses the rows in its rank rows "
             "column. rows: predicted positions in the matrix; softmax bound: d + 2 (d + 1 without an output bias).",
             ""] if title else []
    rows = [[_fmt(r[c], 1 if c == "effective_rank" else 0) for c in columns] for _, r in frame.iterrows()]
    return "\n".join(lines + _table_lines(header, rows, left=3))


# --- words for plots ----------------------------------------------------------------------------------


def corpus_words(dataset: Any) -> str:
    """``ptb`` -> ``Penn Treebank``, ``truth-v100-r100-314951`` -> ``synthetic language (V = 100, rank 100)``."""
    import re

    if dataset is None:
        return "corpus not recorded"
    text = str(dataset)
    found = re.match(r"truth-v(\d+)-r(\d+)", text)
    if found:
        return f"synthetic language (V = {int(found[1]):,}, rank {int(found[2]):,})"
    return CORPUS_WORDS.get(text, text)


def body_words(body: Any) -> str:
    if body is None:
        return "body not recorded"
    return BODY_WORDS.get(str(body), str(body).replace("_", "-"))


def key_words(key: str) -> str:
    return KEY_WORDS.get(key, column_name(key).replace("_", " "))


def value_words(value: Any) -> str:
    if hasattr(value, "item"):
        value = value.item()
    if value is None:
        return "default"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _setting_words(sizes: dict, keys: list[str]) -> str:
    return ", ".join(f"{key_words(k)} = {value_words(sizes[k])}" for k in keys)


def _count_words(value: float) -> str:
    for size, suffix in ((1e9, " billion"), (1e6, " million"), (1e3, " thousand")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:,.0f}"


def budget_words(groups: list[dict]) -> str:
    """``budget 2.1 million training tokens (3,000 steps)`` from the runs' result files."""
    results = [run["result"] for group in groups for run in group["runs"]]
    tokens = _clean([r.get("training_tokens") for r in results])
    steps = _clean([r.get("steps") for r in results])
    parts = []
    if tokens:
        low, high = min(tokens), max(tokens)
        amount = _count_words(low) if high <= 1.02 * low else f"{_count_words(low)} to {_count_words(high)}"
        parts.append(f"budget {amount} training tokens")
    if steps:
        low, high = int(min(steps)), int(max(steps))
        parts.append(f"{low:,} steps" if low == high else f"{low:,} to {high:,} steps")
    if not parts:
        return ""
    return parts[0] + (f" ({parts[1]})" if len(parts) > 1 else "") if tokens else parts[0]


def _d_words(groups: list[dict]) -> str:
    sources = {run["d_source"] for group in groups for run in group["runs"]}
    return "d (output embedding size)" if sources == {"output embedding size"} else (
        "d (head input size)" if sources == {"head input size"} else "d (output embedding or head input size)")


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


def _legend(fig, axes: list) -> None:
    """One legend for all panels, below them (it never hides a line)."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    columns = min(len(entries), max(2, int(fig.get_size_inches()[0] // 1.8)))
    fig.legend(list(entries.values()), list(entries), loc="lower center", ncol=columns, fontsize=8, frameon=False)


def _finish(fig, title: str) -> None:
    """Title (wrapped) and a layout that leaves room for a shared legend below the panels."""
    import textwrap

    width_inches, height = fig.get_size_inches()
    lines = [line for part in title.split("\n") for line in textwrap.wrap(part, width=max(40, int(width_inches * 12)))]
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


def _title(what: str, groups: list[dict]) -> str:
    first = groups[0]
    budget = budget_words(groups)
    ds = {g["d"] for g in groups}
    one_d = f", d = {value_words(ds.pop())}" if len(ds) == 1 and None not in ds else ""
    return f"{what}\n{corpus_words(first['dataset'])}, {body_words(first['body'])}{one_d}" + (f"; {budget}" if budget else "")


def _seed_words(groups: list[dict]) -> str:
    counts = sorted({len(g["runs"]) for g in groups})
    return f"{'/'.join(map(str, counts))} seed{'' if counts == [1] else 's'}"


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
    for ax, (label, members) in zip(axes, panels):
        if not members:  # a placeholder that starts the next row
            ax.remove()
            continue
        for name, (color, marker, line), series in _d_curves(_series(members, keys, groups)):
            points = [(g["d"], describe([run["result"].get("test_ppl") for run in g["runs"]]), g) for g in series if g["d"] is not None]
            points = [p for p in points if p[1]["mean"] is not None]
            if not points:
                continue
            ax.errorbar([p[0] for p in points], [p[1]["mean"] for p in points], yerr=[p[1]["std"] or 0.0 for p in points],
                        color=color, marker=marker, linestyle=line, linewidth=1.5, markersize=5, capsize=3, label=name)
            for d, _, group in points:
                values = _clean([run["result"].get("test_ppl") for run in group["runs"]])
                ax.scatter([d] * len(values), values, color=color, s=9, alpha=0.4, linewidths=0, zorder=3)
        _d_axis(ax, ds, _d_words(groups))
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        ax.set_ylabel("test perplexity, log scale")
        if label:
            ax.set_title(label, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axes)
    _finish(fig, _title(f"Test perplexity against d (mean of {_seed_words(groups)}, bars ± 1 s.d., dots: seeds)", groups))
    return fig


def figure_test_perplexity(groups: list[dict], keys: list[str]):
    """Test perplexity per head at each setting: one dot per seed, the mean with the standard deviation as
    error bar, log scale; sparse heads in their own panel."""
    panels = _settings(groups, keys, with_d=True)
    parts = _split_sparse([("", [g for _, members in panels for g in members])])
    fig, axes = _figure(len(parts), width=min(9.0, max(4.4, 0.45 * len(groups) + 2.5)))
    for ax, (part_label, members) in zip(axes, parts):
        if not members:  # a placeholder that starts the next row
            ax.remove()
            continue
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
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        ax.set_ylabel("test perplexity, log scale")
        if part_label:
            ax.set_title(part_label, fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    if len(panels) > 1:  # clusters of heads per setting: a legend names the heads
        _legend(fig, axes)
    _finish(fig, _title(f"Test perplexity per head ({_seed_words(groups)}; dots: seeds, open marker and bar: mean ± 1 s.d.)",
                        groups))
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
    for ax, (label, members) in zip(axes, panels):
        if not members:  # a placeholder that starts the next row
            ax.remove()
            continue
        for series_name, (color, marker, line), series in _d_curves(_series(members, keys, groups)):
            points = [(g["d"], describe([_rank_value(run, name) for run in g["runs"]])) for g in series if g["d"] is not None]
            points = [p for p in points if p[1]["mean"] is not None]
            if points:
                ax.errorbar([p[0] for p in points], [p[1]["mean"] for p in points], yerr=[p[1]["std"] or 0.0 for p in points],
                            color=color, marker=marker, linestyle=line, linewidth=1.5, markersize=5, capsize=3, label=series_name)
        ax.plot(ds, [d + 2 for d in ds], color="gray", linestyle="-", linewidth=5, alpha=0.35, zorder=1,
                label="softmax bound d + 2")
        full = sorted({(run["rank"] or {}).get("max_rank") for g in members for run in g["runs"]} - {None})
        if len(full) == 1:
            ax.axhline(full[0], color="gray", linestyle=":", linewidth=1.0, label=f"largest possible rank ({full[0]:,})")
        _d_axis(ax, ds, _d_words(groups))
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        ax.set_ylabel(f"rank ({name} tolerance), log scale")
        if label:
            ax.set_title(label, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axes)
    rows = sorted({(run["rank"] or {}).get("n_rows") for run in runs} - {None})
    where = f"; {'/'.join(f'{r:,}' for r in rows)} rows of the {runs[0]['rank'].get('split', 'valid')} split" if rows and runs[0]["rank"] else ""
    _finish(fig, _title(f"Rank against d (mean of {_seed_words(groups)}{where})", groups))
    return fig


FINETUNE_NOTE = "dotted: the fine-tuning stage"


def _stage(record: dict) -> int:
    """0 for lines of the training stage, 1 for those of the fine-tuning stage (``"stage": "finetune"``)."""
    return 1 if record.get("stage") == "finetune" else 0


def _curve(run: dict, x: str) -> list[tuple[float, float, int]]:
    """(x, validation perplexity, stage) of a run's ``valid_subset`` evaluations (else its per-epoch ones),
    training stage first; ``x`` is ``tokens`` or ``time`` (training seconds, else wall-clock seconds)."""
    for event in ("valid_subset", "valid"):
        points: dict[tuple, tuple[float, float, int]] = {}  # a resumed run logs some steps again: the last line wins
        for record in run["metrics"]:
            if record.get("event") != event or not isinstance(record.get("val_ppl"), (int, float)):
                continue
            value = record.get("tokens") if x == "tokens" else record.get("train_time_s", record.get("wall_time_s"))
            if isinstance(value, (int, float)):
                key = (_stage(record), record.get("epoch") or 0, record.get("step") or 0)
                points[key] = (float(value), float(record["val_ppl"]), _stage(record))
        if points:
            return [points[key] for key in sorted(points)]
    return []


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
    for ax, (label, members) in zip(axes, panels):
        if not members:  # a placeholder that starts the next row
            ax.remove()
            continue
        for name, style, series in _series(members, keys, groups):
            for group in series:
                curves = [c for c in map(curve_of, group["runs"]) if c]
                if curves:
                    _draw_mean_curve(ax, curves, style, name)
                    finetuned = finetuned or any(point[2] for c in curves for point in c)
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation perplexity, log scale")
        if label:
            ax.set_title(label, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axes)
    _finish(fig, _title(title.format(seeds=_seed_words(groups)) + ("; " + FINETUNE_NOTE if finetuned else ""), groups))
    return fig, axes


def figure_validation_against(groups: list[dict], keys: list[str], x: str):
    """Validation perplexity against training tokens (``x="tokens"``) or training seconds (``x="time"``):
    per head the mean over seeds at each evaluation, band from the lowest to the highest seed; one panel
    per d and setting, sparse heads apart. None when no run logged such evaluations."""
    what = "training tokens" if x == "tokens" else "training time"
    made = _validation_figure(groups, keys, lambda run: _curve(run, x),
                              "training tokens" if x == "tokens" else "training time (seconds, wall clock)",
                              f"Validation perplexity against {what} (mean of {{seeds}}, band: lowest to highest seed)")
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
                              "Validation perplexity per epoch (mean of {seeds}, band: lowest to highest seed)")
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
    for ax, (label, members) in zip(axes, panels):
        if not members:  # a placeholder that starts the next row
            ax.remove()
            continue
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
    points: dict[str, list] = {}
    styles: dict[str, tuple] = {}
    for name, style, series in _series(groups, keys):
        for group in series:
            spread = describe([_kl_value(run["kl"]) for run in group["runs"]])
            if spread["mean"] is not None and group["d"] is not None:
                points.setdefault(name, []).append((group["d"], spread["mean"], spread["std"]))
                styles[name] = style
    if not points:
        return None
    fig, axes = _figure(1)
    ax = axes[0]
    positive = all(mean > 0 for values in points.values() for _, mean, _ in values)
    for name, values in points.items():
        values = sorted(values)
        color, marker, line = styles[name]
        ax.errorbar([p[0] for p in values], [p[1] for p in values], yerr=[p[2] or 0.0 for p in values], color=color,
                    marker=marker, linestyle=line, linewidth=1.5, markersize=5, capsize=3, label=name)
    _d_axis(ax, sorted({p[0] for values in points.values() for p in values}), _d_words(groups))
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
        color, marker, line = head_style(head)
        softmax = next((g for g in groups if g["head"] == "softmax" and g["d"] == d
                        and all(g["sizes"][k] == members[0]["sizes"][k] for k in match)), None)
        xs = [g["sizes"][key] for g in members]
        ppl_label = "test perplexity" + (" (smoothed)" if is_sparse(head) else "") + ", log scale"
        panels = [("test_ppl", ppl_label)] + ([("rank", f"rank ({name} tolerance), log scale")] if with_rank else [])
        for offset, (metric, ylabel) in enumerate(panels):
            ax = axes[index * len(panels) + offset]

            def values(group: dict) -> list:
                return [_rank_value(run, name) if metric == "rank" else run["result"].get("test_ppl") for run in group["runs"]]

            spread = [describe(values(g)) for g in members]
            ax.errorbar(xs, [s["mean"] for s in spread], yerr=[s["std"] or 0.0 for s in spread], color=color, marker=marker,
                        linestyle=line, linewidth=1.5, markersize=5, capsize=3, label=head_words(head))
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
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis)
            ax.set_xlabel(f"{key_words(key)} of {head_words(head)}" + (", log scale" if ax.get_xscale() == "log" else ""))
            ax.set_ylabel(ylabel)
            ax.set_title(f"{head_words(head)}, d = {value_words(d)}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axes)
    _finish(fig, _title(f"Head options swept at one d (mean of {_seed_words([g for *_, m in sweeps for g in m])}, "
                        "bars ± 1 s.d.)", groups))
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
    for ax, (label, members) in zip(axes, panels):
        for name, (color, marker, line), series in _series(members, others, groups):
            points = sorted((g["sizes"][key], describe([run["result"].get("val_ppl") for run in g["runs"]])) for g in series)
            points = [p for p in points if p[1]["mean"] is not None]
            if points:
                ax.errorbar([p[0] for p in points], [p[1]["mean"] for p in points], yerr=[p[1]["std"] or 0.0 for p in points],
                            color=color, marker=marker, linestyle=line, linewidth=1.5, markersize=5, capsize=3, label=name)
        if all(x > 0 for x in xs_all) and max(xs_all) / min(xs_all) >= 4:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(xs_all)
        ax.set_xticklabels([value_words(x) for x in xs_all])
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        ax.set_xlabel(key_words(key) + (", log scale" if ax.get_xscale() == "log" else ""))
        ax.set_ylabel("validation perplexity, log scale")
        if label:
            ax.set_title(label, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axes)
    _finish(fig, _title(f"Validation perplexity against {key_words(key)} (mean of {_seed_words(groups)}, bars ± 1 s.d.)", groups))
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
    """Write ``summary.csv``, ``summary.md``, ``summary.json`` and the plots; return their paths, the table
    (``frame``, a DataFrame) and its markdown (``tables``), and the whole-split ranks (``full_rank``, a
    DataFrame, empty without ``rank-full.json`` files; ``full_rank_table``, its markdown or "")."""
    from lm.provenance import provenance

    results_dir = Path(results_dir)
    runs = load_runs(results_dir)
    if not runs:
        raise UserError(f"{results_dir} holds no finished run (no result.json below it).")
    frame = summarize(runs)
    plots = [save_figure(figure, results_dir / "plots" / name) for name, figure in figures(runs)]
    stems = [name for name, _ in FIGURES] + ["test-ppl", "valid-vs"]
    for stale in sorted((results_dir / "plots").glob("*.png")):  # plots of an earlier summary that this one has not
        if stale not in plots and any(stale.name.startswith(f"{stem}-") for stem in stems):
            stale.unlink()

    commits = {}
    for run in runs:
        commit = str(run["result"].get("git_commit"))
        entry = commits.setdefault(commit, {"runs": 0, "dirty_runs": 0})
        entry["runs"] += 1
        entry["dirty_runs"] += bool(run["result"].get("git_dirty"))
    runs_provenance = _provenance(runs, _suite_commands(results_dir))
    written = provenance("cpu")
    tables = markdown_tables(frame)
    full = full_rank_frame(runs)
    full_table = full_rank_markdown(full) if not full.empty else ""
    matched = matched_compute_markdown(frame)
    commit_text = ", ".join(f"`{c[:12]}` ({e['runs']} run{'' if e['runs'] == 1 else 's'}"
                            f"{', ' + str(e['dirty_runs']) + ' from a dirty tree' if e['dirty_runs'] else ''})"
                            for c, e in commits.items())
    d_words = _d_words([{"runs": runs}])
    md = [
        f"# Summary of {results_dir}",
        "",
        f"Written by `{command or 'lm.summary.write_summary'}` on {written['date']} from {len(runs)} runs; "
        f"code of the runs: {commit_text}; summary code `{str(written['git_commit'])[:12]}`"
        f"{' (dirty tree)' if written['git_dirty'] else ''}.",
        "Perplexity: mean ± sample standard deviation over the seeds (their number in the seeds column); "
        "95% CI: confidence interval of the mean test perplexity (Student t, n - 1 degrees of freedom). "
        "vs softmax: mean test perplexity minus that of the softmax head at the same corpus, d and settings "
        "(head options aside), with the two-sided p-value of Welch's t-test (none below two seeds a side). "
        "Rank: numerical rank of the log-probability matrix at each tolerance of the rank report (mean over seeds); "
        "rank rows: the rows (predicted positions) of that matrix, the seeds' counts joined by / where they differ. "
        + ("d: the width of the head's output embedding" if d_words == "d (output embedding size)" else
           "d: the size of the hidden vector the head receives" if d_words == "d (head input size)" else
           "d: the width of the head's output embedding (older runs: the size of the hidden vector it receives)")
        + "; a softmax head's log-prob matrix has rank at most d + 2 (d + 1 without an output bias)."
        + (" KL: KL(P* || P_model) from the true next-token distribution, nats per token." if "kl_mean" in frame.columns else "")
        + (" Zero-prob targets / zero probabilities (sparse heads): the share of test targets, and of all test"
           " entries, given probability exactly 0 (their perplexity is that of the smoothed distribution)."
           if "test_zero_fraction" in frame.columns else "")
        + (" Valid ppl fall, last fifth: how much the validation-subset perplexity fell over the last fifth of the"
           " training steps, relative (mean over seeds; below about 2% counts as a plateau)."
           if "last_fifth_drop" in frame.columns else ""),
        "",
        tables,
        "",
        *([matched, ""] if matched else []),
        *([full_table, ""] if full_table else []),
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
          for p in runs_provenance],
        "",
    ]
    rows = _records(frame)
    io.atomic_write_text(results_dir / "summary.csv", _csv_text(frame))
    io.atomic_write_text(results_dir / "summary.md", "\n".join(md))
    io.atomic_write_json(results_dir / "summary.json", {
        "results_dir": str(results_dir),
        "command": command,
        "date": written["date"],
        "summary_code": {"git_commit": written["git_commit"], "git_dirty": written["git_dirty"]},
        "n_runs": len(runs),
        "varying_keys": frame.attrs["varying_keys"],
        "compared_on": frame.attrs["compared_on"],
        "git_commits": commits,
        "columns": list(frame.columns),
        "rows": rows,
        **({"full_rank": {"title": FULL_RANK_TITLE, "columns": list(full.columns), "options": full.attrs["options"],
                          "rows": _records(full)}}
           if not full.empty else {}),
        "runs": runs_provenance,
        "plots": [str(p) for p in plots],
    })
    return {"csv": results_dir / "summary.csv", "markdown": results_dir / "summary.md",
            "json": results_dir / "summary.json", "plots": plots, "tables": tables, "frame": frame, "rows": rows,
            "columns": list(frame.columns), "full_rank": full, "full_rank_table": full_table}


def read_summary_csv(path: str | Path) -> list[dict]:
    """Rows of a ``summary.csv`` as written (strings; floats round-trip through ``float``)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _written_summary(results_dir: str | Path) -> dict:
    path = Path(results_dir) / "summary.json"
    data = _read_json(path)
    if not isinstance(data, dict) or "rows" not in data:
        raise UserError(f"{path} does not exist or is not a summary; run softmax-bench plot {results_dir} first.")
    return data


def read_summary(results_dir: str | Path) -> pd.DataFrame:
    """The table of a written ``summary.json`` (columns in order), without reading the runs again."""
    data = _written_summary(results_dir)
    return _frame(data["rows"], data.get("columns") or list(data["rows"][0] if data["rows"] else []))


def read_full_rank(results_dir: str | Path) -> pd.DataFrame:
    """The whole-split rank table of a written ``summary.json`` (:func:`full_rank_frame`); empty when none of
    its runs has a ``rank-full.json``."""
    full = _written_summary(results_dir).get("full_rank") or {"columns": [], "rows": []}
    frame = _frame(full["rows"], full["columns"])
    frame.attrs["options"] = full.get("options", [])
    return frame


__all__ = ["load_runs", "runs_frame", "summarize", "matched_compute", "matched_compute_markdown", "full_rank_frame", "group_runs", "describe", "welch", "markdown_tables", "figures",
           "write_summary", "read_summary", "read_full_rank", "head_input_size", "output_embedding_size", "head_order", "head_style",
           "figure_test_ppl_vs_d", "figure_test_perplexity", "figure_rank_vs_d", "figure_validation_against",
           "figure_validation_curves", "figure_spectra", "figure_kl_vs_d", "figure_option_sweeps",
           "figure_validation_against_setting"]
