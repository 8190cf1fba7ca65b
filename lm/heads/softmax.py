"""The softmax head: ``log p = z - lse(z)`` with ``z = W g + b``.

The baseline whose ``N x V`` log-probability matrix has rank at most ``d + 2`` (Yang et al., ICLR
2018, arXiv 1711.03953, the softmax bottleneck).
"""

import torch
from torch import nn

from lm.heads.decoder import build_decoder
from lm.heads.loss import check_reduction, check_targets, reduce_nll
from lm.heads.mixture_loss import fused_single_nll
from lm.heads.options import check_size


class SoftmaxHead(nn.Module):
    """``log p = log_softmax(W g + b)``.

    Args:
        d_model: size of the body's output ``g``; equals the embedding size when tied.
        vocab_size: ``V``.
        tied_embedding: input embedding ``(V, d_model)`` to share with the decoder, or None.
    """

    sparse = False
    decoder_reads_body = True
    affine_log_softmax = True
    argmax_of_body_logits = True

    def __init__(self, d_model: int, vocab_size: int, *, tied_embedding: nn.Embedding | None = None):
        super().__init__()
        check_size("d_model", d_model)
        check_size("vocab_size", vocab_size)
        self.smoothing = 0.0
        self.decoder = build_decoder(d_model, vocab_size, tied_embedding)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., d_model)`` -> normalized log-probabilities ``(..., V)``."""
        return torch.log_softmax(self.decoder(hidden), dim=-1)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """NLL of ``targets`` ``(...)`` given ``hidden`` ``(..., d_model)``, fused and chunked (equal to
        ``F.cross_entropy`` on the logits, faster: see :func:`~lm.heads.mixture_loss.fused_single_nll`)."""
        check_reduction(reduction)
        check_targets(hidden, targets)
        nll = fused_single_nll(hidden, self.decoder.weight, self.decoder.bias, targets, "softmax")  # (...)
        return reduce_nll(nll, reduction)

    def reference_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """``p_i = exp(z_i) / sum_j exp(z_j)``, ``z = W g + b``, in probability space (slow; for tests)."""
        p = torch.exp(hidden @ self.decoder.weight.T + self.decoder.bias)  # (..., V)
        return p / p.sum(-1, keepdim=True)
