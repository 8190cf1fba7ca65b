"""Typed experiment configuration: dataclasses, YAML loading, dotted overrides, validation.

A YAML file is a complete :class:`ExperimentConfig` with the sections ``data``, ``model``, ``head``,
``train`` and ``run``. ``key=value`` overrides address fields with dots (``train.seed=2``); values are
parsed as YAML scalars and checked against the field's type. Every problem is a :class:`UserError`
with one sentence that names the key.

The ``head`` section holds the head's name and that head's own options, which are the keyword
parameters of its class in :data:`lm.heads.HEADS` (types from the annotations, defaults from the
signature, ranges checked by the class itself)::

    head:
      name: mos
      n_components: 15              # an option of the chosen head (head.n_components=15)
      shared: {dropout_latent: 0.1}  # optional: for whichever head takes the option (head.shared.OPTION)
      r_softmax: {r: 0.0}           # optional: only when that head is chosen (head.r_softmax.r=0.0)

The two optional blocks let one base file serve a grid over heads. An option of the chosen head that it
does not take is an error that lists the options it does take; a block's options are checked against
every head they apply to, whichever head is chosen. The chosen head's options win over its block, which
wins over ``shared``, which wins over the head's defaults. The resolved config (``to_dict``, the run
folder's ``config.yaml``) holds the name and every option of the chosen head, defaults filled in, and no
blocks.

Mapping to the flag names of the AWD-LSTM (Merity et al. 2017) and MoS (Yang et al. 2018) code is given
in the comment of each field, so paper settings can be checked line by line.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lm.errors import UserError


@dataclass
class DataConfig:
    path: str | None = None  # local folder: train.txt/valid.txt/test.txt or wiki.{train,valid,test}.tokens (--data)
    name: str | None = None  # download by name when path is null: ptb, wikitext-2, wikitext-103
    tokenizer: str = "word"  # word (AWD-LSTM convention) or sentencepiece (trained on train only)
    sp_vocab_size: int = 8000  # sentencepiece vocabulary size
    cache_dir: str | None = None  # where downloads are kept (default ~/.cache/softmax-bench/NAME)
    root: str | None = None  # a folder of local corpora by name: with data.name and no data.path, ROOT/NAME is read (no download)


@dataclass
class ModelConfig:
    body: str = "awd_lstm"  # awd_lstm or transformer
    tie_weights: bool = True  # tie the head's decoder to the input embedding (--tied)
    # AWD-LSTM
    d_embedding: int = 400  # input embedding size (--emsize)
    d_hidden: int = 1150  # LSTM hidden size (--nhid)
    n_layers: int = 3  # LSTM layers (--nlayers)
    d_last: int | None = None  # last LSTM layer size (--nhidlast in MoS); null: d_embedding if tied softmax, else d_hidden
    dropout_embedding: float = 0.1  # drop whole words of the embedding (--dropoute)
    dropout_input: float = 0.65  # locked dropout on the LSTM input (--dropouti)
    dropout_hidden: float = 0.3  # locked dropout between LSTM layers (--dropouth)
    dropout_output: float = 0.4  # locked dropout on the last LSTM output (--dropout)
    weight_drop: float = 0.5  # DropConnect on hidden-to-hidden weights (--wdrop)
    activation_regularization: float = 2.0  # AR coefficient (--alpha)
    temporal_activation_regularization: float = 1.0  # TAR coefficient (--beta)
    # causal transformer
    d_model: int = 256  # transformer width
    n_heads: int = 4  # attention heads
    d_ff: int | None = None  # feed-forward width (null: 4 * d_model)
    dropout: float = 0.1  # transformer dropout
    context_length: int = 256  # longest context, learned positions
    attention: str = "softmax"  # attention normalizer: softmax or r_softmax
    attention_r: float = 0.5  # sparsity r of r_softmax attention


@dataclass
class HeadConfig:
    name: str = "softmax"  # the output head, a key of lm.heads.HEADS (see lm/heads/README.md)
    options: dict[str, Any] = field(default_factory=dict)  # the head's own options; complete (defaults filled in) after __post_init__

    def __post_init__(self):
        self.options = resolve_head_options(self.name, self.options)


@dataclass
class TrainConfig:
    optimizer: str = "sgd"  # sgd (AWD-LSTM recipe, switches to averaged SGD) or adamw (warm-up + cosine)
    lr: float = 30.0  # learning rate (--lr)
    clip: float = 0.25  # gradient norm clipping, 0 for none (--clip)
    epochs: int = 500  # epochs (--epochs)
    max_steps: int | None = None  # stop after this many optimizer steps, fine-tuning included (smoke runs, benchmarks)
    batch_size: int = 20  # training batch size: number of contiguous columns (--batch_size)
    bptt: int = 70  # mean BPTT window length (--bptt)
    variable_bptt: bool = True  # AWD-LSTM's random window length around bptt (lr scaled by length / bptt)
    max_seq_len_delta: int = 40  # longest window is bptt + this (--max_seq_len_delta)
    weight_decay: float = 1.2e-6  # L2 weight decay (--wdecay)
    nonmono: int = 5  # switch to averaged SGD when validation is worse than the best of all but the last N (--nonmono)
    averaged_sgd: bool = True  # allow the switch to averaged SGD (sgd only)
    lr_schedule: str = "constant"  # sgd: constant (AWD-LSTM) or cosine (decay to 0 at the step budget, no warm-up); adamw is always warm-up + cosine
    warmup_steps: int = 100  # adamw: linear warm-up steps
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # adamw betas
    eval_batch_size: int = 10  # validation batch size (AWD-LSTM: 10)
    test_batch_size: int = 1  # test batch size (AWD-LSTM: 1)
    eval_bptt: int | None = None  # window length for evaluation (null: bptt)
    seed: int = 141  # seed of every generator (--seed)
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop, or rollback to the last checkpoint with a lower lr
    rollback_lr_factor: float = 0.5  # rollback: multiply the learning rate by this after each rollback
    checkpoint_every: int = 200  # optimizer steps between resumable checkpoints (0: only at epoch ends)
    log_every: int = 50  # optimizer steps between metric lines
    eval_every: int = 0  # optimizer steps between evaluations on a fixed validation subset (0: off)
    eval_subset_tokens: int = 10000  # the first N tokens of the validation split used for them
    precision: str = "fp32"  # fp32, bf16 or fp16 (torch.autocast on the body in training; heads, evaluation and rank stay float32/64)
    finetune_epochs: int = 0  # fine-tuning stage: averaged SGD restarted from best.pt, at most N epochs, stopped by the nonmono trigger (finetune.py; 0: none)
    finetune_lr: float | None = None  # learning rate of the fine-tuning stage (finetune.py --lr; null: train.lr)
    dynamic_eval: bool = False  # at the end also report dynamic-evaluation perplexities (Krause et al. 2018, MoS dynamiceval.py)
    dynamic_eval_lr: float = 0.002  # dynamic evaluation step size eta (dynamiceval.py --lr)
    dynamic_eval_lambda: float = 0.02  # decay rate back to the trained weights (--lamb; MoS PTB 0.075)
    dynamic_eval_epsilon: float = 0.001  # stabilizer of the RMS-normalized step (--epsilon; MoS WikiText-2 0.002)
    dynamic_eval_bptt: int = 5  # window length of each dynamic update (--bptt)
    dynamic_eval_stat_batch_size: int = 100  # batch size of the gradient statistics on the training split (--batch_size)
    dynamic_eval_max_batches: int | None = None  # at most this many batches for the statistics (null: all; --max_batches)


@dataclass
class RunConfig:
    output_dir: str = "runs"  # parent folder of run folders
    name: str | None = None  # run folder name (null: BODY-DATASET-HEAD-sSEED)
    device: str = "cpu"  # cpu, cuda, cuda:N or auto


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


_SECTION_TYPES = typing.get_type_hints(ExperimentConfig)
_LARGEST_INT = 2**63  # torch takes 64-bit integers
# The flat head section that every config.yaml held before heads had their own options (read-only support).
SHARED = "shared"  # the head block of options for whichever head takes them
_LEGACY_HEAD_OPTIONS = frozenset({"n_components", "d_latent", "dropout_latent", "r", "smoothing"})


def _show(value: Any) -> str:
    """``repr(value)``, shortened so that an error stays one readable sentence."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key_text(key: Any) -> str:
    """A config key as written when it is a plain printable word, else its shortened ``repr``."""
    plain = isinstance(key, str) and key.isprintable() and not any(c.isspace() for c in key) and len(key) <= 60
    return key if plain else _show(key)


