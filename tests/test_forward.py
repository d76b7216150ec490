"""The graph computes what the model computes."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphlrp

from conftest import make_mlp

ACTIVATIONS = [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus, nn.Hardtanh]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-30))


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: a.__name__)
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["f32", "f64"])
def test_forward_equals_model(kernel, activation, dtype, tolerance):
    model = make_mlp([9, 13, 11, 6], activation, seed=1, dtype=dtype)
    x = torch.randn(5, 9, dtype=dtype)
    graph = graphlrp.lower(model, x, block_kind=kernel)
    with torch.no_grad():
        assert relative_error(graph(x), model(x)) <= tolerance


def test_nested_sequential_with_flatten_identity_dropout():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Sequential(nn.Linear(12, 8), nn.Dropout(0.5), nn.ReLU(), nn.Identity()),
        nn.Sequential(nn.Sequential(nn.Linear(8, 5), nn.Tanh())),
        nn.Linear(5, 3),
    ).double().eval()
    x = torch.randn(4, 3, 4, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    assert graph.input_shape == (3, 4)
    assert [l.name for l in graph.levels] == ["input", "1.0", "2.0.0", "3"]
    assert graph.num_nodes == 12 + 8 + 5 + 3
    assert graph.num_edges == 12 * 8 + 8 * 5 + 5 * 3
    with torch.no_grad():
        assert relative_error(graph(x), model(x)) <= 1e-12
    explanation = graphlrp.explain(graph, x, target=0)
    assert explanation.input_relevance.shape == x.shape


def test_activation_on_the_input_and_stacked_activations():
    torch.manual_seed(1)
    model = nn.Sequential(nn.ReLU(), nn.Linear(4, 6), nn.Tanh(), nn.Sigmoid(), nn.Linear(6, 2)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    with torch.no_grad():
        assert relative_error(graph(x), model(x)) <= 1e-12


def test_zero_weights_are_not_edges_and_auto_kind_follows_density():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 5)).eval()
    with torch.no_grad():
        model[0].weight[torch.rand(40, 50) < 0.95] = 0  # about 5% dense
    x = torch.randn(2, 50)
    graph = graphlrp.lower(model, x)
    assert graph.num_edges == int((model[0].weight != 0).sum()) + 40 * 5
    assert [b.kind for b in graph.blocks] == ["sparse", "dense"]
    src, dst, weight = graph.edges()
    assert len(src) == len(dst) == len(weight) == graph.num_edges
    assert bool((weight != 0).all())
    # every listed edge carries the model's weight between the right neurons
    first = src < 50
    assert torch.equal(model[0].weight[dst[first] - 50, src[first]], weight[first])


def test_graph_to_dtype_and_repr():
    model = make_mlp([4, 5, 2], seed=3, dtype=torch.float32)
    x = torch.randn(2, 4)
    graph = graphlrp.lower(model, x).to(dtype=torch.float64)
    assert graph.dtype == torch.float64
    with torch.no_grad():
        assert relative_error(graph(x.double()), model.double()(x.double())) <= 1e-6
    text = repr(graph)
    assert "nodes=11" in text and "edges=30" in text and "Linear" in text and "dense from 0" in text
