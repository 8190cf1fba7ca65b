"""Load a Hugging Face causal LM and a text, run :func:`bottleneck_analysis.probe.probe_model`, write a folder.

``transformers`` is an optional dependency (``pip install -e ".[hf]"``); it is imported only here. A
MODEL is a local folder (``save_pretrained`` layout: ``config.json``, weights, tokenizer files) or a Hub
id. Without a network (or with ``HF_HUB_OFFLINE=1``) a Hub id is looked up in the local Hugging Face
cache only, so a missing model fails at once with one sentence instead of waiting for retries.

The folder holds ``probe.json`` (the report with its provenance: model id, revision, the Hub commit of
the weights where known, or the SHA-256 of local weight files, library versions, the command),
``head_spectrum.png`` and ``logprob_spectrum.png``; :func:`bottleneck_analysis.probe_plots.compare_probes`
compares several such folders (``softmax-bench plot``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from bottleneck_analysis.probe import DEFAULT_N_CONTEXTS, Progress, probe_model
from bottleneck_analysis.probe_plots import REPORT_FILE, compare_probes, plot_probe
from lm.errors import UserError
from lm.io import atomic_write_json

DTYPES = {"auto": "auto", "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
TEST_FILES = ("wiki.test.tokens", "test.txt", "ptb.test.txt")
HUB_TIMEOUT_S = 5.0
HASH_LIMIT_BYTES = 2 * 2**30  # local weight files are hashed up to this total size
INSTALL_HINT = 'install it with pip install -e ".[hf]" (or pip install transformers safetensors)'


def _transformers():
    try:
        import transformers
    except ImportError as error:
        raise UserError(f"probing a pretrained model needs the Hugging Face transformers library; {INSTALL_HINT}.") from error
    return transformers


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is switched off (``HF_HUB_OFFLINE``)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return True
    return bool(constants.HF_HUB_OFFLINE)


def hub_reachable() -> bool:
    """Whether the Hub answers within a few seconds (through any configured proxy)."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session

        get_session().head(constants.ENDPOINT, timeout=HUB_TIMEOUT_S)
    except Exception:  # any transport error means: not reachable now
        return False
    return True


def load_pretrained(model: str, revision: str | None = None, *, dtype: str = "auto", device: str = "cpu"):
    """``(model in eval mode on device, tokenizer, source)``; ``source`` records id, folder, revision, commit.

    Raises:
        UserError: without transformers, for a missing folder, an unknown dtype, or a Hub id that
            cannot be loaded (offline and not cached, or not found).
    """
    transformers = _transformers()
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    local = Path(model).expanduser()
    is_local = local.is_dir()
    if not is_local and (model.startswith((".", "/", "~")) or local.exists() or model.count("/") > 1):
        raise UserError(f"{model} is neither a model folder nor a Hugging Face model id.")
    if is_local and revision is not None:
        raise UserError(f"--revision needs a Hub id; {model} is a local folder (one revision).")
    offline = not is_local and hub_offline()
    unreachable = not is_local and not offline and not hub_reachable()
    local_only = is_local or offline or unreachable
    source = str(local) if is_local else model
    options = {"revision": revision, "local_files_only": local_only}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **options)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], **options)
    except (OSError, ValueError, KeyError) as error:
        if local_only and not is_local:
            why = "the Hub is switched off (HF_HUB_OFFLINE)" if offline else "the Hugging Face Hub cannot be reached"
            raise UserError(
                f"{model} is not in the local Hugging Face cache and {why}; download it where there is a network "
                f"(hf download {model} --local-dir DIR) and pass DIR as MODEL."
            ) from error
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"loading {model}{f' at revision {revision}' if revision else ''} failed: {reason}") from error
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()
    try:
        loaded.to(device)
    except (RuntimeError, AssertionError) as error:
        raise UserError(f"cannot move the model to device {device!r}: {error}") from error
    loaded.eval()
    info = {
        "id": model if not is_local else local.name,
        "path": str(local.resolve()) if is_local else None,
        "revision": revision,
        "commit_hash": getattr(loaded.config, "_commit_hash", None),
        "weights_sha256": _weights_sha256(local) if is_local else None,
        "architecture": (getattr(loaded.config, "architectures", None) or [type(loaded).__name__])[0],
        "loaded_from": "local folder" if is_local else ("local Hugging Face cache" if local_only else "Hugging Face Hub"),
        "dtype_requested": dtype,
    }
    return loaded, tokenizer, info


