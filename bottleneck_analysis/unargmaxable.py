"""Tokens that no hidden state can make the most probable output of a softmax-type head.

Grivas, Bogoychev & Lopez, "Low-Rank Softmax Can Have Unargmaxable Classes in Theory but Rarely in
Practice" (ACL 2022, arXiv 2203.06462): with logits ``z = W x + b`` (``W`` ``V x d``), token ``i`` is
*argmaxable* when some ``x`` gives ``z_i > z_j`` for every ``j != i``. Within a box ``[-B, B]^d`` on the
hidden state this is the linear program

    maximize  t   over (x, t)
    subject to  (w_j - w_i) . x + t <= b_i - b_j   for all j != i,    -B <= x_k <= B,

and ``i`` is argmaxable iff the optimal margin ``t*`` is positive (above a tolerance). A token whose
weight vector lies inside the convex hull of the others (with equal biases) is never argmaxable.

The check applies to every head whose most probable token is the argmax of ``W g + b`` at the body's
output ``g`` (``head.argmax_of_body_logits``: softmax and the heads that apply an increasing map to each
logit, such as sigsoftmax and r-softmax); the mixtures have no such structure. It runs in two passes: a cheap pre-pass
evaluates the logits at points where a token is likely to win (for each token, the box corner and the
box-surface point in the direction of its centred weight vector, plus seeded random points in the box)
and marks every strict winner argmaxable; only the remaining tokens need an LP, solved with SciPy's
HiGHS (Huangfu & Hall 2018).
"""

from __future__ import annotations

import time

import numpy as np
import scipy.optimize
import torch
from torch import nn

from lm.errors import UserError

_POINTS_PER_CHUNK = 256


def unargmaxable_tokens(
    weight: np.ndarray | torch.Tensor,
    bias: np.ndarray | torch.Tensor | None = None,
    *,
    box: float = 1.0,
    n_samples: int = 1024,
    seed: int = 0,
    tolerance: float = 1e-9,
    time_limit: float | None = None,
) -> dict:
    """Find the tokens that cannot be the argmax of ``W x + b`` for any ``x`` in ``[-box, box]^d``.

    Args:
        weight: ``(V, d)`` output embedding.
        bias: ``(V,)`` or None (zero).
        box: half-width ``B`` of the box on the hidden state.
        n_samples: random points of the pre-pass (half uniform in the box, half random corners).
        seed: seed of those points.
        tolerance: a margin counts as positive above ``tolerance * (1 + L)``, with ``L = B max_i
            ||w_i||_1 + max_i |b_i|`` the largest logit magnitude the box allows.
        time_limit: seconds after which no further LP is started (the tokens left are undetermined).
    Returns:
        ``n_tokens``, ``box``, ``n_unargmaxable``, ``unargmaxable`` (token ids), ``undetermined``
        (ids whose LP failed or was not reached within ``time_limit``), ``n_found_by_sampling``,
        ``n_lp`` (LPs solved), ``lp_status`` (HiGHS message -> count), ``margin_tolerance``, ``solver``
        and ``seconds``.
    """
    started = time.perf_counter()
    weight, bias = _as_arrays(weight, bias)
    if box <= 0.0:
        raise UserError(f"the box half-width must be positive, got {box}.")
    n_tokens, _ = weight.shape
    logit_scale = box * float(np.abs(weight).sum(axis=1).max()) + float(np.abs(bias).max())
    margin_tolerance = tolerance * (1.0 + logit_scale)

    found = _winners(weight, bias, _probe_points(weight, box, n_samples, seed), margin_tolerance)
    remaining = np.flatnonzero(~found)
    unargmaxable, undetermined, statuses = [], [], {}
    n_lp = 0
    for token in remaining:
        if time_limit is not None and time.perf_counter() - started > time_limit:
            undetermined.append(int(token))
            continue
        n_lp += 1
        margin, message = _max_margin(weight, bias, int(token), box)
        statuses[message] = statuses.get(message, 0) + 1
        if margin is None:
            undetermined.append(int(token))
        elif margin <= margin_tolerance:
            unargmaxable.append(int(token))
    return {
        "n_tokens": n_tokens,
        "box": float(box),
        "n_unargmaxable": len(unargmaxable),
        "unargmaxable": unargmaxable,
        "undetermined": undetermined,
        "n_found_by_sampling": int(found.sum()),
        "n_lp": n_lp,
        "lp_status": statuses,
        "margin_tolerance": margin_tolerance,
        "solver": "scipy.optimize.linprog(method='highs')",
        "seconds": time.perf_counter() - started,
    }


