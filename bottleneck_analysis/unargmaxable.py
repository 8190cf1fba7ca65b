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
logit, such as sigsoftmax and r-softmax); the mixtures have no such structure.

Every token ends determined, with evidence that can be checked without a solver:

1. **Cheap witnesses.** The logits are evaluated at points where a token is likely to win: for each
   token the box-surface point along its centred weight vector ``w_i - mean(w)``, then (for the tokens
   still open) the box corner ``B sign(w_i - mean(w))``, then a short projected gradient ascent of a
   smoothed margin from the surface point, then seeded random points in the box. A point where a token
   wins by more than the tolerance is its *witness*. (On the trained head of ``aidreams260K`` the
   ascent finds the witness of the 264 of 512 tokens that the fixed points miss in 0.4 s, where their
   LPs took 13 s.)
2. **Constraint generation** for the rest (the cutting-plane method of Kelley 1960 on the LP above):
   solve the LP over a few competitors ``J`` (those with the largest logits at the token's own point),
   evaluate all ``V`` logits at the optimum ``x*``; if ``i`` wins there the LP's ``x*`` is a witness,
   otherwise add the competitors that beat it and solve again. An LP over a subset of the constraints
   is a relaxation: when its optimum ``t*`` is not positive, the full LP's is not either. The LP's dual
   solution over ``J`` then gives the *certificate*: weights ``lambda_j >= 0`` summing to 1 with
   ``sum_j lambda_j (z_i - z_j) <= sum_j lambda_j (b_i - b_j) + B ||sum_j lambda_j (w_i - w_j)||_1``
   for every ``x`` in the box; that right-hand side (``margin_bound``) bounds the margin of ``i`` from
   above, and a bound at or below the tolerance proves ``i`` unargmaxable. Each LP has ``d + 1``
   variables and ``|J|`` (tens to hundreds) rows instead of ``V - 1``, solved by SciPy's HiGHS dual
   simplex (Huangfu & Hall 2018) without presolve (three times faster than the default on these small
   dense LPs, measured).
3. **Both cores.** The LPs of different tokens are independent; with ``n_workers > 1`` they are spread
   over worker processes (fork), each with a single BLAS thread.

The library stays quiet; ``progress(n_determined, n_tokens)`` is called as tokens are determined (the
CLI turns it into a progress bar). ``bottleneck_analysis/../scripts/bench_unargmaxable.py`` measures it.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
import scipy.optimize
import torch
from torch import nn

from lm.errors import UserError

_POINTS_PER_CHUNK = 512
_ASCENT_TOKENS = 256  # tokens per batch of the gradient ascent
_ASCENT_STEPS = 40
_ASCENT_TEMPERATURE = 0.05  # tau relative to the spread of each token's starting logits
_INITIAL_CONSTRAINTS = 32  # competitors in the first LP of a token
_ADDED_PER_ROUND = 64  # most-violated constraints added per round
_MAX_ROUNDS = 60  # after that the LP over all constraints is solved
_TOKENS_PER_TASK = 8
_CERTIFICATE_SUPPORT = 16  # competitors listed per certificate in the report
SOLVER = "constraint generation over scipy.optimize.linprog(method='highs-ds', presolve off)"

Progress = Callable[[int, int], None]


def unargmaxable_tokens(
    weight: np.ndarray | torch.Tensor,
    bias: np.ndarray | torch.Tensor | None = None,
    *,
    box: float = 1.0,
    n_samples: int = 1024,
    seed: int = 0,
    tolerance: float = 1e-9,
    time_limit: float | None = None,
    n_workers: int | None = None,
    progress: Progress | None = None,
    witnesses: bool = True,
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
        time_limit: seconds after which no further LP is started (the tokens left are undetermined);
            None (default) for no limit.
        n_workers: processes for the LPs (default: ``min(2, cpu count)`` when more than 32 tokens need
            an LP, else 1).
        progress: called with ``(n_determined, n_tokens)`` whenever tokens get determined.
        witnesses: look for cheap witnesses first (False: every token goes to constraint generation;
            for testing that both agree).
    Returns:
        ``n_tokens``, ``box``, ``n_unargmaxable``, ``unargmaxable`` (token ids, ascending),
        ``undetermined`` (ids whose LP failed or was not reached within ``time_limit``),
        ``certificates`` (one per unargmaxable token: ``token``, ``margin`` (the LP optimum ``t*``),
        ``margin_bound`` (the dual bound of the module docstring), ``certified`` (bound <= tolerance),
        ``competitors`` and ``weights`` (the largest ``lambda_j``, up to 16)), ``n_found_by_sampling``,
        ``n_found_by_lp`` (argmaxable tokens whose witness is an LP optimum), ``n_lp`` (tokens that
        needed an LP), ``n_lp_solves``, ``lp_status`` (HiGHS message -> count), ``min_witness_margin``,
        ``margin_tolerance``, ``solver``, ``n_workers`` and ``seconds``.
    """
    started = time.perf_counter()
    weight, bias = _as_arrays(weight, bias)
    if box <= 0.0:
        raise UserError(f"the box half-width must be positive, got {box}.")
    if n_samples < 0:
        raise UserError(f"n_samples must be at least 0, got {n_samples}.")
    n_tokens, _ = weight.shape
    logit_scale = box * float(np.abs(weight).sum(axis=1).max()) + float(np.abs(bias).max())
    margin_tolerance = tolerance * (1.0 + logit_scale)

    if witnesses:
        margins = _cheap_witnesses(weight, bias, box, n_samples, seed, margin_tolerance)  # (V,), -inf if none
    else:
        margins = np.full(n_tokens, -np.inf)
    found = margins > margin_tolerance
    n_sampled = int(found.sum())
    if progress is not None:
        progress(n_sampled, n_tokens)
    remaining = np.flatnonzero(~found)
    deadline = None if time_limit is None else time.time() + max(0.0, time_limit - (time.perf_counter() - started))
    if n_workers is None:
        n_workers = min(2, os.cpu_count() or 1) if remaining.size > 32 else 1
    n_workers = max(1, int(n_workers))

    results = _solve_all(weight, bias, remaining, box, margin_tolerance, deadline, n_workers, progress, n_sampled, n_tokens)
    unargmaxable, undetermined, certificates, statuses = [], [], [], {}
    n_lp_solves, n_by_lp = 0, 0
    for token, outcome in sorted(results.items()):
        n_lp_solves += outcome["n_solves"]
        for message, count in outcome["status"].items():
            statuses[message] = statuses.get(message, 0) + count
        if outcome["kind"] == "witness":
            margins[token] = outcome["margin"]
            n_by_lp += 1
        elif outcome["kind"] == "unargmaxable":
            unargmaxable.append(token)
            certificates.append({"token": token, **outcome["certificate"]})
        else:
            undetermined.append(token)
    witnessed = margins[margins > margin_tolerance]
    return {
        "n_tokens": n_tokens,
        "box": float(box),
        "n_unargmaxable": len(unargmaxable),
        "unargmaxable": unargmaxable,
        "undetermined": undetermined,
        "certificates": certificates,
        "n_found_by_sampling": n_sampled,
        "n_found_by_lp": n_by_lp,
        "n_lp": int(sum(1 for o in results.values() if o["n_solves"] > 0)),
        "n_lp_solves": n_lp_solves,
        "lp_status": statuses,
        "min_witness_margin": float(witnessed.min()) if witnessed.size else None,
        "margin_tolerance": margin_tolerance,
        "solver": SOLVER,
        "n_workers": n_workers,
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


def check_certificate(weight, bias, token: int, competitors, weights, box: float) -> float:
    """The margin bound of a certificate, recomputed from the weights: ``sum_j l_j (b_i - b_j) + B ||sum_j
    l_j (w_i - w_j)||_1`` with ``l`` the given weights normalized to sum 1 (see the module docstring)."""
    weight, bias = _as_arrays(weight, bias)
    competitors = np.asarray(competitors, dtype=np.int64)
    lam = np.asarray(weights, dtype=np.float64)
    lam = lam / lam.sum()
    direction = lam @ (weight[token] - weight[competitors])  # (d,)
    return float(lam @ (bias[token] - bias[competitors]) + box * np.abs(direction).sum())


def _as_arrays(weight, bias) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().cpu().double().numpy()
    weight = np.ascontiguousarray(weight, dtype=np.float64)
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


# ---- 1. cheap witnesses --------------------------------------------------------------------------------


def _cheap_witnesses(weight, bias, box, n_samples, seed, tolerance) -> np.ndarray:
    """``(V,)`` the best margin by which each token wins at one of the cheap points (``-inf`` if never)."""
    n_tokens, n_dims = weight.shape
    margins = np.full(n_tokens, -np.inf)
    if n_tokens == 1:
        margins[0] = np.inf
        return margins
    centred = weight - weight.mean(axis=0)  # (V, d)
    scale = np.abs(centred).max(axis=1, keepdims=True)  # (V, 1)
    _record_winners(weight, bias, box * centred / np.where(scale > 0.0, scale, 1.0), margins)  # surface points
    open_tokens = np.flatnonzero(margins <= tolerance)
    if open_tokens.size:
        _record_winners(weight, bias, box * np.sign(centred[open_tokens]), margins)  # own corners
    open_tokens = np.flatnonzero(margins <= tolerance)
    if open_tokens.size:
        _ascend(weight, bias, open_tokens, box, margins, tolerance)
    if n_samples and np.any(margins <= tolerance):
        generator = np.random.default_rng(seed)
        n_uniform = n_samples // 2
        _record_winners(weight, bias, generator.uniform(-box, box, size=(n_uniform, n_dims)), margins)
        _record_winners(weight, bias, box * generator.choice([-1.0, 1.0], size=(n_samples - n_uniform, n_dims)), margins)
    return margins


def _ascend(weight, bias, tokens, box, margins, tolerance) -> None:
    """Projected gradient ascent, in the box, of a smoothed margin of each token of ``tokens``.

    The objective is ``z_i - tau logsumexp_{j != i}(z_j / tau)`` (a lower bound of the margin that is
    smooth); its gradient is ``w_i - sum_j p_j w_j`` with ``p`` the softmax of the competitors' logits at
    temperature ``tau``. Steps are taken along the gradient scaled to the box (``B / (2 sqrt(k + 1))``
    in the max-norm at step ``k``), then clipped to the box. Every iterate is a candidate witness;
    tokens leave the batch as soon as they win.
    """
    centred_mean = weight.mean(axis=0)
    for start in range(0, tokens.size, _ASCENT_TOKENS):
        batch = tokens[start : start + _ASCENT_TOKENS]  # (T,)
        direction = weight[batch] - centred_mean  # (T, d)
        scale = np.abs(direction).max(axis=1, keepdims=True)
        points = box * direction / np.where(scale > 0.0, scale, 1.0)  # (T, d)
        temperature = None
        for step in range(_ASCENT_STEPS):
            logits = points @ weight.T + bias  # (T, V)
            rows = np.arange(batch.size)
            own = logits[rows, batch].copy()
            logits[rows, batch] = -np.inf
            top = logits.max(axis=1)  # (T,)
            np.maximum.at(margins, batch, own - top)
            if temperature is None:
                spread = np.nanstd(np.where(np.isfinite(logits), logits, np.nan), axis=1)
                temperature = np.maximum(_ASCENT_TEMPERATURE * spread, 1e-12)[:, None]  # (T, 1)
            still_open = margins[batch] <= tolerance
            if not still_open.any() or step == _ASCENT_STEPS - 1:
                break
            weights = np.exp((logits - top[:, None]) / temperature)  # (T, V), 0 at the own token
            weights /= weights.sum(axis=1, keepdims=True)
            gradient = weight[batch] - weights @ weight  # (T, d)
            size = np.abs(gradient).max(axis=1, keepdims=True)
            points = np.clip(points + box / (2.0 * np.sqrt(step + 1.0)) * gradient / np.where(size > 0.0, size, 1.0),
                             -box, box)
            keep = np.flatnonzero(still_open)
            batch, points, temperature = batch[keep], points[keep], temperature[keep]


def _record_winners(weight: np.ndarray, bias: np.ndarray, points: np.ndarray, margins: np.ndarray) -> None:
    """For each of ``points`` ``(P, d)``: raise the margin of its winner to its lead over the runner-up."""
    n_tokens = weight.shape[0]
    for start in range(0, points.shape[0], _POINTS_PER_CHUNK):
        logits = points[start : start + _POINTS_PER_CHUNK] @ weight.T + bias  # (P, V)
        winners = np.argmax(logits, axis=1)  # (P,)
        top_two = np.partition(logits, n_tokens - 2, axis=1)[:, -2:]  # (P, 2): second largest, largest
        lead = top_two[:, 1] - top_two[:, 0]  # (P,)
        np.maximum.at(margins, winners, lead)


# ---- 2. constraint generation --------------------------------------------------------------------------

_shared: dict = {}


def _init_worker(weight, bias) -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl is installed with the test extra
        pass
    torch.set_num_threads(1)
    _shared["weight"], _shared["bias"] = weight, bias


def _solve_chunk(tokens, box, tolerance, deadline) -> dict:
    return {int(t): _solve_token(_shared["weight"], _shared["bias"], int(t), box, tolerance, deadline) for t in tokens}


def _solve_all(weight, bias, tokens, box, tolerance, deadline, n_workers, progress, n_done, n_tokens) -> dict:
    """``token -> outcome`` (see :func:`_solve_token`) for every token of ``tokens``."""
    results: dict = {}
    if tokens.size == 0:
        return results
    chunks = [tokens[i : i + _TOKENS_PER_TASK] for i in range(0, tokens.size, _TOKENS_PER_TASK)]
    if n_workers == 1 or len(chunks) == 1:
        for chunk in chunks:
            for token in chunk:
                results[int(token)] = _solve_token(weight, bias, int(token), box, tolerance, deadline)
            n_done += len(chunk)
            if progress is not None:
                progress(n_done, n_tokens)
        return results
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(
        max_workers=n_workers, mp_context=multiprocessing.get_context(method),
        initializer=_init_worker, initargs=(weight, bias),
    ) as pool:
        futures = [pool.submit(_solve_chunk, chunk, box, tolerance, deadline) for chunk in chunks]
        for future in as_completed(futures):
            outcome = future.result()
            results.update(outcome)
            n_done += len(outcome)
            if progress is not None:
                progress(n_done, n_tokens)
    return results


def _solve_token(weight, bias, token, box, tolerance, deadline) -> dict:
    """Determine one token by constraint generation.

    Returns ``{"kind": "witness" | "unargmaxable" | "undetermined", "n_solves", "status", "margin"
    (witness) or "certificate" (unargmaxable)}``.
    """
    n_tokens, n_dims = weight.shape
    statuses: dict[str, int] = {}
    outcome = {"kind": "undetermined", "n_solves": 0, "status": statuses}
    if deadline is not None and time.time() > deadline:
        return outcome
    others = np.arange(n_tokens) != token
    centred = weight[token] - weight.mean(axis=0)
    scale = np.abs(centred).max()
    start_point = box * centred / (scale if scale > 0.0 else 1.0)
    logits = weight @ start_point + bias  # (V,)
    logits[token] = -np.inf
    active = np.argsort(-logits)[: min(_INITIAL_CONSTRAINTS, n_tokens - 1)]  # strongest competitors there
    objective = np.zeros(n_dims + 1)
    objective[-1] = -1.0  # maximize t
    bounds = np.array([(-box, box)] * n_dims + [(-np.inf, np.inf)])  # (d+1, 2)
    for round_index in range(_MAX_ROUNDS + 1):
        if round_index == _MAX_ROUNDS:
            active = np.flatnonzero(others)  # the full LP
        a_ub = np.hstack([weight[active] - weight[token], np.ones((active.size, 1))])  # (|J|, d+1)
        b_ub = bias[token] - bias[active]  # (|J|,)
        result = scipy.optimize.linprog(objective, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs-ds",
                                         options={"presolve": False})
        outcome["n_solves"] += 1
        message = str(result.message)
        statuses[message] = statuses.get(message, 0) + 1
        if result.status != 0:
            return outcome
        t_star = float(-result.fun)
        if t_star <= tolerance:
            lam = np.maximum(-np.asarray(result.ineqlin.marginals, dtype=np.float64), 0.0)  # (|J|,) duals
            if lam.sum() <= 0.0:
                return outcome
            lam = lam / lam.sum()
            bound = check_certificate(weight, bias, token, active, lam, box)
            order = np.argsort(-lam)[:_CERTIFICATE_SUPPORT]
            order = order[lam[order] > 0.0]
            outcome["kind"] = "unargmaxable"
            outcome["certificate"] = {
                "margin": t_star,
                "margin_bound": bound,
                "certified": bool(bound <= tolerance),
                "competitors": [int(j) for j in active[order]],
                "weights": [float(w) for w in lam[order]],
                "n_constraints": int(active.size),
            }
            return outcome
        point = result.x[:n_dims]
        logits = weight @ point + bias  # (V,)
        lead = logits[token] - logits  # (V,) z_i - z_j
        lead[token] = np.inf
        margin = float(lead.min())
        if margin > tolerance:
            outcome["kind"], outcome["margin"] = "witness", margin
            return outcome
        violated = np.flatnonzero(lead < t_star - 1e-9 * (1.0 + abs(t_star)))
        violated = np.setdiff1d(violated, active, assume_unique=False)
        if violated.size == 0:
            return outcome  # the LP and the logits disagree beyond rounding: leave it undetermined
        violated = violated[np.argsort(lead[violated])[:_ADDED_PER_ROUND]]
        active = np.concatenate([active, violated])
        if deadline is not None and time.time() > deadline:
            return outcome
    return outcome
