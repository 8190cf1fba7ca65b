"""Fused NLL of a mixture head that never keeps ``tokens x K x V`` tensors for the backward pass.

Also the training loss of the one-component heads (softmax, sigsoftmax): :func:`fused_single_nll` is
the ``K = 1`` case, where the component posterior is exactly 1.

For one token with target ``y``, mixture weights ``log pi`` ``(K,)``, component logits
``z_k = W h_k + b`` ``(K, V)`` and component log-probabilities ``log q_k = f(z_k)``:

    nll = -lse_k(log pi_k + log q_{k,y})
    gamma_k = softmax_k(log pi_k + log q_{k,y})                   (posterior of component k)
    d nll / d log pi_k = -gamma_k
    d nll / d z_{k,v} = gamma_k (q_{k,v} - [v = y]) * c_{k,v}

with ``c = 1`` for softmax components (Yang et al. 2018) and ``c = 1 + sigmoid(-z)``, the derivative
of ``u = z + logsigmoid(z)``, for sigsoftmax components (Kanai et al. 2018). The tokens are processed
in chunks of about ``CHUNK_ELEMENTS`` logits, so the ``K x V`` block of a chunk is the largest
temporary and nothing of that size is saved.

When gradients are needed, the forward pass already computes them for a per-token upstream gradient
of 1 (three GEMMs per chunk, as an autograd backward would do). The per-token gradients of the
latents and of ``log pi`` are exact for any upstream gradient; the decoder's gradient is a sum over
tokens and is rescaled when the upstream gradient is the same for every token (``mean``, ``sum``, or
``none`` followed by a mean), and recomputed chunk by chunk otherwise.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from lm.heads.functional import log_sigsoftmax

CHUNK_ELEMENTS = 2**23
"""Logits per chunk (``chunk_tokens * K * V``): 32 MB in float32 (55 tokens at K = 15, V = 10k), enough
rows for the three GEMMs per chunk to run near the machine's matrix-multiply rate."""


class Component(NamedTuple):
    """A mixture component ``log q = log_softmax(u(z))``.

    ``log_probs(z)`` is the autograd formula; the fused loss uses ``scores(z)``, the scores ``u`` it may
    overwrite (``z`` itself for softmax), and ``chain_in_place(z)``, ``du/dz`` written over ``z`` (None
    when it is 1).
    """

    log_probs: Callable[[torch.Tensor], torch.Tensor]
    scores: Callable[[torch.Tensor], torch.Tensor]
    chain_in_place: Callable[[torch.Tensor], torch.Tensor] | None


def _sigsoftmax_chain_in_place(logits: torch.Tensor) -> torch.Tensor:
    """``1 + sigmoid(-z)`` written over ``z`` (the derivative of ``z + logsigmoid(z)``)."""
    return logits.neg_().sigmoid_().add_(1.0)


COMPONENTS: dict[str, Component] = {
    "softmax": Component(lambda z: torch.log_softmax(z, dim=-1), lambda z: z, None),
    "sigsoftmax": Component(log_sigsoftmax, lambda z: F.logsigmoid(z).add_(z), _sigsoftmax_chain_in_place),
}


