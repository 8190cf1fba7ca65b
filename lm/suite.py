"""Benchmark suites: a grid of training runs over one or more base configs, resumable, ending in a summary.

A suite file is YAML::

    name: lite-cpu                        # a label (required)
    base: ../ptb-lite-lstm.yaml           # a config file, or a list of them (one more grid axis); relative
                                          # to the suite file, else to the current folder
    output_dir: results/lite-cpu          # parent of every run folder, relative to the current folder
    fixed:                                # overrides applied to every cell (dotted keys)
      train.epochs: 6
    grid:                                 # dotted key -> list of values; cells = cartesian product, in the
      head.name: [softmax, mos]           # order of the file (first key outermost, base before all)
      train.seed: [1, 2, 3]
    grids:                                # instead of grid: several grids, each expanded like grid, in
      - {model.d_embedding: [16, 32], head.name: [softmax, mos], train.seed: [1, 2]}   # file order; a cell
      - {model.d_embedding: [32], head.name: [mos], head.n_components: [1, 2, 5]}      # that an earlier grid
                                          # already has (same config) is listed once; a
                                          # grid may vary a key of fixed (its values win)
    synth:                                # optional: write a ground-truth language first (SYNTH_KEYS below,
      vocab_size: 200                     # bottleneck_analysis.synthetic) into OUTPUT_DIR/truth-vV-rR-HASH
      rank: 200                           # and point data.path at it
      n_train_tokens: 200000
    rank: {split: valid, max_rows: 4000}  # optional: rank report options, or false to skip it
    ground_truth: true                    # optional: KL from the true distribution per run (needs synth);
                                          # or {split: test, max_rows: N, batch_size: 1}
    jobs: 2                               # optional: cells trained at once (default 1)
    threads: 1                            # optional: torch threads per training run (OMP_NUM_THREADS)

Every cell is one ``python -m lm.cli train BASE key=value ...`` subprocess (failures and memory stay
isolated); a cell whose run folder holds ``result.json`` is skipped, an interrupted one resumes from its
checkpoint (the trainer does both). After training come the rank report (``rank.json``), the KL from the
truth for ground-truth suites (``kl.json``) and the summary of :mod:`lm.summary`. With ``jobs`` above 1
several cells train at once and every output line is prefixed with its run folder's name; ``threads``
sets the torch threads of each run (on a small CPU, ``jobs: 2, threads: 1`` beats one run on 2 threads).

When the grids vary config keys that the default run folder name does not contain (sizes, learning
rates), the suite names each run folder ``BODY-DATASET-HEAD-sSEED-key1VALUE-key2VALUE`` (the keys of the
cell's own grid, and those of other grids where the cell's value differs from base and fixed) so cells
never share a folder, a cell that two grids contain is one run, and adding a grid to a suite renames
none of the folders it already has. A head option (``head.n_components``, ``head.r``, ...) in a grid applies only to the heads
that take it: a softmax cell of a grid over ``head.n_components`` is the plain softmax run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from lm import io
from lm.config import ExperimentConfig, load_config, run_name, to_dict, valid_keys
from lm.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SUITE = REPO_ROOT / "configs" / "suites" / "ground-truth.yaml"

SUITE_KEYS = ("name", "description", "command", "base", "output_dir", "fixed", "grid", "grids", "synth", "rank",
              "ground_truth", "jobs", "threads")
# rank key -> check of its value; see bottleneck_analysis.run_report.rank_run
RANK_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "split": (lambda v: v in ("train", "valid", "test"), "train, valid or test"),
    "max_rows": (lambda v: v is None or _positive_int(v), "a positive integer or null"),
    "sample": (lambda v: v is None or _positive_int(v), "a positive integer or null"),
    "batch_size": (lambda v: _positive_int(v), "a positive integer"),
    "relative_tolerances": (lambda v: isinstance(v, list) and all(isinstance(t, float) and 0 < t < 1 for t in v),
                            "a list of numbers in (0, 1)"),
    "unargmaxable": (lambda v: isinstance(v, bool), "true or false"),
    "device": (lambda v: isinstance(v, str) and (v in ("cpu", "auto") or v.startswith("cuda")), "cpu, cuda[:N] or auto"),
}
GROUND_TRUTH_KEYS = ("split", "max_rows", "batch_size")
# synth key -> (default or None when required, meaning); see bottleneck_analysis.synthetic
SYNTH_KEYS: dict[str, tuple[Any, str]] = {
    "vocab_size": (None, "tokens of the language (V)"),
    "rank": (None, "rank r of the true log-prob matrix, at most V"),
    "temperature": (0.5, "logits have standard deviation 1 / temperature"),
    "seed": (0, "seed of the language and of the sampled text"),
    "n_train_tokens": (200_000, "tokens of the training text"),
    "n_valid_tokens": (20_000, "tokens of the validation text"),
    "n_test_tokens": (20_000, "tokens of the test text"),
    "line_length": (64, "tokens per line (formatting only; <eos> positions are left out of the KL)"),
}
# Keys the default run folder name already contains, or that the suite sets itself.
NAMED_KEYS = ("model.body", "data.path", "data.name", "data.tokenizer", "data.sp_vocab_size", "head.name", "train.seed")
MANAGED_KEYS = ("run.output_dir", "run.name")
THREAD_VARIABLES = ("OMP_NUM_THREADS",)  # read by torch (OpenMP), MKL and OpenBLAS alike


@dataclass
class Suite:
    """A parsed, validated suite file."""

    name: str  # label of the suite
    path: Path | None  # the suite file (None for a suite built in code)
    bases: list[Path]  # base configs (several: one more grid axis)
    output_dir: Path  # parent of the run folders
    fixed: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, every cell
    grids: list[dict[str, list]] = field(default_factory=lambda: [{}])  # grids: dotted key -> values each

    def grid_keys(self) -> list[str]:
        """Every key of every grid, in first-seen order."""
        return list(dict.fromkeys(key for grid in self.grids for key in grid))
    synth: dict | None = None  # keyword arguments of the ground-truth corpus writer, or None
    rank: dict | None = field(default_factory=dict)  # rank_run options, or None to skip the rank report
    ground_truth: dict | None = None  # options of the KL from the truth (kl.json per run), or None
    jobs: int = 1  # cells trained at once
    threads: int | None = None  # torch threads per training run (None: torch's default)


@dataclass
class Cell:
    """One run of a suite: the grid point, the exact overrides and the command that trains it."""

    base: Path  # base config
    point: dict[str, Any]  # the grid values of this cell (with "base" when the suite has several)
    overrides: list[str]  # every key=value passed to the trainer
    config: ExperimentConfig  # the resolved config (validated)
    run_dir: Path  # lm.train.run_dir_for(config)
    command: list[str]  # argv of the training subprocess

    def describe(self) -> str:
        return ", ".join(f"{short_key(k)}={format_value(v)}" for k, v in self.point.items()) or "single run"


# --- values and keys --------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A value as the YAML scalar that :func:`lm.config.apply_overrides` parses back to it."""
    if isinstance(value, Path):
        value = str(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")].strip()
    elif text.endswith("..."):
        text = text[:-3].strip()
    return text


def short_key(key: str) -> str:
    """``head.name`` -> ``head``, ``train.seed`` -> ``seed``, ``model.d_last`` -> ``d_last``."""
    section, _, name = key.rpartition(".")
    return section if name == "name" and section else name


def key_matches(alias: str, key: str) -> bool:
    """Whether ``alias`` names the dotted ``key``: the full key, its last part, or SECTION for SECTION.name."""
    return alias in (key, key.rpartition(".")[2], short_key(key))


def split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading ``NAME=value`` words of a command (environment settings) and the command itself."""
    env = {}
    index = 0
    while index < len(argv) and "=" in argv[index] and argv[index].split("=", 1)[0].isidentifier():
        name, value = argv[index].split("=", 1)
        env[name] = value
        index += 1
    return env, argv[index:]


def display_command(argv: list[str]) -> str:
    """The command as a shell line; the interpreter shows as ``python`` when that is the one on PATH."""
    env, shown = split_env(list(argv))
    found = shutil.which("python")
    if shown and found and os.path.realpath(found) == os.path.realpath(shown[0]):
        shown[0] = "python"
    return shlex.join([f"{k}={v}" for k, v in env.items()] + shown)


# --- loading ------------------------------------------------------------------------------------------


def _resolve_base(text: Any, suite_path: Path | None) -> Path:
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"base of suite {suite_path} must be a config file path or a list of them.")
    candidates = []
    if suite_path is not None and not Path(text).is_absolute():
        candidates.append(suite_path.parent / text)
    candidates.append(Path(text))
    for candidate in candidates:
        if candidate.is_file():
            return Path(os.path.relpath(candidate.resolve())) if not Path(text).is_absolute() else candidate
    raise UserError(f"base config {text} of suite {suite_path} does not exist (looked beside the suite file and in {Path.cwd()}).")


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or key not in valid_keys():
        raise UserError(f"{where} names unknown config key {key!r}; keys look like train.seed or head.name.")
    if key in MANAGED_KEYS:
        raise UserError(f"{where} sets {key}, which the suite sets itself; use the suite's output_dir instead.")
    return key


def parse_suite(raw: Any, path: Path | None = None) -> Suite:
    """Validate a suite mapping (the YAML document) and return a :class:`Suite`."""
    where = f"suite file {path}" if path else "the suite"
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping with the keys name, base, output_dir and grid.")
    unknown = [k for k in raw if k not in SUITE_KEYS]
    if unknown:
        raise UserError(f"{where} has unknown key {unknown[0]!r}; valid keys are: {', '.join(SUITE_KEYS)}.")
    for required in ("name", "base", "output_dir"):
        if raw.get(required) in (None, ""):
            raise UserError(f"{where} must set {required}.")
    name = raw["name"]
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"name of {where} must be a word of letters, digits, - and _, got {name!r}.")
    bases = raw["base"] if isinstance(raw["base"], list) else [raw["base"]]
    if not bases:
        raise UserError(f"base of {where} must name at least one config file.")
    bases = [_resolve_base(b, path) for b in bases]
    if not isinstance(raw["output_dir"], str):
        raise UserError(f"output_dir of {where} must be a folder path.")

    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise UserError(f"fixed of {where} must be a mapping of dotted keys to values, e.g. train.epochs: 3.")
    fixed = {_check_key(k, f"fixed of {where}"): v for k, v in fixed.items()}

    if raw.get("grid") is not None and raw.get("grids") is not None:
        raise UserError(f"{where} has both grid and grids; put the grid into the list of grids.")
    if raw.get("grids") is not None:
        grids = raw["grids"]
        if not isinstance(grids, list) or not grids:
            raise UserError(f"grids of {where} must be a non-empty list of grids (mappings of dotted keys to lists).")
        labels = [f"grid {number} of {where}" for number in range(1, len(grids) + 1)]
    else:
        grids, labels = [raw.get("grid") or {}], [f"grid of {where}"]
    for grid, label in zip(grids, labels):  # several grids may vary a fixed key: the grid's value wins in its cells
        _check_grid(grid, label, fixed if raw.get("grids") is None else {})
    all_grid_keys = {key for grid in grids for key in grid}

    synth = raw.get("synth")
    if synth is not None:
        synth = _parse_synth(synth, where)
        if "data.path" in fixed or "data.path" in all_grid_keys or "data.name" in all_grid_keys:
            raise UserError(f"{where} has synth, which sets data.path itself; remove data.path from fixed and grid.")

    rank = raw.get("rank", {})
    if rank is False:
        rank = None
    elif rank is None or rank is True:
        rank = {}
    elif not isinstance(rank, dict):
        raise UserError(f"rank of {where} must be a mapping (split, max_rows) or false.")
    if rank is not None:
        for key, value in rank.items():
            if key not in RANK_KEYS:
                raise UserError(f"rank of {where} has unknown key {key!r}; valid keys are: {', '.join(RANK_KEYS)}.")
            check, wanted = RANK_KEYS[key]
            if not check(value):
                raise UserError(f"rank.{key} of {where} must be {wanted}, got {value!r}.")
        if rank.get("max_rows") is not None and rank.get("sample") is not None:
            raise UserError(f"rank of {where} sets both max_rows and sample; keep one.")

    ground_truth = raw.get("ground_truth", False)
    if ground_truth is True:
        ground_truth = {}
    elif ground_truth is False or ground_truth is None:
        ground_truth = None
    elif not isinstance(ground_truth, dict):
        raise UserError(f"ground_truth of {where} must be true, false or a mapping ({', '.join(GROUND_TRUTH_KEYS)}).")
    if ground_truth is not None:
        for key, value in ground_truth.items():
            if key not in GROUND_TRUTH_KEYS:
                raise UserError(f"ground_truth of {where} has unknown key {key!r}; valid keys are: {', '.join(GROUND_TRUTH_KEYS)}.")
        if ground_truth.get("split", "test") not in ("train", "valid", "test"):
            raise UserError(f"ground_truth.split of {where} must be train, valid or test.")
        for key in ("max_rows", "batch_size"):
            if ground_truth.get(key) is not None and not _positive_int(ground_truth[key]):
                raise UserError(f"ground_truth.{key} of {where} must be a positive integer or null.")
        if synth is None:
            raise UserError(f"{where} sets ground_truth but has no synth section to make the true distribution.")
    for key, default in (("jobs", 1), ("threads", None)):
        value = raw.get(key, default)
        if value is not None and not _positive_int(value):
            raise UserError(f"{key} of {where} must be a positive integer{' or null' if key == 'threads' else ''}.")
    return Suite(name=name, path=path, bases=bases, output_dir=Path(raw["output_dir"]), fixed=fixed, grids=grids,
                 synth=synth, rank=rank, ground_truth=ground_truth, jobs=raw.get("jobs", 1), threads=raw.get("threads"))


def _check_grid(grid: Any, where: str, fixed: dict) -> None:
    """One grid: a mapping of known config keys to non-empty lists of distinct values, none of them fixed."""
    if not isinstance(grid, dict):
        raise UserError(f"{where} must be a mapping of dotted keys to lists of values.")
    for key, values in grid.items():
        _check_key(key, where)
        if not isinstance(values, list) or not values:
            raise UserError(f"key {key} of {where} must have a non-empty list of values, got {values!r}.")
        if len({format_value(v) for v in values}) != len(values):
            raise UserError(f"key {key} of {where} repeats a value.")
        if key in fixed:
            raise UserError(f"{key} is both fixed and in the {where}; keep one.")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _parse_synth(raw: Any, where: str) -> dict:
    """The synth section with its defaults filled in; every value checked."""
    if not isinstance(raw, dict):
        raise UserError(f"synth of {where} must be a mapping with keys {', '.join(SYNTH_KEYS)}.")
    for key in raw:
        if key not in SYNTH_KEYS:
            raise UserError(f"synth of {where} has unknown key {key!r}; valid keys are: {', '.join(SYNTH_KEYS)}.")
    synth = {key: raw.get(key, default) for key, (default, _) in SYNTH_KEYS.items()}
    for key, value in synth.items():
        if value is None:
            raise UserError(f"synth of {where} must set {key} ({SYNTH_KEYS[key][1]}).")
        if key == "temperature":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise UserError(f"synth.temperature of {where} must be a positive number, got {value!r}.")
            synth[key] = float(value)
        elif key == "seed":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"synth.seed of {where} must be a non-negative integer, got {value!r}.")
        elif not _positive_int(value):
            raise UserError(f"synth.{key} of {where} must be a positive integer, got {value!r}.")
    if not synth["vocab_size"] >= 2 or not synth["rank"] <= synth["vocab_size"]:
        raise UserError(f"synth of {where} needs vocab_size >= 2 and rank <= vocab_size.")
    return synth


def load_suite(path: str | Path | None = None) -> Suite:
    """Read a suite file; ``None`` reads the shipped default (``configs/suites/ground-truth.yaml``)."""
    if path is None:
        path = DEFAULT_SUITE
        if not path.is_file():
            raise UserError(
                f"the default suite {path} ships with the source checkout; install the project from its folder "
                "(pip install -e .) or pass a suite file."
            )
    path = Path(path)
    return parse_suite(io.read_yaml(path, "suite file"), path)


def with_changes(suite: Suite, sets: Iterable[str] = (), output_dir: str | Path | None = None) -> Suite:
    """The suite with ``key=value`` overrides added to ``fixed`` (command-line ``--set``) and another output folder."""
    fixed = dict(suite.fixed)
    for item in sets:
        if "=" not in item:
            raise UserError(f"--set {item!r} must look like section.key=value, e.g. train.epochs=1.")
        key, text = (part.strip() for part in item.split("=", 1))
        _check_key(key, f"--set {item}")
        if key in suite.grid_keys():
            raise UserError(f"--set {item}: {key} is a grid key of suite {suite.name}; pick cells with --only instead.")
        if key == "data.path" and suite.synth is not None:
            raise UserError(f"--set {item}: suite {suite.name} makes its own corpus (synth), so data.path is set.")
        try:
            fixed[key] = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            fixed[key] = text
    changed = dataclasses.replace(suite, fixed=fixed)
    if output_dir is not None:
        changed.output_dir = Path(output_dir)
    return changed


# --- the ground-truth corpus ---------------------------------------------------------------------------


def synth_dir(suite: Suite) -> Path | None:
    """Where the suite's ground-truth corpus lives: ``OUTPUT_DIR/truth-vV-rR-<hash of all its parameters>``."""
    if suite.synth is None:
        return None
    digest = hashlib.sha256(json.dumps(suite.synth, sort_keys=True).encode()).hexdigest()[:6]
    return suite.output_dir / f"truth-v{suite.synth['vocab_size']}-r{suite.synth['rank']}-{digest}"


def prepare_synth(suite: Suite) -> Path | None:
    """Write the ground-truth corpus unless it exists (into a temporary folder, then renamed into place)."""
    folder = synth_dir(suite)
    if folder is None or (folder / "truth.npz").is_file():
        return folder
    from bottleneck_analysis import synthetic

    p = suite.synth
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        language = synthetic.make_language(p["vocab_size"], p["rank"], p["seed"], temperature=p["temperature"])
        synthetic.write_corpus(language, tmp, p["n_train_tokens"], p["n_valid_tokens"], p["n_test_tokens"], p["seed"],
                               line_length=p["line_length"])
        io.atomic_write_json(tmp / "synth.json", p)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --- cells ---------------------------------------------------------------------------------------------


def _cell_name(config: ExperimentConfig, point: dict[str, Any], keys: list[str], defaults: dict[str, Any]) -> str | None:
    """A run folder name that tells cells apart when the grids vary keys the default name lacks: the default
    name, the keys of the cell's own grid, and the keys of other grids (``keys``) where the cell's value is
    not the one of its base config and ``fixed`` (``defaults``), so that adding a grid to a suite does not
    rename the folders of cells that exist. Head options that the cell's head does not take are left out."""
    from lm.summary import head_takes

    flat = _flat_config(config)
    extra = [k for k in keys if k != "base" and k not in NAMED_KEYS and head_takes(config.head.name, k)
             and (k in point or flat.get(k) != defaults.get(k))]
    if not extra:
        return None
    parts = [f"{short_key(k)}{format_value(point[k] if k in point else flat[k])}" for k in extra]
    name = "-".join([run_name(config), *parts])
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)


