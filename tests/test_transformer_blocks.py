"""Per-token Linear and LayerNorm/RMSNorm: the graph's forward against the model, relevance
against LXT's explicit CP-LRP functions (ε rule on linear maps and sums, σ held constant in the
layer norm, identity rule on GELU), exact conservation, message sums shaped like the weight."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphlrp
from graphlrp.composites import Composite
from graphlrp.rules import Epsilon

lf = pytest.importorskip("lxt.explicit.functional")
lxt_rules = pytest.importorskip("lxt.explicit.rules")

EPS = 1e-9


class TokenMLP(nn.Module):
    """Per-token Linear, LayerNorm, GELU and a residual sum over ``(tokens, features)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.hidden = nn.Linear(8, 8)
        self.act = nn.GELU()
        self.final = nn.LayerNorm(8)
        self.head = nn.Linear(4 * 8, 3)

    def forward(self, x):
        y = self.norm(self.embed(x))
        y = y + self.hidden(self.act(y))
        return self.head(self.final(y).flatten(1))


def _lxt_relevance(model: TokenMLP, x: torch.Tensor, target: int) -> torch.Tensor:
    """Input relevance from LXT's explicit rule functions, one per operation of ``model``."""
    x = x.detach().requires_grad_()

    def norm(module, v):
        return lf.layer_norm_grad_fn.apply(v, module.weight, module.bias, module.eps, EPS)

    y = norm(model.norm, lf.linear_epsilon(x, model.embed.weight, model.embed.bias, EPS))
    activated = lxt_rules.identity(F.gelu, y)
    y = lf.add2(y, lf.linear_epsilon(activated, model.hidden.weight, model.hidden.bias, EPS), epsilon=EPS)
    out = lf.linear_epsilon(norm(model.final, y).flatten(1), model.head.weight, model.head.bias, EPS)
    seed = torch.zeros_like(out)
    seed[:, target] = out[:, target]
    out.backward(seed.detach())
    return x.grad


def _model() -> TokenMLP:
    torch.manual_seed(0)
    model = TokenMLP().double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _epsilon_everywhere() -> Composite:
    rule = Epsilon(EPS, stabilizer="plain")
    return Composite(default=rule, by_type={"sum": rule})


def test_forward_equals_model():
    model = _model()
    x = torch.randn(5, 4, 6, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    assert [b.kind for b in graph.blocks].count("token_linear") == 2
    assert [b.kind for b in graph.blocks].count("layer_norm") == 2
    torch.testing.assert_close(graph(x), model(x), rtol=0, atol=1e-12)


def test_relevance_equals_lxt():
    model = _model()
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    explanation = graphlrp.explain(graph, x, target=1, composite=_epsilon_everywhere())
    torch.testing.assert_close(explanation.input_relevance, _lxt_relevance(model, x, 1), rtol=1e-5, atol=1e-8)


def test_layer_norm_conserves_relevance_without_bias():
    """Zero β, LRP-0: the centering edges give every token's relevance to its inputs exactly."""
    torch.manual_seed(1)
    norm = nn.LayerNorm(5, bias=False).double()
    with torch.no_grad():
        norm.weight.add_(torch.randn(5, dtype=torch.float64))
    model = nn.Sequential(norm, nn.Flatten(), nn.Linear(15, 2, bias=False)).double()
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    explanation = graphlrp.explain(graph, x, target=0, rule=Epsilon(0.0))
    torch.testing.assert_close(explanation.input_relevance.sum((1, 2)), model(x)[:, 0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("normalization", [nn.LayerNorm(5, eps=1e-3, bias=False), nn.RMSNorm(5, eps=1e-3)])
def test_normalization_matches_sigma_detached_gradient(normalization):
    """LRP-0 through the normalization equals gradient×input with σ detached (a dense formula)."""
    torch.manual_seed(2)
    normalization = normalization.double()
    with torch.no_grad():
        normalization.weight.add_(torch.randn(5, dtype=torch.float64))
    head = nn.Linear(15, 2, bias=False).double()
    model = nn.Sequential(normalization, nn.Flatten(), head)
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    centered = x - x.mean(-1, keepdim=True) if isinstance(normalization, nn.LayerNorm) else x
    spread = centered.square().mean(-1, keepdim=True).add(1e-3).sqrt().detach()
    y = centered / spread * normalization.weight
    head(y.flatten(1))[:, 1].sum().backward()
    graph = graphlrp.lower(model, x.detach())
    torch.testing.assert_close(graph(x.detach()), model(x.detach()), rtol=0, atol=1e-12)
    explanation = graphlrp.explain(graph, x.detach(), target=1, rule=Epsilon(0.0))
    torch.testing.assert_close(explanation.input_relevance, x.grad * x.detach(), rtol=1e-9, atol=1e-12)


def test_functional_layer_norm_is_lowered():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, dtype=torch.float64))
            self.head = nn.Linear(8, 2).double()

        def forward(self, x):
            return self.head(F.layer_norm(x, (4,), self.weight, None, 1e-4).flatten(1))

    model = Functional()
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    torch.testing.assert_close(graph(x), model(x), rtol=0, atol=1e-12)


def test_token_linear_weight_sums_are_shaped_like_the_weight():
    """Σ_b Σ_t x_b,(t,i) s_b,(t,j) per weight, against the sum over the listed edges."""
    torch.manual_seed(3)
    block = graphlrp.blocks.TokenLinearBlock(0, 1, torch.randn(3, 2, dtype=torch.float64), tokens=4)
    x, s = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 12, dtype=torch.float64)
    out = torch.zeros(block.sum_shape, dtype=torch.float64)
    block.add_message_sums(out, x, s)
    src, dst, _ = block.edges()
    per_edge = (x[:, src] * s[:, dst]).sum(0)
    expected = torch.zeros(6, dtype=torch.float64).index_add_(0, block.edge_slots(), per_edge).reshape(3, 2)
    torch.testing.assert_close(block.weight_sums(out), expected)
    assert block.weight_sums(out).shape == block.weight.shape


def test_layer_norm_edge_messages_sum_to_the_reductions():
    torch.manual_seed(4)
    block = graphlrp.blocks.LayerNormBlock(0, 1, torch.randn(4, dtype=torch.float64), tokens=3, eps=1e-5)
    x, s = torch.randn(2, 12, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    state = block.prepare(x)
    messages = block.edge_messages(x, s, state=state)
    src, _, _ = block.edges()
    by_source = torch.zeros_like(x).index_add_(1, src, messages)
    torch.testing.assert_close(by_source, x * block.rmatvec(s, state=state))


def test_linear_on_the_wrong_last_dimension_is_refused():
    model = nn.Sequential(nn.Linear(5, 2)).double()
    with pytest.raises(graphlrp.errors.InputError, match="cannot take one sample of shape"):
        graphlrp.lower(model, torch.randn(2, 3, 4, dtype=torch.float64))
