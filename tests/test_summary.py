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


# --- the study's statistics and plots on a study-like fixture ---------------------------------------------

STUDY_PPL = {  # (head, d, K) -> test perplexity per seed; d is the output embedding size
    ("softmax", 16, None): [300.0, 310.0, 305.0], ("softmax", 32, None): [200.0, 204.0, 199.0],
    ("softmax", 64, None): [150.0, 149.0, 153.5],
    ("mos", 16, 5): [250.0, 262.0, 255.0], ("mos", 32, 5): [180.0, 186.0, 178.0], ("mos", 64, 5): [145.0, 147.0, 146.0],
    ("mos", 16, 1): [280.0, 284.0], ("mos", 32, 1): [230.0, 228.0], ("mos", 64, 1): [160.0, 157.0],  # the matched-body control, two seeds
    ("mos", 32, 2): [190.0],  # the K sweep at d = 32, one seed
    ("r_softmax", 16, None): [9.0e5, 1.1e6, 1.3e6], ("r_softmax", 32, None): [7.0e5, 8.0e5, 6.0e5],
}


def study_run(root: Path, head: str, d: int, k: int | None, seed: int, test_ppl: float) -> Path:
    """A run folder as the study's trainer writes it: output_embedding_size, the body's input size apart,
    per-head learning rates and valid_subset lines with tokens and seconds."""
    name = f"awd_lstm-ptb-{head}-s{seed}-d_embedding{d}" + (f"-n_components{k}" if k else "")
    run_dir = root / name
    run_dir.mkdir(parents=True)
    lr = 10.0 if k == 1 else {"softmax": 20.0, "mos": 20.0, "r_softmax": 5.0}[head]  # as the study: K = 1 at its own rate
    config = {"data": {"name": "ptb", "path": "/local/ptb"}, "run": {"output_dir": str(root), "name": name},
              "model": {"body": "awd_lstm", "d_embedding": d, "d_hidden": 256, "d_last": None, "tie_weights": True},
              "head": {"name": head, "n_components": k or 5, "r": 0.5},
              "train": {"seed": seed, "lr": lr, "epochs": 1, "max_steps": 600}}
    result = {"run": name, "body": "awd_lstm", "head": head, "dataset": "ptb", "seed": seed, "val_ppl": test_ppl * 1.05,
              "test_ppl": test_ppl, "n_params": 10_000 + d, "output_embedding_size": d,
              "head_input_size": d if head == "softmax" else 256, "training_tokens": 420_000, "steps": 600,
              "tokens_per_second": 5000.0, "wall_time_s": 100.0, "git_commit": "f" * 40, "git_dirty": False,
              "test_zero_target_fraction": 0.4 if head == "r_softmax" else 0.0,
              **({"test_zero_fraction": 0.9} if head == "r_softmax" else {}), "config": config}
    (run_dir / "result.json").write_text(json.dumps(result))
    slow = {"softmax": 1.0, "mos": 3.0, "r_softmax": 1.5}[head]
    lines = [{"event": "valid_subset", "epoch": 1, "step": step, "tokens": step * 700 + seed, "train_time_s": step * 0.1 * slow,
              "wall_time_s": step * 0.12 * slow, "val_loss": 0.0, "val_ppl": test_ppl * (1 + 100 / step), "subset_tokens": 5000}
             for step in (100, 200, 300, 400, 500, 600)]
    lines.append({"event": "valid", "epoch": 1, "step": 600, "tokens": 420_000, "train_time_s": 60.0 * slow,
                  "wall_time_s": 80.0 * slow, "val_loss": 0.0, "val_ppl": test_ppl * 1.05})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    rank_value = d + 2 if head == "softmax" else 40 * d
    (run_dir / "rank.json").write_text(json.dumps({
        "rank": {"nr": rank_value, "numpy": rank_value}, "max_rank": 5000, "n_rows": 5000, "split": "valid",
        "embedding": {"shape": [10000, d]}, "singular_values": spectrum(200, min(rank_value, 200)), "effective_rank": 3.0}))
    return run_dir


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study") / "results"
    for (head, d, k), values in STUDY_PPL.items():
        for seed, value in enumerate(values, 1):
            study_run(root, head, d, k, seed, value)
    return root


def t_quantile_975_two_dof() -> float:
    """The 97.5% quantile of Student's t with 2 degrees of freedom, in closed form: F(t) = 1/2 + t / (2 sqrt(2 + t^2))."""
    return math.sqrt(2 * 0.95 ** 2 / (1 - 0.95 ** 2))


def welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float]:
    """Difference of means and the two-sided Welch p-value from the textbook formulas (t CDF via the
    regularized incomplete beta function)."""
    from scipy.special import betainc

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return statistics.fmean(a) - statistics.fmean(b), betainc(dof / 2, 0.5, dof / (dof + t * t))