def _points(suite: Suite) -> Iterable[dict[str, Any]]:
    """The grid points of every grid in file order (with ``base`` first when the suite has several)."""
    for grid in suite.grids:
        axes: list[tuple[str, list]] = [("base", suite.bases)] if len(suite.bases) > 1 else []
        axes += list(grid.items())
        for values in itertools.product(*[v for _, v in axes]):
            yield dict(zip([k for k, _ in axes], values))


def _without_name(config: ExperimentConfig) -> dict:
    raw = to_dict(config)
    raw["run"] = {k: v for k, v in raw["run"].items() if k != "name"}
    return raw


def _base_head(base: Path, cache: dict[Path, str | None]) -> str | None:
    """The head a base config names (None when the file alone does not load; the cell's load says why)."""
    if base not in cache:
        try:
            cache[base] = load_config(base).head.name
        except UserError:
            cache[base] = None
    return cache[base]


def expand(suite: Suite) -> list[Cell]:
    """Every cell of the suite, validated with :func:`lm.config.load_config`, in a deterministic order.

    A head option (``head.n_components``, ``head.r``, ...) of ``fixed`` or of a grid applies only to the
    cells whose head takes it. Cells of several grids that resolve to the same config are listed once (the
    first, with its folder); two different configs that would share a run folder are an error.
    """
    from lm.summary import head_takes  # one definition of a head's options for suites and tables

    corpus = synth_dir(suite)
    keys = suite.grid_keys()
    cells: list[Cell] = []
    seen: dict[Path, Cell] = {}
    heads: dict[Path, str | None] = {}
    defaults: dict[tuple, dict[str, Any]] = {}  # (base, head) -> flat config of base and fixed alone
    configs: dict[str, Cell] = {}  # config without run.name -> the first cell with it
    for point in _points(suite):
        base = point.get("base", suite.bases[0])
        head = point.get("head.name", suite.fixed.get("head.name", _base_head(base, heads)))
        if head is not None:  # a head option of another head: this cell is the head's plain run
            point = {k: v for k, v in point.items() if head_takes(head, k)}
        settings = {k: v for k, v in suite.fixed.items() if head is None or head_takes(head, k)}
        settings.update({k: v for k, v in point.items() if k != "base"})
        if corpus is not None:
            settings["data.path"] = str(corpus)
        settings["run.output_dir"] = str(suite.output_dir)
        overrides = [f"{k}={format_value(v)}" for k, v in settings.items()]
        try:
            config = load_config(base, overrides)
            if (base, config.head.name) not in defaults:
                plain = {k: v for k, v in settings.items() if k not in point or k == "head.name"}  # base and fixed
                defaults[(base, config.head.name)] = _flat_config(load_config(
                    base, [f"{k}={format_value(v)}" for k, v in {**plain, "head.name": config.head.name}.items()]))
            name = _cell_name(config, point, keys, defaults[(base, config.head.name)])
            if name is not None:
                overrides.append(f"run.name={name}")
                config = load_config(base, overrides)
        except UserError as error:
            described = ", ".join(f"{short_key(k)}={format_value(v)}" for k, v in point.items())
            raise UserError(f"suite {suite.name}, cell {described or 'single run'}: {error}") from None
        run_dir = Path(config.run.output_dir) / run_name(config)
        env = [f"{name}={suite.threads}" for name in THREAD_VARIABLES] if suite.threads else []
        cell = Cell(base=base, point=point, overrides=overrides, config=config, run_dir=run_dir,
                    command=[*env, sys.executable, "-m", "lm.cli", "train", str(base), *overrides])
        same = json.dumps([str(base), _without_name(config)], sort_keys=True, default=str)
        if same in configs:
            continue  # the same run, from another grid
        if run_dir in seen:
            raise UserError(
                f"suite {suite.name}: cells {seen[run_dir].describe()} and {cell.describe()} would share the run folder "
                f"{run_dir}; give them different seeds, heads or corpora."
            )
        seen[run_dir] = cell
        configs[same] = cell
        cells.append(cell)
    return cells