def valid_keys() -> list[str]:
    """All dotted keys, e.g. ``train.seed``; for the head ``head.name``, ``head.OPTION`` for the options of
    every head and ``head.HEAD.OPTION`` (a per-head block)."""
    from lm.heads import HEADS, head_options

    keys = []
    for section, cls in _SECTION_TYPES.items():
        if section != "head":
            keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
            continue
        keys.append("head.name")
        options = {option: None for name in HEADS for option in head_options(name)}  # ordered union
        keys += [f"head.{option}" for option in options]
        keys += [f"head.{SHARED}.{option}" for option in options]
        keys += [f"head.{name}.{option}" for name in HEADS for option in head_options(name)]
    return keys


def _head_options_sentence(name: str) -> str:
    from lm.heads import head_options

    options = list(head_options(name))
    return f"its options are {', '.join(options)}" if options else "it takes no options besides name"


def resolve_head_options(name: Any, given: Any, where: str = "head") -> dict[str, Any]:
    """Every option of head ``name``: the ``given`` ones type-checked, the others at their defaults,
    then checked by building the head on the meta device (no memory), so its own range checks run."""
    import torch

    from lm.heads import HEADS, head_options

    name = _coerce("head.name", name, str)
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}.")
    if not isinstance(given, dict):
        raise UserError(f"{where} must be a mapping of options of head {name}, got {_show(given)}.")
    options = head_options(name)
    for key in given:
        if key not in options:
            raise UserError(f"head {name} has no option {_key_text(key)}; {_head_options_sentence(name)}.")
    resolved = {
        key: _coerce(f"head.{key}", given[key], annotation) if key in given else default
        for key, (annotation, default) in options.items()
    }
    with torch.device("meta"):
        HEADS[name](1, 2, **resolved)
    return resolved


