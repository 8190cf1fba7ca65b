"""Suites: file validation, grid expansion and filters, and tiny suites end to end (skip, resume, failures)."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import yaml

import lm.train
from lm.commands import suite as suite_command
from lm.config import load_config, to_dict
from lm.errors import UserError
from lm.suite import DEFAULT_SUITE, expand, filter_cells, format_value, load_suite, parse_suite, prepare_synth
from lm.summary import read_summary_csv
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent
LSTM = ROOT / "configs" / "ptb-lite-lstm.yaml"
GROUND_TRUTH = ROOT / "configs" / "ground-truth-lstm.yaml"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Training subprocesses use one thread, like this process (conftest): same numbers, less contention."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def tiny_fixed(corpus: Path, **extra) -> dict:
    """The tiny overrides of conftest as a suite's ``fixed`` mapping (the suite sets run.output_dir)."""
    fixed = {}
    for item in tiny_overrides(corpus, Path("unused"), **extra):
        key, text = item.split("=", 1)
        if key != "run.output_dir":
            fixed[key] = yaml.safe_load(text)
    return fixed


def write_suite(folder: Path, corpus: Path, grid: dict, name: str = "tiny", **fields) -> Path:
    fixed = {k: v for k, v in tiny_fixed(corpus, **fields.pop("extra", {})).items() if k not in grid}
    raw = {"name": name, "base": str(LSTM), "output_dir": str(folder / "out"), "fixed": fixed, "grid": grid,
           "rank": False, **fields}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    suite_command.add_arguments(parser)
    return suite_command.run(parser.parse_args([str(a) for a in argv]))


def test_cells_in_file_order_with_exact_validated_overrides(tiny_corpus, tmp_path):
    path = write_suite(tmp_path, tiny_corpus, {"head.name": ["softmax", "mos"], "train.seed": [1, 2]})
    cells = expand(load_suite(path))
    assert [(c.point["head.name"], c.point["train.seed"]) for c in cells] == [("softmax", 1), ("softmax", 2), ("mos", 1), ("mos", 2)]
    for cell in cells:
        assert cell.command[1:4] == ["-m", "lm.cli", "train"] and cell.command[4] == str(LSTM)
        assert load_config(cell.base, cell.overrides).head.name == cell.config.head.name
        assert cell.run_dir == tmp_path / "out" / f"awd_lstm-corpus-{cell.config.head.name}-s{cell.config.train.seed}"
        assert f"run.output_dir={tmp_path / 'out'}" in cell.overrides and "model.d_hidden=24" in cell.overrides


def test_sizes_in_the_grid_get_their_own_run_folders(tiny_corpus, tmp_path):
    path = write_suite(tmp_path, tiny_corpus, {"head.name": ["softmax"], "model.d_last": [8, 16], "train.lr": [1.0e-3]})
    names = [c.run_dir.name for c in expand(load_suite(path))]
    assert names == ["awd_lstm-corpus-softmax-s141-d_last8-lr0.001", "awd_lstm-corpus-softmax-s141-d_last16-lr0.001"]


