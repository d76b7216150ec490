"""Convolutions with unstructured-pruned kernels held as CSR over their unrolled edges.

The unrolled block must explain exactly what the convolution block explains (both lowered from the
same pruned model), equal autograd's gradient × input under LRP-0, and fold its per-edge sums back
into the kernel's shape.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import prune

import graphlrp
from graphlrp import rules, thresholds
from graphlrp.blocks import ConvBlock, UnrolledConvBlock

RULES = [rules.Epsilon(0.01), rules.ZPlus(), rules.AlphaBeta(2.0, 1.0), rules.Gamma(0.25), rules.Flat(),
         rules.WSquare(), rules.ZBox(-1.0, 1.0)]


def pruned_cnn(amount: float = 0.97) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.ReLU(),
        nn.Conv2d(16, 16, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 5)).double().eval()
    for layer in model[:-2]:
        if isinstance(layer, nn.Conv2d):
            prune.l1_unstructured(layer, "weight", amount=amount)
    return model, torch.randn(4, 3, 8, 8, dtype=torch.float64)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_pruned_convolutions_are_unrolled_and_unpruned_ones_are_not():
    model, x = pruned_cnn()
    model[6] = nn.Conv2d(16, 16, 1).double()  # whole kernel: stays a convolution
    graph = graphlrp.lower(model, x[:1])
    kinds = [type(block) for block in graph.blocks]
    assert kinds[:3] == [UnrolledConvBlock] * 3 and kinds[3] is ConvBlock
    assert torch.allclose(graph(x), model(x), rtol=0, atol=1e-13)


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_unrolled_convolutions_explain_like_convolutions(rule):
    model, x = pruned_cnn()
    unrolled, whole = graphlrp.lower(model, x[:1]), graphlrp.lower(model, x[:1], block_kind="dense")
    assert any(isinstance(b, UnrolledConvBlock) for b in unrolled.blocks)
    assert not any(isinstance(b, UnrolledConvBlock) for b in whole.blocks)
    found, expected = graphlrp.explain(unrolled, x, 2, rule=rule), graphlrp.explain(whole, x, 2, rule=rule)
    assert relative(found.node_relevance, expected.node_relevance) < 1e-13
    assert relative(found.edge_relevance(1), expected.edge_relevance(1)) < 1e-13


def test_lrp_zero_on_unrolled_convolutions_is_gradient_times_input():
    model, x = pruned_cnn()
    graph = graphlrp.lower(model, x[:1])
    found = graphlrp.explain(graph, x, 3, rule=rules.Epsilon(1e-300)).input_relevance
    leaf = x.clone().requires_grad_(True)
    model(leaf)[:, 3].sum().backward()
    assert relative(found, (leaf.grad * x).reshape(found.shape)) < 1e-12


def test_parameter_relevance_of_unrolled_convolutions_is_shaped_like_the_kernels():
    model, x = pruned_cnn()
    unrolled, whole = graphlrp.lower(model, x[:1]), graphlrp.lower(model, x[:1], block_kind="dense")
    found = graphlrp.aggregate(unrolled, x, 2, rule=rules.Epsilon(0.01), progress=False).parameter_relevance()
    expected = graphlrp.aggregate(whole, x, 2, rule=rules.Epsilon(0.01), progress=False).parameter_relevance()
    assert found.keys() == expected.keys()
    for name, values in expected.items():
        assert found[name].shape == values.shape and bool(values.abs().max() > 0), name
        assert relative(found[name], values) < 1e-13, name
    assert found["0.weight"].shape == model[0].weight.shape
    assert bool((found["0.weight"][model[0].weight == 0] == 0).all())


def test_moving_an_unrolled_graph_keeps_its_kernel_positions():
    model, x = pruned_cnn()
    graph = graphlrp.lower(model, x[:1]).to(dtype=torch.float32)
    block = graph.blocks[0]
    assert isinstance(block, UnrolledConvBlock) and block.dtype == torch.float32
    values = torch.ones(1, block.num_edges, dtype=torch.float32)
    edges_per_weight = block.weight_sums(values)[0]
    live = model[0].weight != 0
    assert bool((edges_per_weight[~live] == 0).all()) and bool((edges_per_weight[live] >= 1).all())


def test_a_convolution_too_large_to_unroll_stays_a_convolution(monkeypatch):
    model, x = pruned_cnn()
    monkeypatch.setattr(thresholds, "UNROLL_CONVOLUTION_MAX_BYTES", 1000)
    graph = graphlrp.lower(model, x[:1])
    assert not any(isinstance(b, UnrolledConvBlock) for b in graph.blocks)
