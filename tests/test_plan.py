"""Level plans: the fewest products a rule needs, shared between groups, and cached per graph."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import rules
from graphlrp.plan import is_sign_definite, plan_level
from graphlrp.rules import RuleGroups
from graphlrp.workspace import Workspace
from graphlrp.transforms import Identity, Positive

from conftest import make_mlp


@pytest.fixture
def graph():
    return graphlrp.lower(make_mlp([5, 7, 3], nn.ReLU, seed=2), torch.randn(1, 5, dtype=torch.float64))


# (rule, non-negative source?) -> products beyond the forward pass, and redistributions
CASES = [
    (rules.Epsilon(), True, 0, 1),  # denominator is the forward pre-activation; W back
    (rules.Epsilon(zero_bias=True), True, 0, 1),  # z − b: the forward, its bias taken out per node
    (rules.ZPlus(), True, 1, 1),  # x W⁺
    (rules.ZPlus(), False, 2, 2),  # x⁺W⁺ and x⁻W⁻
    (rules.AlphaBeta(2, 1), True, 2, 2),  # x W⁺ and x W⁻: sign-definite groups are never differences
    (rules.Gamma(0.25), True, 1, 2),  # x W⁺ shared: W↑ = W + γW⁺, W↓ = (1+γ)W − γW⁺
    (rules.Gamma(0.25), False, 4, 3),  # x⁺W + x⁻W (the forward), x⁺W⁺, x⁻W⁺; back: W twice, W⁺ once with |x|
    (rules.WSquare(), True, 1, 1),
]


@pytest.mark.parametrize("rule, nonnegative, products, redistributions", CASES)
def test_plans_use_the_fewest_products(graph, rule, nonnegative, products, redistributions):
    level = graph.levels[2]
    plan = plan_level(graph, level, rule.groups(), {1: nonnegative})
    assert len(plan.products) == products
    assert len(plan.redistributions) == redistributions
    assert len(plan.groups) == len(rule.groups())


def test_epsilon_denominator_is_the_forward_pre_activation(graph):
    plan = plan_level(graph, graph.levels[2], rules.Epsilon().groups(), {1: True})
    assert plan.groups[0].forward
    gamma = plan_level(graph, graph.levels[2], rules.Gamma(0.5).groups(), {1: True})
    positive, negative = gamma.groups
    assert (positive.linear, negative.linear) == (1.0, 1.5)  # W + γW⁺ and (1+γ)W − γW⁺
    assert [p.weights for p in gamma.products] == [Positive()]
    # per node: β − linear·b, so that linear·z + Σ c·product + per_node is the group's denominator
    bias = graph.levels[2].bias
    torch.testing.assert_close(positive.per_node, 0.5 * bias.clamp(min=0))
    torch.testing.assert_close(negative.per_node, bias + 0.5 * bias.clamp(max=0) - 1.5 * bias)
    assert all(r.inputs == Identity() for r in gamma.redistributions)


def test_plans_are_kept_per_workspace_and_dropped_by_clear(graph):
    level, workspace = graph.levels[1], Workspace()

    def plan(rule, nonnegative):
        return workspace.plan(graph, level, RuleGroups(rule.groups()), {0: nonnegative})

    first = plan(rules.Gamma(0.25), False)
    assert plan(rules.Gamma(0.25), False) is first  # equal rules share it
    assert plan(rules.Gamma(0.25), True) is not first
    assert plan(rules.Gamma(0.5), False) is not first
    assert Workspace().plan(graph, level, RuleGroups(rules.Gamma(0.25).groups()), {0: False}) is not first
    workspace.clear()
    assert plan(rules.Gamma(0.25), False) is not first


def test_cached_plans_give_the_same_relevance_as_fresh_ones(graph):
    x = torch.randn(4, 5, dtype=torch.float64)
    composite = graphlrp.Composite(first=rules.ZBox(-3.0, 3.0), default=rules.AlphaBeta(2, 1))
    explainer = graphlrp.Explainer(graph, composite=composite)
    first = explainer(x, target=1).node_relevance
    again = explainer(x, target=1).node_relevance
    assert len(explainer._workspace._plans) == 2
    explainer.clear()
    assert not explainer._workspace._plans
    fresh = explainer(x, target=1).node_relevance
    assert torch.equal(first, again) and torch.equal(first, fresh)
    assert torch.equal(first, graphlrp.explain(graph, x, target=1, composite=composite).node_relevance)


@pytest.mark.parametrize("kind", ["dense", "sparse", "edges"])
def test_weights_are_not_kept_when_caching_is_off(kind):
    model = make_mlp([6, 9, 8, 3], nn.ReLU, seed=4)
    x = torch.randn(5, 6, dtype=torch.float64)
    graph = graphlrp.lower(model, x, block_kind=kind)
    for rule in (rules.Gamma(0.25), rules.AlphaBeta(2, 1), rules.ZPlus()):
        cached = graphlrp.Explainer(graph, rule)
        uncached = graphlrp.Explainer(graph, rule, cache_weights=False)
        expected, got = cached(x, target=2), uncached(x, target=2)
        # where a rule's products add up to W a (αβ; γ on the mixed-sign input), the cached forward
        # is their sum and the uncached one W a itself: equal up to rounding
        torch.testing.assert_close(got.node_relevance, expected.node_relevance, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got.edge_relevance(1), expected.edge_relevance(1), rtol=1e-12, atol=1e-14)
        assert all(not uncached._workspace.operands(block).operands for block in graph.blocks)
        assert any(cached._workspace.operands(block).operands for block in graph.blocks)
    cached.cache_weights = False  # drops what was kept
    assert all(not cached._workspace.operands(block).operands for block in graph.blocks)


@pytest.mark.parametrize("rule, nonnegative, definite", [
    (rules.ZPlus(), True, [True]),
    (rules.ZPlus(), False, [True]),
    (rules.AlphaBeta(2, 1), True, [True, True]),
    (rules.AlphaBeta(2, 1), False, [True, True]),
    (rules.Epsilon(), True, [False]),
    (rules.Gamma(0.25), True, [False, False]),
    (rules.WSquare(), False, [True]),
    (rules.ZBox(-1.0, 1.0), False, [False]),
])
def test_sign_definite_groups_are_recognized(rule, nonnegative, definite):
    assert [is_sign_definite(group.terms, nonnegative) for group in rule.groups()] == definite


@pytest.mark.parametrize("rule, nonnegative, forward", [
    (rules.AlphaBeta(2, 1), True, 2),  # W⁺a + W⁻a
    (rules.AlphaBeta(2, 1), False, 4),  # W⁺a⁺ + W⁻a⁻ + W⁻a⁺ + W⁺a⁻
    (rules.AlphaBeta(1, 0), False, None),  # no β group: W⁺a⁺ + W⁻a⁻ alone
    (rules.ZPlus(), False, None),  # W⁺a⁺ + W⁻a⁻ is not W a
    (rules.Gamma(0.25), True, None),
    (rules.Gamma(0.25), False, 2),  # W a⁺ + W a⁻
    (rules.Epsilon(), True, None),
])
def test_forward_is_the_sum_of_the_rules_products_when_they_cover_w_a(graph, rule, nonnegative, forward):
    plan = plan_level(graph, graph.levels[2], rule.groups(), {1: nonnegative})
    assert (None if plan.forward is None else len(plan.forward)) == forward


@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("rule", [rules.AlphaBeta(2, 1), rules.AlphaBeta(1, 0)])
def test_forward_from_rule_products_equals_the_network(rule, kind):
    model = make_mlp([6, 9, 7, 4], nn.ReLU, seed=3)
    x = torch.randn(5, 6, dtype=torch.float64)
    graph = graphlrp.lower(model, x, block_kind=kind)
    explanation = graphlrp.explain(graph, x, target=1, rule=rule)
    torch.testing.assert_close(explanation.output, model(x), rtol=1e-12, atol=1e-12)
    assert not explanation._trace.products and not explanation._trace.inputs  # work state released
    rules_per_level = [None] + [rule] * (len(graph.levels) - 1)
    from_products = rule.beta > 0  # without a β group the products do not add up to W a
    assert bool(graphlrp.propagate.run_forward(graph, Workspace(), x, rules_per_level).products) == from_products
    # dense products build their transformed weights panel by panel and keep nothing, so the
    # forward may still use them; CSR blocks would keep every level's transformed weights alive
    uncached = graphlrp.propagate.run_forward(graph, Workspace(cache_weights=False), x, rules_per_level)
    assert bool(uncached.products) == (from_products and kind == "dense")
    torch.testing.assert_close(graphlrp.Explainer(graph, rule, cache_weights=False)(x, target=1).node_relevance,
                               explanation.node_relevance, rtol=1e-12, atol=1e-14)


def test_cached_groups_follow_a_changed_parameter(graph):
    x = torch.randn(4, 5, dtype=torch.float64)
    rule = rules.Gamma(0.25)
    first = graphlrp.explain(graph, x, target=0, rule=rule).input_relevance
    assert rule.cached_groups() is rule.cached_groups()
    rule.gamma = 1.0
    changed = graphlrp.explain(graph, x, target=0, rule=rule).input_relevance
    torch.testing.assert_close(changed, graphlrp.explain(graph, x, target=0, rule=rules.Gamma(1.0)).input_relevance,
                               rtol=0, atol=0)
    assert not torch.allclose(first, changed)
    assert rules.Gamma(0.25).cached_groups() == rules.Gamma(0.25).cached_groups() != rule.cached_groups()


def test_composite_rules_follow_a_changed_entry(graph):
    composite = graphlrp.Composite(default=rules.Epsilon())
    first = composite.rules(graph)
    assert composite.rules(graph) == first and composite.rules(graph) is not first  # a copy of the kept list
    name = graph.levels[2].name
    gamma = rules.Gamma(0.25)
    composite.by_name[name] = gamma  # mutated in place
    changed = composite.rules(graph)
    assert changed[2] is gamma and changed[1] is first[1]
    composite.default = rules.ZPlus()
    assert all(isinstance(rule, rules.ZPlus) for rule in composite.rules(graph)[1:] if rule is not gamma)
