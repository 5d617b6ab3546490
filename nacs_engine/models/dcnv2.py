"""DCNv2 (stacked): full-rank cross layers, then the MLP, then the head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nacs_engine.models.layers import CrossNetwork, FeaturesEmbedding, MultiLayerPerceptron


class DCNv2(nn.Module):
    """logit = head(mlp(cross(embeddings(x)))).

    ``features(x)`` is the MLP output h (B, H); ``head`` is nn.Linear(H, 1).
    """

    def __init__(
        self,
        field_dims: Sequence[int],
        *,
        embed_dim: int = 10,
        hidden_dims: Sequence[int] = (100, 100, 100),
        dropout: float = 0.5,
        cross_layers: int = 3,
    ) -> None:
        super().__init__()
        input_dim = len(field_dims) * embed_dim
        self.embedding = FeaturesEmbedding(field_dims, embed_dim)
        self.cross = CrossNetwork(input_dim, cross_layers)
        self.mlp = MultiLayerPerceptron(input_dim, hidden_dims, dropout)
        self.head = nn.Linear(self.mlp.output_dim, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features h, (B, F) -> (B, H)."""
        x0 = self.embedding(x).flatten(start_dim=1)  # (B, F * E)
        return self.mlp(self.cross(x0))

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B,) and features h (B, H) from one pass."""
        h = self.features(x)
        return self.head(h).squeeze(-1), h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_and_features(x)[0]  # (B,)
