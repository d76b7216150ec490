"""Pruned models are explained by their effective weights: equal to a baked twin, for every rule."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from zennit import rules as zrules
from zennit.composites import LayerMapComposite
from zennit.types import Activation

import graphlrp
from graphlrp import rules

from conftest import make_mlp
from test_zennit_agreement import assert_close, zennit_relevance

RULES = [rules.Epsilon(), rules.ZPlus(), rules.AlphaBeta(2, 1), rules.Gamma(0.25), rules.WSquare(), rules.Flat(),
         rules.ZBox(-3.0, 3.0)]


def pruned_and_baked(amount: float, seed: int = 0):
    model = make_mlp([10, 24, 16, 5], nn.ReLU, seed=seed)
    for layer in model:
        if isinstance(layer, nn.Linear):
            prune.l1_unstructured(layer, "weight", amount=amount)
    baked = make_mlp([10, 24, 16, 5], nn.ReLU, seed=seed + 1)
    with torch.no_grad():
        for source, twin in zip(model, baked):
            if isinstance(source, nn.Linear):
                twin.weight.copy_(source.weight_orig * source.weight_mask)
                twin.bias.copy_(source.bias)
    return model, baked


@pytest.mark.parametrize("amount", [0.5, 0.9])
def test_pruned_model_equals_baked_twin_for_every_rule(kernel, amount):
    model, baked = pruned_and_baked(amount)
    x = torch.randn(6, 10, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    pruned_graph = graphlrp.lower(model, x, block_kind=kernel)
    baked_graph = graphlrp.lower(baked, x, block_kind=kernel)
    assert pruned_graph.num_edges == baked_graph.num_edges == sum(
        int(m.weight_mask.sum()) for m in model if isinstance(m, nn.Linear))
    for rule in RULES:
        ours = graphlrp.explain(pruned_graph, x, target=target, rule=rule).input_relevance
        twin = graphlrp.explain(baked_graph, x, target=target, rule=rule).input_relevance
        assert torch.equal(ours, twin), rule


def test_pruned_model_matches_zennit_on_the_baked_twin():
    """Zennit is the reference on the baked twin (on the pruned module its γ and z⁺ lose the weight edit)."""
    model, baked = pruned_and_baked(0.7, seed=3)
    x = torch.randn(5, 10, dtype=torch.float64)
    target = torch.tensor([4, 3, 2, 1, 0])
    graph = graphlrp.lower(model, x)
    pairs = [(rules.Epsilon(), zrules.Epsilon()), (rules.ZPlus(), zrules.ZPlus()), (rules.Gamma(0.25), zrules.Gamma(0.25)),
             (rules.AlphaBeta(2, 1), zrules.AlphaBeta(2, 1)), (rules.WSquare(), zrules.WSquare())]
    for ours, theirs in pairs:
        expected = zennit_relevance(baked, x, target, LayerMapComposite([(Activation, zrules.Pass()), (nn.Linear, theirs)]))
        assert_close(graphlrp.explain(graph, x, target=target, rule=ours).input_relevance, expected)


def test_lowering_neither_modifies_nor_needs_a_fresh_forward():
    model, _ = pruned_and_baked(0.5, seed=5)
    before = copy.deepcopy(model.state_dict())
    hooks_before = [dict(m._forward_pre_hooks) for m in model]
    with torch.no_grad():  # make the cached `weight` stale: lowering must use weight_orig * weight_mask
        model[0].weight_orig.mul_(2.0)
    expected_weight = model[0].weight_orig * model[0].weight_mask
    x = torch.randn(3, 10, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    src, dst, weight = graph.blocks[0].edges()
    torch.testing.assert_close(weight, expected_weight[dst, src])
    assert [dict(m._forward_pre_hooks) for m in model] == hooks_before
    assert set(model.state_dict()) == set(before)