def _head_from_dict(values: dict, where: str) -> HeadConfig:
    """The ``head`` section: name, the chosen head's options, and per-head blocks (see the module docstring)."""
    from lm.heads import HEADS, head_options

    values = dict(values)
    name = _coerce("head.name", values.pop("name", HeadConfig.name), str)
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}.")
    if set(values) == _LEGACY_HEAD_OPTIONS:
        # A config.yaml written before heads had their own options lists the options of every head;
        # the builder of that time passed the chosen head the ones it takes, so read it the same way.
        values = {key: value for key, value in values.items() if key in head_options(name)}
    # A block applies only when its head is chosen, but it is checked against its head either way.
    blocks = {
        key: resolve_head_options(key, values.pop(key), where=f"head.{key} of {where}")
        for key in [k for k in values if isinstance(k, str) and k in HEADS]
    }
    shared = _shared_options(values.pop(SHARED, None), where)
    taken = {key: value for key, value in shared.items() if key in head_options(name)}
    return HeadConfig(name=name, options={**taken, **blocks.get(name, {}), **values})


def _shared_options(shared: Any, where: str) -> dict[str, Any]:
    """``head.shared``: every option must be taken by some head and valid for each head that takes it."""
    from lm.heads import HEADS, head_options

    if shared is None:
        return {}
    if not isinstance(shared, dict):
        raise UserError(f"head.{SHARED} of {where} must be a mapping of head options, got {_show(shared)}.")
    every = {option for name in HEADS for option in head_options(name)}
    for key in shared:
        if key not in every:
            raise UserError(
                f"head.{SHARED} of {where} has option {_show(key)}, which no head takes; head options are "
                f"{', '.join(sorted(every))}."
            )
    for name in HEADS:
        resolve_head_options(name, {k: v for k, v in shared.items() if k in head_options(name)})
    return shared


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key {key} must be a list, got {_show(value)}.")
        return [_coerce(key, v, args[0]) for v in value]
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key {key} must be true or false, got {_show(value)}.")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key {key} must be an integer, got {_show(value)}.")
        if abs(value) >= _LARGEST_INT:
            raise UserError(f"config key {key} must be smaller than 2**63 in magnitude, got {_show(value)}.")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key {key} must be a number, got {_show(value)}.")
        if (isinstance(value, int) and abs(value) >= _LARGEST_INT) or not math.isfinite(value):
            raise UserError(f"config key {key} must be a finite number, got {_show(value)}.")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"config key {key} must be a string, got {_show(value)}.")
        if "\x00" in value:
            raise UserError(f"config key {key} must not contain NUL characters.")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def from_dict(raw: Any, where: str = "config") -> ExperimentConfig:
    """Build a config from nested dicts; unknown sections or keys are errors that list the valid ones."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping with sections {', '.join(_SECTION_TYPES)}.")
    sections = {}
    for section, cls in _SECTION_TYPES.items():
        values = raw.get(section)
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise UserError(f"section {section} of {where} must be a mapping.")
        if section == "head":
            sections[section] = _head_from_dict(values, where)
            continue
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise UserError(
                    f"unknown config key {section}.{_key_text(key)} in {where}; valid keys are: "
                    f"{', '.join(k for k in valid_keys() if k.startswith(section + '.'))}."
                )
            kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
        sections[section] = cls(**kwargs)
    unknown = set(raw) - set(_SECTION_TYPES)
    if unknown:
        raise UserError(
            f"unknown config section {_show(sorted(map(str, unknown))[0])} in {where}; valid sections are: "
            f"{', '.join(_SECTION_TYPES)}."
        )
    config = ExperimentConfig(**sections)
    validate(config)
    return config


def to_dict(config: ExperimentConfig) -> dict:
    """Nested plain dicts; the head section is its name followed by all of its options."""
    raw = dataclasses.asdict(config)
    raw["head"] = {"name": config.head.name, **raw["head"]["options"]}
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings to a nested dict (values parsed as YAML scalars)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"a config must be a mapping with sections {', '.join(_SECTION_TYPES)}.")
    raw = {k: ({} if v is None else dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    keys = set(valid_keys())
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like section.key=value, e.g. train.seed=2.")
        key, text = item.split("=", 1)
        key = key.strip()
        path = key.split(".")
        if path[0] == "head" and len(path) in (2, 3):
            _check_head_key(path, key)  # which options exist depends on head.name: from_dict checks them
        elif key not in keys:
            raise UserError(f"unknown config key {_key_text(key)}; valid keys are: {', '.join(sorted(keys))}.")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        target = raw
        for depth, part in enumerate(path[:-1]):
            if not isinstance(target.setdefault(part, {}), dict):
                raise UserError(f"{'.'.join(path[:depth + 1])} of the config must be a mapping, so {key} cannot be set.")
            if depth:  # a per-head block: copy it, like the sections above, so that raw's caller keeps its own
                target[part] = dict(target[part])
            target = target[part]
        target[path[-1]] = value
    return raw


def _check_head_key(path: list[str], key: str) -> None:
    """``head.NAME``, ``head.shared.OPTION`` or ``head.HEAD.OPTION`` with HEAD a registered head."""
    from lm.heads import HEADS

    if len(path) == 3 and path[1] not in HEADS and path[1] != SHARED:
        raise UserError(
            f"unknown config key {_key_text(key)}; head options are written head.OPTION, head.{SHARED}.OPTION or "
            f"head.HEAD.OPTION with HEAD one of {', '.join(HEADS)}."
        )


def load_config(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    """Load a YAML experiment file (or the defaults when ``path`` is None) and apply overrides."""
    raw: Any = {}
    if path is not None:
        from lm.io import read_yaml

        path = Path(path)
        raw = read_yaml(path, "config file")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise UserError(f"config file {path} must be a mapping with sections {', '.join(_SECTION_TYPES)}.")
        raw.pop("command", None)  # shipped configs name the command that runs them
    raw = apply_overrides(raw, list(overrides))
    return from_dict(raw, where=str(path) if path else "config")


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    from lm.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def validate(config: ExperimentConfig) -> None:
    """Reject impossible values with one sentence each."""
    d, m, h, t, r = config.data, config.model, config.head, config.train, config.run
    _check(d.path is not None or d.name is not None, "data.path (a local folder) or data.name must be set.")
    _check(d.tokenizer in ("word", "sentencepiece"), f"data.tokenizer must be word or sentencepiece, not {d.tokenizer!r}.")
    _check(d.sp_vocab_size >= 8, "data.sp_vocab_size must be at least 8.")
    _check(m.body in ("awd_lstm", "transformer"), f"model.body must be awd_lstm or transformer, not {m.body!r}.")
    for key in ("d_embedding", "d_hidden", "n_layers", "d_model", "n_heads", "context_length"):
        _check(getattr(m, key) >= 1, f"model.{key} must be at least 1.")
    for key in ("d_last", "d_ff"):
        _check(getattr(m, key) is None or getattr(m, key) >= 1, f"model.{key} must be at least 1 or null.")
    for key in ("dropout_embedding", "dropout_input", "dropout_hidden", "dropout_output", "weight_drop", "dropout"):
        _check(0.0 <= getattr(m, key) < 1.0, f"model.{key} must be in [0, 1), got {getattr(m, key)}.")
    for key in ("activation_regularization", "temporal_activation_regularization"):
        _check(getattr(m, key) >= 0.0, f"model.{key} must not be negative.")
    _check(m.attention in ("softmax", "r_softmax"), f"model.attention must be softmax or r_softmax, not {m.attention!r}.")
    _check(0.0 <= m.attention_r <= 1.0, f"model.attention_r must be in [0, 1], got {m.attention_r}.")
    _check(m.d_model % m.n_heads == 0, "model.d_model must be divisible by model.n_heads.")
    h.options = resolve_head_options(h.name, h.options)  # the head's own checks (HeadConfig may have been edited)
    _check(t.optimizer in ("sgd", "adamw"), f"train.optimizer must be sgd or adamw, not {t.optimizer!r}.")
    _check(t.lr > 0, f"train.lr must be positive, got {t.lr}.")
    _check(t.clip >= 0, "train.clip must not be negative.")
    _check(t.epochs >= 1, f"train.epochs must be at least 1, got {t.epochs}.")
    _check(t.max_steps is None or t.max_steps >= 1, "train.max_steps must be at least 1 or null.")
    for key in ("batch_size", "bptt", "eval_batch_size", "test_batch_size", "nonmono"):
        _check(getattr(t, key) >= 1, f"train.{key} must be at least 1, got {getattr(t, key)}.")
    _check(t.eval_bptt is None or t.eval_bptt >= 1, "train.eval_bptt must be at least 1 or null.")
    _check(t.max_seq_len_delta >= 0, "train.max_seq_len_delta must not be negative.")
    _check(t.weight_decay >= 0, "train.weight_decay must not be negative.")
    _check(t.lr_schedule in ("constant", "cosine"), f"train.lr_schedule must be constant or cosine, not {_show(t.lr_schedule)}.")
    _check(t.warmup_steps >= 0, "train.warmup_steps must not be negative.")
    _check(len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas), "train.adam_betas must be two numbers in [0, 1).")
    _check(t.on_nonfinite in ("stop", "rollback"), f"train.on_nonfinite must be stop or rollback, not {_show(t.on_nonfinite)}.")
    _check(0.0 < t.rollback_lr_factor < 1.0, f"train.rollback_lr_factor must be in (0, 1), got {t.rollback_lr_factor}.")
    _check(t.checkpoint_every >= 0 and t.log_every >= 1, "train.checkpoint_every must be >= 0 and train.log_every >= 1.")
    _check(t.eval_every >= 0, f"train.eval_every must not be negative, got {t.eval_every}.")
    _check(t.eval_subset_tokens >= 2, f"train.eval_subset_tokens must be at least 2, got {t.eval_subset_tokens}.")
    _check(t.precision in ("fp32", "bf16", "fp16"), f"train.precision must be fp32, bf16 or fp16, not {_show(t.precision)}.")
    _check(t.finetune_epochs >= 0, f"train.finetune_epochs must not be negative, got {t.finetune_epochs}.")
    _check(t.finetune_lr is None or t.finetune_lr > 0, "train.finetune_lr must be positive or null.")
    for key in ("dynamic_eval_lr", "dynamic_eval_lambda", "dynamic_eval_epsilon"):
        _check(getattr(t, key) > 0, f"train.{key} must be positive, got {getattr(t, key)}.")
    for key in ("dynamic_eval_bptt", "dynamic_eval_stat_batch_size"):
        _check(getattr(t, key) >= 1, f"train.{key} must be at least 1, got {getattr(t, key)}.")
    _check(t.dynamic_eval_max_batches is None or t.dynamic_eval_max_batches >= 1, "train.dynamic_eval_max_batches must be at least 1 or null.")
    _check(0 <= t.seed < _LARGEST_INT, f"train.seed must be in [0, 2**63), got {t.seed}.")
    _check(
        r.name is None or (r.name not in (".", "..") and not any(c in r.name for c in "/\\")),
        f"run.name must be a plain folder name without / or \\, or null, not {_show(r.name)}.",
    )
    _check(re.fullmatch(r"cpu|auto|cuda(:[0-9]+)?", r.device) is not None, f"run.device must be cpu, cuda[:N] or auto, not {_show(r.device)}.")
    if m.body == "transformer":
        longest = t.bptt + (t.max_seq_len_delta if t.variable_bptt else 0)
        _check(
            longest <= m.context_length and (t.eval_bptt or t.bptt) <= m.context_length,
            f"train.bptt (+ max_seq_len_delta when variable) must not exceed model.context_length={m.context_length}.",
        )


def dataset_label(config: ExperimentConfig) -> str:
    """A short name of the corpus for run folders and tables."""
    if config.data.path is not None:
        label = Path(config.data.path).resolve().name or "corpus"
    else:
        label = str(config.data.name)
    return label if config.data.tokenizer == "word" else f"{label}-sp{config.data.sp_vocab_size}"


def run_name(config: ExperimentConfig) -> str:
    """Deterministic run folder name: BODY-DATASET-HEAD-sSEED."""
    if config.run.name:
        return config.run.name
    return f"{config.model.body}-{dataset_label(config)}-{config.head.name}-s{config.train.seed}"
