"""explain's doors: rule parameters, the graph's numeric range, inputs, targets and sample indices.

Every refused case raises its documented graphlrp class; accepted cases are compared with an
independent reference (autograd gradient × input, the float64 result, the caller's own tensors).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import graphlrp
from graphlrp import explainer as explainer_module
from graphlrp import composites, rules
from graphlrp.errors import (
    ArgumentTypeError,
    GraphLRPError,
    IndexOutOfRangeError,
    InputError,
    NumericRangeError,
    RuleParameterError,
)

from conftest import make_mlp

# -- rule parameters, on assignment ----------------------------------------------------------

ASSIGNMENTS = [
    (rules.Epsilon, "epsilon", float("nan"), RuleParameterError, "epsilon must be finite and >= 0, got nan"),
    (rules.Epsilon, "epsilon", float("inf"), RuleParameterError, "epsilon must be finite"),
    (rules.Epsilon, "epsilon", -1e-3, RuleParameterError, "epsilon must be finite and >= 0"),
    (rules.Epsilon, "epsilon", "1e-3", ArgumentTypeError, "epsilon must be a number, got str"),
    (rules.Epsilon, "stabilizer", "sign", RuleParameterError, "stabilizer must be 'signed' or 'plain'"),
    (rules.Epsilon, "zero_bias", 1, ArgumentTypeError, "zero_bias must be True or False"),
    (rules.Gamma, "gamma", -1, RuleParameterError, "gamma must be finite and >= 0, got -1"),
    (rules.Gamma, "gamma", float("nan"), RuleParameterError, "gamma must be finite"),
    (rules.Gamma, "weights_only", "yes", ArgumentTypeError, "weights_only must be True or False"),
    (rules.AlphaBeta, "alpha", 3.0, RuleParameterError, r"alpha - beta must equal 1 .*alpha=3\.0, beta=1\.0"),
    (rules.AlphaBeta, "beta", 0.5, RuleParameterError, r"alpha - beta must equal 1 .*alpha=2\.0, beta=0\.5"),
    (rules.AlphaBeta, "alpha", -1.0, RuleParameterError, "alpha must be finite and >= 0"),
    (rules.ZPlus, "epsilon", float("-inf"), RuleParameterError, "epsilon must be finite"),
    (lambda: rules.ZBox(-1.0, 1.0), "low", 2.0, RuleParameterError, "low <= high"),
    (lambda: rules.ZBox(-1.0, 1.0), "high", float("nan"), RuleParameterError, "ZBox bound high must be finite"),
    (lambda: rules.ZBox(-1.0, 1.0), "low", torch.full((2,), 2.0), RuleParameterError, "low <= high"),
    (lambda: rules.ZBox(torch.zeros(3), 1.0), "high", torch.ones(2), RuleParameterError, "do not broadcast"),
    (lambda: rules.ZBox(-1.0, 1.0), "low", "low", ArgumentTypeError, "ZBox bound low must be a number"),
]


@pytest.mark.parametrize("make, name, value, error, message", ASSIGNMENTS,
                         ids=[f"{i}-{a[1]}={a[2]!r}" for i, a in enumerate(ASSIGNMENTS)])
def test_bad_parameter_assignment_is_refused_and_leaves_the_rule_as_it_was(make, name, value, error, message):
    rule = make()
    before, groups = repr(rule), rule.cached_groups()
    with pytest.raises(error, match=message) as raised:
        setattr(rule, name, value)
    assert isinstance(raised.value, GraphLRPError)
    assert repr(rule) == before
    assert rule.cached_groups() is groups


@pytest.mark.parametrize("make, name, value", [
    (lambda: rules.Gamma(0.25), "gamma", 1.0),
    (lambda: rules.Epsilon(1e-6), "epsilon", 0.5),
    (lambda: rules.ZPlus(), "weights_only", True),
    (lambda: rules.ZBox(-1.0, 1.0), "low", -2.0),
])
def test_an_assigned_parameter_explains_as_a_rule_made_with_it(make, name, value):
    model = make_mlp([5, 7, 3], seed=2)
    x = torch.randn(3, 5, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    rule = make()
    graphlrp.explain(graph, x, target=1, rule=rule)  # caches the groups and plans of the old value
    setattr(rule, name, value)
    fresh = make()
    setattr(fresh, name, value)
    assert repr(rule) == repr(fresh)
    changed = graphlrp.explain(graph, x, target=1, rule=rule).node_relevance
    assert torch.equal(changed, graphlrp.explain(graph, x, target=1, rule=fresh).node_relevance)


def test_zbox_keeps_its_own_bounds():
    low = torch.zeros(3, dtype=torch.float64)
    rule = rules.ZBox(low, 1.0)
    low.fill_(5.0)  # the caller's tensor changes: the rule's bounds do not (low <= high still holds)
    assert torch.equal(rule.low, torch.zeros(3, dtype=torch.float64))


# -- numeric range: refused before computing --------------------------------------------------


def float32_mlp(weight: float | None = None) -> graphlrp.Graph:
    """A float32 MLP graph, with its first weight set to ``weight`` when given."""
    model = make_mlp([4, 6, 5, 3], seed=0, dtype=torch.float32)
    if weight is not None:
        with torch.no_grad():
            model[0].weight[0, 0] = weight
    return graphlrp.lower(model, torch.randn(2, 4))


OVERFLOWING = [
    (rules.Epsilon(1e39), None, r"epsilon=1e\+39 of Epsilon\(epsilon=1e\+39\) overflows torch.float32"),
    (rules.Epsilon(2e38), None, r"2·epsilon > 3.40282e\+38"),
    (rules.Epsilon(1e-50), None, r"rounds to 0 in torch.float32"),
    (rules.WSquare(), 1e30, r"WSquare\(\) overflows .*Square\(\) of weights up to 1e\+30 reaches 1e\+60"),
    (rules.Gamma(1e38), 10.0, r"Gamma\(gamma=1e\+38\) overflows .*AddScaledPart.* of weights up to 10 reaches 1e\+39"),
    (rules.ZBox(-1e37, 1e37), 100.0, r"input bounds up to 1e\+37 times those weights reaches 1e\+39"),
]


@pytest.mark.parametrize("rule, weight, message", OVERFLOWING, ids=[r.label() for r, _, _ in OVERFLOWING])
def test_rule_that_overflows_the_dtype_is_refused_before_computing(monkeypatch, rule, weight, message):
    graph = float32_mlp(weight)
    x = torch.randn(2, 4)

    def computed(*args, **kwargs):
        raise AssertionError("the forward pass ran")

    with monkeypatch.context() as patched:
        patched.setattr(explainer_module, "run_forward", computed)
        with pytest.raises(NumericRangeError, match=message):
            graphlrp.explain(graph, x, target=0, rule=rule)
    # the same rule and weights in float64 are in range: the refusal is the dtype's
    wide = graphlrp.explain(graph.to(dtype=torch.float64), x.double(), target=0, rule=rule)
    assert bool(torch.isfinite(wide.node_relevance).all())


@pytest.mark.parametrize("layer", [0, 2, 4], ids=["first", "hidden", "last"])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["positive", "negative"])
def test_a_bias_whose_square_overflows_is_refused_on_every_level_whatever_its_sign(monkeypatch, layer, sign):
    model = make_mlp([4, 6, 5, 3], seed=0, dtype=torch.float32)
    with torch.no_grad():
        model[layer].bias[1] = sign * 1e20
    graph = graphlrp.lower(model, torch.randn(2, 4))
    x = torch.randn(2, 4)
    assert 1e20**2 > torch.finfo(torch.float32).max  # w² squares the bias too: b² leaves float32

    def computed(*args, **kwargs):
        raise AssertionError("the forward pass ran")

    with monkeypatch.context() as patched:
        patched.setattr(explainer_module, "run_forward", computed)
        with pytest.raises(NumericRangeError, match=r"Square\(\) of biases up to 1e\+20 reaches 1e\+40"):
            graphlrp.explain(graph, x, target=0, rule=rules.WSquare())
    # the untransformed bias is in range: ε on the same graph is not refused
    assert bool(torch.isfinite(graphlrp.explain(graph, x, target=0, rule=rules.Epsilon()).node_relevance).all())


def test_range_check_follows_a_parameter_assigned_after_a_call():
    graph = float32_mlp(10.0)
    x = torch.randn(2, 4)
    rule = rules.Gamma(0.25)
    graphlrp.explain(graph, x, target=0, rule=rule)
    rule.gamma = 1e38
    with pytest.raises(NumericRangeError, match=r"Gamma\(gamma=1e\+38\)"):
        graphlrp.explain(graph, x, target=0, rule=rule)


@pytest.mark.parametrize("weight, bias", [(float("inf"), 0.0), (float("nan"), 0.0), (1.0, float("-inf"))])
def test_graph_with_a_non_finite_weight_or_bias_is_refused(weight, bias):
    from graphlrp.blocks import DenseBlock
    from graphlrp.graph import Graph, Level

    levels = [Level(0, "input", "input", (2,), 0), Level(1, "out", "dense", (2,), 2, bias=torch.tensor([bias, 0.0]))]
    graph = Graph(levels, [DenseBlock(0, 1, torch.tensor([[weight, 1.0], [1.0, 1.0]]))])
    with pytest.raises(NumericRangeError, match=r"level 1 \('out'\) has weights or biases that are NaN or inf"):
        graphlrp.explain(graph, torch.ones(1, 2), target=0)


def test_input_whose_forward_pass_overflows_is_refused():
    graph = float32_mlp(1e10)
    x = torch.randn(3, 4)
    x[1] = 1e30  # finite, but 1e10 · 1e30 leaves float32
    copy = x.clone()
    with pytest.raises(NumericRangeError, match=r"output is inf or NaN for samples \[1\].*torch.float32"):
        graphlrp.explain(graph, x, target=0)
    assert torch.equal(x, copy)


def test_relevance_that_overflows_is_refused_naming_level_and_rule():
    model = make_mlp([5, 8, 6, 3], seed=1)
    x = torch.randn(4, 5, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    rule = rules.AlphaBeta(1e5, 1e5 - 1)  # α·R leaves float16, whose largest value is 65504
    with pytest.raises(NumericRangeError, match=r"relevance of level 2 \('2'\) is inf or NaN .*AlphaBeta"):
        graphlrp.explain(graph.to(dtype=torch.float16), x.half(), target=0, rule=rule)
    assert bool(torch.isfinite(graphlrp.explain(graph, x, target=0, rule=rule).node_relevance).all())


ZERO_DENOMINATOR_RULES = [rules.Epsilon(0.0), rules.Epsilon(0.0, stabilizer="plain"), rules.Epsilon(),
                          rules.ZPlus(0.0), rules.AlphaBeta(epsilon=0.0), rules.Gamma(0.5, epsilon=0.0),
                          rules.Gamma(0.5, epsilon=0.0, weights_only=True), rules.Flat(0.0)]


@pytest.mark.parametrize("rule", ZERO_DENOMINATOR_RULES, ids=[repr(r) for r in ZERO_DENOMINATOR_RULES])
def test_zero_denominators_drop_relevance_never_nan(kernel, rule):
    """Zero input and zero biases: every a·w denominator is 0 while relevance 1 arrives at the top.

    It is dropped (ε = 0) or absorbed by the stabilizer (ε > 0); none reaches the input."""
    model = make_mlp([4, 6, 5, 3], bias=False, seed=4)
    x = torch.zeros(2, 4, dtype=torch.float64)
    graph = graphlrp.lower(model, x, block_kind=kernel)
    explained = graphlrp.explain(graph, x, output_relevance=torch.ones(2, 3, dtype=torch.float64), rule=rule)
    assert bool(torch.isfinite(explained.node_relevance).all())
    top = explained.conservation()[0]
    if isinstance(rule, rules.Flat):  # denominators count edges: nothing is dropped, all of it passes on
        torch.testing.assert_close(top.relevance_out, top.relevance_in, rtol=1e-12, atol=0)
    else:
        lost = top.stabilizer if rule.epsilon > 0 else top.dropped
        torch.testing.assert_close(lost, torch.full((2,), 3.0, dtype=torch.float64), rtol=0, atol=0)
        assert torch.equal(explained.input_relevance, torch.zeros(2, 4, dtype=torch.float64))


# -- the input -------------------------------------------------------------------------------


def test_lrp0_on_an_input_that_requires_grad_equals_gradient_times_input(kernel):
    model = make_mlp([5, 9, 7, 3], seed=3)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    graph = graphlrp.lower(model, x.detach(), block_kind=kernel)
    (gradient,) = torch.autograd.grad(model(x)[:, 2].sum(), x)
    explained = graphlrp.explain(graph, x, target=2, rule=rules.Epsilon(0.0))
    torch.testing.assert_close(explained.input_relevance, (gradient * x).detach(), rtol=1e-12, atol=1e-14)
    plain = graphlrp.explain(graph, x.detach().clone(), target=2, rule=rules.Epsilon(0.0))
    assert torch.equal(explained.node_relevance, plain.node_relevance)
    assert x.requires_grad and x.grad is None and not explained.node_relevance.requires_grad


def test_output_relevance_that_requires_grad():
    model = make_mlp([4, 6, 3], seed=5)
    x = torch.randn(3, 4, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    seed = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    explained = graphlrp.explain(graph, x, output_relevance=seed)
    plain = graphlrp.explain(graph, x, output_relevance=seed.detach().clone())
    assert torch.equal(explained.node_relevance, plain.node_relevance) and seed.grad is None


RULES_FOR_MUTATION = [rules.Epsilon(), rules.Epsilon(0.0), rules.Gamma(0.25), rules.AlphaBeta(), rules.ZPlus(),
                      rules.WSquare(), rules.Flat(), rules.ZBox(-3.0, 3.0), rules.Gamma(0.25, weights_only=True)]


@pytest.mark.parametrize("node_major", [True, False])
@pytest.mark.parametrize("batch", [1, 40])
def test_callers_input_is_bit_identical_after_explain_and_after_a_refusal(kernel, node_major, batch):
    model = make_mlp([6, 10, 8, 4], seed=6)
    x = torch.randn(batch, 6, dtype=torch.float64)
    graph = graphlrp.lower(model, x.clone(), block_kind=kernel)
    graph.node_major = node_major
    copy, version = x.clone(), x._version
    for rule in RULES_FOR_MUTATION:
        explained = graphlrp.explain(graph, x, target=1, rule=rule)
        explained.edge_relevance(-1)
    for bad in ({"target": 9}, {"target": [0] * (batch + 1)}, {"output_relevance": torch.ones(batch, 5)},
                {"target": 0, "rule": graphlrp.Composite()}):
        with pytest.raises(GraphLRPError):
            graphlrp.explain(graph, x, **bad)
    assert torch.equal(x, copy) and x._version == version


@pytest.mark.parametrize("node_major", [True, False])
def test_explanation_does_not_follow_later_changes_to_the_callers_input(node_major):
    model = make_mlp([4, 6, 3], seed=7)
    x = torch.randn(2, 4, dtype=torch.float64)
    graph = graphlrp.lower(model, x.clone())
    graph.node_major = node_major  # batch-major: the input level is a view of x
    explained = graphlrp.explain(graph, x, target=0)
    messages = explained.edge_relevance()
    x.mul_(3.0)  # the caller reuses its buffer for the next batch
    assert torch.equal(explained.edge_relevance(), messages)


def test_caller_input_unchanged_when_the_forward_pass_is_refused():
    graph = float32_mlp(1e10)
    x = torch.full((2, 4), 1e30)
    copy = x.clone()
    with pytest.raises(NumericRangeError):
        graphlrp.explain(graph, x, target=0)
    assert torch.equal(x, copy)


@pytest.mark.parametrize("x, message", [
    (torch.zeros(0, 4, dtype=torch.float64), r"empty batch \(shape \(0, 4\)\)"),
    (torch.tensor([[0.0, float("nan"), 0.0, 0.0]], dtype=torch.float64), r"NaN or inf \(samples \[0\]\)"),
    (torch.tensor([[0.0, 0.0, 0.0, 0.0], [float("inf"), 0.0, 0.0, 0.0]], dtype=torch.float64), r"samples \[1\]"),
    (torch.zeros(2, 5, dtype=torch.float64), r"shape \(2, 5\), expected \(batch, 4\)"),
])
def test_bad_input_values_raise_input_error(x, message):
    graph = graphlrp.lower(make_mlp([4, 6, 3], seed=0), torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(InputError, match=message):
        graphlrp.explain(graph, x, target=0)


@pytest.mark.parametrize("x, message", [
    (torch.zeros(2, 4, dtype=torch.float32), "does not match the graph's torch.float64"),
    (torch.zeros(2, 4, dtype=torch.long), "must be a floating point tensor"),
    (np.zeros((2, 4)), "input must be a torch.Tensor, got ndarray"),
])
def test_bad_input_types_raise_argument_type_error(x, message):
    graph = graphlrp.lower(make_mlp([4, 6, 3], seed=0), torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ArgumentTypeError, match=message):
        graphlrp.explain(graph, x, target=0)


# -- half precision --------------------------------------------------------------------------

#: relative error of half-precision relevance against float64, a small factor above the measured
#: (float16 5e-4, bfloat16 7.7e-3 on this network)
HALF_TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_graphs_explain_on_every_block_kind(kernel, dtype):
    model = make_mlp([5, 8, 6, 3], seed=1)
    x = torch.randn(4, 5, dtype=torch.float64)
    graph = graphlrp.lower(model, x, block_kind=kernel)
    reference = graphlrp.explain(graph, x, target=0)
    half = graphlrp.explain(graph.to(dtype=dtype), x.to(dtype), target=0)
    assert half.node_relevance.dtype == dtype
    scale = reference.node_relevance.abs().max()
    error = (half.node_relevance.double() - reference.node_relevance).abs().max() / scale
    assert error <= HALF_TOLERANCE[dtype]
    edge_error = (half.edge_relevance(-1).double() - reference.edge_relevance(3)).abs().max() / scale
    assert edge_error <= HALF_TOLERANCE[dtype]


# -- targets, rules, composites and the graph argument ---------------------------------------


@pytest.fixture
def small():
    model = make_mlp([4, 6, 3], seed=0)
    x = torch.randn(3, 4, dtype=torch.float64)
    return graphlrp.lower(model, x), x, model


def test_targets_out_of_range_are_named(small):
    graph, x, _ = small
    with pytest.raises(IndexOutOfRangeError, match=r"target \[7, -2\] out of range: the output has 3 classes"):
        graphlrp.explain(graph, x, target=[0, 7, -2])


@pytest.mark.parametrize("arguments, message", [
    ({"rule": graphlrp.Composite()}, r"rule= takes one rule .*pass a composite as composite="),
    ({"rule": composites.EpsilonPlus()}, r"composite="),
    ({"composite": rules.Epsilon()}, r"composite= takes a Composite, got the rule .*pass one rule as rule="),
    ({"rule": "epsilon"}, r"rule must be a graphlrp rule"),
    ({"composite": {"0": rules.Epsilon()}}, r"composite must be a graphlrp Composite"),
    ({"target": 1.5}, r"integer class indices"),
    ({"target": "a"}, r"target must be"),
])
def test_arguments_of_the_wrong_kind(small, arguments, message):
    graph, x, _ = small
    with pytest.raises(ArgumentTypeError, match=message):
        graphlrp.explain(graph, x, **{"target": 0, **arguments})


def test_graph_argument_must_be_a_graph(small):
    _, x, model = small
    with pytest.raises(ArgumentTypeError, match="graph must be a graphlrp.Graph .*got NoneType"):
        graphlrp.explain(None, x, target=0)
    with pytest.raises(ArgumentTypeError, match=r"got Sequential; lower the model first"):
        graphlrp.explain(model, x, target=0)


# -- sample indices of edge relevance --------------------------------------------------------


def test_negative_sample_indices_count_from_the_end(small):
    graph, x, _ = small
    explained = graphlrp.explain(graph, x, target=1)
    last = explained.edge_relevance(2)
    assert torch.equal(explained.edge_relevance(-1), last)
    assert torch.equal(explained.edge_relevance(np.int64(-1)), last)
    assert torch.equal(explained.edge_relevance(torch.tensor(-1)), last)
    both = explained.edge_relevance([-1, -3])
    assert torch.equal(both, torch.stack([last, explained.edge_relevance(0)]))
    assert torch.equal(explained.edge_relevance(torch.tensor([-1, -3])), both)


@pytest.mark.parametrize("sample, error, message", [
    (3, IndexOutOfRangeError, r"sample 3 is out of range for a batch of 3 \(-3 .. 2\)"),
    (-4, IndexOutOfRangeError, r"sample -4 is out of range"),
    ([0, 5], IndexOutOfRangeError, r"sample 5"),
    (1.0, ArgumentTypeError, r"sample must be an int"),
    (True, ArgumentTypeError, r"sample must be an int"),
    ("0", ArgumentTypeError, r"sample must be an int"),
    ([0, 0.5], ArgumentTypeError, r"samples must be ints, got 0.5 \(float\)"),
    ([], InputError, r"sample selects no samples"),
])
def test_bad_sample_indices(small, sample, error, message):
    graph, x, _ = small
    explained = graphlrp.explain(graph, x, target=1)
    with pytest.raises(error, match=message):
        explained.edge_relevance(sample)


@pytest.mark.parametrize("max_bytes, error, message", [
    ("x", ArgumentTypeError, "max_bytes must be a number of bytes or None, got 'x'"),
    (-1, InputError, "max_bytes must be >= 0, got -1"),
    (float("nan"), InputError, "max_bytes must be >= 0, got nan"),
    (10, graphlrp.errors.GraphTooLargeError, r"edge relevance of 1 sample\(s\) × 42 edges would need"),
])
def test_bad_memory_budget(small, max_bytes, error, message):
    graph, x, _ = small
    explained = graphlrp.explain(graph, x, target=1)
    with pytest.raises(error, match=message):
        explained.edge_relevance(0, max_bytes=max_bytes)


# -- a property over rule parameters, weight and input scales --------------------------------

RULE_MAKERS = {
    "epsilon": lambda p: rules.Epsilon(p),
    "gamma": lambda p: rules.Gamma(p),
    "alphabeta": lambda p: rules.AlphaBeta(min(p, 1e15) + 1.0, min(p, 1e15)),  # α − β = 1 exactly
    "zplus": lambda p: rules.ZPlus(p),
    "wsquare": lambda p: rules.WSquare(p),
    "zbox": lambda p: rules.ZBox(-p, p),
}


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(sorted(RULE_MAKERS)),
    parameter=st.sampled_from([0.0, 1e-30, 1e-6, 0.25, 1.0, 1e5, 1e20, 1e37, 1e38, 3e38]),
    weight=st.sampled_from([None, 1e-20, 1e10, 1e19, 1e30]),
    input_scale=st.sampled_from([1.0, 1e10, 1e20, 1e36]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
)
def test_relevance_is_finite_or_refused(kind, parameter, weight, input_scale, dtype):
    graph = float32_mlp(weight).to(dtype=dtype)
    torch.manual_seed(0)
    x = (torch.randn(3, 4) * input_scale).to(dtype)
    if not bool(torch.isfinite(x).all()):
        return  # an input the dtype cannot hold: test_bad_input_values_raise_input_error
    copy = x.clone()
    rule = RULE_MAKERS[kind](parameter)
    try:
        explained = graphlrp.explain(graph, x, target=0, rule=rule)
    except NumericRangeError:
        pass
    else:
        assert bool(torch.isfinite(explained.node_relevance).all())
    assert torch.equal(x, copy)


def test_level_and_sample_indices_of_the_other_views(small):
    graph, x, _ = small
    explained = graphlrp.explain(graph, x, target=1)
    assert torch.equal(explained.level_relevance(-1), explained.level_relevance(len(graph.levels) - 1))
    assert torch.equal(explained.level_relevance(0), explained.input_relevance)
    assert explained.conservation_table(-1) == explained.conservation_table(2)
    assert explained.conservation_table(-1) != explained.conservation_table(0)
    with pytest.raises(IndexOutOfRangeError, match=r"level -4 is out of range for graph.levels of 3 \(-3..2\)"):
        explained.level_relevance(-4)
    with pytest.raises(ArgumentTypeError, match=r"level must be an int, got 'input'"):
        explained.level_relevance("input")
    with pytest.raises(IndexOutOfRangeError, match=r"sample 3 is out of range for a batch of 3"):
        explained.conservation_table(3)
    with pytest.raises(ArgumentTypeError, match=r"sample must be an int, got \[0, 1\]"):
        explained.conservation_table([0, 1])


@pytest.mark.parametrize("arguments, message", [
    ({"by_type": {None: rules.Epsilon()}}, r"by_type keys must be classes .* got None"),
    ({"by_type": {(nn.Linear, 3): rules.Epsilon()}}, r"by_type keys must be classes"),
    ({"by_type": {(): rules.Epsilon()}}, r"by_type keys must be classes"),
    ({"by_type": {"sum": None}}, r"composite entries must be graphlrp rules, got None for by_type\['sum'\]"),
    ({"by_name": {3: rules.Epsilon()}}, r"by_name keys must be module paths or patterns \(str\), got 3"),
    ({"by_name": {"0": "epsilon"}}, r"got 'epsilon' for by_name\['0'\]"),
    ({"by_name": [("0", rules.Epsilon())]}, r"by_name must be a mapping \(dict\), got list"),
    ({"first_types": ("Linear",)}, r"first_types must be classes"),
    ({"default": composites.EpsilonPlus()}, r"composite entries must be graphlrp rules"),
])
def test_composite_refuses_keys_and_entries_of_the_wrong_kind(arguments, message):
    with pytest.raises(ArgumentTypeError, match=message):
        graphlrp.Composite(**arguments)


def test_composite_by_type_accepts_classes_tags_and_tuples(small):
    graph, x, _ = small
    chosen = graphlrp.Composite(by_type={(nn.Conv2d, nn.Linear): rules.Gamma(0.5), "sum": rules.Norm()},
                                first_types=nn.Linear, first=rules.Flat())
    explained = graphlrp.explain(graph, x, target=0, composite=chosen)
    assert [r.label() if r else None for r in explained.rules()] == [None, "Flat()", "Gamma(gamma=0.5)"]