def _flat_config(config: ExperimentConfig) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in to_dict(config).items() for key, value in values.items()}


def filter_cells(cells: list[Cell], only: Iterable[str]) -> list[Cell]:
    """Keep the cells that satisfy every ``key=value`` filter (key: full dotted key, last part, or ``head``)."""
    for item in only:
        if "=" not in item:
            raise UserError(f"--only {item!r} must look like key=value, e.g. head=mos.")
        alias, text = (part.strip() for part in item.split("=", 1))
        if not cells:
            return cells
        grid_keys = list(dict.fromkeys(k for cell in cells for k in cell.point))
        keys = [k for k in grid_keys if key_matches(alias, k)] or [k for k in _flat_config(cells[0].config) if key_matches(alias, k)]
        if not keys:
            raise UserError(f"--only {item}: {alias} is not a key of this suite; grid keys are: {', '.join(grid_keys) or 'none'}.")
        if len(keys) > 1:
            raise UserError(f"--only {item}: {alias} could mean {' or '.join(keys)}; write the full dotted key.")
        key = keys[0]
        try:
            wanted = yaml.safe_load(text)
        except yaml.YAMLError:
            wanted = text

        def value_of(cell: Cell) -> Any:
            return cell.point[key] if key in cell.point else _flat_config(cell.config).get(key)  # head options vary by head

        def same(value: Any) -> bool:
            return format_value(value) == text or value == wanted or str(value) == text

        kept = [cell for cell in cells if same(value_of(cell))]
        if not kept:
            choices = sorted({format_value(value_of(cell)) for cell in cells})
            raise UserError(f"--only {item} matches no cell; {alias} takes: {', '.join(choices)}.")
        cells = kept
    return cells