def head_unargmaxable(head: nn.Module, *, box: float = 1.0, **options) -> dict:
    """:func:`unargmaxable_tokens` of ``head.decoder`` when ``head.argmax_of_body_logits``; otherwise a
    dict ``{"applicable": False, "reason": ...}``."""
    if not getattr(head, "argmax_of_body_logits", False):
        return {"applicable": False, "reason": f"{type(head).__name__} is not argmax-equivalent to its logits"}
    bias = head.decoder.bias
    report = unargmaxable_tokens(head.decoder.weight, None if bias is None else bias, box=box, **options)
    return {"applicable": True, **report}


def _as_arrays(weight, bias) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().cpu().double().numpy()
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim != 2 or weight.shape[0] == 0:
        raise UserError(f"the output embedding must be a non-empty 2-D matrix, got shape {weight.shape}.")
    if bias is None:
        bias = np.zeros(weight.shape[0])
    elif isinstance(bias, torch.Tensor):
        bias = bias.detach().cpu().double().numpy()
    bias = np.asarray(bias, dtype=np.float64)
    if bias.shape != (weight.shape[0],):
        raise UserError(f"the bias must have shape ({weight.shape[0]},), got {bias.shape}.")
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise UserError("the output embedding has NaN or infinite entries.")
    return weight, bias


def _probe_points(weight: np.ndarray, box: float, n_samples: int, seed: int) -> np.ndarray:
    """``(2 V + n_samples, d)`` points in the box where tokens are likely to be the strict argmax."""
    centred = weight - weight.mean(axis=0)  # (V, d)
    scale = np.abs(centred).max(axis=1, keepdims=True)  # (V, 1)
    surface = box * centred / np.where(scale > 0.0, scale, 1.0)  # on the box surface along w_i - mean
    corners = box * np.sign(centred)  # the corner maximizing (w_i - mean) . x
    generator = np.random.default_rng(seed)
    n_uniform = n_samples // 2
    uniform = generator.uniform(-box, box, size=(n_uniform, weight.shape[1]))
    random_corners = box * generator.choice([-1.0, 1.0], size=(n_samples - n_uniform, weight.shape[1]))
    return np.concatenate([surface, corners, uniform, random_corners], axis=0)


def _winners(weight: np.ndarray, bias: np.ndarray, points: np.ndarray, tolerance: float) -> np.ndarray:
    """``(V,)`` bool: tokens that are the argmax, by more than ``tolerance``, at one of ``points``."""
    n_tokens = weight.shape[0]
    found = np.zeros(n_tokens, dtype=bool)
    if n_tokens == 1:
        found[0] = True
        return found
    for start in range(0, points.shape[0], _POINTS_PER_CHUNK):
        logits = points[start : start + _POINTS_PER_CHUNK] @ weight.T + bias  # (P, V)
        top_two = np.partition(logits, n_tokens - 2, axis=1)[:, -2:]  # (P, 2): second largest, largest
        winners = np.argmax(logits, axis=1)  # (P,)
        strict = top_two[:, 1] - top_two[:, 0] > tolerance
        found[winners[strict]] = True
    return found


def _max_margin(weight: np.ndarray, bias: np.ndarray, token: int, box: float) -> tuple[float | None, str]:
    """The LP of the module docstring for ``token``: ``(t*, HiGHS message)``, ``t* = None`` if unsolved."""
    others = np.arange(weight.shape[0]) != token
    n_dims = weight.shape[1]
    a_ub = np.hstack([weight[others] - weight[token], np.ones((others.sum(), 1))])  # (V-1, d+1)
    b_ub = bias[token] - bias[others]  # (V-1,)
    objective = np.zeros(n_dims + 1)
    objective[-1] = -1.0  # maximize t
    bounds = [(-box, box)] * n_dims + [(None, None)]
    result = scipy.optimize.linprog(objective, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if result.status != 0:
        return None, str(result.message)
    return float(-result.fun), str(result.message)
