"""DeepFM and DCNv2: shapes, the logit decomposition, offsets, the registry, the layers' CPU
routes."""

from __future__ import annotations

import pytest
import torch

from nacs_engine.denoise.mc_dropout import enable_mc_dropout
from nacs_engine.models import BACKBONES, DCNv2, DeepFM, build_model
from nacs_engine.models.layers import Dropout, FieldOffsets, factorization_machine, lookup
from nacs_engine.runtime import numpy_generator, resolve_device, seeded_scope, torch_generator

FIELD_DIMS = (5, 3, 7, 2)


def _batch(rows: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    columns = [torch.randint(0, d, (rows,), generator=generator) for d in FIELD_DIMS]
    return torch.stack(columns, dim=1).to(torch.int32)  # (B, F)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_model_returns_logits_and_exposes_features_and_head(backbone: str) -> None:
    model = build_model(backbone, FIELD_DIMS, embed_dim=4, hidden_dims=(8, 6), dropout=0.0)
    model.eval()
    x = _batch()
    logits = model(x)
    h = model.features(x)
    assert logits.shape == (16,)
    assert h.shape == (16, 6)
    assert isinstance(model.head, torch.nn.Linear) and model.head.in_features == 6
    both_logits, both_h = model.logits_and_features(x)
    torch.testing.assert_close(both_logits, logits)
    torch.testing.assert_close(both_h, h)


def test_deepfm_logit_is_head_plus_first_order_plus_fm() -> None:
    model = DeepFM(FIELD_DIMS, embed_dim=3, hidden_dims=(5,), dropout=0.0)
    with torch.no_grad():
        model.first_order.weight.weight.normal_()
    model.eval()
    x = _batch()
    embeddings = model.embedding(x)
    expected = (
        model.head(model.features(x)).squeeze(-1)
        + model.first_order(x)
        + factorization_machine(embeddings)
    )
    torch.testing.assert_close(model(x), expected)


def test_fm_term_equals_explicit_pair_sum() -> None:
    embeddings = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(1))
    explicit = torch.zeros(4)
    for i in range(5):
        for j in range(i + 1, 5):
            explicit += (embeddings[:, i] * embeddings[:, j]).sum(dim=1)
    torch.testing.assert_close(factorization_machine(embeddings), explicit)


def test_dcnv2_logit_is_head_of_features() -> None:
    model = DCNv2(FIELD_DIMS, embed_dim=3, hidden_dims=(5,), dropout=0.0)
    model.eval()
    x = _batch()
    assert len(model.cross.layers) == 3
    torch.testing.assert_close(model(x), model.head(model.features(x)).squeeze(-1))


def test_field_offsets_give_each_field_its_own_rows() -> None:
    offsets = FieldOffsets(FIELD_DIMS)
    x = torch.tensor([[0, 0, 0, 0], [4, 2, 6, 1]])
    assert offsets(x).tolist() == [[0, 5, 8, 15], [4, 7, 14, 16]]
    assert offsets.total == sum(FIELD_DIMS)


def test_lookup_gives_the_rows_and_gradients_of_an_embedding() -> None:
    table = torch.randn(9, 3, requires_grad=True)
    reference = table.detach().clone().requires_grad_(True)
    ids = torch.tensor([[0, 4, 4], [8, 1, 4]])  # (2, 3): id 4 three times
    grad = torch.randn(2, 3, 3)
    out = lookup(table, ids)
    expected = torch.nn.functional.embedding(ids, reference)
    torch.testing.assert_close(out, expected)
    out.backward(grad)
    expected.backward(grad)
    assert table.grad is not None and reference.grad is not None
    torch.testing.assert_close(table.grad, reference.grad)


def test_dropout_keeps_each_value_with_probability_one_minus_p_and_scales_it() -> None:
    x = torch.ones(400, 500, requires_grad=True)
    layer = Dropout(0.3)
    with seeded_scope(0, "dropout", torch.device("cpu")):
        out = layer(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 200,000 draws: standard error 0.001
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.7))
    out.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, out.detach())  # the gradient passes where kept, scaled
    with seeded_scope(0, "dropout", torch.device("cpu")):
        again = layer(x)
    torch.testing.assert_close(again, out)  # the global generator draws the mask
    layer.eval()
    assert layer(x) is x
    model = DeepFM(FIELD_DIMS, embed_dim=3, hidden_dims=(5,), dropout=0.5)
    enable_mc_dropout(model)  # MC-dropout finds the layers as nn.Dropout
    assert [m.training for m in model.modules() if isinstance(m, Dropout)] == [True]


def test_same_seed_same_weights() -> None:
    device = torch.device("cpu")
    with seeded_scope(3, "model_init", device):
        first = build_model("deepfm", FIELD_DIMS)
    with seeded_scope(3, "model_init", device):
        second = build_model("deepfm", FIELD_DIMS)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"backbone": "xgboost"}, "backbone"),
        ({"field_dims": ()}, "field_dims"),
        ({"field_dims": (3, 0)}, "field_dims"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"dropout": 1.0}, "dropout"),
        ({"hidden_dims": ()}, "hidden_dims"),
    ],
)
def test_build_model_rejects_bad_arguments(kwargs: dict, name: str) -> None:
    arguments = {"backbone": "deepfm", "field_dims": FIELD_DIMS} | kwargs
    backbone = arguments.pop("backbone")
    field_dims = arguments.pop("field_dims")
    with pytest.raises(ValueError, match=name):
        build_model(backbone, field_dims, **arguments)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            resolve_device("cuda:0")


def test_generators_are_seeded_per_stream() -> None:
    a = numpy_generator(5, "partitions").integers(0, 1 << 30, 4)
    b = numpy_generator(5, "partitions").integers(0, 1 << 30, 4)
    c = numpy_generator(5, "greedy").integers(0, 1 << 30, 4)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    t1 = torch.randperm(10, generator=torch_generator(5, "training"))
    t2 = torch.randperm(10, generator=torch_generator(5, "training"))
    assert t1.tolist() == t2.tolist()
    with pytest.raises(ValueError, match="seed"):
        numpy_generator(-1, "greedy")
    with pytest.raises(ValueError, match="stream"):
        numpy_generator(1, "nope")