def study_like_suite(folder: Path, corpus: Path) -> Path:
    """A bottleneck-curve grid over d x head x seed plus a K sweep and an r sweep at one d (not a full product)."""
    fixed = {**{k: v for k, v in tiny_fixed(corpus).items() if k != "model.d_embedding"}, "head.n_components": 3}
    raw = {"name": "study", "base": str(LSTM), "output_dir": str(folder / "out"), "fixed": fixed, "rank": False,
           "grids": [
               {"model.d_embedding": [16, 32, 64], "head.name": ["softmax", "mos"], "train.seed": [1, 2]},
               {"model.d_embedding": [32], "head.name": ["mos"], "head.n_components": [1, 3, 5], "train.seed": [1]},
               {"model.d_embedding": [32], "head.name": ["softmax", "r_softmax"], "head.r": [0.1, 0.5], "train.seed": [1]},
           ]}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_several_grids_expand_each_grid_and_list_a_shared_cell_once(tiny_corpus, tmp_path, capsys):
    path = study_like_suite(tmp_path, tiny_corpus)
    cells = expand(load_suite(path))  # fixed K = 3: the K sweep's K = 3 cell at d = 32 is the first grid's MoS run
    names = [c.run_dir.name for c in cells]
    # The first grid's cells carry the keys of their own grid; the K of the other grid only where it is not
    # the fixed one, so adding the sweeps to a suite does not rename (and retrain) the runs it already has.
    first = [f"awd_lstm-corpus-{head}-s{seed}-d_embedding{d}" for d in (16, 32, 64) for head in ("softmax", "mos")
             for seed in (1, 2)]
    # MoS takes n_components but not r; r_softmax takes r but not n_components; softmax takes neither.
    assert names == first + ["awd_lstm-corpus-mos-s1-d_embedding32-n_components1",
                             "awd_lstm-corpus-mos-s1-d_embedding32-n_components5",
                             "awd_lstm-corpus-r_softmax-s1-d_embedding32-r0.1",
                             "awd_lstm-corpus-r_softmax-s1-d_embedding32-r0.5"]
    assert len(set(names)) == len(names) == 16
    raw = yaml.safe_load(path.read_text())
    raw["grids"] = raw["grids"][:1]
    assert [c.run_dir.name for c in expand(parse_suite(raw, path))] == first
    by_name = {c.run_dir.name: c for c in cells}
    assert to_dict(by_name["awd_lstm-corpus-mos-s1-d_embedding32-n_components1"].config)["head"]["n_components"] == 1
    assert to_dict(by_name["awd_lstm-corpus-r_softmax-s1-d_embedding32-r0.1"].config)["head"]["r"] == 0.1
    assert by_name["awd_lstm-corpus-softmax-s2-d_embedding64"].config.model.d_embedding == 64
    assert "head.r" not in by_name["awd_lstm-corpus-softmax-s1-d_embedding32"].point  # softmax ignores r
    # --only sees the keys of every grid; the dry run lists the same cells.
    assert [c.run_dir.name for c in filter_cells(cells, ["n_components=5"])] == ["awd_lstm-corpus-mos-s1-d_embedding32-n_components5"]
    assert run_command(path, "--dry-run") == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if not line.startswith("#")]
    assert len(commands) == 16 and "# 16 runs" in out
    assert sum("head.n_components=1 " in c for c in commands) == 1 and sum("head.r=0.1 " in c for c in commands) == 1


def test_fixed_head_options_reach_only_the_heads_that_take_them(tiny_corpus, tmp_path):
    from lm.summary import head_takes

    fixed = {**{k: v for k, v in tiny_fixed(tiny_corpus).items() if k != "head.n_components"}, "head.r": 0.25,
             "head.n_components": 2}
    raw = {"name": "opts", "base": str(LSTM), "output_dir": str(tmp_path / "out"), "fixed": fixed,
           "grid": {"head.name": ["softmax", "mos", "r_softmax"]}}
    softmax, mos, r_softmax = expand(parse_suite(raw, tmp_path / "opts.yaml"))
    assert not any(o.startswith(("head.r=", "head.n_components=")) for o in softmax.overrides)
    assert "head.n_components=2" in mos.overrides and not any(o.startswith("head.r=") for o in mos.overrides)
    assert "head.r=0.25" in r_softmax.overrides and to_dict(r_softmax.config)["head"]["r"] == 0.25
    # the per-head and shared blocks of a config apply to their own heads
    assert head_takes("mos", "head.mos.n_components") and not head_takes("softmax", "head.mos.n_components")
    assert head_takes("r_softmax", "head.shared.r") and not head_takes("mos", "head.shared.r")
    assert head_takes("softmax", "train.lr") and head_takes("softmax", "head.name")


