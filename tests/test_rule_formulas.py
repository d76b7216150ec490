"""Every rule variant against its dense matrix formula, level by level, on every block kind.

The formulas are written out here from the paper (Montavon et al. 2019) and Zennit's definitions
(lrp-rules.md), independently of :mod:`graphlrp.rules`: the weights-only variants of z⁺, αβ and γ
(which Zennit does not have), both stabilizers, and each rule with and without its bias term.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from zennit.canonizers import SequentialMergeBatchNorm

import graphlrp
from graphlrp import rules
from graphlrp.blocks import edgelist
from graphlrp.transforms import Identity, Negative, Positive, Zero

from conftest import make_mlp
from test_cnn import build
from test_from_edges import dense_groups, stabilize
from test_zennit_agreement import FLOAT64, assert_close, zennit_relevance

#: agreement with the formulas relative to the largest |relevance|, in float64, about 10× the largest
#: error measured on every block kind: 1.2e-15 with biases, 3.2e-15 with the bias left out, 1.4e-12
#: for the weights-only variants (their denominators Σ a·w⁺ on mixed-sign inputs come near zero and
#: graphlrp computes a·w⁻ as a·w − a·w⁺), 1.8e-14 for one layer of them
TOLERANCE = 1e-14
ZERO_BIAS_TOLERANCE = 3e-14
WEIGHTS_ONLY_TOLERANCE = 1.5e-11
ONE_LAYER_TOLERANCE = 2e-13


@dataclass
class LayerBalance:
    """What one layer's rule did: the relevance of its outputs, what reached its inputs, and what
    its bias terms and stabilizer absorbed, per sample."""

    relevance: np.ndarray
    relevance_out: np.ndarray
    bias: np.ndarray
    stabilizer: np.ndarray


def mlp_lrp(model: nn.Sequential, x: torch.Tensor, target: int, rule: rules.Rule) -> tuple[np.ndarray, list[LayerBalance]]:
    """LRP through the model's own layers, in float64 numpy: ``R_in = Σ_g scale_g · C_g (R / stab(Σ C_g + β_g))``.

    Returns the input relevance and, from the last layer to the first, each layer's balance.
    """
    inputs, pre_activations, layers = [], [], []
    a = x
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear):
                inputs.append(a.numpy())
                a = module(a)
                pre_activations.append(a.numpy())
                layers.append(module)
            else:
                a = module(a)
    relevance = np.zeros_like(pre_activations[-1])
    relevance[:, target] = pre_activations[-1][:, target]
    balances = []
    for layer, a_in, z in zip(layers[::-1], inputs[::-1], pre_activations[::-1]):
        W = layer.weight.detach().numpy().T
        b = np.zeros(W.shape[1]) if layer.bias is None else layer.bias.detach().numpy()
        below, bias, absorbed = np.zeros_like(a_in), np.zeros(len(z)), np.zeros(len(z))
        for scale, C, beta, served in dense_groups(rule, a_in, W, b, z):
            denominator = C.sum(1) + beta
            stabilized = stabilize(rule, denominator)
            nonzero = served & (stabilized != 0)
            quotient = np.where(nonzero, relevance / np.where(nonzero, stabilized, 1.0), 0.0)
            below += scale * (C * quotient[:, None, :]).sum(2)
            bias += scale * (quotient * beta).sum(1)
            absorbed += scale * (quotient * (stabilized - denominator)).sum(1)
        balances.append(LayerBalance(relevance, below.sum(1), bias, absorbed))
        relevance = below
    return relevance, balances


VARIANTS = [
    rules.Epsilon(1e-6), rules.Epsilon(0.3), rules.Epsilon(0.0), rules.Epsilon(0.05, stabilizer="plain"),
    rules.ZPlus(), rules.ZPlus(weights_only=True), rules.ZPlus(0.01, stabilizer="plain", weights_only=True),
    rules.AlphaBeta(2, 1), rules.AlphaBeta(1, 0), rules.AlphaBeta(2, 1, weights_only=True),
    rules.AlphaBeta(3, 2, weights_only=True),
    rules.Gamma(0.25), rules.Gamma(0.25, stabilizer="plain"), rules.Gamma(0.5, weights_only=True),
    rules.Gamma(0.1, stabilizer="plain", weights_only=True),
    rules.WSquare(), rules.WSquare(0.01, stabilizer="plain"), rules.Flat(), rules.ZBox(-3.0, 3.0), rules.Norm(),
]


def with_zero_bias(rule: rules.Rule) -> rules.Rule:
    kwargs = {k: v for k, v in vars(rule).items() if not k.startswith("_")}
    if isinstance(rule, (rules.Flat, rules.Norm)):  # have no bias term
        return rule
    return type(rule)(**{**kwargs, "zero_bias": True})


@pytest.fixture(scope="module")
def mlp() -> tuple[nn.Sequential, torch.Tensor]:
    """Mixed-sign hidden activations (tanh) and inputs, biases everywhere."""
    model = make_mlp([6, 9, 8, 4], nn.Tanh, seed=11)
    return model, torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(12))


@pytest.mark.parametrize("zero_bias", [False, True], ids=["bias", "zero_bias"])
@pytest.mark.parametrize("rule", VARIANTS, ids=repr)
def test_every_level_equals_the_dense_formula(kernel, mlp, rule, zero_bias):
    model, x = mlp
    rule = with_zero_bias(rule) if zero_bias else rule
    expected_input, balances = mlp_lrp(model, x, 2, rule)
    graph = graphlrp.lower(model, x, block_kind=kernel)
    explanation = graphlrp.explain(graph, x, target=2, rule=rule)
    tolerance = ZERO_BIAS_TOLERANCE if getattr(rule, "zero_bias", False) else TOLERANCE
    tolerance = WEIGHTS_ONLY_TOLERANCE if getattr(rule, "weights_only", False) else tolerance
    assert_close(explanation.input_relevance, torch.from_numpy(expected_input), tolerance)
    for level, balance in zip(range(len(graph.levels) - 1, 0, -1), balances):
        assert_close(explanation.level_relevance(level), torch.from_numpy(balance.relevance), tolerance)
    assert np.abs(expected_input).min() > 0  # every input carries relevance


@pytest.mark.parametrize("rule", [rules.ZPlus(), rules.AlphaBeta(2, 1), rules.Gamma(0.25)], ids=repr)
def test_one_graph_explains_batches_of_either_sign(kernel, mlp, rule):
    """The rules that split inputs by sign, on one graph: a non-negative batch, a mixed-sign one, and
    the non-negative one again, each equal to its formula."""
    model, x = mlp
    graph = graphlrp.lower(model, x, block_kind=kernel)
    for batch in (x.abs(), x, x.abs()):
        explanation = graphlrp.explain(graph, batch, target=2, rule=rule)
        assert_close(explanation.input_relevance, torch.from_numpy(mlp_lrp(model, batch, 2, rule)[0]), TOLERANCE)


# -- the weights-only variants, one formula each ----------------------------------------------------
def one_layer(seed: int) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A dense layer with biases of both signs, inputs of both signs, and ``R`` for its outputs."""
    model = make_mlp([7, 5], seed=seed)
    x = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    relevance = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    return model, x, model[0].weight.detach().T, relevance


