"""Dynamic evaluation (Krause, Kahembwe, Murray & Renals, "Dynamic Evaluation of Neural Sequence Models",
ICML 2018), the gradient-statistics variant that the MoS code (``dynamiceval.py``) applies.

The model keeps learning while it is evaluated: after scoring each window of ``bptt`` tokens it takes one
step on that window's loss and is pulled back towards the trained weights ``W0``::

    W <- W + lambda * r * (W0 - W) - eta * g / (MS + epsilon)

with, for every parameter entry, ``MS = sqrt(sum of squared gradients)`` over the training split (batches
of ``stat_batch_size`` columns, windows of ``bptt``, dropout off) and the decay rate
``r = min(MS / sum over parameters of mean(MS), 1 / lambda)`` (the clip keeps the decay from
overshooting ``W0``). Every window is scored *before* the model learns from it, so the perplexity is a
proper prequential one; every predicted token is counted once, as in :func:`lm.evaluate.evaluate`.
Evaluation uses batch size 1 (one stream). The model's own weights are restored afterwards.

Settings of the MoS repository: ``eta = 0.002``, ``epsilon = 0.001``, ``bptt = 5``, statistics batch size
100, and ``lambda = 0.075`` for Penn Treebank, ``lambda = 0.02, epsilon = 0.002`` for WikiText-2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from lm.data.batching import batchify, window
from lm.errors import UserError
from lm.models import detach_state


def _backward_in_eval_mode():
    """cuDNN's LSTM refuses backward in eval mode; its native kernel does not (dropout stays off)."""
    return torch.backends.cudnn.flags(enabled=False)


@dataclass
class DynamicEvaluation:
    lr: float = 0.002  # eta, the step size (dynamiceval.py --lr)
    lam: float = 0.02  # lambda, the decay rate towards the trained weights (--lamb)
    epsilon: float = 0.001  # added to MS in the step's denominator (--epsilon)
    bptt: int = 5  # tokens per update (--bptt)
    stat_batch_size: int = 100  # columns of the training split for the statistics (--batch_size)
    max_batches: int | None = None  # at most this many statistics batches (None: the whole split; --max_batches)

    @classmethod
    def from_config(cls, t) -> DynamicEvaluation:
        return cls(lr=t.dynamic_eval_lr, lam=t.dynamic_eval_lambda, epsilon=t.dynamic_eval_epsilon,
                   bptt=t.dynamic_eval_bptt, stat_batch_size=t.dynamic_eval_stat_batch_size,
                   max_batches=t.dynamic_eval_max_batches)

    def settings(self) -> dict:
        return asdict(self)

    def collect_statistics(self, model: torch.nn.Module, train_tokens: torch.Tensor) -> None:
        """``MS`` and the decay rates from gradients of the training split (dropout off)."""
        parameters = dict(model.named_parameters())
        squares = {name: torch.zeros_like(p) for name, p in parameters.items()}
        device = next(model.parameters()).device
        data = batchify(train_tokens, self.stat_batch_size).to(device)  # (B, L)
        was_training = model.training
        model.eval()
        state, n_batches = model.init_state(self.stat_batch_size), 0
        with _backward_in_eval_mode():
            for position in range(0, data.size(1) - 1, self.bptt):
                if self.max_batches is not None and n_batches >= self.max_batches:
                    break
                inputs, targets = window(data, position, self.bptt)  # (B, T)
                model.zero_grad(set_to_none=True)
                nll, state, _ = model.loss(inputs, targets, detach_state(state))
                nll.mean().backward()
                for name, p in parameters.items():
                    if p.grad is not None:
                        squares[name] += p.grad * p.grad
                n_batches += 1
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        self.ms = {name: torch.sqrt(total) for name, total in squares.items()}
        total = sum(ms.mean() for ms in self.ms.values())
        self.decay = {name: torch.clamp(ms / total, max=1.0 / self.lam) for name, ms in self.ms.items()}

    def evaluate(self, model: torch.nn.Module, tokens: torch.Tensor) -> dict:
        """Perplexity of ``tokens`` (one stream) under dynamic evaluation; the weights are restored after."""
        if not hasattr(self, "ms"):
            raise UserError("dynamic evaluation needs gradient statistics: call collect_statistics first.")
        parameters = dict(model.named_parameters())
        trained = {name: p.detach().clone() for name, p in parameters.items()}
        device = next(model.parameters()).device
        data = batchify(tokens, 1).to(device)  # (1, L)
        was_training = model.training
        model.eval()
        state, total_nll, n_tokens = model.init_state(1), 0.0, 0
        try:
            with _backward_in_eval_mode():
                for position in range(0, data.size(1) - 1, self.bptt):
                    inputs, targets = window(data, position, self.bptt)  # (1, T)
                    model.zero_grad(set_to_none=True)
                    nll, state, _ = model.loss(inputs, targets, detach_state(state))  # (1, T)
                    total_nll += nll.detach().double().sum().item()  # scored before learning from it
                    n_tokens += targets.numel()
                    nll.mean().backward()
                    self._update(parameters, trained)
        finally:
            with torch.no_grad():
                for name, p in parameters.items():
                    p.copy_(trained[name])
            model.zero_grad(set_to_none=True)
            model.train(was_training)
        loss = total_nll / n_tokens
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "n_tokens": n_tokens}

    @torch.no_grad()
    def _update(self, parameters: dict, trained: dict) -> None:
        """One step: back towards the trained weights, and down the RMS-normalized gradient."""
        for name, p in parameters.items():
            step = self.lam * self.decay[name] * (trained[name] - p)
            if p.grad is not None:
                step -= self.lr * p.grad / (self.ms[name] + self.epsilon)
            p.add_(step)
