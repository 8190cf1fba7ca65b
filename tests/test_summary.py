"""The summary: numbers equal the run files, grouping and spread over seeds, valid PNG plots, clear errors."""

import csv
import json
import math
import statistics
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from lm.commands import plot as plot_command
from lm.errors import UserError
from lm.summary import head_input_size, load_runs, summarize, write_summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_run(root: Path, head: str, seed: int, d: int = 8, dataset: str = "toy", test_ppl: float = 50.0,
             rank: dict | None = None, kl: float | None = None, epochs: int = 3) -> Path:
    """A finished run folder with the files the trainer, the rank report and the KL step write."""
    run_dir = root / f"awd_lstm-{dataset}-{head}-s{seed}-d_last{d}"
    run_dir.mkdir(parents=True)
    config = {"data": {"path": f"/data/{dataset}", "name": None}, "run": {"output_dir": str(root), "name": run_dir.name},
              "model": {"body": "awd_lstm", "d_last": d, "d_hidden": 32, "d_embedding": 16, "tie_weights": False},
              "head": {"name": head, "n_components": 3}, "train": {"seed": seed, "epochs": epochs}}
    result = {"schema_version": 1, "run": run_dir.name, "body": "awd_lstm", "head": head, "dataset": dataset, "seed": seed,
              "val_ppl": test_ppl + 1.5, "test_ppl": test_ppl, "n_params": 1000 + d, "tokens_per_second": 1234.5 + seed,
              "wall_time_s": 10.0 * seed, "git_commit": "abc123def4567890", "git_dirty": seed == 2,
              "date": "2024-01-01T00:00:00+00:00", "device": "cpu", "torch_version": "2.13.0", "config": config}
    (run_dir / "result.json").write_text(json.dumps(result))
    lines = [{"event": "train", "epoch": 1, "step": 5, "loss": 4.0}]
    lines += [{"event": "valid", "epoch": e, "step": 10 * e, "val_loss": 0.0, "val_ppl": test_ppl * (1 + 1 / e)}
              for e in range(1, epochs + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"torn')
    if rank is not None:
        (run_dir / "rank.json").write_text(json.dumps(rank))
    if kl is not None:
        (run_dir / "kl.json").write_text(json.dumps({"split": "test", "mean_kl": kl, "n_positions": 100}))
    return run_dir


def spectrum(n: int, cut: int) -> list[float]:
    return [10.0 ** (-i / 4) if i < cut else 1e-15 * 10.0 ** (-i / 50) for i in range(n)]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("summary") / "results"
    ppl = {("softmax", 8): [60.0, 62.0, 64.5], ("mos", 8): [55.0, 56.0, 58.0], ("softmax", 16): [52.0, 53.0, 51.0],
           ("mos", 16): [50.0, 49.0, 50.5]}
    for (head, d), values in ppl.items():
        for seed, value in enumerate(values, 1):
            rank = {"rank": {"numerical_recipes": d + 1 if head == "softmax" else 40, "numpy": d + 1 if head == "softmax" else 38},
                    "singular_values": spectrum(48, d + 1 if head == "softmax" else 40), "effective_rank": d / 2 + seed}
            kl = (0.5 / d if head == "softmax" else 0.05 / d) + 0.001 * seed
            fake_run(root / "nested", head, seed, d=d, test_ppl=value, rank=rank, kl=kl)
    return root


@pytest.fixture(scope="module")
def summary(results) -> dict:
    return write_summary(results, command="softmax-bench plot results")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300, (path, image.shape)
    assert image[..., :3].std() > 0.01, f"{path} is blank"


def test_summary_numbers_equal_the_run_files(results, summary):
    out = summary
    rows = read_csv(out["csv"])
    assert len(rows) == 4
    runs = load_runs(results)
    assert len(runs) == 12
    for row in rows:
        members = [json.loads((results / "nested" / name / "result.json").read_text()) for name in row["runs"].split()]
        assert len(members) == int(row["n_seeds"]) == 3
        assert {m["head"] for m in members} == {row["head"]} and {m["config"]["model"]["d_last"] for m in members} == {int(row["d_last"])}
        test = [m["test_ppl"] for m in members]
        val = [m["val_ppl"] for m in members]
        assert float(row["test_ppl_mean"]) == statistics.fmean(test)
        assert float(row["test_ppl_std"]) == statistics.stdev(test)
        assert float(row["val_ppl_mean"]) == statistics.fmean(val)
        assert float(row["tokens_per_second"]) == statistics.fmean(m["tokens_per_second"] for m in members)
        assert float(row["wall_time_s"]) == statistics.fmean(m["wall_time_s"] for m in members)
        assert row["seeds"] == "1 2 3" and row["n_params"] == str(1000 + int(row["d_last"]))
        d = int(row["d_last"])
        assert row["d"] == str(d)
        expected_rank = d + 1 if row["head"] == "softmax" else 40
        assert float(row["rank_numerical_recipes"]) == expected_rank
        kls = [json.loads((results / "nested" / name / "kl.json").read_text())["mean_kl"] for name in row["runs"].split()]
        assert float(row["effective_rank"]) == d / 2 + 2
        assert float(row["kl_mean"]) == statistics.fmean(kls)
        assert row["git_commits"] == "abc123def456" and row["git_dirty"] == "True"
    # Groups in table order: sizes ascending, heads in registry order.
    assert [(r["d_last"], r["head"]) for r in rows] == [("8", "softmax"), ("8", "mos"), ("16", "softmax"), ("16", "mos")]

    md = out["markdown"].read_text()
    assert "### toy (awd_lstm)" in md and "62.17 ± 2.25" in md and "| softmax | 8 | 8 | 1,008 |" in md
    assert "rank (numerical_recipes)" in md and "KL (nats/token)" in md and "softmax-bench plot results" in md
    summary = json.loads(out["json"].read_text())
    assert summary["n_runs"] == 12 and summary["git_commits"]["abc123def4567890"] == {"runs": 12, "dirty_runs": 4}
    assert summary["varying_keys"] == ["model.d_last"] and len(summary["runs"]) == 12
    assert summary["rows"][0]["test_ppl_mean"] == float(rows[0]["test_ppl_mean"])


def test_plots_are_valid_images(summary):
    out = summary
    names = sorted(p.name for p in out["plots"])
    assert names == ["kl-vs-d-toy-awd_lstm.png", "rank-vs-d-toy-awd_lstm.png", "spectrum-toy-awd_lstm.png",
                     "test-ppl-vs-d-toy-awd_lstm.png", "valid-ppl-toy-awd_lstm.png"]
    for path in out["plots"]:
        assert_png(path)


def test_one_seed_has_no_spread_and_missing_reports_are_left_out(tmp_path):
    fake_run(tmp_path, "softmax", 1, test_ppl=70.25)
    fake_run(tmp_path, "sigsoftmax", 1, test_ppl=68.5)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "metrics.jsonl").write_text("{}\n")
    frame = summarize(load_runs(tmp_path))
    assert list(frame["head"]) == ["softmax", "sigsoftmax"]
    assert frame["test_ppl_mean"][0] == 70.25 and pd.isna(frame["test_ppl_std"][0]) and frame["n_seeds"][0] == 1
    assert frame["test_ppl_diff_vs_softmax"][1] == 68.5 - 70.25 and pd.isna(frame["test_ppl_welch_p"][1])  # one seed: no test
    assert not any(c.startswith("rank_") or c.startswith("kl") for c in frame.columns)
    out = write_summary(tmp_path)
    assert "| softmax | 8 | 1,008 | 71.75 | 70.25 | 1 |" in out["markdown"].read_text()
    assert sorted(p.name for p in out["plots"]) == ["test-ppl-toy-awd_lstm.png", "valid-ppl-toy-awd_lstm.png"]
    assert read_csv(out["csv"])[0]["test_ppl_std"] == ""


def test_datasets_get_their_own_tables_and_plots(tmp_path):
    for dataset in ("ptb-lite", "wikitext-2-lite"):
        for seed in (1, 2):
            fake_run(tmp_path, "mos", seed, dataset=dataset, test_ppl=100.0 + seed)
    out = write_summary(tmp_path)
    md = out["markdown"].read_text()
    assert "### ptb-lite (awd_lstm)" in md and "### wikitext-2-lite (awd_lstm)" in md
    assert len([p for p in out["plots"] if p.name.startswith("test-ppl")]) == 2
    rows = read_csv(out["csv"])
    assert [r["dataset"] for r in rows] == ["ptb-lite", "wikitext-2-lite"]
    assert math.isclose(float(rows[0]["test_ppl_std"]), statistics.stdev([101.0, 102.0]))


def test_head_input_size_follows_the_builder():
    base = {"model": {"body": "awd_lstm", "d_last": None, "d_embedding": 16, "d_hidden": 32, "tie_weights": True}}
    assert head_input_size({**base, "head": {"name": "softmax"}}) == 16  # tied softmax: last layer = embedding size
    assert head_input_size({**base, "head": {"name": "mos"}}) == 32
    assert head_input_size({"model": {**base["model"], "d_last": 8}, "head": {"name": "mos"}}) == 8
    assert head_input_size({"model": {"body": "transformer", "d_model": 24}, "head": {"name": "mos"}}) == 24


def test_plot_command_prints_the_table_and_refuses_an_empty_folder(results, tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    plot_command.add_arguments(parser)
    assert plot_command.run(parser.parse_args([str(results)])) == 0
    printed = capsys.readouterr().out
    assert "| head | d_last | d |" in printed and "plots:" in printed and "spectrum-toy-awd_lstm.png" in printed
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no finished run"):
        plot_command.run(parser.parse_args([str(tmp_path / "empty")]))
    with pytest.raises(UserError, match="does not exist"):
        plot_command.run(parser.parse_args([str(tmp_path / "missing")]))


def test_damaged_run_file_is_one_sentence(tmp_path):
    run_dir = fake_run(tmp_path, "softmax", 1)
    (run_dir / "rank.json").write_text("{not json")
    with pytest.raises(UserError, match="rank.json is not valid JSON"):
        write_summary(tmp_path)