def signed(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z)


def explain_layer(model, x, relevance, rule, kernel) -> torch.Tensor:
    graph = graphlrp.lower(model, x, block_kind=kernel)
    return graphlrp.explain(graph, x, output_relevance=relevance, rule=rule).input_relevance


@pytest.mark.parametrize("zero_bias", [False, True], ids=["bias", "zero_bias"])
def test_weights_only_zplus(kernel, zero_bias):
    """``R_i = a_i Σ_j w_ij⁺ R_j / stab(Σ_i a_i w_ij⁺ + b_j⁺)``."""
    model, x, W, R = one_layer(1)
    b = 0 * model[0].bias if zero_bias else model[0].bias.detach()
    expected = x * ((R / signed(x @ W.clamp(min=0) + b.clamp(min=0), 1e-6)) @ W.clamp(min=0).T)
    actual = explain_layer(model, x, R, rules.ZPlus(zero_bias=zero_bias, weights_only=True), kernel)
    assert_close(actual, expected, ONE_LAYER_TOLERANCE)


@pytest.mark.parametrize("zero_bias", [False, True], ids=["bias", "zero_bias"])
def test_weights_only_alpha_beta(kernel, zero_bias):
    """``R_i = α a_i Σ_j w_ij⁺ R_j / stab(Σ_i a_i w_ij⁺ + b_j⁺) − β a_i Σ_j w_ij⁻ R_j / stab(Σ_i a_i w_ij⁻ + b_j⁻)``."""
    model, x, W, R = one_layer(2)
    b = 0 * model[0].bias if zero_bias else model[0].bias.detach()
    Wp, Wn = W.clamp(min=0), W.clamp(max=0)
    expected = (3 * x * ((R / signed(x @ Wp + b.clamp(min=0), 1e-6)) @ Wp.T)
                - 2 * x * ((R / signed(x @ Wn + b.clamp(max=0), 1e-6)) @ Wn.T))
    actual = explain_layer(model, x, R, rules.AlphaBeta(3, 2, zero_bias=zero_bias, weights_only=True), kernel)
    assert_close(actual, expected, ONE_LAYER_TOLERANCE)