def test_statistics_equal_hand_computed_values(study):
    frame = summarize(load_runs(study))
    assert frame.attrs["varying_keys"] == ["model.d_embedding", "head.n_components", "train.lr"]
    assert frame.attrs["compared_on"] == ["dataset", "body", "d", "model.d_embedding"]  # lr is fixed per head and K: not matched
    rows = {(r["head"], r["d"], None if pd.isna(r["n_components"]) else r["n_components"]): r for _, r in frame.iterrows()}
    assert set(rows) == set(STUDY_PPL) and len(frame) == len(STUDY_PPL)
    for key, values in STUDY_PPL.items():
        row = rows[key]
        n = len(values)
        mean = sum(values) / n
        assert row["n_seeds"] == n and math.isclose(row["test_ppl_mean"], mean, rel_tol=1e-12)
        if n == 1:  # no spread, no interval from one seed
            assert pd.isna(row["test_ppl_std"]) and pd.isna(row["test_ppl_ci95_low"]) and pd.isna(row["test_ppl_welch_p"])
            continue
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        assert math.isclose(row["test_ppl_std"], std, rel_tol=1e-12)
        if n == 3:
            half = t_quantile_975_two_dof() * std / math.sqrt(3)
            assert math.isclose(row["test_ppl_ci95_low"], mean - half, rel_tol=1e-9)
            assert math.isclose(row["test_ppl_ci95_high"], mean + half, rel_tol=1e-9)
        head, d, _ = key
        if head == "softmax":
            assert pd.isna(row["test_ppl_diff_vs_softmax"]) and pd.isna(row["test_ppl_welch_p"])
        else:  # against softmax at the same d, whatever the head's K or learning rate
            diff, p = welch_by_hand(values, STUDY_PPL[("softmax", d, None)])
            assert math.isclose(row["test_ppl_diff_vs_softmax"], diff, rel_tol=1e-12)
            assert math.isclose(row["test_ppl_welch_p"], p, rel_tol=1e-6) and 0 < p < 1
    # two seeds have a confidence interval too: t(0.975, 1) = tan(0.475 pi)
    control = STUDY_PPL[("mos", 32, 1)]
    half = math.tan(0.475 * math.pi) * statistics.stdev(control) / math.sqrt(2)
    assert math.isclose(rows[("mos", 32, 1)]["test_ppl_ci95_high"], statistics.fmean(control) + half, rel_tol=1e-9)
    # d is the output embedding size, not the body's output (256 for the mixtures)
    assert sorted(set(frame["d"])) == [16, 32, 64] and frame["d"].dtype == "Int64"
    # head options a head does not take are empty, not the config's unused value
    assert frame[frame["head"] == "softmax"]["n_components"].isna().all()


def test_summary_files_carry_the_statistics(study, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(study, root)
    out = write_summary(root, command="softmax-bench plot copy")
    rows = read_csv(out["csv"])
    frame = out["frame"]
    assert [r["head"] for r in rows] == list(frame["head"])
    first_mos = next(r for r in rows if r["head"] == "mos")
    assert float(first_mos["test_ppl_welch_p"]) == frame[frame["head"] == "mos"]["test_ppl_welch_p"].iloc[0]
    assert first_mos["n_components"] == "1" and first_mos["d"] == "16"  # integers stay integers beside empty cells
    data = json.loads(out["json"].read_text())
    assert data["columns"] == list(frame.columns) and data["summary_code"]["git_commit"]
    assert data["rows"][0]["n_components"] is None and data["rows"][0]["test_ppl_welch_p"] is None
    md = out["markdown"].read_text()
    assert "Welch's t-test" in md and "test ppl 95% CI" in md and "(p = " in md
    assert "| head | d_embedding | n_components | lr | d | parameters |" in md and "| mos | 32 | 1 | 10 | 32 |" in md
    assert "None" not in out["tables"]


def all_text(figure) -> str:
    texts = [figure._suptitle.get_text() if figure._suptitle else ""]
    for ax in figure.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), *ax.get_legend_handles_labels()[1]]
        texts += [t.get_text() for t in ax.texts]
    for legend in figure.legends:
        texts += [t.get_text() for t in legend.get_texts()]
    return "\n".join(texts)


