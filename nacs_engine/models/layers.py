"""Building blocks of the CTR models: embeddings, FM, MLP and cross layers.

Inputs are (B, F) integer tensors of per-field ids (id 0 of each field is its
out-of-vocabulary id); one embedding table holds every field, each field's ids
shifted by the sum of the previous fields' vocabulary sizes.

Two layers take another route than torch's own on a CPU, to the same values: a
lookup into a table is ``index_select`` (its gradient, an index_add, takes half
the time of nn.Embedding's), and dropout draws its mask as uniform numbers (torch
draws the Bernoulli mask of ``F.dropout`` several times slower on a CPU:
pytorch/pytorch#138199). A DeepFM's training step is 1.2-1.7x faster with both
(``bench/layers_speed.py``); other devices keep torch's layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

EMBEDDING_INIT_STD = 0.01


def check_field_dims(field_dims: Sequence[int]) -> tuple[int, ...]:
    """Validate per-field vocabulary sizes (each at least 1, OOV id included)."""
    dims = tuple(int(d) for d in field_dims)
    if not dims:
        raise ValueError("field_dims: expected at least one field")
    if any(d < 1 for d in dims):
        raise ValueError(f"field_dims: every vocabulary size must be at least 1, got {dims}")
    return dims


class FieldOffsets(nn.Module):
    """Maps per-field ids (B, F) to rows of one shared table (B, F)."""

    offsets: torch.Tensor

    def __init__(self, field_dims: Sequence[int]) -> None:
        super().__init__()
        dims = torch.tensor(check_field_dims(field_dims), dtype=torch.long)
        offsets = torch.zeros_like(dims)
        offsets[1:] = torch.cumsum(dims, dim=0)[:-1]
        self.register_buffer("offsets", offsets, persistent=False)
        self.total = int(dims.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.long() + self.offsets  # (B, F)


def lookup(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (B, F) of ``table`` (V, E): (B, F, E), what ``F.embedding`` gives."""
    if ids.device.type != "cpu":
        return nn.functional.embedding(ids, table)
    return table.index_select(0, ids.reshape(-1)).view(*ids.shape, table.shape[1])


class Dropout(nn.Dropout):
    """nn.Dropout (inverted: each value kept with probability 1 - p, scaled by 1 / (1 - p))
    whose mask on a CPU comes from uniform numbers of ``generator``, or of torch's global
    generator when it is None (``use_generator`` sets it for a whole model, so that models
    trained at once in threads draw their own masks)."""

    generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.p >= 1.0 or x.device.type != "cpu":
            return super().forward(x)
        # 0 where dropped, 1 / (1 - p) where kept, written over the uniform numbers.
        uniform = torch.rand(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)
        mask = uniform.ge_(self.p).mul_(1.0 / (1.0 - self.p))
        return x * mask


def use_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    """Draw the dropout masks of ``model`` on a CPU from ``generator`` (None: the global
    generator); the numbers are those the global generator seeded alike would give."""
    for module in model.modules():
        if isinstance(module, Dropout):
            module.generator = generator


class FeaturesEmbedding(nn.Module):
    """One embedding table of dimension ``embed_dim`` for all fields: (B, F) -> (B, F, E)."""

    def __init__(self, field_dims: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        self.offsets = FieldOffsets(field_dims)
        self.embedding = nn.Embedding(self.offsets.total, embed_dim)
        nn.init.normal_(self.embedding.weight, std=EMBEDDING_INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lookup(self.embedding.weight, self.offsets(x))  # (B, F, E)


class FeaturesLinear(nn.Module):
    """First-order term: a scalar weight per feature value plus a bias, (B, F) -> (B,)."""

    def __init__(self, field_dims: Sequence[int]) -> None:
        super().__init__()
        self.offsets = FieldOffsets(field_dims)
        self.weight = nn.Embedding(self.offsets.total, 1)
        nn.init.zeros_(self.weight.weight)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lookup(self.weight.weight, self.offsets(x)).sum(dim=(1, 2)) + self.bias  # (B,)


def factorization_machine(embeddings: torch.Tensor) -> torch.Tensor:
    """Second-order FM term: sum over field pairs of <v_i, v_j>, (B, F, E) -> (B,)."""
    square_of_sum = embeddings.sum(dim=1).pow(2)  # (B, E)
    sum_of_square = embeddings.pow(2).sum(dim=1)  # (B, E)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)  # (B,)


class MultiLayerPerceptron(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout per hidden layer, (B, D) -> (B, H_last).

    It has no output layer: the model's ``head`` maps its output to the logit.
    """

    def __init__(self, input_dim: int, hidden_dims: Sequence[int], dropout: float) -> None:
        super().__init__()
        if not hidden_dims:
            raise ValueError("hidden_dims: expected at least one hidden layer")
        layers: list[nn.Module] = []
        width = input_dim
        for hidden in hidden_dims:
            layers += [
                nn.Linear(width, hidden),
                nn.BatchNorm1d(hidden),
                nn.ReLU(),
                Dropout(dropout),
            ]
            width = hidden
        self.layers = nn.Sequential(*layers)
        self.output_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, H)


class CrossNetwork(nn.Module):
    """DCNv2 full-rank cross layers: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, (B, D) -> (B, D)."""

    def __init__(self, input_dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(input_dim, input_dim) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x  # (B, D)
        return x
