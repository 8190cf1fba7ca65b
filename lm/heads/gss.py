"""Generalized sigsoftmax (GSS; Parthiban, Mao & Inkpen, "On the Softmax Bottleneck of Recurrent Language
Models", AAAI 2021).

``p_i ∝ exp(u_i)`` with ``u = k (z - c) + c - (k - 1) softplus(z - c)`` and ``z = W g + b``. Since
``s - softplus(s) = logsigmoid(s)``, the same scores are computed without cancellation as

    u = z + (k - 1) logsigmoid(z - c),     log p = u - lse(u)

``k = 1`` is softmax and ``k = 2, c = 0`` sigsoftmax (Kanai et al. 2018). ``du/dz = k - (k - 1)
sigmoid(z - c)`` lies between 1 and ``k``, so for ``k > 0`` the map is increasing: the most probable token
is the argmax of ``z``. For ``k != 1`` ``log p`` is not affine in ``g`` and the ``d + 2`` rank bound does
not hold. ``k`` and ``c`` are fixed hyperparameters; the defaults are the sigsoftmax point, since the
settings behind the paper's GSS numbers are not given here.
"""

import torch
import torch.nn.functional as F
from torch import nn

from lm.errors import UserError
from lm.heads.decoder import build_decoder
from lm.heads.loss import scores_nll
from lm.heads.options import check_size


class GeneralizedSigsoftmaxHead(nn.Module):
    """``log p = log_softmax(z + (k - 1) logsigmoid(z - c))``, ``z = W g + b``.

    Args:
        d_model: size of the body's output ``g``; equals the embedding size when tied.
        vocab_size: ``V``.
        k: the slope ratio, positive (1: softmax, 2 with ``c = 0``: sigsoftmax).
        c: the centre of the transition between the slopes ``k`` (below) and 1 (above).
        tied_embedding: input embedding ``(V, d_model)`` to share with the decoder, or None.
    """

    sparse = False
    decoder_reads_body = True
    affine_log_softmax = False
    argmax_of_body_logits = True  # u is increasing in z for k > 0

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        *,
        k: float = 2.0,
        c: float = 0.0,
        tied_embedding: nn.Embedding | None = None,
    ):
        super().__init__()
        check_size("d_model", d_model)
        check_size("vocab_size", vocab_size)
        if not (float(k) > 0.0 and float(k) < float("inf")):
            raise UserError(f"head option k must be a positive finite number, got {k!r}.")
        if not abs(float(c)) < float("inf"):
            raise UserError(f"head option c must be a finite number, got {c!r}.")
        self.k, self.c = float(k), float(c)
        self.smoothing = 0.0
        self.decoder = build_decoder(d_model, vocab_size, tied_embedding)

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """``u = z + (k - 1) logsigmoid(z - c)``: ``(..., d_model)`` -> ``(..., V)``."""
        z = self.decoder(hidden)  # (..., V)
        return z + (self.k - 1.0) * F.logsigmoid(z - self.c)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., d_model)`` -> normalized log-probabilities ``(..., V)``."""
        return torch.log_softmax(self.scores(hidden), dim=-1)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """NLL of ``targets`` ``(...)``: cross-entropy on the scores ``u``."""
        return scores_nll(self, hidden, targets, reduction)

    def reference_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """``p_i ∝ exp(k (z_i - c) + c) / (1 + exp(z_i - c))^(k - 1)``, the paper's form in probability
        space (slow; for tests)."""
        z = hidden @ self.decoder.weight.T + self.decoder.bias  # (..., V)
        p = torch.exp(self.k * (z - self.c) + self.c) * (1.0 + torch.exp(z - self.c)) ** (1.0 - self.k)
        return p / p.sum(-1, keepdim=True)
