"""Summed over a data set, the relevance of layer-norm parameters and of the edges of blocks weighted
per sample (layer norm's ``1/σ``, attention's probabilities; AttnLRP's products and softmax):
``aggregate`` against the brute-force sum of every sample's edge messages and bias relevance
(``explain``), on the tiny BERT-like encoder and the tiny ViT, in float64; exact conservation at a
normalization with LRP-0."""
import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp.rules import Epsilon
from test_encoder import _encoder, _ids
from test_vit import tiny_vit

RULE = Epsilon(1e-6)


def _encoder_case(rms: bool = False):
    model = _encoder(causal=False)
    if rms:  # the final norm as an RMS normalization with a perturbed scale
        torch.manual_seed(3)
        model.body.norm = nn.RMSNorm(model.body.norm.normalized_shape, eps=1e-6).double()
        with torch.no_grad():
            model.body.norm.weight.add_(0.3 * torch.randn_like(model.body.norm.weight))
    vectors = graphlrp.embed(model.tokens, _ids(4))
    return model.body, vectors


def _vit_case():
    torch.manual_seed(2)
    return tiny_vit(), torch.randn(3, 3, 16, 16, dtype=torch.float64)


def _brute_force(graph, explanation):
    """Per block its edges' messages summed over the samples, and per level its bias relevance."""
    edges = explanation.edge_relevance().sum(0)
    starts = torch.tensor([0] + [b.num_edges for b in graph.blocks]).cumsum(0).tolist()
    per_block = [edges[starts[k]: starts[k + 1]] for k in range(len(graph.blocks))]
    return per_block, explanation.bias_relevance().sum(0)


def _norms(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))}


@pytest.mark.parametrize("case", [_encoder_case, lambda: _encoder_case(rms=True), _vit_case],
                         ids=["bert-like", "bert-like-rms", "vit"])
def test_norm_parameters_are_the_summed_messages_of_the_edges_sharing_them(case):
    model, x = case()
    graph = graphlrp.lower(model, x)
    found = graphlrp.aggregate(graph, x, 1, rule=RULE, progress=False).parameter_relevance()
    explanation = graphlrp.explain(graph, x, target=1, rule=RULE)
    per_block, biases = _brute_force(graph, explanation)
    levels = {level.name: level for level in graph.levels}
    norms = _norms(model)
    assert norms
    for path, module in norms.items():
        level = levels[path]
        position = next(k for k, b in enumerate(graph.blocks) if b.dst == level.index)
        _, dst, _ = graph.blocks[position].edges()
        features = module.weight.numel()
        # the edges into feature j of every token share γ_j
        weight = torch.zeros(features, dtype=torch.float64).index_add_(0, dst % features, per_block[position])
        assert found[f"{path}.weight"].shape == module.weight.shape
        torch.testing.assert_close(found[f"{path}.weight"], weight.reshape(module.weight.shape), rtol=1e-9,
                                   atol=1e-12)
        if getattr(module, "bias", None) is not None:
            bias = biases[level.offset: level.offset + level.size].reshape(-1, features).sum(0)
            assert found[f"{path}.bias"].shape == module.bias.shape
            torch.testing.assert_close(found[f"{path}.bias"], bias.reshape(module.bias.shape), rtol=1e-9, atol=1e-12)
        else:
            assert f"{path}.bias" not in found


PER_SAMPLE = {"cp-lrp": {"layer_norm", "attention"},
              "attnlrp": {"layer_norm", "head_product", "softmax", "softmax_remainder"}}


@pytest.mark.parametrize("attention", list(PER_SAMPLE))
@pytest.mark.parametrize("case", [_encoder_case, _vit_case], ids=["bert-like", "vit"])
def test_summed_edge_relevance_of_per_sample_weighted_blocks_equals_the_brute_force_sum(case, attention):
    model, x = case()
    graph = graphlrp.lower(model, x, attention=attention)
    aggregated = graphlrp.aggregate(graph, x, 1, rule=RULE, progress=False).edge_relevance()
    per_block, _ = _brute_force(graph, graphlrp.explain(graph, x, target=1, rule=RULE))
    start = 0
    kinds = set()
    for block, expected in zip(graph.blocks, per_block):
        if block.kind in PER_SAMPLE[attention]:  # every edge its own slot
            kinds.add(block.kind)
            torch.testing.assert_close(aggregated[start: start + block.num_edges], expected, rtol=1e-9, atol=1e-12)
        start += block.num_edges
    assert kinds == PER_SAMPLE[attention]


def test_attnlrp_gives_the_query_and_key_projections_relevance():
    """Under AttnLRP the packed in_proj_weight's q and k parts are the summed messages of their
    per-token Linears, no longer zero."""
    model, x = _encoder_case()
    graph = graphlrp.lower(model, x, attention="attnlrp")
    found = graphlrp.aggregate(graph, x, 1, rule=RULE, progress=False).parameter_relevance()
    assert {n: tuple(p.shape) for n, p in model.named_parameters() if n != "position"} == {
        n: tuple(v.shape) for n, v in found.items()}
    per_block, _ = _brute_force(graph, graphlrp.explain(graph, x, target=1, rule=RULE))
    levels = {level.name: level for level in graph.levels}
    for part, role in enumerate("qkv"):
        position = next(k for k, b in enumerate(graph.blocks) if b.dst == levels[f"layers.0.attention:{role}"].index)
        block = graph.blocks[position]
        expected = torch.zeros(block.weight.numel(), dtype=torch.float64).index_add_(0, block.edge_slots(),
                                                                                 per_block[position])
        got = found["layers.0.attention.in_proj_weight"].chunk(3)[part]
        assert got.abs().sum() > 1e-6
        torch.testing.assert_close(got, expected.reshape(block.weight.shape), rtol=1e-9, atol=1e-12)


def test_norm_weight_and_bias_relevance_add_up_to_the_levels_relevance_with_lrp0():
    """LRP-0 conserves at a normalization: its γ and β share all of its level's relevance."""
    model, x = _encoder_case()
    graph = graphlrp.lower(model, x)
    rule = Epsilon(0.0)
    aggregate = graphlrp.aggregate(graph, x, 1, rule=rule, progress=False)
    found = aggregate.parameter_relevance()
    for path in _norms(model):
        level = next(level for level in graph.levels if level.name == path)
        total = aggregate.node_relevance[level.offset: level.offset + level.size].sum()
        torch.testing.assert_close(found[f"{path}.weight"].sum() + found[f"{path}.bias"].sum(), total, rtol=1e-10,
                                   atol=1e-12)
