"""Conditioner networks: plain MLPs (coupling layers); masked networks live with their flows."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLP"]

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "elu": nn.ELU, "gelu": nn.GELU}


class MLP(nn.Sequential):
    """``in -> hidden... -> out`` with the given activation; ``zero_last=True`` zero-initialises the
    last layer so a transform built on it starts as the identity."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        zero_last: bool = True,
    ):
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        last = nn.Linear(width, out_features)
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        # the layers called directly (no per-module __call__); ReLU in place on the fresh linear output
        for m in self._modules.values():
            if type(m) is nn.Linear:
                x = F.linear(x, m.weight, m.bias)
            elif type(m) is nn.ReLU:
                x = torch.relu_(x)
            else:
                x = m(x)
        return x


def join_context(x: Tensor, context: Tensor | None) -> Tensor:
    """Concatenate a ``(batch, c)`` context to flat conditioner input (no-op when None)."""
    if context is None:
        return x
    return torch.cat([x, context.to(x.dtype)], dim=-1)