def test_study_plots_have_the_expected_series(study, tmp_path):
    import matplotlib.pyplot as plt

    from lm.plots import figures, save_figure

    made = dict(figures(load_runs(study)))
    assert sorted(made) == [f"{name}-ptb-awd_lstm.png" for name in
                            ("rank-vs-d", "spectrum", "sweeps", "test-ppl-vs-d", "valid-ppl", "valid-vs-time",
                             "valid-vs-tokens")]
    for name, figure in made.items():
        text = all_text(figure)
        assert "Penn Treebank" in text and "AWD-LSTM" in text and "420 thousand training tokens (600 steps)" in text, name
        for internal in ("None", "max_steps", "d_embedding", "n_components", "r_softmax", "awd_lstm", "d + 1"):
            assert internal not in text, (name, internal)

    # test perplexity against d: log-log; softmax, MoS and MoS with K = 1 in one panel, r-softmax in its own
    dense, sparse = made["test-ppl-vs-d-ptb-awd_lstm.png"].axes
    assert dense.get_xscale() == "log" and dense.get_yscale() == "log" and sparse.get_yscale() == "log"
    handles, labels = dense.get_legend_handles_labels()
    assert labels == ["softmax", "MoS (K = 1)", "MoS (K = 5)"]
    assert sparse.get_legend_handles_labels()[1] == ["r-softmax"] and "sparse head" in sparse.get_title()
    softmax_line = handles[0].lines[0]
    assert list(softmax_line.get_xdata()) == [16, 32, 64]
    assert list(softmax_line.get_ydata()) == [statistics.fmean(STUDY_PPL[("softmax", d, None)]) for d in (16, 32, 64)]
    assert list(handles[1].lines[0].get_xdata()) == [16, 32, 64]  # K = 2, at d = 32 alone, is in the sweeps figure

    # rank against d with the softmax bound at d + 2
    (ax,) = made["rank-vs-d-ptb-awd_lstm.png"].axes
    bound = next(line for line in ax.get_lines() if line.get_label() == "softmax bound d + 2")
    assert list(bound.get_xdata()) == [16, 32, 64] and list(bound.get_ydata()) == [18, 34, 66]

    # spectra: one panel per d, log-log, the dashed line at d + 2
    spectra = made["spectrum-ptb-awd_lstm.png"].axes
    assert [a.get_title() for a in spectra] == ["d = 16", "d = 32", "d = 64"]
    for a, d in zip(spectra, (16, 32, 64)):
        assert a.get_xscale() == a.get_yscale() == "log"
        verticals = [line for line in a.get_lines() if line.get_label() == "softmax bound d + 2"]
        assert [line.get_xdata()[0] for line in verticals] == [d + 2]

    # validation against tokens and seconds: mean over seeds at each evaluation; sparse heads apart
    tokens = made["valid-vs-tokens-ptb-awd_lstm.png"].axes
    assert [a.get_title() for a in tokens] == ["d = 16", "d = 32", "d = 64", "d = 16; r-softmax (sparse head, smoothed)",
                                              "d = 32; r-softmax (sparse head, smoothed)"]
    # a line has one label and style in every panel (MoS at K = 5 is "MoS (K = 5)" at d = 16 too)
    assert [l.get_label() for l in tokens[0].get_lines()] == ["softmax", "MoS (K = 1)", "MoS (K = 5)"]
    styles = {(l.get_label(), l.get_color(), l.get_marker(), str(l.get_linestyle())) for a in tokens for l in a.get_lines()}
    assert len(styles) == len({s[0] for s in styles}) == 5
    line = next(l for l in tokens[0].get_lines() if l.get_label() == "softmax")
    assert list(line.get_xdata()) == [step * 700 + 2 for step in (100, 200, 300, 400, 500, 600)]  # mean of seeds 1..3
    assert math.isclose(line.get_ydata()[0], statistics.fmean(STUDY_PPL[("softmax", 16, None)]) * 2)
    seconds = made["valid-vs-time-ptb-awd_lstm.png"].axes[0]
    mos = next(l for l in seconds.get_lines() if l.get_label() == "MoS (K = 5)")
    assert math.isclose(mos.get_xdata()[-1], 600 * 0.1 * 3.0) and seconds.get_yscale() == "log"
    assert "training time" in seconds.get_xlabel()

    # the widest K sweep, at d = 32 (the matched-body control K = 1 at its own rate, K = 2 and 5; not K 1 / 5 at
    # d = 16 and 64), beside softmax at d = 32
    ppl, rank = made["sweeps-ptb-awd_lstm.png"].axes
    assert ppl.get_title() == "MoS, d = 32"
    (sweep,) = [c for c in ppl.containers if c.get_label() == "MoS"]
    assert list(sweep.lines[0].get_xdata()) == [1, 2, 5]
    assert list(sweep.lines[0].get_ydata()) == [statistics.fmean(STUDY_PPL[("mos", 32, k)]) for k in (1, 2, 5)]
    reference = next(l for l in ppl.get_lines() if l.get_label() == "softmax at d = 32")
    assert reference.get_ydata()[0] == statistics.fmean(STUDY_PPL[("softmax", 32, None)])
    assert any(l.get_label() == "softmax bound d + 2" and l.get_ydata()[0] == 34 for l in rank.get_lines())

    for name, figure in made.items():
        path = save_figure(figure, tmp_path / name)
        assert_png(path)
    plt.close("all")


def test_api_summarize_returns_a_dataframe(study):
    from lm.api import summarize as api_summarize

    frame = api_summarize(study)
    assert isinstance(frame, pd.DataFrame) and len(frame) == len(STUDY_PPL)
    assert {"test_ppl_mean", "test_ppl_ci95_low", "test_ppl_welch_p", "n_seeds"} <= set(frame.columns)
    per_run = api_summarize(study, per_run=True)
    assert len(per_run) == sum(len(v) for v in STUDY_PPL.values()) and set(per_run["seed"]) == {1, 2, 3}
    with pytest.raises(UserError, match="does not exist"):
        api_summarize(study / "missing")


