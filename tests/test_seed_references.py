"""graphlrp reproduces the seed notebooks' dense formulas and the Jacobian reference of seed 000."""
from __future__ import annotations

import torch
import torch.nn as nn

import graphlrp
from graphlrp import rules

from conftest import make_mlp


def one_layer(weight: torch.Tensor) -> nn.Sequential:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
    return nn.Sequential(layer, nn.ReLU())


def seed_001_inputs():
    W = torch.tensor([[-1, 1, 0], [0, 1, 2]], dtype=torch.float64)
    X = torch.tensor([[1, 1, 1], [1, 2, 3], [0, 3, 2], [3, 0, 2], [1, 2, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    return W, X


def relevance_for(model, X, Q, rule):
    graph = graphlrp.lower(model, X)
    return graphlrp.explain(graph, X, output_relevance=Q, rule=rule).input_relevance


def test_seed_z_rule_with_plain_epsilon():
    W, X = seed_001_inputs()
    Y = (X @ W.T).clamp(min=0)
    Q = torch.ones_like(Y) * (Y != 0)
    expected = X * ((Q / (X @ W.T + 10e-6)) @ W)
    actual = relevance_for(one_layer(W), X, Q, rules.Epsilon(10e-6, stabilizer="plain"))
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_seed_weight_only_zplus():
    W, X = seed_001_inputs()
    Y = (X @ W.T).clamp(min=0)
    Q = torch.ones_like(Y) * (Y != 0)
    Wp = W.clamp(min=0)
    expected = X * ((Q / (X @ Wp.T + 10e-6)) @ Wp)
    actual = relevance_for(one_layer(W), X, Q, rules.ZPlus(10e-6, stabilizer="plain", weights_only=True))
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_seed_wsquare():
    W, X = seed_001_inputs()
    Y = (X @ W.T).clamp(min=0)
    Q = torch.ones_like(Y) * (Y != 0)
    expected = Q @ (W.pow(2) / (W.pow(2).sum(dim=1, keepdim=True) + 10e-6))
    actual = relevance_for(one_layer(W), X, Q, rules.WSquare(10e-6, stabilizer="plain"))
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_seed_003_epsilon_on_random_layers():
    torch.manual_seed(0)
    W = torch.randn(6, 9, dtype=torch.float64)
    X = torch.rand(4, 9, dtype=torch.float64)
    R = torch.rand(4, 6, dtype=torch.float64)
    epsilon = 0.01
    Z = X @ W.T + epsilon
    expected = X * ((R / Z) @ W)
    model = one_layer(W)[:1]
    actual = relevance_for(model, X, R, rules.Epsilon(epsilon, stabilizer="plain"))
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def jacobian_lrp_0(layer: nn.Module, x: torch.Tensor, relevance_y: torch.Tensor) -> torch.Tensor:
    """Seed 000's LRP-0: ``R_x = Σ_y R_y · J_yx · x / y`` with the layer's Jacobian (one sample)."""
    y = layer(x)
    jacobian = torch.autograd.functional.jacobian(layer, x)  # (n_y, n_x)
    safe_y = torch.where(y == 0, torch.ones_like(y), y)
    share = torch.where(y == 0, torch.zeros_like(y), relevance_y / safe_y)
    return (share[:, None] * jacobian * x[None, :]).sum(0)


def test_lrp_0_equals_the_jacobian_reference():
    model = make_mlp([5, 7, 6, 3], nn.ReLU, bias=True, seed=1)
    x = torch.randn(4, 5, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    explanation = graphlrp.explain(graph, x, target=2, rule=rules.Epsilon(0.0))
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for sample in range(len(x)):
        inputs = [x[sample]]
        for layer in linears[:-1]:
            inputs.append(torch.relu(layer(inputs[-1])))
        with torch.no_grad():
            logits = linears[-1](inputs[-1])
        relevance = torch.zeros_like(logits)
        relevance[2] = logits[2]
        for layer, layer_input in zip(reversed(linears), reversed(inputs)):
            relevance = jacobian_lrp_0(layer, layer_input.detach(), relevance).detach()
        torch.testing.assert_close(explanation.input_relevance[sample], relevance, rtol=1e-9, atol=1e-12)
