"""A mixture head with the component function as a parameter (shared by MoS and MoSS).

Yang et al., "Breaking the Softmax Bottleneck", ICLR 2018 (arXiv 1711.03953), and its official code:

    pi = softmax(W_pi g)                 (no bias on the prior)
    h_k = dropout(tanh(W_k g + c_k))     (one Linear d_model -> K d_latent; latent dropout locked over
                                          time for (B, T, d) inputs)
    log p = lse_k(log pi_k + f(W h_k + b))

with ``f = log_softmax`` (MoS) or ``f = log_sigsoftmax`` (mixture of sigsoftmaxes, Kanai et al. 2018),
and the decoder ``W h + b`` shared by all components (tied to the input embedding when asked).
"""

import torch
import torch.nn.functional as F
from torch import nn

from lm.heads.decoder import build_decoder
from lm.heads.functional import log_mixture
from lm.heads.loss import check_reduction, check_targets, reduce_nll
from lm.heads.mixture_loss import COMPONENTS, chunk_size, fused_mixture_nll
from lm.heads.options import check_dropout, check_size


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout whose mask is shared over time for ``(B, T, D)`` inputs (Gal & Ghahramani 2016).

    Other shapes get ordinary element-wise dropout. Kept entries are scaled by ``1 / (1 - p)``.
    """
    if not training or p == 0.0:
        return x
    if x.dim() != 3:
        return F.dropout(x, p, training=True)
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1.0 - p).div_(1.0 - p)  # (B, 1, D)
    return x * mask


class MixtureHead(nn.Module):
    """``log p = lse_k(log pi_k + f(W h_k + b))``; subclasses choose ``f`` by ``component_name``.

    Args:
        d_model: size of the body's output ``g``.
        vocab_size: ``V``.
        n_components: ``K`` (``--n_experts`` in the MoS code).
        d_latent: size of ``h_k`` (``--emsize``); default: the tied embedding's size, else ``d_model``.
        dropout_latent: dropout on ``h_k`` (``--dropoutl``).
        tied_embedding: input embedding ``(V, d_latent)`` to share with the decoder, or None.
    """

    component_name: str = "softmax"
    sparse = False
    decoder_reads_body = False
    affine_log_softmax = False
    argmax_of_body_logits = False

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        *,
        n_components: int = 15,
        d_latent: int | None = None,
        dropout_latent: float = 0.29,
        tied_embedding: nn.Embedding | None = None,
    ):
        super().__init__()
        check_size("d_model", d_model)
        check_size("vocab_size", vocab_size)
        check_size("n_components", n_components)
        if d_latent is None:
            d_latent = tied_embedding.embedding_dim if tied_embedding is not None else d_model
        check_size("d_latent", d_latent)
        self.n_components = n_components
        self.d_latent = d_latent
        self.dropout_latent = check_dropout("dropout_latent", dropout_latent)
        self.smoothing = 0.0
        self.prior = nn.Linear(d_model, n_components, bias=False)
        self.latent = nn.Linear(d_model, n_components * d_latent)
        self.decoder = build_decoder(d_latent, vocab_size, tied_embedding, input_name="d_latent")

    def mixture_inputs(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log pi`` ``(..., K)`` and the dropped-out latents ``h`` ``(..., K, d_latent)``."""
        log_prior = torch.log_softmax(self.prior(hidden), dim=-1)  # (..., K)
        latent = torch.tanh(self.latent(hidden))  # (..., K d_latent)
        latent = locked_dropout(latent, self.dropout_latent, self.training)
        latent = latent.view(*hidden.shape[:-1], self.n_components, self.d_latent)  # (..., K, d_latent)
        return log_prior, latent

    def _log_probs(self, log_prior: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """``(N, K)``, ``(N, K, d_latent)`` -> ``(N, V)`` log-probabilities."""
        component_log_probs = COMPONENTS[self.component_name].log_probs(self.decoder(latent))  # (N, K, V)
        return log_mixture(log_prior, component_log_probs)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., d_model)`` -> normalized log-probabilities ``(..., V)``.

        Without autograd (evaluation, rank analysis) the tokens go through in chunks, so the
        ``K x V`` block per token is never held for all tokens at once.
        """
        log_prior, latent = self.mixture_inputs(hidden)
        log_prior = log_prior.reshape(-1, self.n_components)  # (..., K) -> (N, K)
        latent = latent.reshape(-1, self.n_components, self.d_latent)  # (..., K, d) -> (N, K, d)
        if torch.is_grad_enabled():
            log_probs = self._log_probs(log_prior, latent)
        else:
            step = chunk_size(self.n_components, self.decoder.out_features)
            log_probs = torch.cat(
                [
                    self._log_probs(log_prior[start : start + step], latent[start : start + step])
                    for start in range(0, latent.shape[0], step)
                ]
            )
        return log_probs.view(*hidden.shape[:-1], -1)  # (N, V) -> (..., V)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """NLL of ``targets`` ``(...)`` by the fused, chunked path of :mod:`lm.heads.mixture_loss`."""
        check_reduction(reduction)
        check_targets(hidden, targets)
        log_prior, latent = self.mixture_inputs(hidden)
        nll = fused_mixture_nll(
            latent.reshape(-1, self.n_components, self.d_latent),  # (..., K, d) -> (N, K, d)
            log_prior.reshape(-1, self.n_components),  # (..., K) -> (N, K)
            self.decoder.weight,
            self.decoder.bias,
            targets.reshape(-1),
            self.component_name,
        )
        return reduce_nll(nll.view(targets.shape), reduction)  # (N,) -> (...)

    def reference_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """``p = sum_k pi_k f(W h_k + b)`` in probability space, without dropout (slow; for tests)."""
        pi = torch.exp(hidden @ self.prior.weight.T)
        pi = pi / pi.sum(-1, keepdim=True)  # (..., K)
        h = torch.tanh(hidden @ self.latent.weight.T + self.latent.bias)
        h = h.view(*hidden.shape[:-1], self.n_components, self.d_latent)  # (..., K, d_latent)
        z = h @ self.decoder.weight.T + self.decoder.bias  # (..., K, V)
        weight = {"softmax": torch.ones_like, "sigsoftmax": torch.sigmoid}[self.component_name]  # p ∝ exp(z) w(z)
        components = torch.exp(z) * weight(z)
        components = components / components.sum(-1, keepdim=True)  # (..., K, V)
        return (pi.unsqueeze(-1) * components).sum(-2)
