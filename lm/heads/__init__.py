"""Output heads: hidden states ``(..., d_model)`` -> normalized log-probabilities ``(..., V)``.

:data:`HEADS` is the one list of heads: every config check, test, benchmark, plot style and table
derives from it. ``HEADS[name](d_model, vocab_size, **options)`` builds a head; every head has
``head(hidden)``, ``head.loss(hidden, targets, reduction="none" | "mean" | "sum")``, ``head.decoder``
(the output embedding), ``head.smoothing``, ``head.reference_probs(hidden)`` (the paper's formula in
probability space, slow, for tests) and these class attributes:

- ``sparse``: the head gives exact zeros (``-inf`` log-probabilities);
- ``decoder_reads_body``: the decoder is applied to the body's output ``g`` itself, so a tied decoder
  forces the body's last layer to the embedding size;
- ``affine_log_softmax``: ``log p = log_softmax(W x + b)`` with ``x`` the decoder's input, so an
  ``N x V`` log-prob matrix has rank at most ``d + 2`` (``d`` = ``decoder.in_features``);
- ``argmax_of_body_logits``: the most probable token is the argmax of ``W g + b`` at the body's output
  ``g`` (a pointwise increasing map of those logits), so the unargmaxable check applies.

A head's options are the keyword-only parameters of its ``__init__`` other than ``tied_embedding``;
their annotations are their types and their defaults the config defaults (:func:`head_options`).
"""

from __future__ import annotations

import importlib
import inspect
import typing

from torch import nn

from lm.heads import functional
from lm.heads.mixture import MixtureHead
from lm.heads.mos import MixtureOfSoftmaxesHead
from lm.heads.moss import MixtureOfSigsoftmaxesHead
from lm.heads.r_softmax import RSoftmaxHead
from lm.heads.sigsoftmax import SigsoftmaxHead
from lm.heads.softmax import SoftmaxHead


def _load(classes: dict[str, str]) -> dict[str, type[nn.Module]]:
    """``{"name": "module.Class"}`` -> ``{"name": lm.heads.module.Class}``."""
    loaded = {}
    for name, where in classes.items():
        module, _, cls = where.rpartition(".")
        loaded[name] = getattr(importlib.import_module(f"lm.heads.{module}"), cls)
    return loaded


# The registry: one line per head, "name": "file.Class" in lm/heads/. Its order is that of tables and plots.
HEADS: dict[str, type[nn.Module]] = _load({
    "softmax": "softmax.SoftmaxHead",
    "sigsoftmax": "sigsoftmax.SigsoftmaxHead",
    "mos": "mos.MixtureOfSoftmaxesHead",
    "moss": "moss.MixtureOfSigsoftmaxesHead",
    "r_softmax": "r_softmax.RSoftmaxHead",
    "moc": "moc.MixtureOfContextsHead",
    "gss": "gss.GeneralizedSigsoftmaxHead",
    "plif": "plif.PiecewiseLinearSoftmaxHead",
    "mixtape": "mixtape.MixtapeHead",
})

BUILDER_ARGUMENTS = ("tied_embedding",)  # keyword arguments the model builder passes, not config options


def head_options(name: str) -> dict[str, tuple[typing.Any, typing.Any]]:
    """The options of head ``name``: option -> (type annotation, default), in signature order."""
    cls = HEADS[name]
    hints = typing.get_type_hints(cls.__init__)
    return {
        parameter.name: (hints[parameter.name], parameter.default)
        for parameter in inspect.signature(cls.__init__).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name not in BUILDER_ARGUMENTS
    }


__all__ = [
    "BUILDER_ARGUMENTS",
    "HEADS",
    "MixtureHead",
    "MixtureOfSigsoftmaxesHead",
    "MixtureOfSoftmaxesHead",
    "RSoftmaxHead",
    "SigsoftmaxHead",
    "SoftmaxHead",
    "functional",
    "head_options",
]
