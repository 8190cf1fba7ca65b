"""Config loading: YAML sections, dotted overrides, type checks, impossible values, every shipped config."""

from pathlib import Path

import pytest
import yaml

from lm.build import build_model
from lm.config import load_config, run_name, to_dict, valid_keys
from lm.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in ROOT.glob("configs/**/*.yaml") if "suites" not in p.parts)  # suites: tests/test_suite.py


def test_defaults_and_overrides(tiny_corpus):
    config = load_config(None, [f"data.path={tiny_corpus}", "train.seed=2", "head.name=mos", "train.lr=1", "model.d_last=null"])
    assert config.train.seed == 2 and config.head.name == "mos"
    assert isinstance(config.train.lr, float) and config.train.lr == 1.0
    assert config.model.d_last is None
    assert run_name(config) == "awd_lstm-corpus-mos-s2"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.sed=2", "unknown config key train.sed"),
        ("train.seed=two", "must be an integer"),
        ("train.seed=true", "must be an integer"),
        ("model.tie_weights=3", "true or false"),
        ("head.shared.n_components=0", "head option n_components must be a positive integer"),
        ("head.r_softmax.r=1.5", "head option r must lie in [0, 1]"),
        ("train.bptt=0", "train.bptt must be at least 1"),
        ("model.dropout_input=-0.1", "dropout_input must be in [0, 1)"),
        ("head.name=gumbel", "unknown head 'gumbel'"),
        ("model.body=gru", "model.body must be"),
        ("train.lr=-1", "train.lr must be positive"),
        ("noequals", "section.key=value"),
    ],
)
def test_bad_values_are_one_sentence(tiny_corpus, override, fragment):
    with pytest.raises(UserError) as info:
        load_config(None, [f"data.path={tiny_corpus}", override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_yaml_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(UserError, match="valid keys are: .*train.epochs"):
        load_config(path)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_every_key_is_documented():
    assert "train.max_steps" in valid_keys() and "head.n_components" in valid_keys()
    assert "head.shared.dropout_latent" in valid_keys() and "head.r_softmax.r" in valid_keys()


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["head.name=softmax", "head.n_components=3"], "head softmax has no option n_components; it takes no options"),
        (["head.name=mos", "head.r=0.5"], "head mos has no option r; its options are n_components, d_latent, dropout_latent"),
        (["head.name=mos", "head.n_component=3"], "head mos has no option n_component; its options are n_components"),
        (["head.name=r_softmax", "head.mos.r=0.5"], "head mos has no option r; its options are"),
        (["head.shared.r=2"], "head option r must lie in [0, 1]"),  # checked for r_softmax though softmax is chosen
        (["head.shared.rr=0.5"], "head.shared of config has option 'rr', which no head takes"),
        (["head.nohead.r=0.5"], "unknown config key head.nohead.r"),
        (["head.name=mos", "head.d_latent=two"], "config key head.d_latent must be an integer"),
    ],
)
def test_a_head_takes_only_its_own_options(tiny_corpus, overrides, fragment):
    with pytest.raises(UserError) as info:
        load_config(None, [f"data.path={tiny_corpus}", *overrides])
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_head_options_resolve_with_defaults_blocks_and_precedence(tiny_corpus):
    from lm.heads import HEADS, head_options

    for name in HEADS:  # the resolved config holds every option of the head, defaults filled in
        head = to_dict(load_config(None, [f"data.path={tiny_corpus}", f"head.name={name}"]))["head"]
        assert head == {"name": name, **{k: default for k, (_, default) in head_options(name).items()}}
    base = [f"data.path={tiny_corpus}", "head.shared.n_components=4", "head.shared.r=0.1", "head.mos.n_components=6"]
    assert to_dict(load_config(None, [*base, "head.name=moss"]))["head"]["n_components"] == 4  # shared
    assert to_dict(load_config(None, [*base, "head.name=mos"]))["head"]["n_components"] == 6  # block beats shared
    assert to_dict(load_config(None, [*base, "head.name=mos", "head.n_components=7"]))["head"]["n_components"] == 7
    assert to_dict(load_config(None, [*base, "head.name=softmax"]))["head"] == {"name": "softmax"}
    assert to_dict(load_config(None, [*base, "head.name=r_softmax"]))["head"]["r"] == 0.1


def test_resolved_config_round_trips_and_legacy_run_folders_still_load(tmp_path, tiny_corpus):
    from lm.config import save_config

    config = load_config(ROOT / "configs/ptb-lite-lstm.yaml", [f"data.path={tiny_corpus}", "head.name=mos"])
    save_config(config, tmp_path / "config.yaml")
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(config)
    # A config.yaml of a run folder written before heads had their own options: every option of that time.
    legacy = to_dict(config)
    legacy["head"] = {"name": "mos", "n_components": 3, "d_latent": None, "dropout_latent": 0.1, "r": 0.5, "smoothing": 1e-6}
    (tmp_path / "legacy.yaml").write_text(yaml.safe_dump(legacy))
    assert to_dict(load_config(tmp_path / "legacy.yaml")) == to_dict(config)


def test_inapplicable_head_option_exits_2_with_one_sentence(tmp_path, tiny_corpus):
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "lm.cli", "train", str(ROOT / "configs/ptb-lite-lstm.yaml"), f"data.path={tiny_corpus}",
         "head.name=softmax", "head.n_components=3", f"run.output_dir={tmp_path}"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "softmax-bench: error: head softmax has no option n_components; it takes no options besides name."
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_builds(path):
    data = yaml.safe_load(path.read_text())["data"]
    # A suite's base config may leave the corpus to the suite (a ground-truth corpus it writes first).
    config = load_config(path, [] if data.get("path") or data.get("name") else ["data.path=set-by-the-suite"])
    text = path.read_text()
    assert text.startswith("#") and "command: softmax-bench" in text, "each config names the command that runs it"
    # Build at the config's own sizes (paper-scale ones included) with a small vocabulary.
    model = build_model(config, vocab_size=50)
    assert model.n_params() > 0
    assert set(to_dict(config)) == {"data", "model", "head", "train", "run"}


@pytest.mark.parametrize("name", ["ground-truth-lstm.yaml", "ptb-lite-lstm.yaml", "wikitext-2-lite-lstm.yaml", "ptb-lite-transformer.yaml"])
def test_every_head_of_the_registry_runs_from_the_grid_base_configs(name, tiny_corpus):
    """A suite picks up a new head by adding its name to a head.name grid: its base file must take it."""
    from lm.heads import HEADS

    for head in HEADS:
        config = load_config(ROOT / "configs" / name, [f"data.path={tiny_corpus}", f"head.name={head}"])
        assert build_model(config, vocab_size=50).n_params() > 0