def chunk_size(n_components: int, vocab_size: int) -> int:
    """Tokens per chunk so that a chunk holds about :data:`CHUNK_ELEMENTS` logits."""
    return max(1, CHUNK_ELEMENTS // (n_components * vocab_size))


def _chunk_nll_and_logit_grad(
    latent: torch.Tensor,
    log_prior: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    component: Component,
    with_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """NLL ``(n,)`` of one chunk and, if ``with_grad``, ``d nll / d z`` ``(n, K, V)`` and ``-gamma``.

    The ``K x V`` block is exponentiated in place: ``log q_y = u_y - max(u) - log sum exp(u - max u)``
    is read off before, exactly, and ``q = exp(u - max u) / sum`` only enters the gradient.

    Args:
        latent: ``(n, K, d_e)``; log_prior: ``(n, K)``; weight: ``(V, d_e)``; bias: ``(V,)``;
        targets: ``(n,)``.
    """
    n_components = latent.shape[1]
    logits = F.linear(latent, weight, bias)  # (n, K, V)
    scores = component.scores(logits)  # (n, K, V), u (the same tensor as z for softmax)
    index = targets.view(-1, 1, 1).expand(-1, n_components, 1)  # (n, K, 1)
    target_scores = scores.gather(-1, index).squeeze(-1)  # (n, K)
    peak = scores.amax(dim=-1, keepdim=True)  # (n, K, 1)
    exp_scores = scores.sub_(peak).exp_()  # (n, K, V), exp(u - max u), in place
    total = exp_scores.sum(dim=-1)  # (n, K)
    joint = log_prior + target_scores - peak.squeeze(-1) - total.log()  # (n, K), log pi_k + log q_{k,y}
    log_p = torch.logsumexp(joint, dim=-1)  # (n,)
    if not with_grad:
        return -log_p, None, None
    gamma = torch.exp(joint - log_p.unsqueeze(-1))  # (n, K), posterior of each component
    logit_grad = exp_scores.mul_((gamma / total).unsqueeze(-1))  # gamma q, (n, K, V), in place
    logit_grad.scatter_add_(-1, index, -gamma.unsqueeze(-1))  # gamma (q - onehot)
    if component.chain_in_place is not None:
        logit_grad.mul_(component.chain_in_place(logits))
    return -log_p, logit_grad, -gamma


def _sweep(
    latent: torch.Tensor,
    log_prior: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    component: Component,
    token_scale: torch.Tensor | None,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, ...]:
    """One pass over the token chunks: NLL and the gradients that ``needs`` asks for.

    Args:
        latent, log_prior, weight, bias, targets: as :func:`fused_mixture_nll`.
        token_scale: ``(N,)`` upstream gradient per token, or None for 1.
        needs: whether to compute the gradients of (latent, log_prior, decoder weight and bias).
    Returns:
        NLL ``(N,)``, then the gradients of latent ``(N, K, d_e)``, log_prior ``(N, K)``, weight
        ``(V, d_e)`` and bias ``(V,)`` (None where not needed).
    """
    need_latent, need_prior, need_decoder = needs
    with_grad = any(needs)
    n_tokens, n_components, d_latent = latent.shape
    nll = latent.new_empty(n_tokens)
    latent_grad = torch.empty_like(latent) if need_latent else None
    prior_grad = torch.empty_like(log_prior) if need_prior else None
    weight_grad = torch.zeros_like(weight) if need_decoder else None
    bias_grad = torch.zeros_like(bias) if need_decoder else None
    step = chunk_size(n_components, weight.shape[0])
    for start in range(0, n_tokens, step):
        rows = slice(start, start + step)
        nll[rows], logit_grad, minus_gamma = _chunk_nll_and_logit_grad(
            latent[rows], log_prior[rows], weight, bias, targets[rows], component, with_grad
        )
        if not with_grad:
            continue
        if token_scale is not None:
            logit_grad.mul_(token_scale[rows].view(-1, 1, 1))
            minus_gamma = minus_gamma * token_scale[rows].view(-1, 1)
        if need_prior:
            prior_grad[rows] = minus_gamma
        if need_latent:
            latent_grad[rows] = logit_grad @ weight  # (n, K, V) @ (V, d_e) -> (n, K, d_e)
        if need_decoder:
            flat_grad = logit_grad.view(-1, logit_grad.shape[-1])  # (n, K, V) -> (n K, V)
            weight_grad.addmm_(flat_grad.t(), latent[rows].reshape(-1, d_latent))
            bias_grad.add_(flat_grad.sum(dim=0))
    return nll, latent_grad, prior_grad, weight_grad, bias_grad


class _FusedMixtureNLL(torch.autograd.Function):
    """Per-token mixture NLL ``(N,)`` with hand-written, chunked backward (see module docstring)."""

    @staticmethod
    def forward(ctx, latent, log_prior, weight, bias, targets, component_name, precompute):
        # latent (N, K, d_e), log_prior (N, K), weight (V, d_e), bias (V,), targets (N,)
        needs = (precompute, precompute, precompute)
        nll, *gradients = _sweep(latent, log_prior, weight, bias, targets, COMPONENTS[component_name], None, needs)
        ctx.component_name = component_name
        ctx.precomputed = precompute
        ctx.save_for_backward(latent, log_prior, weight, bias, targets)
        if precompute:
            ctx.gradients = gradients  # for an upstream gradient of 1 per token
        return nll

    @staticmethod
    @once_differentiable
    def backward(ctx, nll_grad):
        latent, log_prior, weight, bias, targets = ctx.saved_tensors
        need_latent, need_prior, need_weight, need_bias = ctx.needs_input_grad[:4]
        need_decoder = need_weight or need_bias
        if ctx.precomputed:
            latent_grad, prior_grad, weight_grad, bias_grad = ctx.gradients
            latent_grad = latent_grad * nll_grad.view(-1, 1, 1) if need_latent else None
            prior_grad = prior_grad * nll_grad.view(-1, 1) if need_prior else None
            if not need_decoder:
                return latent_grad, prior_grad, None, None, None, None, None
            if nll_grad.numel() == 0 or bool((nll_grad == nll_grad[0]).all()):  # one upstream gradient for all
                scale = nll_grad[0] if nll_grad.numel() else 0.0
                weight_grad = weight_grad * scale if need_weight else None
                bias_grad = bias_grad * scale if need_bias else None
                return latent_grad, prior_grad, weight_grad, bias_grad, None, None, None
            needs = (False, False, True)  # recompute the decoder's gradient only
        else:
            needs = (need_latent, need_prior, need_decoder)
        _, new_latent_grad, new_prior_grad, weight_grad, bias_grad = _sweep(
            latent, log_prior, weight, bias, targets, COMPONENTS[ctx.component_name], nll_grad, needs
        )
        if not ctx.precomputed:
            latent_grad, prior_grad = new_latent_grad, new_prior_grad
        return (
            latent_grad,
            prior_grad,
            weight_grad if need_weight else None,
            bias_grad if need_bias else None,
            None,
            None,
            None,
        )


def fused_mixture_nll(
    latent: torch.Tensor,
    log_prior: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    component: str,
) -> torch.Tensor:
    """Per-token NLL of the mixture ``p = sum_k pi_k f(W h_k + b)`` at ``targets``.

    Equals ``-log_mixture(log_prior, f(F.linear(latent, weight, bias))).gather(targets)`` and its
    gradients, without keeping any ``K x V`` tensor per token.

    Args:
        latent: ``(N, K, d_e)`` component latents ``h_k``.
        log_prior: ``(N, K)`` normalized ``log pi``.
        weight: ``(V, d_e)`` decoder weight ``W``.
        bias: ``(V,)`` decoder bias ``b``.
        targets: ``(N,)`` long.
        component: a key of :data:`COMPONENTS` (``softmax`` or ``sigsoftmax``).
    Returns:
        ``(N,)`` negative log-likelihoods.
    """
    tensors = (latent, log_prior, weight, bias)
    precompute = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return _FusedMixtureNLL.apply(
        latent.contiguous(), log_prior.contiguous(), weight, bias, targets.contiguous(), component, precompute
    )


def fused_single_nll(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor, component: str
) -> torch.Tensor:
    """Per-token NLL of the one-component head ``log_softmax(u(W g + b))`` at ``targets``.

    The ``K = 1`` case of :func:`fused_mixture_nll`: equal to ``F.cross_entropy`` on the scores, but the
    logits are exponentiated once, in place and chunk by chunk, and the closed-form gradient
    ``(q - onehot) c`` replaces autograd's ``log_softmax`` and ``nll_loss`` backward passes, each of which
    reads and writes a tokens x V tensor (training throughput: ``results/bench/train_throughput.json``).

    Args:
        hidden: ``(..., d)``; weight: ``(V, d)``; bias: ``(V,)``; targets: ``(...)`` long.
        component: a key of :data:`COMPONENTS`.
    Returns:
        ``(...)`` negative log-likelihoods.
    """
    latent = hidden.reshape(-1, 1, hidden.shape[-1])  # (..., d) -> (N, 1, d)
    log_prior = latent.new_zeros(latent.shape[0], 1)  # log 1: the single component
    nll = fused_mixture_nll(latent, log_prior, weight, bias, targets.reshape(-1), component)  # (N,)
    return nll.view(targets.shape)
