"""Mixtape (Yang, Luong, Salakhutdinov & Le, "Mixtape: Breaking the Softmax Bottleneck Efficiently",
NeurIPS 2019).

MoS mixes K softmaxes; Mixtape mixes K *logits* with gates that depend on the token, then takes one
softmax ("logit space vector gating"):

    h_k = dropout(tanh(H_k g + c_k))                  K context vectors (as MoS), (K, d_latent)
    s_x = sum_k pi_{x,k} (w_x . h_k + b_x)            one score per token x, (V,)
    log p = s - lse(s)

The gate priors ``pi_{x,.}`` over the K components come from a *sigmoid tree*: K - 1 pre-activations
per token, one per internal node of a binary tree with K leaves, and ``pi_{x,k}`` = the product of
``sigmoid(+-l_{x,node})`` along the path to leaf k (``+`` to the left child). For K = 4:
``pi_1 = s_1 s_2, pi_2 = s_1 (1 - s_2), pi_3 = (1 - s_1) s_3, pi_4 = (1 - s_1)(1 - s_3)``. In log space
``log pi_{x,k} = sum_path logsigmoid(+-l)``. The pre-activations are

    l_{x,n} = v_x . tanh(U_n g) + u_n . g + b_{x,n}     for the frequent tokens x (own gates),
    l_{n}   =                     u_n . g + b_n         shared by every infrequent token ("gate sharing"),

so for the infrequent tokens ``s_x = w_x . (sum_k pi_k h_k) + b_x``: one product per token instead of
K, which is where the saving over MoS comes from. Shapes: ``v`` ``(n_frequent, d_gate)``, ``U``
``(K - 1, d_gate, d_model)``, ``u`` ``(K - 1, d_model)``, ``b`` ``(n_frequent + 1, K - 1)``.

What the sources available here (the abstract, secondary summaries) pin down and what this file
assumes -- not guessed silently, so a reader can check it against the paper:

- pinned down: logit-space gating with token-dependent priors and one softmax; the sigmoid tree (K - 1
  sigmoids) and its K = 4 form; the paper's K = 4; gate sharing of one set of priors for all
  infrequent tokens; the claims (3.5-10.5x faster than MoS, 20-34% slower than softmax at 10-30k
  tokens, measured on whole networks).
- assumed: the form of ``l`` above (a token gate embedding against a tanh projection of ``g``, a
  linear term and a per-token bias), ``d_gate`` = 64; the context vectors as in MoS, with a bias
  ``c_k``; the output bias ``b_x`` inside the mixture (the same as outside, since the priors sum to 1);
  no dropout by default; initialization (PyTorch defaults, gate embedding N(0, 0.1^2), gate biases 0).
- assumed, and different from the paper's setting: "frequent" means the first ``n_frequent`` token ids
  (default 3,000; the paper's threshold is not given here). This project's word vocabularies are in
  order of first occurrence, not of frequency, so the split approximates a frequency split.
"""

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lm.heads.decoder import build_decoder
from lm.heads.loss import scores_nll
from lm.heads.mixture import locked_dropout
from lm.heads.options import check_dropout, check_size


def tree_paths(n_leaves: int) -> list[list[tuple[int, float]]]:
    """For each leaf of the heap-ordered binary tree with ``n_leaves`` leaves (internal nodes
    ``0 .. K - 2``, leaves ``K - 1 .. 2K - 2``), its path: ``(internal node, +1 left / -1 right)``."""
    paths = []
    for leaf in range(n_leaves - 1, 2 * n_leaves - 1):
        path, node = [], leaf
        while node > 0:
            parent = (node - 1) // 2
            path.append((parent, 1.0 if node == 2 * parent + 1 else -1.0))
            node = parent
        paths.append(path[::-1])
    return paths


