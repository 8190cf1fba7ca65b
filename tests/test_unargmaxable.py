"""The unargmaxable-token check: known answers, evidence (witnesses and dual certificates), workers, progress."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

from bottleneck_analysis.unargmaxable import check_certificate, unargmaxable_tokens


def head_with_interior_tokens(n_tokens: int, n_dims: int, n_inside: int, seed: int):
    """Points on the unit sphere (each a vertex of their convex hull, so argmaxable); ``n_inside`` of them
    replaced by convex combinations of 3 others (strictly inside the hull: unargmaxable)."""
    weight = sphere(n_tokens, n_dims, seed)
    generator = np.random.default_rng(seed + 1000)
    inside = np.sort(generator.choice(n_tokens, size=n_inside, replace=False))
    vertices = np.setdiff1d(np.arange(n_tokens), inside)
    for token in inside:
        parts = generator.choice(vertices, size=3, replace=False)
        weight[token] = generator.dirichlet(np.ones(3)) @ weight[parts]
    return weight, inside.tolist()


def sphere(n_tokens: int, n_dims: int, seed: int) -> np.ndarray:
    weight = np.random.default_rng(seed).standard_normal((n_tokens, n_dims))
    return weight / np.linalg.norm(weight, axis=1, keepdims=True)


def full_lp_margin(weight, bias, token, box):
    """The max-margin LP over every constraint (the naive reference)."""
    others = np.arange(weight.shape[0]) != token
    a_ub = np.hstack([weight[others] - weight[token], np.ones((others.sum(), 1))])
    objective = np.r_[np.zeros(weight.shape[1]), -1.0]
    bounds = [(-box, box)] * weight.shape[1] + [(None, None)]
    result = scipy.optimize.linprog(objective, A_ub=a_ub, b_ub=bias[token] - bias[others], bounds=bounds, method="highs")
    return -result.fun


@pytest.mark.parametrize("n_workers", [1, 2])
def test_exactly_the_interior_tokens_are_found_with_certificates(n_workers):
    weight, inside = head_with_interior_tokens(300, 12, 7, seed=n_workers)
    calls = []
    report = unargmaxable_tokens(weight, box=2.0, n_workers=n_workers, progress=lambda done, total: calls.append((done, total)))
    assert report["unargmaxable"] == inside and report["undetermined"] == []
    assert report["n_workers"] == n_workers
    assert calls and calls[-1] == (300, 300) and all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))
    for certificate in report["certificates"]:
        assert certificate["certified"]
        bound = check_certificate(weight, None, certificate["token"], certificate["competitors"], certificate["weights"], 2.0)
        assert bound == pytest.approx(certificate["margin_bound"], abs=1e-9)
        assert bound <= report["margin_tolerance"]


def test_agrees_with_the_full_lp_on_a_low_rank_head_with_bias():
    """d = 3, V = 80: many tokens unargmaxable; every verdict matches the LP over all constraints."""
    generator = np.random.default_rng(11)
    weight, bias = generator.standard_normal((80, 3)), 0.5 * generator.standard_normal(80)
    report = unargmaxable_tokens(weight, bias, box=1.5)
    assert report["undetermined"] == []
    expected = [t for t in range(80) if full_lp_margin(weight, bias, t, 1.5) <= report["margin_tolerance"]]
    assert report["unargmaxable"] == expected and 0 < len(expected) < 80
    assert report["n_found_by_sampling"] + report["n_found_by_lp"] + report["n_unargmaxable"] == 80


def test_duplicated_tokens_are_both_unargmaxable():
    weight = sphere(40, 5, seed=2)
    weight[17] = weight[3]
    assert unargmaxable_tokens(weight)["unargmaxable"] == [3, 17]


def test_constraint_generation_alone_finds_witnesses():
    """Without the cheap witnesses every argmaxable token gets its witness from an LP optimum."""
    weight, inside = head_with_interior_tokens(60, 4, 3, seed=4)
    report = unargmaxable_tokens(weight, witnesses=False)
    assert report["unargmaxable"] == inside
    assert report["n_found_by_lp"] == 60 - len(inside) and report["min_witness_margin"] > report["margin_tolerance"]