def test_d_of_older_run_files(tmp_path):
    from lm.summary import output_embedding_size

    tied = {"model": {"body": "awd_lstm", "d_embedding": 128, "d_hidden": 256, "d_last": None, "tie_weights": True},
            "head": {"name": "mos", "d_latent": None}}
    # a tied MoS reads the 256-wide last layer but its output embedding is the 128-wide input embedding
    assert output_embedding_size({"head_input_size": 256, "config": tied}) == (128, "output embedding size")
    assert output_embedding_size({"head_input_size": 256, "config": tied}, {"embedding": {"shape": [900, 96]}})[0] == 96
    assert output_embedding_size({"output_embedding_size": 64, "head_input_size": 256, "config": tied})[0] == 64
    softmax = {"model": tied["model"], "head": {"name": "softmax"}}
    assert output_embedding_size({"head_input_size": 128, "config": softmax}) == (128, "output embedding size")


README = """# A project

Intro text stays.

<!-- table:results/study#ptb -->
old PTB table, typed by hand
<!-- /table:results/study#ptb -->

Between the tables.

<!-- table:results/study -->
<!-- /table:results/study -->

<!-- table:results/other -->
left alone by plot --readme results/study
<!-- /table:results/other -->
"""


@pytest.fixture
def small_study(tmp_path) -> Path:
    """Softmax and MoS at d = 16 and 32, three seeds each (few plots: quick to summarize)."""
    root = tmp_path / "repo" / "results" / "study"
    for (head, d, k), values in STUDY_PPL.items():
        if head in ("softmax", "mos") and k in (None, 5) and d in (16, 32):
            for seed, value in enumerate(values, 1):
                study_run(root, head, d, k, seed, value)
    return root


def load_script(name: str):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_come_from_the_summary(small_study, tmp_path, capsys):
    import argparse
    import subprocess
    import sys

    root = tmp_path / "repo"
    readme = root / "README.md"
    readme.write_text(README)
    parser = argparse.ArgumentParser()
    plot_command.add_arguments(parser)
    assert plot_command.run(parser.parse_args([str(root / "results" / "study"), "--readme", str(readme)])) == 0
    assert f"{readme}: results/study#ptb, results/study updated" in capsys.readouterr().out
    text = readme.read_text()
    frame = summarize(load_runs(small_study))
    softmax16 = frame[(frame["head"] == "softmax") & (frame["d"] == 16)].iloc[0]
    block = text.split("<!-- table:results/study#ptb -->")[1].split("<!-- /table:results/study#ptb -->")[0]
    assert "typed by hand" not in block and "### " not in block  # one corpus: no heading
    assert f"| softmax | 16 | 16 | 10,016 | {softmax16['val_ppl_mean']:,.2f} ± {softmax16['val_ppl_std']:,.2f} |" in block
    assert "### ptb (awd_lstm)" not in text.split("<!-- table:results/study -->")[1]  # one block: no heading either
    assert text.startswith("# A project\n\nIntro text stays.\n") and "\nBetween the tables.\n" in text
    assert "left alone by plot --readme results/study" in text
    # The script, as a command: every marker; results/other has no summary -> one sentence, exit 2, file unchanged.
    script = [sys.executable, str(Path(__file__).resolve().parent.parent / "scripts" / "readme_tables.py")]
    done = subprocess.run([*script, str(readme)], capture_output=True, text=True)
    assert done.returncode == 2 and "results/other/summary.json does not exist" in done.stderr.replace(str(root) + "/", "")
    assert "Traceback" not in done.stderr and readme.read_text() == text
    readme.write_text(text.replace(text[text.index("<!-- table:results/other -->"):], ""))
    main = load_script("readme_tables").main  # the same script in this process (quicker)
    assert main([str(readme), "--check"]) == 0 and "up to date" in capsys.readouterr().out
    readme.write_text(readme.read_text().replace("| softmax | 16 |", "| softmax | 17 |"))  # a hand edit
    assert main([str(readme), "--check"]) == 1 and "out of date" in capsys.readouterr().out
    assert main([str(readme)]) == 0 and "| softmax | 17 |" not in readme.read_text()


def test_readme_marker_errors_are_one_sentence(small_study, tmp_path):
    from lm.readme import update_readme

    write_summary(small_study)
    readme = small_study.parent / "README.md"
    for text, message in [("<!-- table:study -->\nno end\n", "has no closing <!-- /table:study -->"),
                          ("<!-- table:study#wikitext-2 -->\n<!-- /table:study#wikitext-2 -->\n",
                           "has no runs on corpus wikitext-2; it has: ptb")]:
        readme.write_text(text)
        with pytest.raises(UserError, match=message):
            update_readme(readme)
    with pytest.raises(UserError, match="does not exist"):
        update_readme(tmp_path / "missing.md")


def test_a_resumed_run_counts_each_evaluation_once(tmp_path):
    from lm.plots import figure_validation_against
    from lm.summary import group_runs

    run_dir = study_run(tmp_path, "softmax", 16, None, 1, 300.0)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    # killed after step 400, resumed from the step-300 checkpoint: steps 400.. are logged again, a bit different
    again = [json.loads(line) for line in lines if json.loads(line).get("step", 0) >= 400 and "subset_tokens" in line]
    for record in again:
        record["val_ppl"] *= 0.99
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:4] + [json.dumps(r) for r in again] + lines[-1:]) + "\n")
    keys, groups = group_runs(load_runs(tmp_path))
    figure = figure_validation_against(groups, keys, "tokens")
    (line,) = figure.axes[0].get_lines()
    assert list(line.get_xdata()) == [step * 700 + 1 for step in (100, 200, 300, 400, 500, 600)]
    assert line.get_ydata()[3] == 300.0 * (1 + 100 / 400) * 0.99  # the line logged after the resume counts


