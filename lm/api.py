"""The Python API for notebooks: train a config, load a finished run, evaluate it.

>>> from lm.api import load_config, train, load_run, evaluate_run
>>> result = train(load_config("configs/ptb-lite-lstm.yaml", ["head.name=mos"]))
>>> model, corpus, config = load_run("runs/awd_lstm-ptb-lite-mos-s141")
>>> table = summarize("results/ground-truth")   # a pandas.DataFrame, one row per (corpus, body, head, d, setting)
>>> report = probe_pretrained("../shared/models/aidreams260K", data="../shared/data/wikitext-2/wiki.test.tokens")
"""

from __future__ import annotations

from pathlib import Path

from lm.build import build_model
from lm.checkpoint import checkpoint_exists, load_checkpoint, load_latest, load_state
from lm.config import ExperimentConfig, load_config
from lm.data import Vocabulary, load_configured_corpus
from lm.errors import UserError
from lm.evaluate import evaluate
from lm.train import resolve_device, train

__all__ = ["load_config", "train", "load_run", "evaluate_run", "summarize", "probe_pretrained"]


def load_run(run_dir: str | Path, device: str = "cpu", data_path: str | None = None, checkpoint: str = "best"):
    """Load a run folder: ``(model in eval mode, corpus, config)``.

    ``checkpoint`` is ``best`` (falls back to ``last`` when no validation has finished yet) or ``last``.
    The corpus is the one of the run's config (or ``data_path``); its vocabulary must match the one saved
    in the checkpoint.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist.")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a run folder: it has no config.yaml.")
    config: ExperimentConfig = load_config(config_path)
    if data_path is not None:
        config.data.path = data_path
    candidates = [run_dir / "best.pt", run_dir / "last.pt"] if checkpoint == "best" else [run_dir / "last.pt"]
    path = next((p for p in candidates if checkpoint_exists(p)), None)
    if path is None:
        raise UserError(f"run folder {run_dir} has no checkpoint yet (best.pt or last.pt).")
    needed = ("model", "vocab")
    state = load_checkpoint(path, required=needed) if path.name == "best.pt" else load_latest(path, required=needed)[0]
    corpus = load_configured_corpus(config.data)
    saved = Vocabulary.from_state_dict(state["vocab"])
    if saved.fingerprint() != corpus.vocab.fingerprint():
        raise UserError(
            f"the checkpoint in {run_dir} was trained with another vocabulary ({len(saved)} entries) than the corpus "
            f"at {config.data.path or config.data.name} ({len(corpus.vocab)} entries)."
        )
    model = build_model(config, len(corpus.vocab))
    load_state(model, state["model"], path)
    model.to(resolve_device(device)).eval()
    return model, corpus, config


def evaluate_run(run_dir: str | Path, split: str = "test", batch_size: int | None = None,
                 device: str = "cpu", data_path: str | None = None, dynamic: bool = False) -> dict:
    """Perplexity of a run's best checkpoint on one split (batch size from the config unless given).

    ``dynamic``: also ``ppl_dynamic``, the perplexity under dynamic evaluation (:mod:`lm.dynamic_eval`,
    settings ``train.dynamic_eval_*`` of the run's config).
    """
    if split not in ("train", "valid", "test"):
        raise UserError(f"split must be train, valid or test, not {split!r}.")
    model, corpus, config = load_run(run_dir, device=device, data_path=data_path)
    t = config.train
    if batch_size is None:
        batch_size = t.test_batch_size if split == "test" else t.eval_batch_size
    if batch_size < 1:
        raise UserError("the batch size must be at least 1.")
    result = evaluate(model, corpus.split(split), batch_size, t.eval_bptt or t.bptt)
    if dynamic:
        from lm.dynamic_eval import DynamicEvaluation

        evaluation = DynamicEvaluation.from_config(t)
        evaluation.collect_statistics(model, corpus.train)
        adapted = evaluation.evaluate(model, corpus.split(split))
        result.update(ppl_dynamic=adapted["ppl"], loss_dynamic=adapted["loss"], dynamic_eval=evaluation.settings())
    return {"split": split, **result}


def summarize(results_dir: str | Path, per_run: bool = False):
    """The summary table of the finished runs under ``results_dir`` as a :class:`pandas.DataFrame`, the
    numbers of ``softmax-bench plot`` (nothing is written): one row per (corpus, body, head, d, setting) with
    mean, standard deviation, 95% confidence interval and number of seeds, and the difference to softmax
    with Welch's p-value (:func:`lm.summary.summarize`); with ``per_run`` one row per run instead."""
    from lm import summary

    runs = summary.load_runs(results_dir)
    if not runs:
        raise UserError(f"{results_dir} holds no finished run (no result.json below it).")
    return summary.runs_frame(runs) if per_run else summary.summarize(runs)


def probe_pretrained(model: str, **options) -> dict:
    """The softmax bottleneck of a pretrained Hugging Face causal LM (a Hub id or a local folder): writes
    its probe folder and returns the report. Options as :func:`bottleneck_analysis.pretrained.probe`
    (``revision``, ``data``, ``n_contexts``, ``device``, ``dtype``, ``output_dir``, ...); for a model
    object already in memory use :func:`bottleneck_analysis.probe.probe_model`. Needs the ``hf`` extra."""
    from bottleneck_analysis.pretrained import probe

    return probe(model, **options)
