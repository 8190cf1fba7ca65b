"""The softmax bottleneck of a pretrained causal language model (any Hugging Face ``AutoModelForCausalLM``).

What is measured (:func:`probe_model`), from the model's own hidden states at the input of its output
layer (captured by a forward pre-hook on ``model.get_output_embeddings()``, so every final norm and
projection of the body is included) and the head recomputed in float64:

- **The head's weights** ``W`` ``(V, d)`` (and its bias ``b`` where the model has one): singular
  spectrum, effective rank and normalized singular entropy (Godey et al., COLM 2024, "Why do small
  language models underperform?"), ``d`` against ``V``, tied to the input embedding or not.
- **The log-probability matrix** ``L`` ``(N, V)``, one row per predicted position of the text, with
  ``L = f(H W^T + 1 b^T) - lse 1^T`` in float64, where ``f`` is the model's own logit post-processing
  (identity for most models; Gemma-2's final-logit soft-capping ``c tanh(z / c)``, Cohere's logit scale,
  Granite's logit divisor). For an affine head (``f`` linear) its rank is at most ``d + 1`` (``d + 2``
  with a bias, Yang et al., ICLR 2018); a soft-capped head is not bound by that. Numerical rank at the
  tolerances of :mod:`bottleneck_analysis.rank` (the head runs in float64, so those are the ones that
  apply to this matrix), and at the Numerical Recipes tolerance with the machine epsilon of the model's
  own dtype (``"model_dtype"``: which singular values would survive the model's rounding of its logits).
- **The hidden-size estimate** of Carlini et al. (ICML 2024, "Stealing part of a production language
  model") and Finlayson et al. (COLM 2024, "Logits of API-protected LLMs leak proprietary
  information"): the index ``k`` of the largest multiplicative gap ``s_k / s_{k+1}`` of the singular
  values of the *doubly centred* matrix ``P_N L P_V`` (``P`` the centring projections). Centring over
  the vocabulary removes ``lse`` (Finlayson's centred log-ratio), centring over the contexts removes
  the constant bias row, so for an affine head the matrix is ``(P_N H) (P_V W)^T`` of rank ``d``.
- **Unargmaxable tokens** of the head (Grivas et al., ACL 2022) within the box of the largest absolute
  hidden coordinate seen (:mod:`bottleneck_analysis.unargmaxable`); ``f`` is increasing, so the argmax
  is that of the affine logits.
- **Perplexity and bits per byte** on the text with a sliding window (context ``C`` tokens, stride
  ``S``: every token is predicted once, with at least ``C - S`` tokens of context after the first
  window), from the same float64 head. Bits per byte divide the total NLL (in bits) by the UTF-8 bytes
  of the predicted tokens' text, so models with different tokenizers can be compared.

Memory: the rank rows' hidden states ``(N, d)`` and one triangle ``(k, k)`` with ``k = min(N, V)``, plus
one block. ``L`` is never held: when ``N >= V`` its row blocks are folded into the QR of ``L``; when
``V > N`` its column blocks (the rows of ``L^T``, generated from the kept hidden states and ``W``'s
row blocks) are folded into the QR of ``L^T``. One streamed pass gives both spectra: the stream is
centred on its own side with the mean known from the first pass (``A - 1 mu^T``), the triangle ``R``
then gives ``P A P`` as ``R P`` (right centring commutes with the QR) and, after folding in the one row
``sqrt(n) mu^T``, ``A`` itself (``[A - 1 mu^T; sqrt(n) mu^T]`` is ``A`` times an isometry). The
centred copy of ``R`` is made in memory up to ``spill_bytes``, above that ``R`` is parked in a
temporary file meanwhile, so the peak stays near one triangle.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from bottleneck_analysis.embedding import spectrum_summary
from bottleneck_analysis.rank import EPS, RFactorAccumulator, effective_rank, numerical_rank, tolerances
from bottleneck_analysis.singular_values import singular_values
from bottleneck_analysis.unargmaxable import unargmaxable_tokens
from lm.errors import UserError

SCHEMA_VERSION = 1
DEFAULT_N_CONTEXTS = 4096
DEFAULT_MAX_CONTEXT = 1024
HEAD_BLOCK_BYTES = 64 * 2**20  # float64 logits per head block
DEFAULT_SPILL_BYTES = 256 * 2**20

Progress = Callable[[str, int, int], None]  # (stage, n_done, n_total)


# ---- the head in float64 -------------------------------------------------------------------------------


@dataclass
class Float64Head:
    """``f(h W^T + b)`` in float64: the model's output layer and its logit post-processing.

    Logits are ``z = scale * (h W^T + b)``, then ``c tanh(z / c)`` when ``softcap = c`` is set.
    """

    weight: torch.Tensor  # (V, d) float64
    bias: torch.Tensor | None  # (V,) float64, or None
    scale: float = 1.0  # multiplies the logits (Cohere logit_scale, 1 / Granite logits_scaling)
    softcap: float | None = None  # final-logit soft-capping c (Gemma-2), or None
    steps: list[str] = field(default_factory=list)  # names of the non-identity post-processing steps

    @property
    def affine(self) -> bool:
        return self.softcap is None

    def logits(self, hidden: torch.Tensor, columns: slice | None = None) -> torch.Tensor:
        """``(n, V)`` (or ``(n, |columns|)``) float64 logits of ``hidden`` ``(n, d)`` float64."""
        weight = self.weight if columns is None else self.weight[columns]
        z = hidden @ weight.T  # (n, c)
        if self.bias is not None:
            z += self.bias if columns is None else self.bias[columns]
        if self.scale != 1.0:
            z *= self.scale
        if self.softcap is not None:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z


def float64_head(model: nn.Module, device: torch.device | str | None = None) -> Float64Head:
    """The :class:`Float64Head` of a Hugging Face causal LM (its output embeddings, bias, known post-processing)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(output, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise UserError(f"{type(model).__name__} has no output embedding matrix (get_output_embeddings) to probe.")
    device = weight.device if device is None else torch.device(device)
    weight64 = weight.detach().to(device=device, dtype=torch.float64)
    bias = getattr(output, "bias", None)
    final_bias = getattr(model, "final_logits_bias", None)
    bias64 = None
    for extra in (bias, final_bias):
        if isinstance(extra, torch.Tensor):
            extra = extra.detach().reshape(-1).to(device=device, dtype=torch.float64)
            bias64 = extra if bias64 is None else bias64 + extra
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    steps, scale = [], 1.0
    logit_scale = getattr(model, "logit_scale", None)
    if isinstance(logit_scale, (int, float)) and logit_scale != 1.0:
        scale *= float(logit_scale)
        steps.append(f"logits * logit_scale ({logit_scale:g})")
    logits_scaling = getattr(text_config, "logits_scaling", None)
    if isinstance(logits_scaling, (int, float)) and logits_scaling != 1.0:
        scale /= float(logits_scaling)
        steps.append(f"logits / logits_scaling ({logits_scaling:g})")
    softcap = getattr(text_config, "final_logit_softcapping", None)
    if softcap is not None:
        softcap = float(softcap)
        steps.append(f"final_logit_softcapping: {softcap:g} * tanh(logits / {softcap:g})")
    if scale <= 0.0:
        raise UserError("the model scales its logits by a non-positive factor; its argmax is not that of W h + b.")
    return Float64Head(weight64, bias64, scale, softcap, steps)


class _Stop(Exception):
    """Raised by the capture hook to skip the model's own output layer."""


@contextlib.contextmanager
def _capture_head_input(model: nn.Module) -> Iterator[dict]:
    """While active, ``state["hidden"]`` is the input of the output layer of the last forward; with
    ``state["stop"] = True`` the forward ends there (the model's own logits are not computed)."""
    state = {"hidden": None, "stop": True}

    def hook(module, args, kwargs=None):
        state["hidden"] = args[0] if args else next(iter(kwargs.values()))
        if state["stop"]:
            raise _Stop

    handle = model.get_output_embeddings().register_forward_pre_hook(hook)
    try:
        yield state
    finally:
        handle.remove()


# ---- windows over the text ----------------------------------------------------------------------------


def sliding_windows(n_tokens: int, context_length: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """``(begin, end, first_target)``: the model reads ``tokens[begin:end]`` and predicts the targets
    ``first_target .. end - 1`` (each token from 1 to ``n_tokens - 1`` exactly once)."""
    if context_length < 2 or not 1 <= stride <= context_length - 1:
        raise UserError(f"need a context length >= 2 and 1 <= stride < context length, got {context_length} and {stride}.")
    previous_end = 1
    begin = 0
    while previous_end < n_tokens:
        end = min(begin + context_length, n_tokens)
        yield begin, end, previous_end
        previous_end = end
        begin += stride
        if end == n_tokens:
            break


# ---- the probe ----------------------------------------------------------------------------------------


def probe_model(
    model: nn.Module,
    token_ids: Iterable[int] | torch.Tensor,
    *,
    n_contexts: int = DEFAULT_N_CONTEXTS,
    context_length: int | None = None,
    stride: int | None = None,
    n_bytes: int | None = None,
    relative_tolerances: Iterable[float] = (),
    unargmaxable: bool = True,
    box: float | None = None,
    unargmaxable_seconds: float | None = None,
    n_workers: int | None = None,
    check_head: bool = True,
    spill_bytes: int = DEFAULT_SPILL_BYTES,
    progress: Progress | None = None,
) -> dict:
    """Measure the bottleneck of ``model`` on a token stream (see the module docstring); quiet.

    Args:
        model: a Hugging Face causal LM (``get_output_embeddings``, ``forward(input_ids=...)``), in eval
            mode on its device.
        token_ids: ``(T,)`` the text's token ids (with a leading BOS where the model expects one).
        n_contexts: rows ``N`` of the log-prob matrix: the first ``N`` predicted positions.
        context_length: tokens per window (default: the model's maximum positions, at most 1024).
        stride: new tokens per window after the first (default: half the context).
        n_bytes: UTF-8 bytes of the text of the predicted tokens, for bits per byte (None: not reported).
        relative_tolerances: extra relative rank tolerances.
        unargmaxable: run the unargmaxable-token check.
        box: half-width of that check's box (default: the largest absolute hidden coordinate of the rows).
        unargmaxable_seconds: stop starting its LPs after this long (default: no limit).
        n_workers: processes for its LPs (default: see :func:`unargmaxable_tokens`).
        check_head: compare the float64 head with the model's own logits on the first window and stop
            with a UserError when they disagree beyond the model dtype's rounding.
        spill_bytes: above this size the QR triangle is parked in a temporary file while its centred
            copy is decomposed.
        progress: ``(stage, n_done, n_total)`` for the stages ``"tokens"``, ``"rank"`` and ``"unargmaxable"``.
    Returns:
        a JSON-ready dict with ``model``, ``head``, ``log_probs``, ``hidden_size_estimate``,
        ``language_modeling``, ``unargmaxable``, ``head_check``, ``protocol`` and ``seconds``.
    """
    started = time.perf_counter()
    tokens = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
    if tokens.numel() < 2:
        raise UserError(f"the text gives {tokens.numel()} token(s); at least 2 are needed.")
    if n_contexts < 1:
        raise UserError(f"n_contexts must be at least 1, got {n_contexts}.")
    config = getattr(model, "config", None)
    if context_length is None:
        context_length = min(_max_positions(config) or DEFAULT_MAX_CONTEXT, DEFAULT_MAX_CONTEXT)
    stride = max(1, context_length // 2) if stride is None else stride
    device = _model_device(model)
    head = float64_head(model, device)
    n_vocab, n_dims = head.weight.shape
    model_dtype = _model_dtype(model)
    n_targets = tokens.numel() - 1
    n_rows = min(n_contexts, n_targets)
    _check_memory(n_rows, n_vocab, n_dims)

    # Pass 1: every window; NLL of every target; hidden states and row statistics of the first N rows.
    hidden_rows = torch.empty(n_rows, n_dims, dtype=torch.float64)  # (N, d) on the CPU
    lse_rows = torch.empty(n_rows, dtype=torch.float64)  # (N,)
    mean_logit_rows = torch.empty(n_rows, dtype=torch.float64)  # (N,) mean over the vocabulary
    logit_column_sums = torch.zeros(n_vocab, dtype=torch.float64, device=device)  # (V,) over the N rows
    total_nll, n_predicted, n_filled = 0.0, 0, 0
    head_check = None
    block = max(1, HEAD_BLOCK_BYTES // (8 * n_vocab))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _capture_head_input(model) as captured:
            for begin, end, first_target in sliding_windows(tokens.numel(), context_length, stride):
                inputs = tokens[begin:end].unsqueeze(0).to(device)  # (1, T)
                try:
                    model(input_ids=inputs, use_cache=False)
                except _Stop:
                    pass
                hidden = captured["hidden"]
                if hidden is None:
                    raise UserError(f"{type(model).__name__} never called its output layer; it cannot be probed.")
                hidden = hidden.reshape(-1, hidden.shape[-1])[first_target - 1 - begin : end - 1 - begin]  # (n, d)
                hidden = hidden.to(torch.float64)
                targets = tokens[first_target:end].to(device)  # (n,)
                if check_head and head_check is None:
                    head_check = _check_head(model, captured, inputs, head, first_target - 1 - begin, end - 1 - begin, model_dtype)
                for lo in range(0, hidden.shape[0], block):
                    h = hidden[lo : lo + block]  # (b, d)
                    z = head.logits(h)  # (b, V)
                    lse = torch.logsumexp(z, dim=1)  # (b,)
                    target_logits = z.gather(1, targets[lo : lo + block, None]).squeeze(1)
                    total_nll += float((lse - target_logits).sum())
                    n_predicted += h.shape[0]
                    keep = min(h.shape[0], n_rows - n_filled)
                    if keep > 0:
                        rows = slice(n_filled, n_filled + keep)
                        hidden_rows[rows] = h[:keep].cpu()
                        lse_rows[rows] = lse[:keep].cpu()
                        mean_logit_rows[rows] = z[:keep].mean(dim=1).cpu()
                        logit_column_sums += z[:keep].sum(dim=0)
                        n_filled += keep
                if progress is not None:
                    progress("tokens", end - 1, n_targets)
    finally:
        model.train(was_training)
    collected = time.perf_counter()

    spectra = logprob_spectra(
        head, hidden_rows.to(device), lse_rows.to(device), mean_logit_rows.to(device), logit_column_sums,
        spill_bytes=spill_bytes, progress=progress,
    )
    ranked = time.perf_counter()
    log_probs = _rank_summary(spectra["log_probs"], n_rows, n_vocab, relative_tolerances, model_dtype)
    centred = spectra["double_centred"]
    bound = n_dims + 1 + (head.bias is not None)
    log_probs["softmax_rank_bound"] = bound
    log_probs["affine_head"] = head.affine
    log_probs["largest_gap"] = largest_gap(spectra["log_probs"])

    hidden_max_abs = float(hidden_rows.abs().max())
    if not unargmaxable:
        unargmaxable_report = {"applicable": False, "reason": "not requested"}
    elif hidden_max_abs == 0.0 and box is None:
        unargmaxable_report = {"applicable": False, "reason": "every hidden state is zero"}
    else:
        unargmaxable_report = {"applicable": True, **unargmaxable_tokens(
            head.weight.cpu(), None if head.bias is None else head.bias.cpu(),
            box=box if box is not None else hidden_max_abs, time_limit=unargmaxable_seconds, n_workers=n_workers,
            progress=None if progress is None else (lambda done, total: progress("unargmaxable", done, total)),
        )}
        unargmaxable_report["argmax_of"] = "W h + b (the post-processing steps are increasing)"
    finished = time.perf_counter()

    weight_cpu = head.weight.cpu()
    head_report = {
        "V": n_vocab, "d": n_dims, "d_over_V": n_dims / n_vocab,
        "output_bias": head.bias is not None,
        "tied": _tied(model),
        "post_processing": head.steps,
        "affine": head.affine,
        "spectrum": spectrum_summary(weight_cpu),
        "spectrum_with_bias": None if head.bias is None else spectrum_summary(
            torch.cat([weight_cpu, head.bias.cpu()[:, None]], dim=1)),
    }
    mean_nll = total_nll / n_predicted
    language_modeling = {
        "n_predicted_tokens": n_predicted,
        "nll_nats_per_token": mean_nll,
        "perplexity": math.exp(mean_nll),
        "bits_per_token": mean_nll / math.log(2.0),
        "n_bytes": n_bytes,
        "bits_per_byte": None if not n_bytes else total_nll / math.log(2.0) / n_bytes,
        "head_dtype": "float64",
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "class": type(model).__name__,
            "model_type": getattr(config, "model_type", None),
            "dtype": str(model_dtype).removeprefix("torch."),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "device": str(device),
        },
        "head": head_report,
        "log_probs": log_probs,
        "hidden_size_estimate": {
            "estimate": largest_gap(centred, n_structural_zeros=1)["index"],
            "gap": largest_gap(centred, n_structural_zeros=1),
            "d": n_dims,
            "matrix": "doubly centred log-probabilities P_N L P_V (its last singular value is zero by "
                      "construction and left out of the gap search)",
            "singular_values": centred.tolist(),
        },
        "hidden_max_abs": hidden_max_abs,
        "language_modeling": language_modeling,
        "unargmaxable": unargmaxable_report,
        "head_check": head_check,
        "protocol": {
            "n_tokens": int(tokens.numel()), "context_length": context_length, "stride": stride,
            "n_contexts_requested": n_contexts, "n_rows": n_rows,
            "rows": "the first n_rows predicted positions of the text, in order",
            "layout": "rows of L streamed" if n_rows >= n_vocab else "columns of L streamed (rows of L^T)",
        },
        "seconds": {"forward": collected - started, "rank": ranked - collected,
                    "unargmaxable": finished - ranked, "total": time.perf_counter() - started},
    }


def logprob_spectra(
    head: Float64Head,
    hidden: torch.Tensor,
    lse: torch.Tensor,
    mean_logits: torch.Tensor,
    logit_column_sums: torch.Tensor,
    *,
    spill_bytes: int = DEFAULT_SPILL_BYTES,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """Singular values of ``L`` ``(N, V)`` and of ``P_N L P_V``, streamed (module docstring).

    Args:
        head: the float64 head.
        hidden: ``(N, d)`` float64 hidden states of the rows.
        lse: ``(N,)`` their log-partition functions.
        mean_logits: ``(N,)`` mean logit of each row over the vocabulary.
        logit_column_sums: ``(V,)`` sum of each column of the logits over the ``N`` rows.
    Returns:
        ``{"log_probs": (min(N, V),), "double_centred": (min(N, V),)}``, descending.
    """
    n_rows, n_vocab = hidden.shape[0], head.weight.shape[0]
    by_rows = n_rows >= n_vocab
    if by_rows:  # A = L (N, V); mu = column means of L
        mean = logit_column_sums / n_rows - lse.mean()  # (V,)
        n_stream, width = n_rows, n_vocab
    else:  # A = L^T (V, N); mu = row means of L
        mean = mean_logits - lse  # (N,)
        n_stream, width = n_vocab, n_rows
    block = max(1, min(n_stream, HEAD_BLOCK_BYTES // (8 * max(width, 1))))
    accumulator = RFactorAccumulator(width, tall=True)  # n_stream >= width by the choice of layout
    for start in range(0, n_stream, block):
        stop = min(start + block, n_stream)
        if by_rows:
            piece = head.logits(hidden[start:stop]) - lse[start:stop, None] - mean  # (b, V)
        else:
            piece = (head.logits(hidden, slice(start, stop)) - lse[:, None] - mean[:, None]).T  # (c, N)
        accumulator.update(np.asfortranarray(piece.cpu().numpy()))
        if progress is not None:
            progress("rank", stop, n_stream)
    triangle = accumulator.matrix()  # (width, width), or (n_stream, width) if fewer rows
    parked = None
    if triangle.nbytes > spill_bytes:
        parked = tempfile.TemporaryFile()
        triangle.T.tofile(parked)  # the Fortran triangle's memory, as it is (its transpose is C-ordered)
        centred = triangle
        centred -= centred.mean(axis=1, keepdims=True)  # R P, in place
    else:
        centred = np.array(triangle, order="F")
        centred -= centred.mean(axis=1, keepdims=True)  # (width, width) R P
    double_centred = singular_values(centred, overwrite=True)
    del centred
    if parked is not None:  # read R back into its own buffer (no second copy)
        parked.seek(0)
        buffer, done = memoryview(triangle.T).cast("B"), 0
        while done < buffer.nbytes:
            n_read = parked.readinto(buffer[done:])
            if not n_read:
                raise RuntimeError("the parked QR triangle could not be read back")
            done += n_read
        parked.close()
    extra = np.asfortranarray(math.sqrt(n_stream) * mean.cpu().numpy()[None, :])  # (1, width)
    accumulator.update(extra)
    values = accumulator.singular_values()
    k = min(n_rows, n_vocab)
    return {"log_probs": values[:k], "double_centred": double_centred[:k]}


def largest_gap(values: np.ndarray | list[float], n_structural_zeros: int = 0) -> dict:
    """The largest multiplicative gap ``s_k / s_{k+1}`` of descending singular values: ``index`` ``k`` (the
    number of values above the gap) and ``ratio``.

    Values are floored at ``s_1 * eps`` (below it they cannot be told from zero in float64), so a zero
    tail gives a finite ratio; the last ``n_structural_zeros`` values (zero by construction, e.g. the one
    a centring projection removes) are left out. Fewer than two values give ``index = len(values)``.
    """
    values = np.asarray(values, dtype=np.float64)
    if n_structural_zeros:
        values = values[: max(values.size - n_structural_zeros, 0)]
    if values.size < 2 or values[0] <= 0.0:
        return {"index": int(values.size), "ratio": None}
    floored = np.maximum(values, values[0] * EPS)
    ratios = floored[:-1] / floored[1:]
    k = int(np.argmax(ratios))
    return {"index": k + 1, "ratio": float(ratios[k])}


# ---- helpers ------------------------------------------------------------------------------------------


def _rank_summary(values: np.ndarray, n_rows: int, n_cols: int, relative: Iterable[float], model_dtype) -> dict:
    s_max = float(values[0]) if values.size else 0.0
    limits = tolerances(s_max, n_rows, n_cols, relative)
    dtype_eps = float(torch.finfo(model_dtype).eps) if model_dtype.is_floating_point else EPS
    limits["model_dtype"] = s_max * dtype_eps / 2.0 * math.sqrt(n_rows + n_cols + 1)
    return {
        "n_rows": n_rows,
        "n_cols": n_cols,
        "max_rank": min(n_rows, n_cols),
        "singular_values": values.tolist(),
        "tolerances": limits,
        "rank": {name: numerical_rank(values, tol) for name, tol in limits.items()},
        "effective_rank": effective_rank(values),
        "tolerance_note": (
            "the head is computed in float64 from the model's hidden states, so the float64 tolerances "
            f"(nr, numpy) apply to this matrix; model_dtype is the nr formula with the epsilon of "
            f"{str(model_dtype).removeprefix('torch.')} ({dtype_eps:.3g}), the model's own rounding of its logits"
        ),
        "method": "streaming Householder QR (LAPACK dtpqrt) in float64 of the side with more entries, "
                  "then singular values of R",
    }


def _check_head(model, captured, inputs, head: Float64Head, lo: int, hi: int, model_dtype) -> dict:
    """Compare the float64 head with the model's own logits on one window."""
    captured["stop"] = False
    try:
        logits = model(input_ids=inputs, use_cache=False).logits  # (1, T, V)
    finally:
        captured["stop"] = True
    theirs = logits.reshape(-1, logits.shape[-1])[lo:hi].to(torch.float64)
    hidden = captured["hidden"].reshape(-1, captured["hidden"].shape[-1])[lo:hi].to(torch.float64)
    ours = head.logits(hidden)[:, : theirs.shape[1]]
    difference = float((ours - theirs).abs().max())
    scale = float(theirs.abs().max())
    eps = float(torch.finfo(logits.dtype).eps)
    tolerance = 8.0 * eps * math.sqrt(head.weight.shape[1]) * (1.0 + scale)  # rounding of d-term dot products
    report = {"max_abs_difference": difference, "max_abs_logit": scale, "tolerance": tolerance,
              "model_logits_dtype": str(logits.dtype).removeprefix("torch."), "passed": difference <= tolerance}
    if not report["passed"]:
        raise UserError(
            f"the float64 head (W h + b{' and ' + ', '.join(head.steps) if head.steps else ''}) differs from "
            f"{type(model).__name__}'s own logits by up to {difference:.3g} (tolerance {tolerance:.3g}): its "
            "output layer has a step this probe does not know, so its log-probabilities cannot be measured."
        )
    return report


def working_memory_bytes(n_rows: int, n_vocab: int, n_dims: int) -> int:
    """Bytes the rank computation holds: the ``min(N, V)^2`` triangle, the ``N x d`` hidden states, the
    float64 head ``V x d`` and a few head blocks."""
    k = min(n_rows, n_vocab)
    return 8 * (k * k + n_rows * n_dims + n_vocab * n_dims) + 4 * HEAD_BLOCK_BYTES


def _check_memory(n_rows: int, n_vocab: int, n_dims: int) -> None:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on every platform
        return
    needed = working_memory_bytes(n_rows, n_vocab, n_dims)
    if needed > 0.8 * total:
        k = min(n_rows, n_vocab)
        raise UserError(
            f"the rank of a {n_rows:,} x {n_vocab:,} log-prob matrix needs about {needed / 1e9:.1f} GB "
            f"(a {k:,} x {k:,} float64 triangle), more than this machine's {total / 1e9:.1f} GB allow; "
            "give a smaller --n-contexts."
        )


def _max_positions(config) -> int | None:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def _model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    output = model.get_output_embeddings()
    weight = getattr(output, "weight", None)
    return weight.dtype if isinstance(weight, torch.Tensor) else torch.float32


def _tied(model: nn.Module) -> bool:
    output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    a, b = getattr(output, "weight", None), getattr(inputs, "weight", None)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape:
        return a.data_ptr() == b.data_ptr() or bool(torch.equal(a, b))
    return False
