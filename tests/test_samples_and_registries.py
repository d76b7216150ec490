"""One sample parser for every door (0-d: one sample; any 1-D sequence: a selection), and the
rule and composite registries that the command line and the Quantus adapter read."""
import numpy as np
import pytest
import torch

import graphlrp
from conftest import make_mlp
from graphlrp import analysis, cli, composites, evaluation, export, rules
from graphlrp.errors import ArgumentTypeError, IndexOutOfRangeError, InputError


@pytest.fixture(scope="module")
def explanation() -> graphlrp.Explanation:
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return graphlrp.explain(graphlrp.lower(make_mlp([4, 5, 2], seed=3), x), x, target=1)


ONE = [1, -2, np.int64(1), torch.tensor(1), np.array(1)]
SELECTIONS = [[1], (1,), range(1, 2), torch.tensor([1]), np.array([1]), [-2]]


@pytest.mark.parametrize("sample", ONE, ids=repr)
def test_one_index_gives_one_sample_everywhere(explanation, sample):
    full = explanation.edge_relevance()
    torch.testing.assert_close(explanation.edge_relevance(sample), full[1], rtol=0, atol=0)
    assert explanation.bias_relevance(sample).shape == (explanation.graph.num_nodes,)
    assert explanation.edge_contributions(sample).shape == (explanation.graph.num_edges,)
    G = explanation.to_networkx(sample)
    assert G.graph["samples"] == (1,)


@pytest.mark.parametrize("sample", SELECTIONS, ids=repr)
def test_a_sequence_of_one_is_a_selection_everywhere(explanation, sample):
    full = explanation.edge_relevance()
    torch.testing.assert_close(explanation.edge_relevance(sample), full[1:2], rtol=0, atol=0)
    assert explanation.bias_relevance(sample).shape == (1, explanation.graph.num_nodes)
    assert explanation.edge_contributions(sample).shape == (1, explanation.graph.num_edges)
    assert export.sample_rows(explanation, sample) == [1]


def test_negative_indices_count_from_the_end_and_out_of_range_is_refused(explanation):
    torch.testing.assert_close(explanation.edge_relevance(-1), explanation.edge_relevance(2), rtol=0, atol=0)
    for bad in (3, -4, [0, 3]):
        with pytest.raises(IndexOutOfRangeError, match="out of range for a batch of 3"):
            explanation.edge_relevance(bad)
    with pytest.raises(ArgumentTypeError):
        explanation.edge_relevance(1.0)
    with pytest.raises(InputError, match="selects no samples"):
        analysis.level_flow(explanation, [])


def test_every_registered_name_builds_its_class_and_the_doors_offer_exactly_the_registry():
    assert cli.RULES == rules.names() == tuple(rules.RULES)
    assert cli.COMPOSITES == composites.names() == tuple(composites.COMPOSITES)
    for name, cls in rules.RULES.items():
        params = {"low": -1.0, "high": 1.0} if name == "zbox" else {}
        assert type(rules.get(name, **params)) is cls
    for name, cls in composites.COMPOSITES.items():
        params = {"low": -1.0, "high": 1.0} if name == "epsilon-gamma-box" else {}
        assert type(composites.get(name, **params)) is cls
    adapter = {type(make()) for make in [*evaluation.RULES.values(), *evaluation.COMPOSITES.values()]}
    assert adapter == set(rules.RULES.values()) - {rules.ZBox} | set(composites.COMPOSITES.values()) - {
        composites.EpsilonGammaBox}


def test_a_registered_rule_is_found_by_name_and_a_name_is_not_taken_twice():
    @rules.register_rule("test-half-epsilon")
    class HalfEpsilon(rules.Epsilon):
        pass

    try:
        assert rules.get("test-half-epsilon", epsilon=0.5).epsilon == 0.5
        assert "test-half-epsilon" in rules.names()
        with pytest.raises(InputError, match="already registered to HalfEpsilon"):
            rules.register_rule("test-half-epsilon")(rules.Flat)
        with pytest.raises(ArgumentTypeError):
            rules.register_rule("test-not-a-rule")(int)
    finally:
        del rules.RULES["test-half-epsilon"]
    with pytest.raises(InputError, match="unknown rule 'nope'; registered: epsilon, zplus"):
        rules.get("nope")
    with pytest.raises(InputError, match="unknown composite 'nope'; registered: epsilon-plus"):
        composites.get("nope")
