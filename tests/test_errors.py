"""Bad input gets a clear error that names the problem."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import rules

from conftest import make_mlp


@pytest.fixture
def graph_and_input():
    model = make_mlp([4, 6, 3], seed=0)
    x = torch.randn(2, 4, dtype=torch.float64)
    return graphlrp.lower(model, x), x


def test_wrong_input_shape(graph_and_input):
    graph, _ = graph_and_input
    with pytest.raises(ValueError, match=r"shape \(2, 5\), expected \(batch, 4\)"):
        graphlrp.explain(graph, torch.randn(2, 5, dtype=torch.float64), target=0)
    with pytest.raises(ValueError, match="add a batch dimension"):
        graph(torch.randn(4, dtype=torch.float64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_input(graph_and_input, bad):
    graph, x = graph_and_input
    x = x.clone()
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"NaN or inf \(samples \[1\]\)"):
        graphlrp.explain(graph, x, target=0)


def test_wrong_dtype(graph_and_input):
    graph, x = graph_and_input
    with pytest.raises(TypeError, match="does not match the graph's torch.float64"):
        graph(x.float())


@pytest.mark.parametrize("target", [3, -1, [0, 5]])
def test_target_out_of_range(graph_and_input, target):
    graph, x = graph_and_input
    with pytest.raises(IndexError, match="out of range: the output has 3 classes"):
        graphlrp.explain(graph, x, target=target)


def test_target_and_output_relevance_problems(graph_and_input):
    graph, x = graph_and_input
    with pytest.raises(ValueError, match="exactly one of target"):
        graphlrp.explain(graph, x)
    with pytest.raises(ValueError, match=r"has 3 entries for a batch of 2"):
        graphlrp.explain(graph, x, target=[0, 1, 2])
    with pytest.raises(ValueError, match=r"expected the output's \(2, 3\)"):
        graphlrp.explain(graph, x, output_relevance=torch.ones(2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="integer class indices"):
        graphlrp.explain(graph, x, target=1.5)
    with pytest.raises(ValueError, match="rule= or composite=, not both"):
        graphlrp.explain(graph, x, target=0, rule=rules.Epsilon(), composite=graphlrp.Composite())


def test_unsupported_module_names_path_and_type():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.LSTM(4, 4)))
    with pytest.raises(graphlrp.UnsupportedModuleError, match=r"'1\.1' of type torch\.nn\.modules\.rnn\.LSTM.*supported: .*Linear"):
        graphlrp.lower(model, torch.randn(2, 4))


def test_linear_on_the_wrong_features_and_dropout_in_training():
    with pytest.raises(ValueError, match=r"'?0'? \(Linear\) cannot take one sample of shape \(2, 3\)"):
        graphlrp.lower(nn.Sequential(nn.Linear(6, 2)), torch.randn(1, 2, 3))
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2))
    with pytest.raises(ValueError, match=r"'?1'? \(Dropout\) is in training mode"):
        graphlrp.lower(model.train(), torch.randn(2, 3))


def test_custom_forward_is_caught_by_the_lowering_check():
    class Doubling(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(graphlrp.LoweringMismatchError, match="differs from the model's"):
        graphlrp.lower(nn.Sequential(Doubling(3, 2)), torch.randn(4, 3))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: rules.Epsilon(-1e-3), "epsilon must be finite and >= 0"),
        (lambda: rules.Epsilon(float("nan")), "epsilon must be finite"),
        (lambda: rules.Gamma(-0.5), "gamma must be finite and >= 0"),
        (lambda: rules.AlphaBeta(2, 2), "alpha - beta must equal 1"),
        (lambda: rules.AlphaBeta(-1, -2), "alpha must be finite and >= 0"),
        (lambda: rules.ZBox(1.0, -1.0), "low <= high"),
        (lambda: rules.Epsilon(stabilizer="sign"), "stabilizer must be 'signed' or 'plain'"),
    ],
)
def test_bad_rule_parameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_rules_have_readable_reprs():
    assert repr(rules.Gamma(0.5)) == "Gamma(gamma=0.5, epsilon=1e-06, zero_bias=False, weights_only=False, stabilizer='signed')"
    assert repr(rules.Pass()) == "Pass()"


def test_weight_transform_that_creates_edges_is_refused():
    from graphlrp.rules import Group, Rule, Term
    from graphlrp.transforms import Identity, Ones, Zero

    class Broken(Rule):
        def groups(self):
            return (Group((Term(Identity(), Ones(), Zero()),)),)

    graph = graphlrp.lower(make_mlp([3, 2], seed=1), torch.randn(1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="must map 0 to 0"):
        graphlrp.explain(graph, torch.randn(1, 3, dtype=torch.float64), target=0, rule=Broken())


def test_memory_budget_counts_reclaimable_page_cache():
    """The default budget follows the kernel's MemAvailable, not just the free pages."""
    import os
    import sys

    from graphlrp.memory import available_bytes

    page = os.sysconf("SC_PAGE_SIZE")
    free, total = os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    available = available_bytes()
    assert free * 0.9 <= available <= total
    if sys.platform.startswith("linux"):
        fields = dict(line.split(":", 1) for line in open("/proc/meminfo"))
        assert abs(available - int(fields["MemAvailable"].split()[0]) * 1024) < 0.05 * total


def test_target_out_of_range_in_a_large_batch():
    model = nn.Sequential(nn.Linear(3, 2)).double()
    x = torch.randn(1500, 3, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    target = torch.zeros(1500, dtype=torch.long)
    target[[7, 900]] = torch.tensor([2, -1])
    with pytest.raises(IndexError, match=r"target \[2, -1\] out of range: the output has 2 classes"):
        graphlrp.explain(graph, x, target=target)
    torch.testing.assert_close(graphlrp.explain(graph, x, target=target.clamp(0, 1)).output, model(x))
