"""Tables and statistics from run folders: ``summary.csv``, ``summary.md``, ``summary.json`` (and the PNGs of
:mod:`lm.plots`).

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

Figures: :mod:`lm.plots` (``RESULTS/plots/``).
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


def unargmaxable_fraction(run: dict) -> float | None:
    """The share of the vocabulary the run's head can never rank first for any hidden state in the box of its
    rank report (Grivas et al. 2022; ``rank.json``'s ``unargmaxable``); None where the check does not apply
    (a mixture is not argmax-equivalent to one logit vector), was not run, or left tokens undetermined."""
    check = (run["rank"] or {}).get("unargmaxable") or {}
    if not check.get("applicable") or check.get("undetermined") or not check.get("n_tokens"):
        return None
    return check["n_unargmaxable"] / check["n_tokens"]


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
               *[f"rank_{t}" for t in tolerances], "effective_rank", "rank_rows", "unargmaxable_fraction", "kl",
               "test_zero_target_fraction", "training_tokens", "steps", "tokens_per_second", "train_time_s",
               "wall_time_s", "n_params", "git_commit", "git_dirty", "run"]
    rows = []
    for run in runs:
        r = run["result"]
        row = {"dataset": r.get("dataset"), "body": r.get("body"), "head": r.get("head"), "d": run["d"],
               "seed": r.get("seed"), "kl": _kl_value(run["kl"]), "run": run["dir"].name,
               "effective_rank": (run["rank"] or {}).get("effective_rank"), "rank_rows": _rank_rows(run),
               "unargmaxable_fraction": unargmaxable_fraction(run)}
        row.update({column_name(k): _setting(run, k) for k in keys})
        row.update({f"rank_{t}": _rank_value(run, t) for t in tolerances})
        for name in ("val_ppl", "test_ppl", "test_zero_target_fraction", "training_tokens", "steps", "tokens_per_second",
                     "train_time_s", "wall_time_s", "n_params", "git_commit", "git_dirty"):
            row[name] = r.get(name)
        rows.append(row)
    return _frame(rows, columns)


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


Curve = list[tuple[float, float]]  # (training seconds, validation perplexity) per evaluation


def _training_curve(run: dict) -> Curve:
    """(training seconds, validation perplexity) at each evaluation of a run's training stage."""
    return [(x, y) for x, y, stage in _curve(run, "time") if stage == 0]


def matched_compute(curves: list[Curve], reference_curves: list[Curve]) -> dict[str, Any]:
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
    unargmaxable = {id(run): unargmaxable_fraction(run) for run in runs}
    any_unargmaxable = any(share is not None for share in unargmaxable.values())
    metrics = ["val_ppl", "test_ppl"] + (["kl"] if any_kl else [])
    compared = ["test_ppl"] + (["kl"] if any_kl else [])
    columns = ["dataset", "body", "head", *[column_name(k) for k in keys], "d", "n_params", "n_seeds", "seeds"]
    for metric in metrics:
        columns += [f"{metric}_{s}" for s in ("mean", "std", "ci95_low", "ci95_high")]
        if metric in compared:
            columns += [f"{metric}_diff_vs_softmax", f"{metric}_welch_p"]
    columns += [f"rank_{name}" for name in tolerances] + (["effective_rank", "rank_rows"] if tolerances else [])
    columns += ["unargmaxable_fraction"] if any_unargmaxable else []
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
        if any_unargmaxable:
            row["unargmaxable_fraction"] = describe([unargmaxable[id(run)] for run in group["runs"]])["mean"]
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
    curve = "last_fifth_drop" in columns
    blocks = []
    for dataset, body, part, same, size_columns in _blocks(frame):
        # the sparse heads' shares only in blocks with a sparse head (summaries written before the column of
        # zero probabilities have only the targets' share)
        sparse = "test_zero_target_fraction" in columns and part["test_zero_target_fraction"].notna().any()
        zeros = sparse and "test_zero_fraction" in columns
        header = ["head", *size_columns, "d", "parameters", "valid ppl", "test ppl", "seeds", "test ppl 95% CI",
                  "test ppl vs softmax"]
        header += [f"rank ({c[len('rank_'):]})" for c in tolerances] + (["effective rank"] if tolerances else [])
        header += ["rank rows"] if rank_rows else []
        unargmaxable = "unargmaxable_fraction" in columns and part["unargmaxable_fraction"].notna().any()
        header += ["unargmaxable tokens"] if unargmaxable else []
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
            if unargmaxable:
                cells.append("-" if _missing(r["unargmaxable_fraction"]) else f"{r['unargmaxable_fraction']:.1%}")
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


# --- words (tables and plots) ----------------------------------------------------------------------


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
    from lm.plots import FIGURES, figures, save_figure

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
        + (" Unargmaxable tokens: the share of the vocabulary that no hidden state in the box of the largest hidden"
           " coordinate seen can make the head's top token (Grivas et al. 2022; each token decided by a witness or an"
           " LP certificate; softmax-type heads only, mean over seeds)." if "unargmaxable_fraction" in frame.columns else "")
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


__all__ = ["load_runs", "runs_frame", "summarize", "matched_compute", "matched_compute_markdown", "full_rank_frame",
           "group_runs", "describe", "welch", "markdown_tables", "full_rank_markdown", "write_summary", "read_summary",
           "read_full_rank", "head_input_size", "output_embedding_size", "head_order", "head_style"]
