"""LRP-0 is gradient × input; conserving rules conserve; edge messages add up to node relevance."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import rules

from conftest import make_mlp
from test_rule_formulas import mlp_lrp

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
#: relative agreement, about 10× the largest error measured on every block kind: conserving rules'
#: input relevance with the logit 5.1e-7 (ε = 1e-9 against denominators near zero); each level's
#: balance with the formulas 7.6e-14 (weights-only αβ); inputs, biases and stabilizer with the logit
#: 2.2e-16; LRP-0 with gradient × input 1.5e-16
CONSERVED = 5e-6
BALANCE = 1e-12
ADDS_UP = 2e-15
GRADIENT = 2e-15


def test_lrp_0_equals_gradient_times_input(kernel):
    model = make_mlp([8, 12, 10, 4], nn.ReLU, bias=False, seed=0)
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    model(x).gather(1, target[:, None]).sum().backward()
    graph = graphlrp.lower(model, x.detach(), block_kind=kernel)
    relevance = graphlrp.explain(graph, x.detach(), target=target, rule=rules.Epsilon(0.0)).input_relevance
    expected = x.grad * x.detach()
    torch.testing.assert_close(relevance, expected, rtol=0, atol=GRADIENT * float(expected.abs().max()))


@pytest.mark.parametrize("rule", CONSERVING, ids=repr)
def test_conserving_rules_conserve_the_logit(kernel, rule):
    model = make_mlp([8, 12, 10, 4], nn.ReLU, bias=True, seed=1)
    x = torch.randn(6, 8, dtype=torch.float64)
    target = torch.tensor([3, 2, 1, 0, 1, 2])
    explanation = graphlrp.explain(graphlrp.lower(model, x, block_kind=kernel), x, target=target, rule=rule)
    with torch.no_grad():
        logit = model(x).gather(1, target[:, None]).squeeze(1)  # the model's own forward
    torch.testing.assert_close(explanation.input_relevance.sum(1), logit, rtol=CONSERVED, atol=0)


@pytest.mark.parametrize("rule", ALL_RULES, ids=repr)
def test_balance_of_every_level_equals_the_rule_formulas(kernel, rule):
    """Each level's relevance in and out, and what its bias terms and stabilizer absorb, against the
    dense formulas on the model's own layers (:func:`test_rule_formulas.mlp_lrp`)."""
    model = make_mlp([7, 9, 8, 5], nn.Tanh, bias=True, seed=2)
    x = torch.randn(4, 7, dtype=torch.float64)
    explanation = graphlrp.explain(graphlrp.lower(model, x, block_kind=kernel), x, target=1, rule=rule)
    input_relevance, expected = mlp_lrp(model, x, 1, rule)
    balances = explanation.conservation()
    assert [b.level for b in balances] == [3, 2, 1]
    scale = float(np.abs(expected[0].relevance).max())
    for balance, reference in zip(balances, expected):
        for name, value in [("relevance_in", reference.relevance.sum(1)), ("relevance_out", reference.relevance_out),
                            ("bias", reference.bias), ("stabilizer", reference.stabilizer)]:
            error = (getattr(balance, name) - torch.from_numpy(value)).abs().max() / scale
            assert error <= BALANCE, f"level {balance.level} {name}: relative error {float(error):.3g}"
        assert balance.dropped.abs().max() <= BALANCE * scale  # no denominator is zero
    torch.testing.assert_close(explanation.input_relevance, torch.from_numpy(input_relevance), rtol=0,
                               atol=BALANCE * scale)


@pytest.mark.parametrize("rule", [rules.Epsilon(0.0), rules.Epsilon(1e-6), rules.Epsilon(0.3),
                                  rules.Epsilon(0.3, zero_bias=True), rules.Epsilon(0.1, stabilizer="plain")], ids=repr)
def test_input_bias_and_stabilizer_relevance_add_up_to_the_models_logit(kernel, rule):
    """LRP-0/ε: what the logit does not pass to the inputs, the biases and the stabilizer absorb."""
    model = make_mlp([7, 9, 8, 5], nn.Tanh, bias=True, seed=2)
    x = torch.randn(4, 7, dtype=torch.float64)
    explanation = graphlrp.explain(graphlrp.lower(model, x, block_kind=kernel), x, target=1, rule=rule)
    with torch.no_grad():
        logit = model(x)[:, 1]
    balances = explanation.conservation()
    absorbed = sum(b.bias + b.stabilizer for b in balances)
    torch.testing.assert_close(explanation.input_relevance.sum(1) + absorbed, logit, rtol=0,
                               atol=ADDS_UP * float(logit.abs().max()))
    if rule.epsilon > 0 or not rule.zero_bias:
        assert float(absorbed.abs().min()) > 1e-3  # something was absorbed: the identity is not trivial


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