@pytest.mark.parametrize("change, message", [
    ({"grid": {"train.seed": [1]}, "grids": [{"train.seed": [2]}]}, "both grid and grids"),
    ({"grids": {"train.seed": [1]}}, "grids of .* non-empty list of grids"),
    ({"grids": []}, "grids of .* non-empty list of grids"),
    ({"grids": [{"train.seed": [1]}, {"train.seed": 2}]}, "key train.seed of grid 2 of .* non-empty list"),
    ({"grids": [{"train.seed": [1]}, ["train.seed"]]}, "grid 2 of .* must be a mapping"),
    ({"grids": [{"head.colour": [1]}]}, "grid 1 of .* unknown config key 'head.colour'"),
])
def test_bad_grids_are_one_sentence(tiny_corpus, tmp_path, change, message):
    raw = {"name": "bad", "base": str(LSTM), "output_dir": str(tmp_path / "out"), "fixed": tiny_fixed(tiny_corpus), **change}
    with pytest.raises(UserError, match=message):
        expand(parse_suite(raw, tmp_path / "bad.yaml"))


def test_a_cell_carries_another_grids_key_only_where_it_differs(tiny_corpus, tmp_path):
    default_lr = load_config(LSTM).train.lr
    raw = {"name": "lrs", "base": str(LSTM), "output_dir": str(tmp_path / "out"), "fixed": tiny_fixed(tiny_corpus),
           "grids": [{"head.name": ["softmax"]}, {"head.name": ["softmax"], "train.lr": [0.5, default_lr]}]}
    cells = expand(parse_suite(raw, tmp_path / "lrs.yaml"))
    # the second grid's cell at the default learning rate is the first grid's cell: listed once, first name
    assert [c.run_dir.name for c in cells] == ["awd_lstm-corpus-softmax-s141", "awd_lstm-corpus-softmax-s141-lr0.5"]
    assert [c.config.train.lr for c in cells] == [default_lr, 0.5]


def test_thread_limit_reaches_every_blas_pool_and_is_undone():
    import numpy as np  # noqa: F401 - its OpenBLAS is loaded
    import torch
    from threadpoolctl import threadpool_info

    from lm.suite import _thread_limit

    before = {info["filepath"]: info["num_threads"] for info in threadpool_info()}
    torch_before = torch.get_num_threads()
    with _thread_limit(1):
        inside = threadpool_info()
        assert inside and all(info["num_threads"] == 1 for info in inside)
        assert torch.get_num_threads() == 1
    after = {info["filepath"]: info["num_threads"] for info in threadpool_info()}
    assert all(after[path] == threads for path, threads in before.items() if path in after)
    assert torch.get_num_threads() == torch_before


def test_only_filters_by_short_or_dotted_key(tiny_corpus, tmp_path):
    cells = expand(load_suite(write_suite(tmp_path, tiny_corpus, {"head.name": ["softmax", "mos"], "train.seed": [1, 2]})))
    assert [c.run_dir.name for c in filter_cells(cells, ["head=mos"])] == ["awd_lstm-corpus-mos-s1", "awd_lstm-corpus-mos-s2"]
    assert [c.run_dir.name for c in filter_cells(cells, ["head=mos", "seed=2"])] == ["awd_lstm-corpus-mos-s2"]
    assert len(filter_cells(cells, ["train.seed=1"])) == 2 and len(filter_cells(cells, ["head.name=softmax"])) == 2
    assert len(filter_cells(cells, ["body=awd_lstm"])) == 4  # a fixed key of the base config
    for only, message in [(["head=nope"], "matches no cell; head takes: mos, softmax"),
                          (["colour=red"], "colour is not a key"), (["head"], "key=value")]:
        with pytest.raises(UserError, match=message):
            filter_cells(cells, only)
    seeds_only = expand(load_suite(write_suite(tmp_path, tiny_corpus, {"train.seed": [1, 2]}, name="seeds")))
    with pytest.raises(UserError, match="name could mean data.name or head.name or run.name"):
        filter_cells(seeds_only, ["name=x"])