def test_the_plateau_check_and_the_sparsity_reached_are_columns(tmp_path):
    """last_fifth_drop: (ppl at the last evaluation at or before 80% of the final step - final ppl) / that
    ppl; the fixture's curve t (1 + 100 / step) at steps 100..600 gives (1.25 - 7/6) / 1.25 = 1/15. The
    r-softmax row also shows the share of all test entries given probability 0."""
    from lm.summary import last_fifth_drop, markdown_tables, summarize

    for head, ppl in (("softmax", 300.0), ("mos", 250.0), ("r_softmax", 400.0)):
        study_run(tmp_path, head, 16, None, 1, ppl)
    runs = load_runs(tmp_path)
    assert all(last_fifth_drop(run) == pytest.approx(1 / 15, rel=1e-12) for run in runs)
    frame = summarize(runs)
    assert list(frame["last_fifth_drop"]) == pytest.approx([1 / 15] * 3, rel=1e-12)
    zeros = dict(zip(frame["head"], frame["test_zero_fraction"]))
    assert zeros["r_softmax"] == 0.9 and pd.isna(zeros["softmax"])
    text = markdown_tables(frame)
    header = next(line for line in text.splitlines() if line.startswith("| head"))
    assert header.endswith("| zero-prob targets | zero probabilities | valid ppl fall, last fifth | tokens/s | wall time (s) |")
    row = next(line for line in text.splitlines() if line.startswith("| r_softmax"))
    assert "| 40.00% | 90.00% | 6.67% |" in row
    one_point = [{"event": "valid_subset", "step": 600, "val_ppl": 300.0}]
    assert last_fifth_drop({"metrics": one_point}) is None and last_fifth_drop({"metrics": []}) is None
    # a corpus without a sparse head: its table has no columns of zero shares
    other = study_run(tmp_path / "wt2", "softmax", 16, None, 1, 280.0)
    result = json.loads((other / "result.json").read_text())
    result["dataset"] = "wikitext-2"
    del result["test_zero_target_fraction"]
    (other / "result.json").write_text(json.dumps(result))
    text = markdown_tables(summarize(load_runs(tmp_path)))
    ptb, wikitext = text.split("### wikitext-2")
    assert "zero-prob targets" in ptb and "zero-prob targets" not in wikitext
    assert "| valid ppl fall, last fifth | tokens/s |" in wikitext


def test_fine_tuning_lines_continue_the_curves_dotted(tmp_path):
    """Fine-tuning epochs are numbered from 1 again in metrics.jsonl; the epoch plot puts them after the
    training epochs (not over them) and draws that stage dotted, as does the plot against tokens."""
    from lm.plots import FINETUNE_NOTE, figure_validation_against, figure_validation_curves
    from lm.summary import group_runs

    run_dir = study_run(tmp_path, "softmax", 16, None, 1, 300.0)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lines.append({"event": "valid", "epoch": 2, "step": 1200, "tokens": 840_000, "train_time_s": 120.0, "val_loss": 0.0,
                  "val_ppl": 290.0})
    lines.append({"event": "finetune", "step": 1200, "from_epoch": 2, "best_val_loss": 0.0})
    for epoch, ppl in ((1, 280.0), (2, 275.0)):
        step = 1200 + 600 * epoch
        lines.append({"event": "valid_subset", "epoch": epoch, "step": step, "tokens": step * 700, "train_time_s": step * 0.1,
                      "val_loss": 0.0, "val_ppl": ppl + 20, "subset_tokens": 5000, "stage": "finetune"})
        lines.append({"event": "valid", "epoch": epoch, "step": step, "tokens": step * 700, "train_time_s": step * 0.1,
                      "val_loss": 0.0, "val_ppl": ppl, "stage": "finetune"})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    keys, groups = group_runs(load_runs(tmp_path))
    trained, finetuned = figure_validation_curves(groups, keys).axes[0].get_lines()
    assert list(trained.get_xdata()) == [1, 2] and list(trained.get_ydata()) == [315.0, 290.0]
    assert list(finetuned.get_xdata()) == [2, 3, 4] and list(finetuned.get_ydata()) == [290.0, 280.0, 275.0]
    assert finetuned.get_linestyle() == ":" and not finetuned.get_label().startswith("softmax")
    figure = figure_validation_against(groups, keys, "tokens")
    trained, finetuned = figure.axes[0].get_lines()
    assert list(trained.get_xdata())[-1] == 600 * 700 + 1 and list(finetuned.get_xdata())[1:] == [1800 * 700, 2400 * 700]
    assert FINETUNE_NOTE in figure._suptitle.get_text().replace("\n", " ")


