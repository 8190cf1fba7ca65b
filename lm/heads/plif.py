"""LMS-PLIF: linear-monotonic-softmax with a piecewise linear increasing function (Ganea, Gelly,
Bécigneul & Severyn, "Breaking the Softmax Bottleneck via Learnable Monotonic Pointwise
Non-linearities", ICML 2019, arXiv 1902.08077).

One learnable increasing function ``f`` is applied to every logit ``z = W g + b``; then log-softmax:

    log p = f(z) - lse(f(z))

``f`` is piecewise linear with ``K`` pieces of width ``D = 2 T / K`` on ``[-T, T]`` (knots
``t_j = -T + j D``) and slopes ``a_j = softplus(theta_j) > 0``; below ``-T`` and above ``T`` it continues
linearly with the slope of the first and last piece. With ``j(z) = clamp(floor((z + T) / D), 0, K - 1)``
the piece of ``z``:

    f(z) = F_j + a_j (z - t_j),     F_j = D (a_0 + ... + a_{j-1})      (f(-T) = 0; a constant shift
                                                                        does not change log p)

``theta`` starts at ``softplus^-1(1)``, so ``f(z) = z + T`` and the head starts as a softmax. Increasing,
so the most probable token is the argmax of ``z``; a learned ``f`` is not affine, so the ``d + 2`` rank
bound does not hold.

Deterministic: the gradient of the slopes is summed per piece by ``torch.bincount`` on the CPU (one
sequential pass) and by a one-hot matrix product over chunks of logits elsewhere (a float scatter-add
on a GPU adds in no fixed order), so a seed gives the same numbers on every run. The paper's number of pieces and range for language models are not pinned down here; the
defaults (100 pieces on [-10, 10]) are this project's choice.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lm.errors import UserError
from lm.heads.decoder import build_decoder
from lm.heads.loss import scores_nll
from lm.heads.options import check_size

CHUNK_ELEMENTS = 2**22
"""Logits per chunk of the slope gradient (``chunk x K`` one-hot entries are built at a time)."""
BINCOUNT_DEVICES = ("cpu",)
"""Device types whose ``torch.bincount`` with float weights is one sequential pass (deterministic)."""


class _PiecewiseLinear(torch.autograd.Function):
    """``f(z)`` of the module docstring for logits ``z`` ``(..., V)`` and slopes ``a`` ``(K,)``."""

    @staticmethod
    def forward(ctx, logits, slopes, half_range):
        width = 2.0 * half_range / slopes.numel()
        piece = ((logits + half_range) / width).floor_().clamp_(0, slopes.numel() - 1).long()  # (..., V)
        knots = -half_range + width * torch.arange(slopes.numel(), dtype=slopes.dtype, device=slopes.device)
        values = width * (slopes.cumsum(0) - slopes)  # F_j, (K,)
        offset = logits - knots[piece]  # z - t_j, (..., V)
        ctx.save_for_backward(logits, slopes)
        ctx.half_range = half_range
        return values[piece] + slopes[piece] * offset

    @staticmethod
    def backward(ctx, grad):
        logits, slopes = ctx.saved_tensors
        n_pieces, half_range = slopes.numel(), ctx.half_range
        width = 2.0 * half_range / n_pieces
        knots = -half_range + width * torch.arange(n_pieces, dtype=slopes.dtype, device=slopes.device)
        grad_logits = grad_slopes = None
        flat_logits, flat_grad = logits.reshape(-1), grad.reshape(-1)
        if ctx.needs_input_grad[0]:
            piece = ((logits + half_range) / width).floor_().clamp_(0, n_pieces - 1).long()
            grad_logits = grad * slopes[piece]  # df/dz = a_j
        if ctx.needs_input_grad[1]:
            # df/da_m = D for m < j, z - t_j for m = j, 0 for m > j; summed per piece by one-hot products.
            per_piece = slopes.new_zeros(n_pieces)  # sum of grad over the logits in piece m
            per_piece_offset = slopes.new_zeros(n_pieces)  # sum of grad (z - t_m) over the logits in piece m
            by_bincount = logits.device.type in BINCOUNT_DEVICES
            step = flat_logits.numel() if by_bincount else max(1, CHUNK_ELEMENTS // n_pieces)
            for start in range(0, flat_logits.numel(), step):
                z, g = flat_logits[start : start + step], flat_grad[start : start + step]
                piece = ((z + half_range) / width).floor_().clamp_(0, n_pieces - 1).long()
                offset_grad = g * (z - knots[piece])
                if by_bincount:
                    per_piece += torch.bincount(piece, weights=g, minlength=n_pieces).to(slopes.dtype)
                    per_piece_offset += torch.bincount(piece, weights=offset_grad, minlength=n_pieces).to(slopes.dtype)
                else:
                    one_hot = F.one_hot(piece, n_pieces).to(slopes.dtype)  # (chunk, K)
                    per_piece += g @ one_hot
                    per_piece_offset += offset_grad @ one_hot
            above = per_piece.flip(0).cumsum(0).flip(0) - per_piece  # sum over pieces m' > m
            grad_slopes = width * above + per_piece_offset
        return grad_logits, grad_slopes, None


class PiecewiseLinearSoftmaxHead(nn.Module):
    """``log p = log_softmax(f(W g + b))`` with a learned increasing piecewise linear ``f``.

    Args:
        d_model: size of the body's output ``g``; equals the embedding size when tied.
        vocab_size: ``V``.
        n_pieces: ``K``, the linear pieces of ``f`` on ``[-range, range]``.
        range: ``T`` > 0; outside ``[-T, T]`` ``f`` is linear with the slope of its outer piece.
        tied_embedding: input embedding ``(V, d_model)`` to share with the decoder, or None.
    """

    sparse = False
    decoder_reads_body = True
    affine_log_softmax = False
    argmax_of_body_logits = True  # f is increasing

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        *,
        n_pieces: int = 100,
        range: float = 10.0,  # noqa: A002 (the config option is head.range)
        tied_embedding: nn.Embedding | None = None,
    ):
        super().__init__()
        check_size("d_model", d_model)
        check_size("vocab_size", vocab_size)
        check_size("n_pieces", n_pieces)
        if not 0.0 < float(range) < float("inf"):
            raise UserError(f"head option range must be a positive finite number, got {range!r}.")
        self.n_pieces, self.half_range = n_pieces, float(range)
        self.smoothing = 0.0
        self.decoder = build_decoder(d_model, vocab_size, tied_embedding)
        # softplus(theta) = 1: f starts as the identity plus T (a softmax).
        self.theta = nn.Parameter(torch.full((n_pieces,), math.log(math.expm1(1.0))))

    def slopes(self) -> torch.Tensor:
        """``a = softplus(theta)`` ``(K,)``, all positive."""
        return F.softplus(self.theta)

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """``f(W g + b)``: ``(..., d_model)`` -> ``(..., V)``."""
        return _PiecewiseLinear.apply(self.decoder(hidden), self.slopes(), self.half_range)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., d_model)`` -> normalized log-probabilities ``(..., V)``."""
        return torch.log_softmax(self.scores(hidden), dim=-1)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """NLL of ``targets`` ``(...)``: cross-entropy on ``f(z)``."""
        return scores_nll(self, hidden, targets, reduction)

    def reference_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """``p ∝ exp(f(z))`` with ``f`` as a sum of clamped ramps, one per piece, plus the two outer
        lines (slow; for tests)."""
        z = hidden @ self.decoder.weight.T + self.decoder.bias  # (..., V)
        a, T, K = self.slopes(), self.half_range, self.n_pieces
        width = 2 * T / K
        f = a[0] * torch.clamp(z + T, max=0.0) + a[-1] * torch.clamp(z - T, min=0.0)
        for j in range(K):
            f = f + a[j] * torch.clamp(z - (-T + j * width), 0.0, width)
        p = torch.exp(f)
        return p / p.sum(-1, keepdim=True)