def test_dry_run_lists_commands_and_runs_nothing(tiny_corpus, tmp_path, capsys):
    path = write_suite(tmp_path, tiny_corpus, {"head.name": ["softmax", "mos"], "train.seed": [1, 2]})
    assert run_command(path, "--dry-run", "--only", "head=mos") == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if not line.startswith("#")]
    assert len(commands) == 2 and all(" -m lm.cli train " in line and "head.name=mos" in line for line in commands)
    assert "train.seed=1" in commands[0] and "train.seed=2" in commands[1] and "# 2 runs" in out
    assert not (tmp_path / "out").exists()


def test_set_and_output_dir_change_every_cell(tiny_corpus, tmp_path, capsys):
    path = write_suite(tmp_path, tiny_corpus, {"head.name": ["softmax", "mos"]})
    other = tmp_path / "elsewhere"
    assert run_command(path, "--dry-run", "--set", "train.epochs=1", "--set", "train.lr=0.5", "--output-dir", other) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(commands) == 2
    assert all("train.epochs=1 " in c and "train.lr=0.5 " in c and f"run.output_dir={other}" in c for c in commands)
    for sets, message in [(["head.name=mos"], "grid key .* pick cells with --only"), (["colour=1"], "unknown config key"),
                          (["train.epochs"], "section.key=value"), (["run.output_dir=x"], "sets itself")]:
        with pytest.raises(UserError, match=message):
            run_command(path, "--dry-run", *[f"--set={item}" for item in sets])
    with pytest.raises(UserError, match="cell head=softmax: config key train.epochs must be an integer"):
        run_command(path, "--dry-run", "--set", "train.epochs=many")


def test_format_value_round_trips_through_overrides():
    for value in ["abc", 1, 1.5e-6, True, None, [0.9, 0.98], "true", "a: b", "../shared/data"]:
        assert yaml.safe_load(format_value(value)) == value


BAD_SUITES = [
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"name": None}, "must set name"),
    ({"base": "no-such.yaml"}, "base config no-such.yaml"),
    ({"grid": {"head.nme": ["mos"]}}, "unknown config key 'head.nme'"),
    ({"grid": {"head.name": []}}, "non-empty list"),
    ({"grid": {"head.name": "mos"}}, "non-empty list"),
    ({"grid": {"head.name": ["mos", "mos"]}}, "repeats a value"),
    ({"grid": {"head.name": ["softmax", "nope"]}}, "cell head=nope: unknown head 'nope'"),
    ({"grid": {"model.weight_drop": [1.5]}}, "cell weight_drop=1.5: model.weight_drop must be in"),
    ({"fixed": {"train.seed": 1}, "grid": {"train.seed": [1, 2]}}, "both fixed and in the grid"),
    ({"fixed": {"run.output_dir": "x"}}, "which the suite sets itself"),
    ({"fixed": ["train.seed=1"]}, "fixed of .* must be a mapping"),
    ({"rank": {"rows": 3}}, "unknown key 'rows'"),
    ({"rank": {"max_rows": 0}}, "max_rows .* positive integer"),
    ({"ground_truth": True}, "no synth section"),
    ({"ground_truth": "yes"}, "true, false or a mapping"),
    ({"ground_truth": {"batch_size": 0}, "synth": {"vocab_size": 8, "rank": 8}}, "ground_truth.batch_size .* positive integer"),
    ({"synth": {"vocab_size": 50, "rank": 10}}, "synth, which sets data.path itself"),
    ({"synth": [50]}, "synth of .* must be a mapping"),
    ({"synth": {"vocab_size": 50}}, "must set rank"),
    ({"synth": {"vocab_size": 50, "rank": 60}}, "rank <= vocab_size"),
    ({"synth": {"vocab_size": 50, "rank": 5, "colour": 1}}, "unknown key 'colour'"),
    ({"synth": {"vocab_size": 50, "rank": 5, "temperature": 0}}, "temperature .* positive number"),
    ({"rank": {"split": "dev"}}, "rank.split .* train, valid or test"),
    ({"rank": {"max_rows": 5, "sample": 5}}, "both max_rows and sample"),
    ({"jobs": 0}, "jobs .* positive integer"),
    ({"threads": "two"}, "threads .* positive integer or null"),
    ({"grid": {"run.name": ["a"]}}, "sets run.name"),
]


