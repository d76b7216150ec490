"""Property-based: no NaN or inf in any relevance, for any finite input, on random graphs."""
from __future__ import annotations

import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import graphlrp
from graphlrp import rules

RULES = [rules.Epsilon(0.0), rules.Epsilon(), rules.ZPlus(), rules.AlphaBeta(2, 1), rules.Gamma(0.25),
         rules.WSquare(), rules.Flat(), rules.ZBox(-2.0, 2.0), rules.Pass(), rules.Epsilon(0.0, stabilizer="plain")]


@st.composite
def networks(draw):
    widths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
    dead = draw(st.sets(st.integers(0, len(widths) - 2), max_size=2))
    zero_bias_layers = draw(st.sets(st.integers(0, len(widths) - 2)))
    activation = draw(st.sampled_from([nn.ReLU, nn.Tanh, nn.Identity]))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        linear = nn.Linear(n_in, n_out).double()
        with torch.no_grad():
            if i in dead:
                linear.weight.zero_()
            if i in zero_bias_layers or i in dead:
                linear.bias.zero_()
            linear.weight[torch.rand_like(linear.weight) < 0.3] = 0.0
        layers += [linear, activation()]
    batch = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["zeros", "random", "large"]))
    x = torch.zeros(batch, widths[0], dtype=torch.float64)
    if kind == "random":
        x = torch.randn(batch, widths[0], dtype=torch.float64)
    elif kind == "large":
        x = torch.randn(batch, widths[0], dtype=torch.float64) * 1e6
    return nn.Sequential(*layers[:-1]), x, draw(st.sampled_from(["dense", "sparse", "edges"]))


@settings(max_examples=60, deadline=None)
@given(networks())
def test_relevance_is_always_finite(case):
    model, x, kind = case
    graph = graphlrp.lower(model, x, block_kind=kind)
    classes = graph.output_shape[0]
    for rule in RULES:
        explanation = graphlrp.explain(graph, x, target=classes - 1, rule=rule)
        assert torch.isfinite(explanation.node_relevance).all(), rule
        assert torch.isfinite(explanation.edge_relevance(0)).all(), rule
        for balance in explanation.conservation():
            assert torch.isfinite(balance.stabilizer).all() and torch.isfinite(balance.dropped).all(), rule
