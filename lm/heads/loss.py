"""Reduction of per-token negative log-likelihoods, shared by every head's ``loss``."""

import torch

from lm.errors import UserError

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> str:
    """``reduction`` if it is one of ``none``, ``mean``, ``sum``."""
    if reduction not in REDUCTIONS:
        raise UserError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}.")
    return reduction


def reduce_nll(nll: torch.Tensor, reduction: str) -> torch.Tensor:
    """``nll`` itself (``none``), its mean or its sum."""
    if reduction == "mean":
        return nll.mean()
    if reduction == "sum":
        return nll.sum()
    return nll


def check_targets(hidden: torch.Tensor, targets: torch.Tensor) -> None:
    """Targets must have the shape of ``hidden`` without its last dimension."""
    if targets.shape != hidden.shape[:-1]:
        raise UserError(
            f"targets of shape {tuple(targets.shape)} do not match hidden states of shape "
            f"{tuple(hidden.shape)}."
        )


def scores_nll(head, hidden: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    """NLL of ``targets`` ``(...)`` under ``log_softmax(head.scores(hidden))``: the loss of every head whose
    log-probabilities are a log-softmax of per-token scores (gss, plif, mixtape)."""
    check_reduction(reduction)
    check_targets(hidden, targets)
    scores = head.scores(hidden)  # (..., V)
    nll = torch.nn.functional.cross_entropy(scores.reshape(-1, scores.shape[-1]), targets.reshape(-1), reduction="none")
    return reduce_nll(nll.view(targets.shape), reduction)
