"""Mixture of contexts (MoC; Yang et al., "Breaking the Softmax Bottleneck: A High-Rank RNN Language
Model", ICLR 2018, arXiv 1711.03953, section 2.5).

The same prior and latents as MoS, but mixed *before* the softmax:

    pi = softmax(W_pi g),  h_k = dropout(tanh(W_k g + c_k)),  h_bar = sum_k pi_k h_k
    log p = log_softmax(W h_bar + b)

``log p`` is ``log_softmax`` of an affine function of ``h_bar``, so its ``N x V`` matrix has rank at most
``d_latent + 2`` however many components there are: the paper's control showing that MoS's gain comes
from mixing in probability space, not from the extra parameters. Built on
:class:`lm.heads.mixture.MixtureHead` (options, prior and latents); the loss is the fused softmax NLL.
"""

import torch

from lm.heads.loss import check_reduction, check_targets, reduce_nll
from lm.heads.mixture import MixtureHead
from lm.heads.mixture_loss import fused_single_nll


class MixtureOfContextsHead(MixtureHead):
    """MoC: ``log p = log_softmax(W sum_k pi_k h_k + b)`` (options of :class:`MixtureHead`)."""

    decoder_reads_body = False
    affine_log_softmax = True  # affine in h_bar: rank <= d_latent + 2
    argmax_of_body_logits = False

    def context(self, hidden: torch.Tensor) -> torch.Tensor:
        """``h_bar = sum_k pi_k h_k``: ``(..., d_model)`` -> ``(..., d_latent)``."""
        log_prior, latent = self.mixture_inputs(hidden)  # (..., K), (..., K, d_latent)
        return (log_prior.exp().unsqueeze(-1) * latent).sum(-2)  # (..., K, 1) * (..., K, d) -> (..., d)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., d_model)`` -> normalized log-probabilities ``(..., V)``."""
        return torch.log_softmax(self.decoder(self.context(hidden)), dim=-1)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """NLL of ``targets`` ``(...)``: the fused softmax cross-entropy on ``W h_bar + b``."""
        check_reduction(reduction)
        check_targets(hidden, targets)
        nll = fused_single_nll(self.context(hidden), self.decoder.weight, self.decoder.bias, targets, "softmax")
        return reduce_nll(nll, reduction)

    def reference_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """``p = softmax(W sum_k pi_k h_k + b)`` in probability space, without dropout (slow; for tests)."""
        pi = torch.exp(hidden @ self.prior.weight.T)
        pi = pi / pi.sum(-1, keepdim=True)  # (..., K)
        h = torch.tanh(hidden @ self.latent.weight.T + self.latent.bias)
        h = h.view(*hidden.shape[:-1], self.n_components, self.d_latent)  # (..., K, d_latent)
        h_bar = (pi.unsqueeze(-1) * h).sum(-2)  # (..., d_latent)
        p = torch.exp(h_bar @ self.decoder.weight.T + self.decoder.bias)  # (..., V)
        return p / p.sum(-1, keepdim=True)