def test_a_learning_rate_pilot_sweep_gets_its_own_plot(tmp_path):
    from lm.plots import figures

    ppl = {("softmax", 10.0): [220.0, 224.0], ("softmax", 20.0): [210.0, 216.0], ("mos", 10.0): [190.0, 194.0],
           ("mos", 20.0): [260.0, 250.0]}
    for (head, lr), values in ppl.items():
        for seed, value in enumerate(values, 1):
            run_dir = study_run(tmp_path / f"lr{lr}", head, 32, None, seed, value)
            result = json.loads((run_dir / "result.json").read_text())
            result["config"]["train"]["lr"] = lr
            (run_dir / "result.json").write_text(json.dumps(result))
    frame = summarize(load_runs(tmp_path))
    assert frame.attrs["compared_on"] == ["dataset", "body", "d", "train.lr"]  # swept for every head: matched
    mos20 = frame[(frame["head"] == "mos") & (frame["lr"] == 20.0)].iloc[0]
    assert math.isclose(mos20["test_ppl_diff_vs_softmax"], statistics.fmean([260.0, 250.0]) - statistics.fmean([210.0, 216.0]))
    made = dict(figures(load_runs(tmp_path)))
    assert "test-ppl-ptb-awd_lstm.png" in made and "test-ppl-vs-d-ptb-awd_lstm.png" not in made  # one d
    (ax,) = made["valid-vs-lr-ptb-awd_lstm.png"].axes
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["softmax", "MoS"] and ax.get_xlabel() == "learning rate"
    assert list(handles[1].lines[0].get_xdata()) == [10.0, 20.0]
    assert list(handles[1].lines[0].get_ydata()) == [statistics.fmean([v * 1.05 for v in ppl[("mos", lr)]]) for lr in (10.0, 20.0)]
    assert "d = 32" in all_text(made["valid-vs-lr-ptb-awd_lstm.png"])