@pytest.mark.parametrize("zero_bias", [False, True], ids=["bias", "zero_bias"])
def test_weights_only_gamma(kernel, zero_bias):
    """``R_i = a_i Σ_j W↑_ij R_j / stab(Σ_i a_i W↑_ij + b_j + γ b_j⁺)`` with ``W↑ = W + γW⁺``, for
    every output whatever its sign (Captum's γ)."""
    model, x, W, R = one_layer(3)
    b = 0 * model[0].bias if zero_bias else model[0].bias.detach()
    up = W + 0.4 * W.clamp(min=0)
    expected = x * ((R / signed(x @ up + b + 0.4 * b.clamp(min=0), 1e-6)) @ up.T)
    actual = explain_layer(model, x, R, rules.Gamma(0.4, zero_bias=zero_bias, weights_only=True), kernel)
    assert_close(actual, expected, ONE_LAYER_TOLERANCE)


class ScaledPositiveWeights(rules.Rule):
    """A custom rule of one term with a sign other than 1: ``c_ij = sign · a_i w_ij⁺``, ``β_j = sign · b_j⁺``."""

    def __init__(self, sign: float) -> None:
        super().__init__(epsilon=1e-6)
        self.sign = sign

    def groups(self) -> tuple[rules.Group, ...]:
        return (rules.Group((rules.Term(Identity(), Positive(), Positive(), sign=self.sign),)),)


@pytest.mark.parametrize("sign", [2.0, 0.5, -1.0])
def test_a_terms_sign_scales_its_contributions_and_bias(kernel, sign):
    """``R_i = s a_i Σ_j w_ij⁺ R_j / stab(s (Σ_i a_i w_ij⁺ + b_j⁺))``: s cancels but for the stabilizer."""
    model, x, W, R = one_layer(5)
    b = model[0].bias.detach()
    expected = sign * x * ((R / signed(sign * (x @ W.clamp(min=0) + b.clamp(min=0)), 1e-6)) @ W.clamp(min=0).T)
    assert_close(explain_layer(model, x, R, ScaledPositiveWeights(sign), kernel), expected, ONE_LAYER_TOLERANCE)


class OverlappingParts(rules.Rule):
    """Three groups ``a⁺·w``, ``a·w⁺`` and ``a⁻·w⁻`` (a third each): their products overlap in
    ``a⁺w⁺`` and do not add up to the layer's ``W a``."""

    def groups(self) -> tuple[rules.Group, ...]:
        terms = [rules.Term(Positive(), Identity(), Zero()), rules.Term(Identity(), Positive(), Zero()),
                 rules.Term(Negative(), Negative(), Zero())]
        return tuple(rules.Group((term,), scale=1 / 3) for term in terms)


def test_products_that_overlap_leave_the_forward_pass_to_the_weights(kernel):
    """``R = ⅓ Σ_g f_g(a) ⊙ (W_g (R / stab(f_g(a) W_g)))``, and the output is still the layer's own."""
    model, x, W, R = one_layer(6)
    graph = graphlrp.lower(model, x, block_kind=kernel)
    explanation = graphlrp.explain(graph, x, output_relevance=R, rule=OverlappingParts())
    with torch.no_grad():
        torch.testing.assert_close(explanation.output, model(x), rtol=0, atol=1e-15)
    expected = sum(a * ((R / signed(a @ w, 1e-6)) @ w.T) / 3
                   for a, w in [(x.clamp(min=0), W), (x, W.clamp(min=0)), (x.clamp(max=0), W.clamp(max=0))])
    assert_close(explanation.input_relevance, expected, ONE_LAYER_TOLERANCE)


