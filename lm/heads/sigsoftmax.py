"""The sigsoftmax head (Kanai et al., NeurIPS 2018, arXiv 1805.10829).

``p_i ∝ exp(z_i) sigmoid(z_i)``; in log space ``log p = u - lse(u)`` with ``u = z + logsigmoid(z)``.
``log p`` is not affine in ``g``, so the ``d + 2`` rank bound of softmax does not hold.
"""

import torch
from torch import nn

from lm.heads.decoder import build_decoder
from lm.heads.functional import log_sigsoftmax
from lm.heads.loss import check_reduction, check_targets, reduce_nll
from lm.heads.mixture_loss import fused_single_nll
from lm.heads.options import check_size


class SigsoftmaxHead(nn.Module):
    """``log p = log_sigsoftmax(W g + b)``.

    Args:
        d_model: size of the body's output ``g``; equals the embedding size when tied.
        vocab_size: ``V``.
        tied_embedding: input embedding ``(V, d_model)`` to share with the decoder, or None.
    """

    sparse = False
    decoder_reads_body = True
    affine_log_softmax = False
    argmax_of_body_logits = True  # u = z + logsigmoid(z) is increasing in z: same argmax as z

    def __init__(self, d_model: int, vocab_size: int, *, tied_embedding: nn.Embedding | None = None):
        super().__init__()
        check_size("d_model", d_model)
        check_size("vocab_size", vocab_size)
        self.smoothing = 0.0
        self.decoder = build_decoder(d_model, vocab_size, tied_embedding)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., d_model)`` -> normalized log-probabilities ``(..., V)``."""
        return log_sigsoftmax(self.decoder(hidden))

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """NLL of ``targets`` ``(...)``: cross-entropy on ``u = z + logsigmoid(z)``, fused and chunked
        (see :func:`~lm.heads.mixture_loss.fused_single_nll`)."""
        check_reduction(reduction)
        check_targets(hidden, targets)
        nll = fused_single_nll(hidden, self.decoder.weight, self.decoder.bias, targets, "sigsoftmax")  # (...)
        return reduce_nll(nll, reduction)

    def reference_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """``p_i = exp(z_i) sigmoid(z_i) / sum_j exp(z_j) sigmoid(z_j)`` in probability space (slow; for tests)."""
        z = hidden @ self.decoder.weight.T + self.decoder.bias  # (..., V)
        p = torch.exp(z) * torch.sigmoid(z)
        return p / p.sum(-1, keepdim=True)
