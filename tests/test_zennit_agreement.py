"""graphlrp's rules equal Zennit's on dense networks (Zennit is the reference for rule formulas)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from zennit import rules as zrules
from zennit.attribution import Gradient
from zennit.composites import LayerMapComposite, MixedComposite, NameMapComposite
from zennit import composites as zcomposites
from zennit.types import Activation

import graphlrp
from graphlrp import rules

from conftest import make_mlp


def zennit_relevance(model: nn.Module, x: torch.Tensor, target: torch.Tensor, composite) -> torch.Tensor:
    """Input relevance computed by Zennit, starting from the target logit."""
    def start_from_logit(output: torch.Tensor) -> torch.Tensor:
        return output * torch.nn.functional.one_hot(target, output.shape[1]).to(output)

    with Gradient(model, composite) as attributor:
        _, relevance = attributor(x, start_from_logit)
    return relevance


#: relative agreement, each about 10× the largest error measured over every block kind and backend:
#: float64 with biases 1.0e-15; float64 with the bias left out of the rule 1.2e-13 (Σ a·w without
#: the bias comes near zero, where ε = 1e-6 amplifies rounding); float32 3.1e-7; float32 against
#: Zennit in float64 where a group has no contributions 8.3e-8
FLOAT64 = 1e-14
FLOAT64_ZERO_BIAS = 1e-12
FLOAT32 = 3e-6
FLOAT32_AGAINST_FLOAT64 = 1e-6


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> None:
    """Relative agreement: ``max |actual − expected| / max |expected| <= tolerance``.

    The default is the loose bound other test files rely on; the tests here pass their measured one.
    """
    scale = expected.abs().max().clamp(min=1e-12)
    error = (actual - expected).abs().max() / scale
    assert error <= tolerance, f"relative error {float(error):.3g} > {tolerance}"


def rule_pairs(zero_bias: bool):
    """(graphlrp rule, zennit rule) with the same formula and parameters."""
    zp = ["bias"] if zero_bias else None
    return [
        (rules.Epsilon(1e-6, zero_bias=zero_bias), zrules.Epsilon(1e-6, zero_params=zp)),
        (rules.Epsilon(0.25, zero_bias=zero_bias), zrules.Epsilon(0.25, zero_params=zp)),
        (rules.ZPlus(zero_bias=zero_bias), zrules.ZPlus(zero_params=zp)),
        (rules.AlphaBeta(2, 1, zero_bias=zero_bias), zrules.AlphaBeta(2, 1, zero_params=zp)),
        (rules.AlphaBeta(1, 0, zero_bias=zero_bias), zrules.AlphaBeta(1, 0, zero_params=zp)),
        (rules.Gamma(0.25, zero_bias=zero_bias), zrules.Gamma(0.25, zero_params=zp)),
        (rules.Gamma(1.0, zero_bias=zero_bias), zrules.Gamma(1.0, zero_params=zp)),
        (rules.WSquare(zero_bias=zero_bias), zrules.WSquare(zero_params=zp)),
        (rules.Flat(), zrules.Flat(zero_params=zp)),
        (rules.ZBox(-3.0, 3.0, zero_bias=zero_bias), zrules.ZBox(-3.0, 3.0, zero_params=zp)),
    ]


MODELS = [
    ([6, 9, 7, 4], nn.ReLU, 0),
    ([5, 8, 3], nn.Tanh, 1),  # mixed-sign hidden activations
    ([10, 16, 12, 8, 5], nn.LeakyReLU, 2),
]


@pytest.mark.parametrize("zero_bias", [False, True], ids=["bias", "zero_bias"])
@pytest.mark.parametrize("sizes,activation,seed", MODELS)
def test_every_rule_matches_zennit(kernel, zero_bias, sizes, activation, seed):
    model = make_mlp(sizes, activation, bias=True, seed=seed)
    torch.manual_seed(seed + 100)
    x = torch.randn(7, sizes[0], dtype=torch.float64)  # mixed-sign inputs
    target = torch.randint(0, sizes[-1], (7,))
    graph = graphlrp.lower(model, x, block_kind=kernel)
    for ours, theirs in rule_pairs(zero_bias):
        expected = zennit_relevance(model, x, target, LayerMapComposite([(Activation, zrules.Pass()), (nn.Linear, theirs)]))
        actual = graphlrp.explain(graph, x, target=target, rule=ours).input_relevance
        assert_close(actual, expected, FLOAT64_ZERO_BIAS if zero_bias else FLOAT64)


def test_rules_match_zennit_in_float32(kernel):
    model = make_mlp([8, 16, 16, 4], nn.ReLU, seed=3, dtype=torch.float32)
    x = torch.randn(5, 8)
    target = torch.tensor([0, 1, 2, 3, 0])
    graph = graphlrp.lower(model, x, block_kind=kernel)
    for ours, theirs in rule_pairs(zero_bias=False):
        expected = zennit_relevance(model, x, target, LayerMapComposite([(Activation, zrules.Pass()), (nn.Linear, theirs)]))
        actual = graphlrp.explain(graph, x, target=target, rule=ours).input_relevance
        assert_close(actual, expected, FLOAT32)


def test_networks_without_bias_match_zennit(kernel):
    model = make_mlp([6, 10, 10, 3], nn.ReLU, bias=False, seed=4)
    x = torch.randn(4, 6, dtype=torch.float64)
    target = torch.tensor([2, 1, 0, 2])
    graph = graphlrp.lower(model, x, block_kind=kernel)
    for ours, theirs in rule_pairs(zero_bias=False):
        expected = zennit_relevance(model, x, target, LayerMapComposite([(Activation, zrules.Pass()), (nn.Linear, theirs)]))
        assert_close(graphlrp.explain(graph, x, target=target, rule=ours).input_relevance, expected, FLOAT64)


def test_composite_by_layer_name_matches_zennit(kernel):
    model = make_mlp([6, 12, 10, 8, 4], nn.ReLU, seed=5)
    x = torch.randn(6, 6, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 3, 1])
    graph = graphlrp.lower(model, x, block_kind=kernel)
    ours = graphlrp.Composite(
        by_name={"0": rules.ZBox(-4.0, 4.0), "2": rules.Gamma(0.5), "4": rules.AlphaBeta(2, 1)},
        default=rules.Epsilon(0.1),
    )
    theirs = MixedComposite([
        NameMapComposite([(("0",), zrules.ZBox(-4.0, 4.0)), (("2",), zrules.Gamma(0.5)),
                          (("4",), zrules.AlphaBeta(2, 1)), (("6",), zrules.Epsilon(0.1))]),
        LayerMapComposite([(Activation, zrules.Pass())]),
    ])
    assert_close(graphlrp.explain(graph, x, target=target, composite=ours).input_relevance,
                 zennit_relevance(model, x, target, theirs), FLOAT64)


@pytest.mark.parametrize("name", ["EpsilonPlus", "EpsilonPlusFlat", "EpsilonAlpha2Beta1"])
def test_preset_composites_match_zennit(kernel, name):
    model = make_mlp([7, 11, 9, 5], nn.ReLU, seed=6)
    x = torch.randn(5, 7, dtype=torch.float64)
    target = torch.tensor([4, 3, 2, 1, 0])
    graph = graphlrp.lower(model, x, block_kind=kernel)
    ours = getattr(graphlrp.composites, name)()
    theirs = getattr(zcomposites, name)()
    assert_close(graphlrp.explain(graph, x, target=target, composite=ours).input_relevance,
                 zennit_relevance(model, x, target, theirs), FLOAT64)


def test_epsilon_gamma_box_matches_zennit(kernel):
    model = make_mlp([7, 11, 5], nn.ReLU, seed=7)
    x = torch.randn(3, 7, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    graph = graphlrp.lower(model, x, block_kind=kernel)
    ours = graphlrp.composites.EpsilonGammaBox(low=-3.0, high=3.0)
    theirs = zcomposites.EpsilonGammaBox(low=-3.0, high=3.0)
    assert_close(graphlrp.explain(graph, x, target=target, composite=ours).input_relevance,
                 zennit_relevance(model, x, target, theirs), FLOAT64)


def test_alpha_beta_is_exact_where_a_group_has_no_contributions():
    """A node whose active inputs all have positive weights has a β denominator of exactly 0.

    Computed as a difference (``W⁻a = Wa − W⁺a``) it would be rounding noise of either sign, and the
    redistribution would amplify that by 1/ε; in float32 graphlrp must still agree with Zennit in float64.
    """
    torch.manual_seed(5)
    model = make_mlp([12, 16, 6], nn.ReLU, seed=5)
    with torch.no_grad():
        model[2].weight[:3] = model[2].weight[:3].abs()  # outputs 0-2: no negative weights at all
        model[2].bias[:3] = model[2].bias[:3].abs()
    x = torch.randn(32, 12, dtype=torch.float64)
    target = torch.arange(32) % 3
    expected = zennit_relevance(model, x, target, LayerMapComposite([(Activation, zrules.Pass()),
                                                                       (nn.Linear, zrules.AlphaBeta(2, 1))]))
    model32 = model.float()
    graph = graphlrp.lower(model32, x.float())
    actual = graphlrp.explain(graph, x.float(), target=target, rule=rules.AlphaBeta(2, 1)).input_relevance
    assert_close(actual.double(), expected, FLOAT32_AGAINST_FLOAT64)
