"""Gates, scales, reductions and renumberings of traced networks: forward, conservation, grad×input."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphlrp
from graphlrp import rules


class SqueezeExcite(nn.Module):
    """A convolution gated per channel by a squeeze-and-excitation branch (no biases)."""

    def __init__(self, gate_first: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.squeeze = nn.Conv2d(4, 2, 1, bias=False)
        self.excite = nn.Conv2d(2, 4, 1, bias=False)
        self.head = nn.Linear(4, 3, bias=False)
        self.gate_first = gate_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x))
        g = torch.sigmoid(self.excite(F.relu(self.squeeze(h.mean([2, 3], keepdim=True)))))
        h = g * h if self.gate_first else h * g
        a, b = h.chunk(2, dim=1)
        h = torch.cat([torch.transpose(b, 2, 3), a[:, :, [4, 3, 2, 1, 0]]], dim=1)
        return self.head(h.sum(3).mean(2, keepdim=True).flatten(1) * 0.5)


def gradient_times_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gradient × input with every sigmoid gate detached (the signal-gate convention)."""
    original = torch.sigmoid
    x = x.clone().requires_grad_(True)
    try:
        torch.sigmoid = lambda z: original(z).detach()
        out = model(x)
    finally:
        torch.sigmoid = original
    out.gather(1, target[:, None]).sum().backward()
    return x.grad * x


@pytest.mark.parametrize("gate_first", [True, False])
def test_gate_lrp0_is_gradient_times_input_with_gate_detached(gate_first):
    torch.manual_seed(0)
    model = SqueezeExcite(gate_first).double().eval()
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    assert any(block.kind == "gate" for block in graph.blocks)
    torch.testing.assert_close(graph(x), model(x), rtol=1e-12, atol=1e-12)
    target = torch.tensor([0, 1, 2])
    # LRP-0 everywhere, the sum and mean levels' Norm included (its default ε = 1e-6 would absorb 4e-5)
    lrp0 = graphlrp.composites.Composite(by_type={"sum": rules.Norm(1e-300), "mean": rules.Norm(1e-300)},
                                         default=rules.Epsilon(1e-300))
    explanation = graphlrp.explain(graph, x, target=target, composite=lrp0)
    expected = gradient_times_input(model, x, target)
    tolerance = 1e-14 * float(expected.abs().max())  # 2.1e-16 measured
    torch.testing.assert_close(explanation.input_relevance, expected, rtol=0, atol=tolerance)
    logits = model(x).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(explanation.input_relevance.flatten(1).sum(1), logits, rtol=1e-12, atol=tolerance)


def test_gate_edge_relevance_sums_to_node_relevance():
    torch.manual_seed(1)
    model = SqueezeExcite().double().eval()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    explanation = graphlrp.explain(graph, x, target=1, rule=rules.Epsilon(1e-9))
    src, _, _ = graph.edges()
    outgoing = torch.zeros(graph.num_nodes, dtype=torch.float64).index_add_(0, src, explanation.edge_relevance(0))
    gates = [b for b in graph.blocks if b.kind == "gate"]
    signal = graph.levels[gates[0].src].nodes
    torch.testing.assert_close(outgoing[signal.start:signal.stop],
                               explanation.node_relevance[0, signal.start:signal.stop], rtol=1e-9, atol=1e-12)


def test_gate_choice_is_explicit_and_checked():
    class Product(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)

        def forward(self, x):
            return self.a(x) * self.b(x)

    torch.manual_seed(0)
    model, x = Product().double().eval(), torch.randn(2, 3, dtype=torch.float64)
    for position in (0, 1):
        graph = graphlrp.lower(model, x, gates={"mul": position})
        gate = next(b for b in graph.blocks if b.kind == "gate")
        gate_level = graph.levels[gate.context[0]].name
        signal_level = graph.levels[gate.src].name
        assert (gate_level, signal_level) == (("a", "b") if position == 0 else ("b", "a"))
    with pytest.raises(graphlrp.InputError, match=r"gates= names \['product'\].*products are \['mul'\]"):
        graphlrp.lower(model, x, gates={"product": 0})
    with pytest.raises(graphlrp.InputError, match="position 0 or 1"):
        graphlrp.lower(model, x, gates={"mul": 2})


def test_stochastic_depth_is_the_identity_in_eval_and_refused_in_training():
    from torchvision.ops import StochasticDepth

    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.drop = nn.Linear(3, 3), StochasticDepth(0.5, "row")

        def forward(self, x):
            return x + self.drop(self.fc(x))

    torch.manual_seed(0)
    model, x = Deep().eval(), torch.randn(2, 3)
    torch.testing.assert_close(graphlrp.lower(model, x)(x), x + model.fc(x))
    model.drop.train()
    with pytest.raises(graphlrp.InputError, match="stochastic depth in training mode"):
        graphlrp.lower(model, x)
