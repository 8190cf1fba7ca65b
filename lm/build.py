"""Build a :class:`LanguageModel` from a config: body from ``lm.models.BODIES``, head from ``lm.heads.HEADS``."""

from __future__ import annotations

from lm.config import ExperimentConfig
from lm.errors import UserError
from lm.language_model import LanguageModel


def build_body(config: ExperimentConfig, vocab_size: int):
    from lm.models import BODIES

    m = config.model
    if m.body == "awd_lstm":
        d_last = m.d_last
        if d_last is None:
            # AWD-LSTM: a tied head whose decoder reads the body's output needs a last layer of the embedding size.
            tied_direct = m.tie_weights and _head_class(config).decoder_reads_body
            d_last = m.d_embedding if tied_direct else m.d_hidden
        return BODIES["awd_lstm"](
            vocab_size,
            d_embedding=m.d_embedding,
            d_hidden=m.d_hidden,
            n_layers=m.n_layers,
            d_last=d_last,
            dropout_embedding=m.dropout_embedding,
            dropout_input=m.dropout_input,
            dropout_hidden=m.dropout_hidden,
            dropout_output=m.dropout_output,
            weight_drop=m.weight_drop,
            activation_regularization=m.activation_regularization,
            temporal_activation_regularization=m.temporal_activation_regularization,
        )
    if m.body == "transformer":
        return BODIES["transformer"](
            vocab_size,
            d_model=m.d_model,
            n_layers=m.n_layers,
            n_heads=m.n_heads,
            d_ff=m.d_ff,
            dropout=m.dropout,
            context_length=m.context_length,
            attention=m.attention,
            attention_r=m.attention_r,
        )
    raise UserError(f"unknown body {m.body!r}; choose one of {', '.join(BODIES)}.")


def _head_class(config: ExperimentConfig):
    from lm.heads import HEADS

    if config.head.name not in HEADS:
        raise UserError(f"unknown head {config.head.name!r}; choose one of {', '.join(HEADS)}.")
    return HEADS[config.head.name]


def build_model(config: ExperimentConfig, vocab_size: int) -> LanguageModel:
    """The body and head that ``config`` names, composed (and tied when ``model.tie_weights``)."""
    body = build_body(config, vocab_size)
    head_class = _head_class(config)
    options = dict(config.head.options)  # exactly the head's own options (lm.config checked them)
    if config.model.tie_weights:
        options["tied_embedding"] = body.embedding
    head = head_class(body.d_output, vocab_size, **options)
    return LanguageModel(body, head)
