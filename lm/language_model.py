"""A language model is a body composed with an output head.

``LanguageModel(body, head)``: the body maps tokens ``(B, T)`` to hidden states ``(B, T, d)``; the head
maps hidden states to normalized log-probabilities ``(B, T, V)``. The loss is the same NLL for every
head; heads compute it through ``head.loss`` so that a mixture can use its memory-saving fused path. Under
``torch.autocast`` (mixed-precision training) only the body runs in the lower precision: the head, with
its log-sum-exp and mixture math, gets the hidden states in float32 and runs with autocast off.
"""

from __future__ import annotations

import torch
from torch import nn


class LanguageModel(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body = body
        self.head = head

    def init_state(self, batch_size: int):
        return self.body.init_state(batch_size)

    def forward(self, tokens: torch.Tensor, state=None):
        """Log-probabilities ``(B, T, V)`` of the next token after each position, and the new state."""
        if state is None:
            state = self.body.init_state(tokens.size(0))
        out = self.body(tokens, state)
        return self.head(out.hidden), out.state

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor, state=None):
        """Per-token NLL ``(B, T)``, the new state, and the body's regularization penalty (scalar)."""
        if state is None:
            state = self.body.init_state(tokens.size(0))
        out = self.body(tokens, state)
        device_type = out.hidden.device.type
        if torch.is_autocast_enabled(device_type):  # mixed precision: the body only; the head in float32
            with torch.autocast(device_type, enabled=False):
                return self.head.loss(out.hidden.float(), targets, reduction="none"), out.state, out.penalty
        return self.head.loss(out.hidden, targets, reduction="none"), out.state, out.penalty

    def n_params(self) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())