@pytest.mark.parametrize("change, message", BAD_SUITES)
def test_bad_suite_files_are_one_sentence(tiny_corpus, tmp_path, change, message):
    raw = {"name": "bad", "base": str(LSTM), "output_dir": str(tmp_path / "out"), "fixed": tiny_fixed(tiny_corpus),
           "grid": {"head.name": ["softmax"]}}
    if "synth" in change and "data.path" not in message:
        del raw["fixed"]["data.path"]  # a synth suite makes its own corpus
    for key, value in change.items():
        raw[key] = {**raw["fixed"], **value} if key == "fixed" and isinstance(value, dict) else value
    with pytest.raises(UserError, match=message) as caught:
        expand(parse_suite(raw, tmp_path / "bad.yaml"))
    assert "\n" not in str(caught.value)


def test_missing_or_broken_suite_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_suite(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_suite(tmp_path / "broken.yaml")


def test_shipped_suites_load_and_expand():
    for path in sorted((ROOT / "configs" / "suites").glob("*.yaml")):
        suite = load_suite(path)
        cells = expand(suite)
        assert cells, path
        assert len({c.run_dir for c in cells}) == len(cells)
    assert DEFAULT_SUITE.is_file() and load_suite(None).name == "ground-truth"


def study_cells() -> dict[tuple, object]:
    """The cells of the shipped study suite by (corpus, head, d, seed, K or r, learning rate)."""
    cells = {}
    for cell in expand(load_suite(ROOT / "configs" / "suites" / "study.yaml")):
        config = to_dict(cell.config)
        option = config["head"].get("n_components") if cell.config.head.name in ("mos", "moss") else config["head"].get("r")
        key = (config["data"]["name"], cell.config.head.name, cell.config.model.d_embedding, cell.config.train.seed, option,
               cell.config.train.lr)
        assert key not in cells, key
        cells[key] = cell
    return cells


def test_the_study_suite_expands_to_the_intended_cells():
    """Issue 11's grid: softmax, sigsoftmax, MoS (K = 5) at d 16 / 32 / 64 x 3 seeds on PTB, the K sweep and
    r sweep at d = 32, WikiText-2 at d = 32; one budget and schedule per corpus; the corpus by name only.
    Rate 20 for every head but the K = 1 control and K = 2 (10, their sweeps' best; unstable at 20) and
    r-softmax (2.5; diverged at 20)."""
    cells = study_cells()
    ptb = {key for key in cells if key[0] == "ptb"}
    grid = {("ptb", head, d, seed, 5 if head == "mos" else None, 20.0) for head in ("softmax", "sigsoftmax", "mos")
            for d in (16, 32, 64) for seed in (1, 2, 3)}
    assert grid <= ptb
    assert {("ptb", "moc", d, seed, None, 20.0) for d in (16, 32, 64) for seed in (1, 2, 3)} <= ptb
    assert {("ptb", "moss", 32, seed, 5, 20.0) for seed in (1, 2, 3)} <= ptb
    control = {("ptb", "mos", d, seed, 1, 10.0) for d in (16, 32, 64) for seed in (1, 2, 3)} | {("wikitext-2", "mos", 32, 1, 1, 10.0)}
    assert control <= set(cells)
    assert {("ptb", "mos", 32, 1, 10, 20.0), ("ptb", "mos", 32, 1, 2, 10.0)} <= ptb
    sparse = {("ptb", "r_softmax", 32, 1, r, 2.5) for r in (0.01, 0.1, 0.5)}  # its sweep's rate (diverged at 20)
    assert {key for key in cells if key[-1] != 20.0} == control | {("ptb", "mos", 32, 1, 2, 10.0)} | sparse
    assert {("wikitext-2", head, 32, 1, 5 if head == "mos" else None, 20.0)
            for head in ("softmax", "sigsoftmax", "mos", "moc")} <= set(cells)
    for (corpus, head, d, seed, option, lr), cell in cells.items():
        t = cell.config.train
        assert (t.lr_schedule, t.averaged_sgd, t.eval_every, t.optimizer) == ("cosine", False, 266, "sgd")
        assert cell.config.data.path is None and cell.config.data.name == corpus
        assert (t.max_steps, t.epochs) == ((2660, 100) if corpus == "ptb" else (3200, 1))
    assert len({cell.run_dir for cell in cells.values()}) == len(cells)
    out = subprocess.run([sys.executable, "-m", "lm.cli", "suite", str(ROOT / "configs" / "suites" / "study.yaml"),
                          "--set", "data.root=/nonexistent/data", "--dry-run"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and f"# {len(cells)} runs" in out.stdout
    commands = [line for line in out.stdout.splitlines() if line.startswith("OMP_NUM_THREADS=1 python -m lm.cli train")]
    assert len(commands) == len(cells) and all("data.root=/nonexistent/data" in c for c in commands)


class Interrupt(Exception):
    pass


def read_result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def tiny_ground_truth_suite(folder: Path) -> Path:
    """Softmax and MoS on a 12-token language of rank 12, d = 4, two at once: seconds per run."""
    raw = {
        "name": "tiny-truth", "base": str(GROUND_TRUTH), "output_dir": str(folder / "out"),
        "synth": {"vocab_size": 12, "rank": 12, "n_train_tokens": 1200, "n_valid_tokens": 300, "n_test_tokens": 300,
                  "line_length": 30},
        "fixed": {"model.d_embedding": 8, "model.d_last": 4, "head.shared.n_components": 2, "train.batch_size": 8,
                  "train.bptt": 8, "train.epochs": 3, "train.checkpoint_every": 5, "train.log_every": 5,
                  "train.eval_batch_size": 4, "train.test_batch_size": 4},
        "grid": {"head.name": ["softmax", "mos"]},
        "rank": {"split": "valid", "max_rows": 100},
        "ground_truth": {"split": "test", "batch_size": 4},
        "jobs": 2,
        "threads": 1,
    }
    path = folder / "tiny-truth.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_suite_end_to_end_skips_finished_runs_and_resumes_an_interrupted_one(tmp_path, monkeypatch, capsys):
    path = tiny_ground_truth_suite(tmp_path)
    suite = load_suite(path)
    corpus = prepare_synth(suite)
    assert (corpus / "truth.npz").is_file() and corpus.parent == tmp_path / "out"
    softmax_cell, mos_cell = expand(suite)
    assert softmax_cell.command[0] == "OMP_NUM_THREADS=1" and softmax_cell.command[2:4] == ["-m", "lm.cli"]

    # The same run in another folder, never interrupted (in this process, one thread like the subprocess).
    reference = lm.train.train(load_config(mos_cell.base, mos_cell.overrides + [f"run.output_dir={tmp_path / 'ref'}"]))
    # The MoS cell is interrupted after its first checkpoint.
    real_save = lm.train.save_checkpoint

    def save_then_die(target, *args, **kwargs):
        real_save(target, *args, **kwargs)
        if Path(target).name == "last.pt":
            raise Interrupt

    monkeypatch.setattr(lm.train, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupt):
        lm.train.train(mos_cell.config)
    monkeypatch.setattr(lm.train, "save_checkpoint", real_save)
    assert (mos_cell.run_dir / "last.pt").exists() and not (mos_cell.run_dir / "result.json").exists()

    assert run_command(path) == 0
    captured = capsys.readouterr()
    assert f"[{mos_cell.run_dir.name}] resuming {mos_cell.run_dir}" in captured.err  # two at once: prefixed lines
    assert "| softmax |" in captured.out and "| mos |" in captured.out and "plots:" in captured.out
    resumed = read_result(mos_cell.run_dir)
    assert (resumed["val_ppl"], resumed["test_ppl"], resumed["steps"]) == (reference["val_ppl"], reference["test_ppl"], reference["steps"])

    out = tmp_path / "out"
    rows = read_summary_csv(out / "summary.csv")
    assert [r["head"] for r in rows] == ["softmax", "mos"]
    for row, cell in zip(rows, (softmax_cell, mos_cell)):
        result = read_result(cell.run_dir)
        rank = json.loads((cell.run_dir / "rank.json").read_text())
        kl = json.loads((cell.run_dir / "kl.json").read_text())
        assert float(row["test_ppl_mean"]) == result["test_ppl"] and float(row["val_ppl_mean"]) == result["val_ppl"]
        assert int(row["n_params"]) == result["n_params"] and row["n_seeds"] == "1" and row["runs"] == cell.run_dir.name
        assert float(row["rank_nr"]) == rank["rank"]["nr"] and float(row["rank_numpy"]) == rank["rank"]["numpy"]
        assert float(row["kl_mean"]) == kl["mean_kl"] > 0 and row["d"] == "4"
    # The bottleneck itself: a softmax head with d = 4 gives rank at most d + 2; the mixture goes beyond.
    softmax_rank = json.loads((softmax_cell.run_dir / "rank.json").read_text())["rank"]["nr"]
    mos_rank = json.loads((mos_cell.run_dir / "rank.json").read_text())["rank"]["nr"]
    assert softmax_rank <= 6 < mos_rank
    assert f"{resumed['test_ppl']:.2f}" in (out / "summary.md").read_text()
    report = json.loads((out / "suite.json").read_text())
    assert [c["status"] for c in report["cells"]] == ["trained", "trained"] and report["failed"] == []
    summary = json.loads((out / "summary.json").read_text())
    commands = {Path(r["run"]).name: r["command"] for r in summary["runs"]}
    command = commands[softmax_cell.run_dir.name]
    assert command.startswith("OMP_NUM_THREADS=1 ") and " -m lm.cli train " in command and "head.name=softmax" in command
    plots = sorted((out / "plots").glob("*.png"))
    assert {p.name.split("-truth")[0] for p in plots} == {"valid-ppl", "test-ppl", "spectrum", "kl-vs-d", "valid-vs-tokens", "valid-vs-time"}  # the trainer records tokens and seconds with every validation
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(plot).shape[0] > 300

    # A second invocation trains and measures nothing and leaves every file as it was.
    files = [c.run_dir / name for c in (softmax_cell, mos_cell) for name in ("result.json", "rank.json", "kl.json")]
    before = [f.stat().st_mtime_ns for f in files]
    assert run_command(path) == 0
    assert "finished before, skipped" in capsys.readouterr().err
    assert before == [f.stat().st_mtime_ns for f in files]
    assert [c["status"] for c in json.loads((out / "suite.json").read_text())["cells"]] == ["skipped", "skipped"]


def test_a_failed_run_is_reported_and_the_others_go_on(tiny_corpus, tmp_path, capsys):
    missing = tmp_path / "no-corpus-here"
    path = write_suite(tmp_path, tiny_corpus, {"data.path": [str(missing), str(tiny_corpus)]},
                       extra={"train.max_steps": 2, "train.epochs": 1})
    assert run_command(path) == 1
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "suite.json").read_text())
    assert [c["status"] for c in report["cells"]] == ["failed", "trained"]
    (failure,) = report["failed"]
    assert failure["step"] == "train" and "exit status 2" in failure["message"] and str(missing) in failure["message"]
    assert "Traceback" not in failure["message"] and f"FAILED (train) {failure['run_dir']}" in err
    assert (tmp_path / "out" / "awd_lstm-corpus-softmax-s141" / "result.json").exists()
    assert (tmp_path / "out" / "summary.csv").exists()
    assert (tmp_path / "out" / "logs" / "awd_lstm-no-corpus-here-softmax-s141.log").read_text().startswith("$ ")
