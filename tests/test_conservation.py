"""LRP-0 is gradient × input; conserving rules conserve; edge messages add up to node relevance."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import rules

from conftest import make_mlp

ALL_RULES = [
    rules.Epsilon(1e-6), rules.Epsilon(0.3), rules.ZPlus(), rules.AlphaBeta(2, 1), rules.Gamma(0.25),
    rules.WSquare(), rules.Flat(), rules.ZBox(-3.0, 3.0), rules.ZPlus(weights_only=True),
    rules.AlphaBeta(2, 1, weights_only=True), rules.Gamma(0.25, weights_only=True),
]
#: rules that conserve relevance when biases are excluded and the stabilizer is negligible
#: (αβ with β > 0 conserves only where a node has contributions of both signs: its other nodes'
#: relevance is absorbed by the stabilizer, which the balance test accounts for)
CONSERVING = [rules.Epsilon(1e-9, zero_bias=True), rules.ZPlus(1e-9, zero_bias=True),
              rules.AlphaBeta(1, 0, 1e-9, zero_bias=True),
              rules.WSquare(1e-9, zero_bias=True), rules.Flat(1e-9)]


def test_lrp_0_equals_gradient_times_input(kernel):
    model = make_mlp([8, 12, 10, 4], nn.ReLU, bias=False, seed=0)
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    model(x).gather(1, target[:, None]).sum().backward()
    graph = graphlrp.lower(model, x.detach(), block_kind=kernel)
    relevance = graphlrp.explain(graph, x.detach(), target=target, rule=rules.Epsilon(0.0)).input_relevance
    torch.testing.assert_close(relevance, x.grad * x.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rule", CONSERVING, ids=repr)
def test_conserving_rules_conserve_the_logit(kernel, rule):
    model = make_mlp([8, 12, 10, 4], nn.ReLU, bias=True, seed=1)
    x = torch.randn(6, 8, dtype=torch.float64)
    target = torch.tensor([3, 2, 1, 0, 1, 2])
    explanation = graphlrp.explain(graphlrp.lower(model, x, block_kind=kernel), x, target=target, rule=rule)
    logit = explanation.output.gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(explanation.input_relevance.sum(1), logit, rtol=1e-5, atol=0)


@pytest.mark.parametrize("rule", ALL_RULES, ids=repr)
def test_balance_of_every_level_adds_up(kernel, rule):
    model = make_mlp([7, 9, 8, 5], nn.Tanh, bias=True, seed=2)
    x = torch.randn(4, 7, dtype=torch.float64)
    explanation = graphlrp.explain(graphlrp.lower(model, x, block_kind=kernel), x, target=1, rule=rule)
    balances = explanation.conservation()
    assert [b.level for b in balances] == [3, 2, 1]
    for upper, lower in zip(balances, balances[1:]):
        # what leaves a level through its edges is exactly what reaches the level below
        torch.testing.assert_close(upper.relevance_out, lower.relevance_in, rtol=1e-10, atol=1e-12)
    for b in balances:
        torch.testing.assert_close(b.relevance_in, b.relevance_out + b.bias + b.stabilizer + b.dropped,
                                   rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(balances[-1].relevance_out, explanation.input_relevance.sum(1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(balances[0].relevance_in, explanation.output[:, 1], rtol=1e-12, atol=0)
    assert "relevance in" in explanation.conservation_table()


@pytest.mark.parametrize("rule", ALL_RULES, ids=repr)
def test_edge_messages_leaving_a_node_sum_to_its_relevance(kernel, rule):
    model = make_mlp([6, 9, 7, 3], nn.ReLU, bias=True, seed=3)
    x = torch.randn(5, 6, dtype=torch.float64)
    graph = graphlrp.lower(model, x, block_kind=kernel)
    explanation = graphlrp.explain(graph, x, target=[0, 1, 2, 0, 1], rule=rule)
    src, dst, _ = graph.edges()
    messages = explanation.edge_relevance([1, 3])
    assert messages.shape == (2, graph.num_edges)
    outgoing = torch.zeros(2, graph.num_nodes, dtype=torch.float64).index_add_(1, src, messages)
    has_outgoing = torch.zeros(graph.num_nodes, dtype=torch.bool)
    has_outgoing[src] = True
    expected = explanation.node_relevance[[1, 3]]
    torch.testing.assert_close(outgoing[:, has_outgoing], expected[:, has_outgoing], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(explanation.edge_relevance(3), messages[1])


def test_edge_messages_are_the_rule_formula_on_each_edge():
    """ε on one dense layer: the message of edge i→j is a_i w_ji / (z_j + ε·sign z_j) · R_j."""
    model = make_mlp([4, 3], seed=4)
    x = torch.randn(2, 4, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    explanation = graphlrp.explain(graph, x, target=1, rule=rules.Epsilon(0.1))
    W, b = model[0].weight, model[0].bias
    z = x @ W.T + b
    relevance = torch.zeros_like(z)
    relevance[:, 1] = z[:, 1]
    expected = x[:, None, :] * W[None] * (relevance / (z + 0.1 * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)))[:, :, None]
    src, dst, _ = graph.edges()
    torch.testing.assert_close(explanation.edge_relevance(), expected.detach()[:, dst - 4, src])