class MixtapeHead(nn.Module):
    """Mixtape: ``log p = log_softmax(sum_k pi_{x,k} (W h_k + b))`` with sigmoid-tree gate priors.

    Args:
        d_model: size of the body's output ``g``.
        vocab_size: ``V``.
        n_components: ``K``, the context vectors and leaves of the sigmoid tree (the paper's 4).
        d_latent: size of ``h_k``; default: the tied embedding's size, else ``d_model``.
        d_gate: size of the token gate embeddings ``v_x`` (assumed, see the module docstring).
        n_frequent: token ids below this have their own gate priors; the rest share one set.
        dropout_latent: dropout on ``h_k`` (locked over time for ``(B, T, d)`` inputs).
        tied_embedding: input embedding ``(V, d_latent)`` to share with the decoder, or None.
    """

    sparse = False
    decoder_reads_body = False
    affine_log_softmax = False
    argmax_of_body_logits = False

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        *,
        n_components: int = 4,
        d_latent: int | None = None,
        d_gate: int = 64,
        n_frequent: int = 3000,
        dropout_latent: float = 0.0,
        tied_embedding: nn.Embedding | None = None,
    ):
        super().__init__()
        check_size("d_model", d_model)
        check_size("vocab_size", vocab_size)
        check_size("n_components", n_components)
        check_size("d_gate", d_gate)
        check_size("n_frequent", n_frequent)
        if d_latent is None:
            d_latent = tied_embedding.embedding_dim if tied_embedding is not None else d_model
        check_size("d_latent", d_latent)
        self.n_components, self.d_latent, self.d_gate = n_components, d_latent, d_gate
        self.n_frequent = min(n_frequent, vocab_size)
        self.dropout_latent = check_dropout("dropout_latent", dropout_latent)
        self.smoothing = 0.0
        n_nodes = n_components - 1
        self.latent = nn.Linear(d_model, n_components * d_latent)  # H_k, c_k
        self.decoder = build_decoder(d_latent, vocab_size, tied_embedding, input_name="d_latent")
        with warnings.catch_warnings():  # K = 1: no gates, and PyTorch warns about initializing empty weights
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
            self.gate_context = nn.Linear(d_model, n_nodes * d_gate, bias=False)  # U_n
            self.gate_linear = nn.Linear(d_model, n_nodes, bias=False)  # u_n
        self.gate_embedding = nn.Parameter(torch.empty(self.n_frequent, d_gate))  # v_x
        nn.init.normal_(self.gate_embedding, 0.0, 0.1)
        self.gate_bias = nn.Parameter(torch.zeros(self.n_frequent + 1, n_nodes))  # b_{x,n}; last row: shared b_n
        self.paths = tree_paths(n_components)

    def latents(self, hidden: torch.Tensor) -> torch.Tensor:
        """``h_k``: ``(..., d_model)`` -> ``(..., K, d_latent)``, dropped out in training."""
        latent = locked_dropout(torch.tanh(self.latent(hidden)), self.dropout_latent, self.training)
        return latent.view(*hidden.shape[:-1], self.n_components, self.d_latent)

    def pre_activations(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``l``: frequent tokens ``(..., K - 1, n_frequent)`` and the shared set ``(..., K - 1)``."""
        n_nodes = self.n_components - 1
        projected = torch.tanh(self.gate_context(hidden)).view(*hidden.shape[:-1], n_nodes, self.d_gate)
        linear = self.gate_linear(hidden)  # (..., K - 1)
        frequent = projected @ self.gate_embedding.T + linear.unsqueeze(-1) + self.gate_bias[:-1].T  # (..., K-1, n_f)
        return frequent, linear + self.gate_bias[-1]

    def log_priors(self, pre_activations: torch.Tensor) -> torch.Tensor:
        """Sigmoid tree: ``(..., K - 1, M)`` pre-activations -> ``(..., K, M)`` log priors (sum to 1 over K)."""
        if self.n_components == 1:
            return pre_activations.new_zeros(*pre_activations.shape[:-2], 1, pre_activations.shape[-1])
        leaves = [sum(F.logsigmoid(sign * pre_activations[..., node, :]) for node, sign in path) for path in self.paths]
        return torch.stack(leaves, dim=-2)

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """``s``: ``(..., d_model)`` -> ``(..., V)``."""
        latent = self.latents(hidden)  # (..., K, d_latent)
        frequent, shared = self.pre_activations(hidden)
        weight, bias = self.decoder.weight, self.decoder.bias
        n_f = self.n_frequent
        priors = self.log_priors(frequent).exp()  # (..., K, n_f)
        logits = latent @ weight[:n_f].T + bias[:n_f]  # (..., K, n_f)
        scores = (priors * logits).sum(-2)  # (..., n_f)
        if n_f == weight.shape[0]:
            return scores
        shared_priors = self.log_priors(shared.unsqueeze(-1)).exp()  # (..., K, 1)
        context = (shared_priors * latent).sum(-2)  # sum_k pi_k h_k, (..., d_latent)
        return torch.cat([scores, context @ weight[n_f:].T + bias[n_f:]], dim=-1)  # (..., V)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., d_model)`` -> normalized log-probabilities ``(..., V)``."""
        return torch.log_softmax(self.scores(hidden), dim=-1)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """NLL of ``targets`` ``(...)``: cross-entropy on the scores ``s``."""
        return scores_nll(self, hidden, targets, reduction)

    def reference_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """``p ∝ exp(sum_k pi_{x,k} (w_x . h_k + b_x))`` with the tree's products of sigmoids, every token
        through all K components (no shortcut for shared gates), without dropout (slow; for tests)."""
        K, V, n_f = self.n_components, self.decoder.out_features, self.n_frequent
        h = torch.tanh(hidden @ self.latent.weight.T + self.latent.bias).view(*hidden.shape[:-1], K, self.d_latent)
        z = h @ self.decoder.weight.T + self.decoder.bias  # (..., K, V)
        projected = torch.tanh(hidden @ self.gate_context.weight.T).view(*hidden.shape[:-1], K - 1, self.d_gate)
        linear = hidden @ self.gate_linear.weight.T  # (..., K - 1)
        embedding = torch.cat([self.gate_embedding, self.gate_embedding.new_zeros(V - n_f, self.d_gate)])  # (V, d_gate)
        bias = torch.cat([self.gate_bias[:-1], self.gate_bias[-1:].expand(V - n_f, K - 1)])  # (V, K - 1)
        gate = torch.sigmoid(projected @ embedding.T + linear.unsqueeze(-1) + bias.T)  # (..., K - 1, V)
        pi = []
        for path in self.paths:
            weight = torch.ones_like(z[..., 0, :])
            for node, sign in path:
                weight = weight * (gate[..., node, :] if sign > 0 else 1.0 - gate[..., node, :])
            pi.append(weight)
        pi = torch.stack(pi, dim=-2)  # (..., K, V)
        p = torch.exp((pi * z).sum(-2))
        return p / p.sum(-1, keepdim=True)