def test_prose_quoting_the_marker_syntax_is_not_a_marker(tmp_path):
    """Only a marker on a line of its own counts: the README documents the syntax in backticks, and the
    project's own README passes ``scripts/readme_tables.py --check`` (its tables match the summaries)."""
    import subprocess
    import sys
    from pathlib import Path

    from lm.readme import OPENING

    text = "Tables sit between `<!-- table:FOLDER -->` and `<!-- /table:FOLDER -->`.\n<!-- table:results/x -->\n"
    assert [m["name"] for m in OPENING.finditer(text)] == ["results/x"]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "scripts" / "readme_tables.py"), str(root / "README.md"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rank_rows_and_the_whole_split_table(tmp_path):
    """The main table says how many rows its rank used (seeds that differ: joined); runs with a rank-full.json
    get a table of their own, and their rank.json stays the main table's rank."""
    softmax = [study_run(tmp_path, "softmax", 64, None, seed, 150.0 + seed) for seed in (1, 2)]
    mos = {k: study_run(tmp_path, "mos", 64, k, 1, 145.0 + k) for k in (1, 5)}
    fewer = json.loads((softmax[1] / "rank.json").read_text())
    (softmax[1] / "rank.json").write_text(json.dumps({**fewer, "n_rows": 2000}))
    full = [(softmax[0], 66, 61.3), (mos[1], 66, 50.0), (mos[5], 4130, 90.5)]  # in table order
    for run_dir, rank, effective in full:
        (run_dir / "rank-full.json").write_text(json.dumps({
            "rank": {"nr": rank, "numpy": rank - 1}, "n_rows": 73760, "split": "valid", "effective_rank": effective,
            "softmax_rank_bound": 66, "protocol": {"batch_size": 1, "max_rows": None}}))
    out = write_summary(tmp_path)
    frame = out["frame"]
    assert list(frame["head"]) == ["softmax", "mos", "mos"] and list(frame["n_components"][1:]) == [1, 5]
    assert list(frame["rank_rows"]) == ["2000/5000", 5000, 5000]
    assert list(frame["rank_nr"]) == [66, 40 * 64, 40 * 64]  # from rank.json, not rank-full.json
    assert [r["rank_rows"] for r in read_csv(out["csv"])] == ["2000/5000", "5000", "5000"]
    md = out["markdown"].read_text()
    main_header = next(line for line in md.splitlines() if line.startswith("| head |"))
    header = main_header.split(" | ")
    assert header[header.index("effective rank") + 1] == "rank rows"
    assert "| 3.0 | 2000/5000 |" in md and "| 3.0 | 5,000 |" in md

    table = md.split("## Rank of the whole split (state carried, float64 head)")[1].split("## Plots")[0]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert lines[0] == ("| corpus | body | head | K | d | seed | split | columns | rows | rank (nr) | rank (numpy) | "
                        "effective rank | softmax bound |")
    assert lines[2:] == ["| ptb | awd_lstm | softmax | - | 64 | 1 | valid | 1 | 73,760 | 66 | 65 | 61.3 | 66 |",
                         "| ptb | awd_lstm | mos | 1 | 64 | 1 | valid | 1 | 73,760 | 66 | 65 | 50.0 | 66 |",
                         "| ptb | awd_lstm | mos | 5 | 64 | 1 | valid | 1 | 73,760 | 4,130 | 4,129 | 90.5 | 66 |"]
    written = json.loads(out["json"].read_text())["full_rank"]
    assert [(r["run"], r["rank_nr"], r["rank_rows"], r["d"]) for r in written["rows"]] == [
        (run_dir.name, rank, 73760, 64) for run_dir, rank, _ in full]
    assert "rank-full" not in out["csv"].read_text() and out["full_rank_table"] in md

    # a README marker FOLDER#rank-full gets the same rows (K named as in the summary), without its title
    from lm.readme import update_readme

    readme = tmp_path.parent / "README.md"
    readme.write_text(f"Intro.\n\n<!-- table:{tmp_path.name}#rank-full -->\n<!-- /table:{tmp_path.name}#rank-full -->\n")
    update_readme(readme)
    block = [line for line in readme.read_text().splitlines() if line.startswith("|")]
    assert block == lines and "Rank of the whole split" not in readme.read_text()


def test_no_whole_split_rank_no_extra_table(tmp_path):
    from lm.readme import update_readme

    study_run(tmp_path, "softmax", 16, None, 1, 300.0)
    out = write_summary(tmp_path)
    assert "whole split" not in out["markdown"].read_text() and out["full_rank"].empty
    assert "full_rank" not in json.loads(out["json"].read_text()) and out["full_rank_table"] == ""
    readme = tmp_path.parent / "README.md"
    readme.write_text(f"<!-- table:{tmp_path.name}#rank-full -->\n<!-- /table:{tmp_path.name}#rank-full -->\n")
    with pytest.raises(UserError, match="no run of .* has a rank-full.json"):
        update_readme(readme)


def test_where_each_head_stands_at_softmax_seconds(tmp_path):
    """The matched-compute columns against hand-computed values. The fixture's validation curve is
    t (1 + 100 / step) at steps 100..600, at 0.1 s a step times 1 (softmax), 3 (MoS), 1.5 (r-softmax).
    Softmax seeds t = 300 and 330 end at 350 and 385 after 60 s: target (350 + 385) / 2 = 367.5. MoS t = 250
    reaches it at step 300 (333.3, 90 s), t = 290 at step 400 (362.5, 120 s): 105 s, 1.75x softmax's 60 s;
    within 60 s their last evaluations are step 200: 375 and 435, mean 405. r-softmax (t = 400, at best 466.7)
    never gets there; at 60 s it is at step 400: 500."""
    from lm.readme import update_readme
    from lm.summary import matched_compute_markdown

    for head, values in (("softmax", (300.0, 330.0)), ("mos", (250.0, 290.0)), ("r_softmax", (400.0,))):
        for seed, value in enumerate(values, 1):
            study_run(tmp_path, head, 16, None, seed, value)
    out = write_summary(tmp_path)
    rows = {r["head"]: r for _, r in out["frame"].iterrows()}
    assert pd.isna(rows["softmax"]["softmax_train_time_s"])  # softmax is the reference, not compared with itself
    mos, sparse = rows["mos"], rows["r_softmax"]
    assert (mos["softmax_train_time_s"], sparse["softmax_train_time_s"]) == (pytest.approx(60.0), pytest.approx(60.0))
    assert mos["softmax_final_valid_ppl"] == pytest.approx(367.5)
    assert mos["valid_ppl_at_softmax_time"] == pytest.approx(405.0)
    assert mos["time_to_softmax_valid_ppl_s"] == pytest.approx(105.0) and mos["seeds_reaching_softmax_valid_ppl"] == 2
    assert sparse["valid_ppl_at_softmax_time"] == pytest.approx(500.0)
    assert pd.isna(sparse["time_to_softmax_valid_ppl_s"]) and sparse["seeds_reaching_softmax_valid_ppl"] == 0

    table = matched_compute_markdown(out["frame"], title=False).splitlines()
    assert table[0] == ("| head | lr | d | seeds | softmax: training s | softmax: final valid ppl | valid ppl at softmax's "
                        "seconds | training s to softmax's final valid ppl | × softmax's seconds |")
    assert table[2:] == ["| mos | 20 | 16 | 2 | 60 | 367.50 | 405.00 | 105 | 1.75 |",  # the fixture's rates differ
                         "| r_softmax | 5 | 16 | 1 | 60 | 367.50 | 500.00 | not reached (0 of 1 seeds) | - |"]
    assert "## At softmax's compute" in out["markdown"].read_text()
    written = {r["head"]: r for r in json.loads(out["json"].read_text())["rows"]}
    assert written["mos"]["time_to_softmax_valid_ppl_s"] == pytest.approx(105.0)

    # README markers: FOLDER#matched-compute and FOLDER#CORPUS/matched-compute give these rows without the title
    readme = tmp_path.parent / "README.md"
    for fragment in ("matched-compute", "ptb/matched-compute"):
        name = f"{tmp_path.name}#{fragment}"
        readme.write_text(f"<!-- table:{name} -->\n<!-- /table:{name} -->\n")
        update_readme(readme)
        assert [line for line in readme.read_text().splitlines() if line.startswith("|")] == table
    readme.write_text(f"<!-- table:{tmp_path.name}#wikitext-2/matched-compute -->\n"
                      f"<!-- /table:{tmp_path.name}#wikitext-2/matched-compute -->\n")
    with pytest.raises(UserError, match="has no runs on corpus wikitext-2"):
        update_readme(readme)


def test_no_softmax_beside_a_head_no_matched_compute_table(tmp_path):
    from lm.readme import update_readme

    study_run(tmp_path, "mos", 16, None, 1, 300.0)
    out = write_summary(tmp_path)
    assert "At softmax's compute" not in out["markdown"].read_text()
    readme = tmp_path.parent / "README.md"
    readme.write_text(f"<!-- table:{tmp_path.name}#matched-compute -->\n<!-- /table:{tmp_path.name}#matched-compute -->\n")
    with pytest.raises(UserError, match="no run of .* has validation curves beside a softmax run"):
        update_readme(readme)


def test_unargmaxable_share_is_a_column(tmp_path):
    """rank.json's unargmaxable check becomes the share of the vocabulary that can never be the top token,
    averaged over seeds; heads the check does not apply to, and checks that left tokens undetermined, get
    none."""
    from lm.summary import markdown_tables, runs_frame, summarize, unargmaxable_fraction

    checks = {1: {"applicable": True, "n_tokens": 10000, "n_unargmaxable": 9000, "undetermined": 0},
              2: {"applicable": True, "n_tokens": 10000, "n_unargmaxable": 8000, "undetermined": []}}
    for seed in (1, 2):
        run_dir = study_run(tmp_path, "softmax", 16, None, seed, 300.0 + seed)
        rank = json.loads((run_dir / "rank.json").read_text())
        (run_dir / "rank.json").write_text(json.dumps({**rank, "unargmaxable": checks[seed]}))
    run_dir = study_run(tmp_path, "mos", 16, None, 1, 250.0)
    rank = json.loads((run_dir / "rank.json").read_text())
    (run_dir / "rank.json").write_text(json.dumps({**rank, "unargmaxable": {"applicable": False, "reason": "a mixture"}}))
    runs = load_runs(tmp_path)
    assert sorted(unargmaxable_fraction(run) or 0.0 for run in runs) == [0.0, 0.8, 0.9]
    cut_short = {"rank": {"unargmaxable": {**checks[1], "undetermined": 12}}}
    assert unargmaxable_fraction(cut_short) is None and unargmaxable_fraction({"rank": None}) is None
    frame = summarize(runs)
    shares = dict(zip(frame["head"], frame["unargmaxable_fraction"]))
    assert shares["softmax"] == pytest.approx(0.85, rel=1e-12) and pd.isna(shares["mos"])
    per_run = runs_frame(runs)
    assert sorted(per_run["unargmaxable_fraction"].dropna()) == [0.8, 0.9]
    lines = markdown_tables(frame).splitlines()
    header = next(line for line in lines if line.startswith("| head")).split(" | ")
    column = header.index("unargmaxable tokens")
    assert next(line for line in lines if line.startswith("| softmax")).split(" | ")[column] == "85.0%"
    assert next(line for line in lines if line.startswith("| mos")).split(" | ")[column] == "-"


def test_one_seed_per_head_has_no_spread_in_the_title(tmp_path):
    """Titles speak of means, bands and bars only when some head has several seeds."""
    import matplotlib.pyplot as plt

    from lm.plots import figures

    def rank(d: int) -> dict:
        return {"rank": {"numpy": d + 2}, "singular_values": spectrum(48, d + 2), "effective_rank": 3.0}

    for head in ("softmax", "mos"):
        fake_run(tmp_path / "one", head, 1)
        for seed in (1, 2):
            fake_run(tmp_path / "two", head, seed)
            for d in (8, 16):
                fake_run(tmp_path / "d" / str(seed), head, seed, d=d, rank=rank(d))

    def titles(root: Path) -> dict[str, str]:  # the spectrum draws the first seed and says so
        made = figures(load_runs(root))
        for _, fig in made:
            plt.close(fig)
        return {file.split("-toy")[0]: fig._suptitle.get_text().replace("\n", " ")
                for file, fig in made if not file.startswith("spectrum")}

    assert titles(tmp_path / "one")["test-ppl"].startswith("Test perplexity per head (1 seed)")
    assert "2 seeds; dots: seeds, open marker and bar: mean ± 1 s.d." in titles(tmp_path / "two")["test-ppl"]
    one, two = titles(tmp_path / "d" / "1"), titles(tmp_path / "d")  # seed 1 alone; seeds 1 and 2
    assert {"test-ppl-vs-d", "rank-vs-d", "valid-ppl"} <= set(one)
    for name, title in one.items():
        assert "(1 seed" in title and "mean of" not in title and "band" not in title and "s.d." not in title, name
    assert all("mean of 2 seeds" in two[name] for name in ("test-ppl-vs-d", "rank-vs-d", "valid-ppl")), two


def test_titles_break_after_a_semicolon_before_mid_phrase():
    from lm.plots import _wrap

    title = "Spectra (first seed)\nWikiText-2, AWD-LSTM, d = 32; budget 2.09 million training tokens (3,103 steps)"
    assert _wrap(title, 76) == ["Spectra (first seed)", "WikiText-2, AWD-LSTM, d = 32;",
                                "budget 2.09 million training tokens (3,103 steps)"]
    assert _wrap("short; enough", 76) == ["short; enough"]
    assert [len(line) <= 20 for line in _wrap("a phrase with no semicolon that is too long", 20)] == [True, True, True]
