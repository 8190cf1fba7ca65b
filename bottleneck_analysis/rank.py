"""Numerical rank and spectrum of a tall matrix whose rows arrive in blocks.

The matrix ``A`` (``N x V``, e.g. a model's log-probabilities with one row per predicted position) is
never held in memory. Its rows are folded into the ``R`` factor of a Householder QR, ``A = Q R``, one
block at a time: with ``R`` the ``(V, V)`` triangle so far and ``B`` the next ``(b, V)`` block, LAPACK's
triangular-pentagonal QR ``dtpqrt`` (Elmroth & Gustavson 2000; Bischof & Van Loan's compact WY form)
factors ``[R; B] = Q' [R'; 0]`` in about ``2 b V^2`` flops, so the whole matrix costs ``2 N V^2`` flops
(one QR) and ``V^2 + b V`` floats of memory. ``A`` and ``R`` have the same singular values, which are
then computed from ``R`` (:func:`bottleneck_analysis.singular_values.singular_values`).

The Gram matrix ``A^T A`` is never formed: it squares the condition number, so singular values below
``s_max * sqrt(eps)`` (about ``1e-8 s_max``) would be lost, while QR keeps all of them down to
``s_max * eps`` (Golub & Van Loan, Matrix Computations, 4th ed., section 5.3).

Numerical rank = number of singular values strictly above a tolerance (the convention of
``numpy.linalg.matrix_rank``):

- ``"nr"``: ``s_max * eps / 2 * sqrt(m + n + 1)`` (Numerical Recipes, 3rd ed., section 2.6; the
  tolerance the MoS paper used, Yang et al. 2018, arXiv 1711.03953);
- ``"numpy"``: ``s_max * max(m, n) * eps`` (the default of ``numpy.linalg.matrix_rank``);
- ``"relative_<tol>"``: ``s_max * tol`` for each user-given relative tolerance.

The effective rank of Roy & Vetterli (EUSIPCO 2007) is ``exp(H(p))`` with ``p_k = s_k / sum_j s_j`` and
``H`` the Shannon entropy (``0 log 0 = 0``): a continuous count, equal to ``r`` for ``r`` equal
singular values.

Sparse heads (r-softmax) give rows with ``-inf`` (zero probability). The policy (``smoothing``): with
``eps > 0`` every row is replaced by the smoothed distribution ``log((1 - eps) p + eps / V)``, computed
as ``logaddexp(log(1 - eps) + log p, log(eps / V))`` (the same distribution the head is trained and
evaluated with); with ``eps = 0`` a ``-inf`` entry is an error. ``NaN`` and ``+inf`` are always errors.
The report records the policy, ``eps`` and the share of ``-inf`` entries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from scipy.linalg import lapack

from bottleneck_analysis.singular_values import singular_values
from lm.errors import UserError

EPS = float(np.finfo(np.float64).eps)
DEFAULT_BLOCK_ROWS = 2048
DEFAULT_PANEL_WIDTH = 128  # dtpqrt nb: 128 measured slightly faster than 64 at V = 10,000


class RFactorAccumulator:
    """The ``R`` factor of the Householder QR of all rows folded in so far.

    Rows are kept as they are until there are ``V`` of them (so a matrix with fewer rows than columns
    costs no ``V x V`` work); from then on ``R`` ``(V, V)`` is updated in place by ``dtpqrt``. With
    ``tall=True`` (the caller knows there will be at least ``V`` rows) ``R`` starts at the first block, so
    the ``V`` first rows are never held besides it.

    Args:
        n_cols: ``V``.
        panel_width: ``nb`` of ``dtpqrt`` (the width of its inner blocked reflectors).
        tall: start ``R`` at once (see above).
    """

    def __init__(self, n_cols: int, *, panel_width: int = DEFAULT_PANEL_WIDTH, tall: bool = False):
        self.n_cols = n_cols
        self.n_rows = 0
        self.tall = tall  # the caller knows n_rows >= V: fold from the first block (no V x V of raw rows held)
        self.panel_width = max(1, min(panel_width, n_cols))
        self._pending: list[np.ndarray] = []  # raw (b, V) blocks while n_rows < V
        self._r: np.ndarray | None = None  # (V, V) upper triangular, Fortran order

    def update(self, block: np.ndarray) -> None:
        """Fold in ``block`` ``(b, V)`` float64, Fortran order, owned by the accumulator (overwritten)."""
        if block.shape[0] == 0:
            return
        self.n_rows += block.shape[0]
        if self._r is not None:
            self._fold(block)
            return
        self._pending.append(block)
        if self.n_rows < self.n_cols and not self.tall:
            return
        self._r = np.zeros((self.n_cols, self.n_cols), order="F")  # (V, V)
        pending, self._pending = self._pending, []
        while pending:
            self._fold(pending.pop(0))  # frees each raw block once folded in

    def _fold(self, block: np.ndarray) -> None:
        """``[R; block] = Q' [R'; 0]``; ``R <- R'`` in place (``block`` is overwritten by reflectors)."""
        r, _, _, info = lapack.dtpqrt(0, self.panel_width, self._r, block, overwrite_a=1, overwrite_b=1)
        if info != 0:
            raise RuntimeError(f"LAPACK dtpqrt failed with info={info}")
        self._r = r  # the same buffer, since R is Fortran-ordered float64

    def matrix(self) -> np.ndarray:
        """A matrix with the singular values of all rows so far: ``R`` ``(V, V)``, or the rows themselves
        ``(n_rows, V)`` while there are fewer than ``V``."""
        if self._r is not None:
            return self._r
        if not self._pending:
            return np.zeros((0, self.n_cols))
        return np.concatenate(self._pending, axis=0)  # (n_rows, V)

    def singular_values(self, **options) -> np.ndarray:
        """All ``min(n_rows, V)`` singular values, descending (destroys the accumulator)."""
        values = singular_values(self.matrix(), overwrite=True, **options)
        self._r, self._pending = None, []
        return values[: min(self.n_rows, self.n_cols)]


