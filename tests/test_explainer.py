"""The Explainer: one way of explaining a graph, owning what it keeps; the graph is only read."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import composites, rules
from graphlrp.errors import ArgumentTypeError, InputError
from graphlrp.explainer import _KEPT, explainer_for

from conftest import make_mlp

RULES = [rules.Epsilon(1e-3), rules.ZPlus(), rules.AlphaBeta(2, 1), rules.Gamma(0.25), rules.WSquare(), rules.Flat()]


def cnn_graph() -> tuple[graphlrp.Graph, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 4)).double().eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    return graphlrp.lower(model, x), x


def state_of(graph: graphlrp.Graph) -> dict:
    """Every attribute of the graph, its levels and blocks, tensors as bytes."""
    def value(v):
        return (v.dtype, tuple(v.shape), v.cpu().numpy().tobytes()) if isinstance(v, torch.Tensor) else repr(v)
    state = {("graph", k): value(v) for k, v in vars(graph).items() if k not in ("levels", "blocks", "incoming")}
    for position, block in enumerate(graph.blocks):
        state.update({(position, k): value(v) for k, v in vars(block).items() if not k.startswith("_")})
    for level in graph.levels:
        state[("level", level.index)] = value(level.bias) if level.bias is not None else None
    return state


@pytest.mark.parametrize("kind", ["dense", "sparse", "edges"])
def test_an_explainer_gives_bit_for_bit_what_explain_gives(kind):
    model = make_mlp([6, 9, 7, 4], nn.ReLU, seed=2)
    x = torch.randn(5, 6, dtype=torch.float64)
    graph = graphlrp.lower(model, x, block_kind=kind)
    for rule in RULES:
        explainer = graphlrp.Explainer(graph, rule)
        first, again = explainer(x, target=1), explainer(x, target=1)
        expected = graphlrp.explain(graph, x, target=1, rule=rule)
        assert torch.equal(first.node_relevance, expected.node_relevance)
        assert torch.equal(again.node_relevance, expected.node_relevance)
        assert torch.equal(first.edge_relevance(0), expected.edge_relevance(0))
    composite = composites.EpsilonGammaBox(low=-3.0, high=3.0)
    assert torch.equal(graphlrp.Explainer(graph, composite=composite)(x, target=2).node_relevance,
                       graphlrp.explain(graph, x, target=2, composite=composite).node_relevance)


def test_lrp0_of_an_explainer_is_gradient_times_input():
    model = make_mlp([6, 9, 7, 4], nn.ReLU, bias=False, seed=3)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    model(x)[:, 2].sum().backward()
    graph = graphlrp.lower(model, x.detach())
    relevance = graphlrp.Explainer(graph, rules.Epsilon(0.0))(x.detach(), target=2).input_relevance
    torch.testing.assert_close(relevance, x.grad * x.detach(), rtol=1e-12, atol=1e-14)


def test_explaining_leaves_the_graph_as_it_was():
    graph, x = cnn_graph()
    before = state_of(graph)
    for rule in RULES:
        explainer = graphlrp.Explainer(graph, rule, cache_weights=rule is RULES[0])
        explainer(x, target=0).edge_relevance(0)
        graphlrp.explain(graph, x, target=1, rule=rule)
    graphlrp.aggregate(graph, x, target=0, composite=composites.EpsilonPlusFlat(), progress=False).parameter_relevance()
    assert state_of(graph) == before


def test_the_rules_are_resolved_once_and_a_changed_parameter_is_followed():
    graph, x = cnn_graph()
    gamma = rules.Gamma(0.25)
    explainer = graphlrp.Explainer(graph, composite=graphlrp.Composite(by_type={nn.Conv2d: gamma}))
    assert [type(r).__name__ if r else None for r in explainer.rules] == [None, "Gamma", "Pass", "Epsilon"]
    before = explainer(x, target=1).node_relevance
    gamma.gamma = 2.0  # the same rule object, another parameter: the explainer sees it
    after = explainer(x, target=1).node_relevance
    expected = graphlrp.explain(graph, x, target=1, composite=graphlrp.Composite(by_type={nn.Conv2d: rules.Gamma(2.0)}))
    assert not torch.equal(before, after)
    assert torch.equal(after, expected.node_relevance)


def test_caching_off_gives_the_same_relevance_and_keeps_nothing():
    graph, x = cnn_graph()
    for rule in RULES:
        kept = graphlrp.Explainer(graph, rule)
        unkept = graphlrp.Explainer(graph, rule, cache_weights=False)
        torch.testing.assert_close(unkept(x, target=3).node_relevance, kept(x, target=3).node_relevance,
                                   rtol=1e-12, atol=1e-14)
        assert not any(unkept._workspace.operands(b).operands or unkept._workspace.operands(b).row_sums
                       for b in graph.blocks)
    kept.clear()
    assert not kept._workspace._plans and not any(kept._workspace.operands(b).operands for b in graph.blocks)


def test_explain_keeps_one_workspace_per_graph_shared_by_rules_made_anew():
    graph, x = cnn_graph()
    graphlrp.explain(graph, x, target=0, rule=rules.ZPlus())
    workspace = _KEPT[graph]
    plans = dict(workspace._plans)
    assert plans
    graphlrp.explain(graph, x, target=0, rule=rules.ZPlus())  # a new rule object with equal groups
    assert workspace._plans.keys() == plans.keys()
    assert all(workspace._plans[key] is plan for key, plan in plans.items())
    shared = explainer_for(graph, rules.ZPlus())
    assert shared._workspace is workspace and graphlrp.Explainer(graph, rules.ZPlus())._workspace is not workspace
    assert torch.equal(shared(x, target=0).node_relevance,
                       graphlrp.explain(graph, x, target=0, rule=rules.ZPlus()).node_relevance)
    shared.clear()
    assert not workspace._plans


def test_what_explain_keeps_is_freed_with_the_graph():
    graph, x = cnn_graph()
    graphlrp.explain(graph, x, target=0, rule=rules.Gamma(0.25))
    alive = weakref.ref(graph)
    assert graph in _KEPT
    del graph
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("arguments, error, message", [
    (dict(rule=composites.EpsilonPlus()), ArgumentTypeError, "pass a composite as composite="),
    (dict(composite=rules.Epsilon()), ArgumentTypeError, "pass one rule as rule="),
    (dict(rule=rules.Epsilon(), composite=composites.EpsilonPlus()), InputError, "not both"),
    (dict(cache_weights="no"), ArgumentTypeError, "cache_weights must be True or False"),
])
def test_bad_arguments_are_refused_when_the_explainer_is_made(arguments, error, message):
    graph, _ = cnn_graph()
    with pytest.raises(error, match=message):
        graphlrp.Explainer(graph, **arguments)


def test_a_model_instead_of_its_graph_is_refused_with_advice():
    with pytest.raises(ArgumentTypeError, match="lower the model first"):
        graphlrp.Explainer(nn.Linear(3, 2))
    explainer = graphlrp.Explainer(cnn_graph()[0])
    with pytest.raises(ArgumentTypeError, match="cache_weights must be True or False"):
        explainer.cache_weights = 1


@pytest.mark.parametrize("kind", ["dense", "sparse", "edges"])
def test_without_input_relevance_every_other_level_and_every_message_is_unchanged(kind):
    model = make_mlp([6, 9, 7, 4], nn.ReLU, seed=4)
    x = torch.randn(5, 6, dtype=torch.float64)
    graph = graphlrp.lower(model, x, block_kind=kind)
    explainer = graphlrp.Explainer(graph, composite=composites.EpsilonGammaBox(low=-3.0, high=3.0))
    full, skipped = explainer(x, target=1), explainer(x, target=1, input_relevance=False)
    first = graph.levels[0]
    inputs = slice(first.offset, first.offset + first.size)
    assert not bool(skipped.node_relevance[:, inputs].any()) and bool(full.node_relevance[:, inputs].any())
    assert torch.equal(skipped.node_relevance[:, first.size :], full.node_relevance[:, first.size :])
    messages = skipped.edge_relevance()
    assert torch.equal(messages, full.edge_relevance())
    # the input level's relevance is what its outgoing messages add up to, sample by sample
    src = graph.blocks[0].edges()[0]
    rebuilt = torch.zeros(len(x), first.size, dtype=torch.float64).index_add_(1, src, messages[:, : len(src)])
    assert torch.allclose(rebuilt, full.node_relevance[:, inputs], rtol=1e-12, atol=1e-14)
    with pytest.raises(ArgumentTypeError, match="input_relevance"):
        explainer(x, target=1, input_relevance="no")