# --- running -------------------------------------------------------------------------------------------


def _tail_line(text: str) -> str:
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def run_cell(cell: Cell, log_path: Path, echo: Callable[[str], None], prefix: str = "") -> tuple[int, str]:
    """Train one cell in a subprocess, streaming its output to ``echo`` and ``log_path``.

    With a ``prefix`` the output goes to ``echo`` in whole lines, each starting with it (cells that run
    at once stay readable). Returns the exit status and the last line of the output. A
    ``KeyboardInterrupt`` stops the subprocess (its checkpoint stays, so the next run of the suite
    resumes it) and is raised again.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    settings, argv = split_env(cell.command)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **settings)
    tail = b""
    pending = ""
    with open(log_path, "ab") as log:
        log.write(f"$ {display_command(cell.command)}\n".encode())
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            assert process.stdout is not None
            while True:
                chunk = process.stdout.read1(4096)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                tail = (tail + chunk)[-8192:]
                text = chunk.decode("utf-8", errors="replace")
                if not prefix:
                    echo(text)
                    continue
                pending += text.replace("\r", "\n")
                *lines, pending = pending.split("\n")
                for line in lines:
                    if line.strip():
                        echo(f"{prefix}{line}\n")
            if prefix and pending.strip():
                echo(f"{prefix}{pending}\n")
            status = process.wait()
        except BaseException:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            raise
    return status, _tail_line(tail.decode("utf-8", errors="replace"))


def _finished_result(cell: Cell) -> dict | None:
    path = cell.run_dir / "result.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # the trainer explains what to do with a damaged result


def _rank_report(run_dir: Path, options: dict) -> None:
    """``rank.json`` (and ``rank_spectrum.png``) of a finished run."""
    from bottleneck_analysis.run_report import rank_run

    rank_run(run_dir, **options)


def _kl_report(run_dir: Path, truth_dir: Path, options: dict) -> None:
    """``kl.json``: KL(P* || model) over a split of the ground-truth corpus, and the rank of the model's
    log-probs over the language tokens (:func:`bottleneck_analysis.synthetic.evaluate_against_truth`)."""
    from bottleneck_analysis.synthetic import evaluate_against_truth, load_truth
    from lm.api import load_run

    split = options.get("split", "test")
    model, corpus, _ = load_run(run_dir)
    report = evaluate_against_truth(model, corpus.split(split), corpus.vocab, load_truth(truth_dir),
                                    batch_size=options.get("batch_size") or 1, max_rows=options.get("max_rows"))
    io.atomic_write_json(run_dir / "kl.json", {"split": split, "truth": str(truth_dir), **report})


@contextlib.contextmanager
def _thread_limit(threads: int | None):
    """Run the in-process measurements on ``threads`` threads: torch's pool and, through ``threadpoolctl``,
    every BLAS and OpenMP pool loaded in the process (NumPy's and SciPy's OpenBLAS each have one).

    The suite's own process starts with the library defaults (one thread per core); while a training job
    runs beside a measurement, more busy threads than cores make OpenBLAS's spin-waiting cost 100x.
    """
    if threads is None:
        yield
        return
    import scipy.linalg  # noqa: F401 - load SciPy's OpenBLAS now, so that its pool is limited too
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)


def _describe_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__) if isinstance(error, UserError) else f"{type(error).__name__}: {text[-1] if text else ''}".strip()


def run_suite(
    suite: Suite,
    only: Iterable[str] = (),
    echo: Callable[[str], None] | None = None,
    say: Callable[[str], None] | None = None,
    command: str | None = None,
) -> dict:
    """Run every unfinished cell, the rank and KL reports, and the summary; return a report.

    ``echo`` receives the training subprocesses' output as it comes, ``say`` one line per event.
    The report (also written to ``OUTPUT_DIR/suite.json``) lists each cell's command and status and
    every failure as ``{"run_dir", "step", "message"}``; failed cells do not stop the others.
    """
    echo = echo or (lambda text: None)
    say = say or (lambda message: None)
    cells = filter_cells(expand(suite), only)
    report: dict[str, Any] = {
        "name": suite.name,
        "suite_file": str(suite.path) if suite.path else None,
        "command": command,
        "output_dir": str(suite.output_dir),
        "cells": [],
        "failed": [],
    }
    suite.output_dir.mkdir(parents=True, exist_ok=True)
    corpus = prepare_synth(suite)
    if corpus is not None:
        say(f"ground-truth corpus: {corpus}")

    def fail(cell: Cell, step: str, message: str) -> None:
        report["failed"].append({"run_dir": str(cell.run_dir), "step": step, "message": message})
        say(f"FAILED {step} of {cell.run_dir.name}: {message}")

    lock = threading.Lock()

    def locked(function: Callable[[str], None]) -> Callable[[str], None]:
        def call(text: str) -> None:
            with lock:
                function(text)
        return call

    echo, say = locked(echo), locked(say)

    measure_lock = threading.Lock()  # one measurement at a time (matplotlib's pyplot is not thread-safe)

    def measure(cell: Cell) -> None:
        """The rank report and the KL from the truth of a finished cell, unless they exist."""
        with measure_lock, _thread_limit(suite.threads):
            if suite.rank is not None and not (cell.run_dir / "rank.json").exists():
                say(f"rank report of {cell.run_dir.name}")
                try:
                    _rank_report(cell.run_dir, dict(suite.rank))
                except Exception as error:  # noqa: BLE001 - a failed report is recorded, the suite goes on
                    fail(cell, "rank", _describe_error(error))
            if suite.ground_truth is not None and not (cell.run_dir / "kl.json").exists():
                say(f"KL from the true distribution for {cell.run_dir.name}")
                try:
                    _kl_report(cell.run_dir, corpus, suite.ground_truth)
                except Exception as error:  # noqa: BLE001
                    fail(cell, "kl", _describe_error(error))

    def train_cell(number: int, cell: Cell, entry: dict) -> None:
        say(f"[{number}/{len(cells)}] {cell.run_dir.name} ({cell.describe()})")
        say(f"$ {entry['command']}")
        prefix = f"[{cell.run_dir.name}] " if suite.jobs > 1 else ""
        status, last = run_cell(cell, suite.output_dir / "logs" / f"{cell.run_dir.name}.log", echo, prefix)
        if status in (130, -signal.SIGINT):  # Ctrl-C reached the job too; the suite stops with KeyboardInterrupt
            entry["status"] = "interrupted"
            return
        if status != 0 or _finished_result(cell) is None:
            entry["status"] = "failed"
            fail(cell, "train", f"exit status {status}: {last}")
        else:
            entry["status"] = "trained"
            say(f"[{number}/{len(cells)}] {cell.run_dir.name}: trained")
            measure(cell)  # while the other jobs train

    todo = []
    for number, cell in enumerate(cells, 1):
        entry = {"run_dir": str(cell.run_dir), "point": {k: format_value(v) for k, v in cell.point.items()},
                 "command": display_command(cell.command), "status": "skipped"}
        report["cells"].append(entry)
        if _finished_result(cell) is not None:
            say(f"[{number}/{len(cells)}] {cell.run_dir.name}: finished before, skipped")
        else:
            todo.append((number, cell, entry))
    if suite.jobs == 1:
        for job in todo:
            train_cell(*job)
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=suite.jobs) as pool:
            futures = [pool.submit(train_cell, *job) for job in todo]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    failed_steps = {(f["run_dir"], f["step"]) for f in report["failed"]}
    for cell in cells:  # runs finished before this invocation, or whose measurement was interrupted
        if _finished_result(cell) is not None and not any((str(cell.run_dir), step) in failed_steps for step in ("rank", "kl")):
            measure(cell)

    _write_report(suite, report)
    if any(suite.output_dir.rglob("result.json")):
        from lm.summary import write_summary

        summary = write_summary(suite.output_dir, command=command)
        report["summary"] = {"csv": str(summary["csv"]), "markdown": str(summary["markdown"]),
                             "json": str(summary["json"]), "plots": [str(p) for p in summary["plots"]]}
        report["tables"] = summary["tables"]
        _write_report(suite, report)
    return report


def _write_report(suite: Suite, report: dict) -> None:
    """``OUTPUT_DIR/suite.json``: this invocation's report, keeping the commands of cells it did not touch."""
    path = suite.output_dir / "suite.json"
    saved = {"cells": []}
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    current = {cell["run_dir"] for cell in report["cells"]}
    kept = [cell for cell in saved.get("cells", []) if isinstance(cell, dict) and cell.get("run_dir") not in current]
    io.atomic_write_json(path, {**{k: v for k, v in report.items() if k != "tables"}, "cells": kept + report["cells"]})