def tolerances(s_max: float, n_rows: int, n_cols: int, relative: Iterable[float] = ()) -> dict[str, float]:
    """The rank tolerances named in the module docstring, for a matrix ``(n_rows, n_cols)``."""
    values = {
        "nr": s_max * EPS / 2.0 * math.sqrt(n_rows + n_cols + 1),
        "numpy": s_max * max(n_rows, n_cols) * EPS,
    }
    for tolerance in relative:
        values[relative_tolerance_name(tolerance)] = s_max * float(tolerance)
    return values


def relative_tolerance_name(tolerance: float) -> str:
    """``1e-6`` -> ``"relative_1e-06"``."""
    return f"relative_{float(tolerance):g}"


def numerical_rank(singular_values: np.ndarray, tolerance: float) -> int:
    """Number of singular values strictly above ``tolerance``."""
    return int(np.count_nonzero(np.asarray(singular_values) > tolerance))


def effective_rank(singular_values: np.ndarray) -> float:
    """Roy & Vetterli (2007): ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum_j s_j``; 0 for a zero matrix."""
    values = np.asarray(singular_values, dtype=np.float64)
    total = values.sum()
    if total <= 0.0:
        return 0.0
    p = values[values > 0.0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def smooth_log_probs(block: np.ndarray, smoothing: float) -> np.ndarray:
    """``log((1 - eps) p + eps / V)`` of each row of ``block`` ``(b, V)``; a new Fortran-order array."""
    n_cols = block.shape[1]
    out = np.empty(block.shape, order="F")
    np.add(block, math.log1p(-smoothing), out=out)
    np.logaddexp(out, math.log(smoothing / n_cols), out=out)
    return out


def rank_report(
    matrix: np.ndarray | torch.Tensor | Iterable[np.ndarray | torch.Tensor],
    *,
    relative_tolerances: Iterable[float] = (),
    smoothing: float = 0.0,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    panel_width: int = DEFAULT_PANEL_WIDTH,
    svd_method: str = "auto",
) -> dict:
    """Singular values, numerical ranks and effective rank of a matrix, streamed in row blocks.

    Args:
        matrix: a 2-D array or tensor ``(N, V)``, or an iterable of row blocks ``(b_i, V)`` (arrays or
            tensors) whose concatenation is the matrix; read once, never held whole.
        relative_tolerances: extra tolerances ``tol`` in (0, 1): rank above ``s_max * tol``.
        smoothing: ``eps`` of the sparse-row policy (module docstring); 0 means rows must be finite.
        block_rows: rows per block when ``matrix`` is a single array.
        panel_width: inner block width of the streaming QR (``dtpqrt``'s ``nb``).
        svd_method: passed to :func:`bottleneck_analysis.singular_values.singular_values`.
    Returns:
        a JSON-ready dict: ``n_rows``, ``n_cols``, ``dtype`` (of the input), ``max_rank``,
        ``singular_values`` (all ``min(N, V)``, descending), ``tolerances`` and ``rank`` (dicts keyed
        ``"nr"``, ``"numpy"``, ``"relative_<tol>"``), ``effective_rank``, ``sparse`` (the policy, ``eps``,
        the number and share of ``-inf`` entries) and ``method``.
    Raises:
        UserError: for an empty or non-2-D input, blocks of different widths, NaN or ``+inf`` entries,
            ``-inf`` entries with ``smoothing = 0``, or a tolerance outside (0, 1).
    """
    relative_tolerances = [float(t) for t in relative_tolerances]
    for tolerance in relative_tolerances:
        if not 0.0 < tolerance < 1.0:
            raise UserError(f"a relative tolerance must lie in (0, 1), got {tolerance}.")
    if not 0.0 <= smoothing < 1.0:
        raise UserError(f"smoothing must lie in [0, 1), got {smoothing}.")
    if block_rows < 1:
        raise UserError(f"block_rows must be at least 1, got {block_rows}.")

    accumulator: RFactorAccumulator | None = None
    dtypes: list[str] = []
    n_neg_inf = 0
    for raw in _row_blocks(matrix, block_rows):
        block, dtype = _as_numpy(raw)
        if dtype not in dtypes:
            dtypes.append(dtype)
        if accumulator is None:
            accumulator = RFactorAccumulator(block.shape[1], panel_width=panel_width)
        elif block.shape[1] != accumulator.n_cols:
            raise UserError(
                f"row blocks must all have {accumulator.n_cols} columns, got one with {block.shape[1]}."
            )
        n_neg_inf += _check_entries(block, smoothing)
        prepared = smooth_log_probs(block, smoothing) if smoothing > 0.0 else np.array(block, dtype=np.float64, order="F")
        del block
        accumulator.update(prepared)
        del prepared
    if accumulator is None or accumulator.n_rows == 0:
        raise UserError("the matrix has no rows.")

    n_rows, n_cols = accumulator.n_rows, accumulator.n_cols
    values = accumulator.singular_values(method=svd_method)
    s_max = float(values[0]) if values.size else 0.0
    tolerance_values = tolerances(s_max, n_rows, n_cols, relative_tolerances)
    return {
        "n_rows": n_rows,
        "n_cols": n_cols,
        "dtype": "/".join(dtypes),
        "max_rank": min(n_rows, n_cols),
        "singular_values": values.tolist(),
        "tolerances": tolerance_values,
        "rank": {name: numerical_rank(values, tol) for name, tol in tolerance_values.items()},
        "effective_rank": effective_rank(values),
        "sparse": {
            "policy": "smooth" if smoothing > 0.0 else "none",
            "smoothing": float(smoothing),
            "n_neg_inf": n_neg_inf,
            "neg_inf_fraction": n_neg_inf / (n_rows * n_cols),
        },
        "method": "streaming Householder QR (LAPACK dtpqrt) in float64, then singular values of R",
    }


def _row_blocks(matrix, block_rows: int) -> Iterator:
    """Row blocks of a 2-D array/tensor, or the blocks of an iterable as they come."""
    if isinstance(matrix, (np.ndarray, torch.Tensor)):
        if matrix.ndim != 2:
            raise UserError(f"the matrix must be 2-D, got shape {tuple(matrix.shape)}.")
        for start in range(0, matrix.shape[0], block_rows):
            yield matrix[start : start + block_rows]
        return
    if isinstance(matrix, (str, bytes)) or not isinstance(matrix, Iterable):
        raise UserError("the matrix must be a 2-D array or tensor, or an iterable of 2-D row blocks.")
    for block in matrix:
        yield block


def _as_numpy(block) -> tuple[np.ndarray, str]:
    """A 2-D real numpy view of a block and the name of its dtype."""
    if isinstance(block, torch.Tensor):
        block = block.detach().cpu()
        dtype = str(block.dtype).removeprefix("torch.")
        block = block.numpy()
    else:
        block = np.asarray(block)
        dtype = str(block.dtype)
    if block.ndim != 2:
        raise UserError(f"every row block must be 2-D, got shape {block.shape}.")
    if not (np.issubdtype(block.dtype, np.floating) or np.issubdtype(block.dtype, np.integer)):
        raise UserError(f"the matrix must be real, got dtype {dtype}.")
    return block, dtype


def _check_entries(block: np.ndarray, smoothing: float) -> int:
    """Number of ``-inf`` entries; raises UserError for NaN, ``+inf``, or ``-inf`` without smoothing."""
    if not np.issubdtype(block.dtype, np.floating) or np.isfinite(block).all():
        return 0
    if np.isnan(block).any():
        raise UserError("the matrix has NaN entries.")
    if np.isposinf(block).any():
        raise UserError("the matrix has +inf entries.")
    n_neg_inf = int(np.count_nonzero(np.isneginf(block)))
    if smoothing == 0.0:
        raise UserError(
            "the matrix has -inf entries (zero probabilities of a sparse head); "
            "give a smoothing eps > 0 to analyse the smoothed distribution (1 - eps) p + eps / V."
        )
    return n_neg_inf