def _weights_sha256(folder: Path) -> dict[str, str] | None:
    """SHA-256 of each weight file of a local folder (None when they total more than 2 GiB)."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth") and p.is_file())
    if not files or sum(p.stat().st_size for p in files) > HASH_LIMIT_BYTES:
        return None
    digests = {}
    for path in files:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(2**20), b""):
                digest.update(chunk)
        digests[path.name] = digest.hexdigest()
    return digests


def read_text(data: str) -> tuple[str, dict]:
    """The text of ``data``: a text file, a corpus folder (its test split), or a corpus name of
    :data:`lm.data.hub.HUB_CORPORA` (downloaded once); and a description of where it came from."""
    path = Path(data).expanduser()
    if path.is_file():
        file = path
    elif path.is_dir():
        file = next((path / name for name in TEST_FILES if (path / name).is_file()), None)
        if file is None:
            raise UserError(f"the folder {path} has no test split ({', '.join(TEST_FILES)}); give a text file instead.")
    else:
        from lm.data.hub import HUB_CORPORA, download_corpus

        if data not in HUB_CORPORA:
            raise UserError(f"--data {data!r} is neither a text file, a corpus folder, nor one of {', '.join(HUB_CORPORA)}.")
        folder = download_corpus(data)
        file = next(folder / name for name in TEST_FILES if (folder / name).is_file())
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {file} as UTF-8 text ({type(error).__name__}).") from error
    if not text.strip():
        raise UserError(f"{file} holds no text.")
    return text, {"data": data, "file": str(file.resolve()), "n_chars": len(text), "n_bytes": len(text.encode("utf-8"))}


def tokenize(tokenizer, text: str, max_tokens: int | None = None) -> tuple[list[int], int | None, dict]:
    """``(token ids with a leading BOS where the tokenizer has one, UTF-8 bytes of the predicted tokens'
    text, description)``; ``max_tokens`` keeps the first tokens (BOS included)."""
    fast = bool(getattr(tokenizer, "is_fast", False))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast, verbose=False)
    ids = list(encoded["input_ids"])
    offsets = list(encoded["offset_mapping"]) if fast else None
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        bos = getattr(tokenizer, "eos_token_id", None)  # GPT-2 style: the end-of-text token opens a document
    prefix = [] if bos is None else [int(bos)]
    if max_tokens is not None:
        if max_tokens < 2:
            raise UserError(f"--max-tokens must be at least 2, got {max_tokens}.")
        ids = ids[: max_tokens - len(prefix)]
    if len(prefix) + len(ids) < 2:
        raise UserError("the text gives fewer than 2 tokens.")
    first_predicted = 0 if prefix else 1  # index into ids of the first predicted token
    n_bytes = None
    if offsets is not None:
        kept = offsets[first_predicted : len(ids)]
        start, end = kept[0][0], max(e for _, e in kept)
        n_bytes = len(text[start:end].encode("utf-8"))
    else:
        n_bytes = len(tokenizer.decode(ids[first_predicted:]).encode("utf-8"))
    return prefix + ids, n_bytes, {
        "n_tokens": len(prefix) + len(ids), "prefix_token": prefix[0] if prefix else None,
        "n_bytes_predicted": n_bytes, "bytes_from": "tokenizer offsets" if offsets is not None else "decoded text",
        "truncated_to": max_tokens,
    }


def probe(
    model: str,
    *,
    revision: str | None = None,
    data: str = "wikitext-2",
    n_contexts: int = DEFAULT_N_CONTEXTS,
    context_length: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    output_dir: str | Path | None = None,
    relative_tolerances: Iterable[float] = (),
    unargmaxable: bool = True,
    box: float | None = None,
    unargmaxable_seconds: float | None = None,
    n_workers: int | None = None,
    command: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Probe one model (one revision) and write its folder; returns the report (``files`` names them)."""
    from lm.provenance import provenance

    origin = provenance(device)  # the code and machine at the start (the commit that ran)
    text, data_info = read_text(data)
    loaded, tokenizer, source = load_pretrained(model, revision, dtype=dtype, device=device)
    ids, n_bytes, token_info = tokenize(tokenizer, text, max_tokens)
    report = probe_model(
        loaded, ids, n_contexts=n_contexts, context_length=context_length, stride=stride, n_bytes=n_bytes,
        relative_tolerances=relative_tolerances, unargmaxable=unargmaxable, box=box,
        unargmaxable_seconds=unargmaxable_seconds, n_workers=n_workers, progress=progress,
    )
    folder = Path(output_dir) if output_dir is not None else default_output_dir(model, revision)
    report["model"] = {**source, **report["model"]}
    report["data"] = {**data_info, **token_info}
    report["provenance"] = {**origin, "command": command, "versions": versions()}
    report["files"] = plot_probe(report, folder)
    report["files"]["report"] = REPORT_FILE
    report["output_dir"] = str(folder)
    atomic_write_json(folder / REPORT_FILE, report)
    return report


def probe_revisions(model: str, revisions: list[str | None], output_dir: str | Path | None = None, **options) -> list[dict]:
    """:func:`probe` for each revision, each into ``output_dir/<revision>``, then their comparison in ``output_dir``."""
    if len(revisions) <= 1:
        return [probe(model, revision=revisions[0] if revisions else None, output_dir=output_dir, **options)]
    root = Path(output_dir) if output_dir is not None else default_output_dir(model, None)
    reports = [probe(model, revision=r, output_dir=root / _slug(r), **options) for r in revisions]
    compare_probes(root)
    return reports


def default_output_dir(model: str, revision: str | None) -> Path:
    name = Path(model).name if Path(model).expanduser().is_dir() else model
    return Path("probes") / (_slug(name) + (f"@{_slug(revision)}" if revision else ""))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def versions() -> dict:
    import numpy
    import scipy

    found = {"torch": torch.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__}
    for name in ("transformers", "tokenizers", "safetensors", "huggingface_hub"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = None
    return found