@pytest.mark.parametrize("batch", [1, 5])
def test_edge_lists_reduced_in_chunks_of_a_few_edges(monkeypatch, mlp, batch):
    """The edge-list kind splits its edges into chunks of ``CHUNK_ELEMENTS // batch``: with chunks of
    a few edges (9 × 8 = 72 edges in the middle layer) every rule still equals its formula."""
    monkeypatch.setattr(edgelist, "CHUNK_ELEMENTS", 10 * batch)
    model, x = mlp
    x = x[:batch]
    graph = graphlrp.lower(model, x, block_kind="edges")
    for rule in (rules.Epsilon(0.3), rules.AlphaBeta(2, 1), rules.Gamma(0.25), rules.WSquare()):
        explanation = graphlrp.explain(graph, x, target=2, rule=rule)
        assert_close(explanation.input_relevance, torch.from_numpy(mlp_lrp(model, x, 2, rule)[0]), TOLERANCE)
        with torch.no_grad():
            torch.testing.assert_close(explanation.output, model(x), rtol=0, atol=1e-15)


@pytest.mark.parametrize("rule", [rules.Epsilon(0.1), rules.ZPlus(), rules.AlphaBeta(2, 1), rules.Gamma(0.5),
                                  rules.WSquare(), rules.Flat()], ids=repr)
def test_max_pooling_level_under_a_rule_is_one_edge_from_the_winner(rule):
    """A max-pooling output ``j`` has one edge, of weight 1, from its window's winner ``i``: under any
    rule, ``R_i = Σ_g scale_g c_g / stab(c_g) R_j`` with ``c_g`` the group's contribution of
    ``a_i · 1`` (mixed-sign inputs: the pooling follows a convolution directly)."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 3)).double().eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    pool = next(level for level in graph.levels if level.layer_type is nn.MaxPool2d)
    explanation = graphlrp.explain(graph, x, target=1, composite=graphlrp.Composite(by_type={nn.MaxPool2d: rule}))
    with torch.no_grad():
        conv = model[0](x)
        winners_value, winners = F.max_pool2d(conv, 2, return_indices=True)
    a = winners_value.reshape(3, -1).numpy()
    relevance = explanation.level_relevance(pool.index).reshape(3, -1).numpy()
    m = a.shape[1]
    shared = np.zeros((3, m))
    for scale, C, beta, served in dense_groups(rule, a, np.eye(m), np.zeros(m), a):
        diagonal = np.einsum("bii->bi", C)
        stabilized = stabilize(rule, diagonal + beta)
        shared += np.where(served, scale * diagonal / stabilized * relevance, 0.0)
    expected = np.zeros((3, 2, 64))
    np.add.at(expected, (np.arange(3)[:, None, None], np.arange(2)[None, :, None], winners.reshape(3, 2, -1).numpy()),
              shared.reshape(3, 2, -1))
    assert_close(explanation.level_relevance(pool.index - 1).reshape(3, -1), torch.from_numpy(expected.reshape(3, -1)),
                 TOLERANCE)
    assert (a < 0).mean() > 0.1 and (np.abs(shared) > 0).mean() > 0.5  # winners of both signs, relevance at most


def test_weights_only_variants_differ_from_the_full_rules_on_mixed_sign_inputs():
    """On mixed-sign inputs the two forms are different rules, so each formula above is a test of its own."""
    model, x, _, R = one_layer(4)
    for full, weights_only in [(rules.ZPlus(), rules.ZPlus(weights_only=True)),
                               (rules.AlphaBeta(2, 1), rules.AlphaBeta(2, 1, weights_only=True)),
                               (rules.Gamma(0.5), rules.Gamma(0.5, weights_only=True))]:
        difference = explain_layer(model, x, R, full, "dense") - explain_layer(model, x, R, weights_only, "dense")
        assert difference.abs().max() > 0.05


# -- presets on a convolutional network, every block kind of its dense layers --------------------
@pytest.mark.parametrize("name", ["EpsilonPlus", "EpsilonPlusFlat", "EpsilonAlpha2Beta1", "EpsilonGammaBox"])
def test_presets_on_a_cnn_match_zennit_on_every_block_kind(kernel, name):
    from zennit import composites as zcomposites

    model, twin, x = build("lenet", seed=2)
    target = torch.tensor([2, 1, 0, 2])
    options = dict(low=-3.0, high=3.0) if name == "EpsilonGammaBox" else {}
    ours = getattr(graphlrp.composites, name)(**options)
    theirs = getattr(zcomposites, name)(**options, canonizers=[SequentialMergeBatchNorm()])
    graph = graphlrp.lower(model, x, block_kind=kernel)
    assert {block.kind for block in graph.blocks} >= {"conv", "maxpool", kernel}
    assert_close(graphlrp.explain(graph, x, target=target, composite=ours).input_relevance,
                 zennit_relevance(twin, x, target, theirs), FLOAT64)

