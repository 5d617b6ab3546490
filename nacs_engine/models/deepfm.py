"""DeepFM: first-order terms + factorization machine + a deep MLP part."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nacs_engine.models.layers import (
    FeaturesEmbedding,
    FeaturesLinear,
    MultiLayerPerceptron,
    factorization_machine,
)


class DeepFM(nn.Module):
    """logit = head(features(x)) + first_order(x) + fm(embeddings(x)).

    ``features(x)`` is the MLP output h (B, H); ``head`` is nn.Linear(H, 1).
    """

    def __init__(
        self,
        field_dims: Sequence[int],
        *,
        embed_dim: int = 10,
        hidden_dims: Sequence[int] = (100, 100, 100),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.embedding = FeaturesEmbedding(field_dims, embed_dim)
        self.first_order = FeaturesLinear(field_dims)
        self.mlp = MultiLayerPerceptron(len(field_dims) * embed_dim, hidden_dims, dropout)
        self.head = nn.Linear(self.mlp.output_dim, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features h, (B, F) -> (B, H)."""
        return self.mlp(self.embedding(x).flatten(start_dim=1))

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B,) and features h (B, H) from one pass."""
        embeddings = self.embedding(x)  # (B, F, E)
        h = self.mlp(embeddings.flatten(start_dim=1))  # (B, H)
        logits = self.head(h).squeeze(-1) + self.first_order(x) + factorization_machine(embeddings)
        return logits, h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_and_features(x)[0]  # (B,)
