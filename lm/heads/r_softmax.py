"""The r-softmax head (Bałazy et al., "r-softmax: Generalized Softmax with Controllable Sparsity Rate",
2023, arXiv 2304.05243).

``p_i = w_i exp(z_i) / sum_j w_j exp(z_j)``, ``w_i = relu(z_i - max(z) + t_r)``,
``t_r = -quantile(z - max(z), r) + 1e-8`` (detached), so about a fraction ``r`` of the vocabulary gets
probability exactly zero and ``head(hidden)`` contains ``-inf``.

Policy for training and perplexity: a target with ``p_y = 0`` would have infinite NLL, so the loss is
the NLL of the smoothed distribution ``(1 - eps) p + eps / V``, computed in log space as
``logaddexp(log(1 - eps) + log p_y, log(eps / V))``, with ``eps = smoothing`` recorded in every result.
A zero-probability target costs ``log(V / eps)`` nats and sends no gradient through ``p``.
"""

import math

import torch
from torch import nn

from lm.heads.decoder import build_decoder
from lm.heads.functional import log_r_softmax
from lm.heads.loss import check_reduction, check_targets, reduce_nll
from lm.heads.options import check_rate, check_size, check_smoothing


class RSoftmaxHead(nn.Module):
    """``log p = log_r_softmax(W g + b, r)``, trained on the ``eps``-smoothed distribution.

    Args:
        d_model: size of the body's output ``g``; equals the embedding size when tied.
        vocab_size: ``V``.
        r: sparsity rate in [0, 1], the share of the vocabulary that gets probability zero.
        smoothing: ``eps`` in (0, 1) of ``(1 - eps) p + eps / V``, used by :meth:`loss`.
        tied_embedding: input embedding ``(V, d_model)`` to share with the decoder, or None.
    """

    sparse = True
    decoder_reads_body = True
    affine_log_softmax = False
    argmax_of_body_logits = True  # w_i exp(z_i) is increasing in z_i: same argmax as z

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        *,
        r: float = 0.5,
        smoothing: float = 1e-6,
        tied_embedding: nn.Embedding | None = None,
    ):
        super().__init__()
        check_size("d_model", d_model)
        check_size("vocab_size", vocab_size)
        self.r = check_rate("r", r)
        self.smoothing = check_smoothing("smoothing", smoothing)
        self.decoder = build_decoder(d_model, vocab_size, tied_embedding)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., d_model)`` -> normalized log-probabilities ``(..., V)``, ``-inf`` at exact zeros."""
        return log_r_softmax(self.decoder(hidden), self.r)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """NLL of ``targets`` ``(...)`` under ``(1 - eps) p + eps / V`` (see the module docstring)."""
        check_reduction(reduction)
        check_targets(hidden, targets)
        log_probs = self(hidden)  # (..., V)
        target_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...)
        floor = torch.full_like(target_log_probs, math.log(self.smoothing / self.decoder.out_features))
        smoothed = torch.logaddexp(target_log_probs + math.log1p(-self.smoothing), floor)
        return reduce_nll(-smoothed, reduction)

    def reference_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """``p_i = w_i exp(z_i) / sum_j w_j exp(z_j)`` with the paper's ``w`` and ``t_r`` (slow; for tests)."""
        z = hidden @ self.decoder.weight.T + self.decoder.bias  # (..., V)
        shifted = z - z.max(-1, keepdim=True).values
        threshold = -torch.quantile(shifted, self.r, dim=-1, keepdim=True) + 1e-8
        p = torch.relu(shifted + threshold) * torch.exp(shifted)
        return p / p.sum(-1, keepdim=True)
