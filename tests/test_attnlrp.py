"""AttnLRP's attention (``lower(..., attention='attnlrp')``): relevance into queries and keys through
the softmax (Proposition 3.1) and the uniform rule on ``Q Kᵀ`` and ``A V``, against LXT 2.1 —
its explicit functions (``lf.matmul``, ``lf.softmax``) operation by operation, and its efficient
mode (gradient × input with ``wrap_attention_forward``'s gradient divisions) — within 1e-5 in
float64, on SDPA (plain and causal), nn.MultiheadAttention, the tiny ViT and the BERT- and
GPT-like encoders; conservation with LRP-0; the blocks' listed messages against the node
relevance their products give."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

import graphlrp
from graphlrp.composites import Composite
from graphlrp.errors import InputError
from graphlrp.rules import Epsilon

import test_attention_lowering as lowering
import test_encoder as encoder
import test_vit as vit

lf = pytest.importorskip("lxt.explicit.functional")
lxt_rules = pytest.importorskip("lxt.explicit.rules")

EPS = 1e-9


def _efficient_rules():
    """``lxt/efficient/rules.py`` by its path: the ``lxt.efficient`` package imports ``transformers``
    (for its model maps), its rules do not."""
    path = Path(importlib.util.find_spec("lxt").origin).parent / "efficient" / "rules.py"
    spec = importlib.util.spec_from_file_location("lxt_efficient_rules", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


efficient = _efficient_rules()


def lxt_attnlrp(q, k, v, causal: bool = False):
    """LXT's explicit AttnLRP of ``softmax(q kᵀ/√d) v`` on ``(B, H, T, d)``: the uniform rule on
    both products (``lf.matmul``, whose ``2·out + ε`` is graphlrp's ``out + ε/2``), the scale by
    the ε rule, Proposition 3.1 on the softmax (``lf.softmax``, which reads a masked score as 0)."""
    scale = 1 / math.sqrt(q.shape[-1])
    scores = lxt_rules.epsilon_lrp(lambda t: t * scale, EPS, lf.matmul(q, k.transpose(-1, -2), epsilon=2 * EPS))
    if causal:
        tokens = q.shape[-2]
        scores = scores + torch.zeros(tokens, tokens, dtype=q.dtype).masked_fill(
            torch.ones(tokens, tokens, dtype=torch.bool).triu(1), float("-inf"))
    return lf.matmul(lf.softmax(scores, -1), v, epsilon=2 * EPS)


class _EfficientAttention(torch.autograd.Function):
    """LXT's efficient AttnLRP on one attention: relevance ``R`` at the output becomes the gradient
    ``R / (out + ε)`` there, the attention's gradient is taken with the divisions of
    ``lxt.efficient.patches.wrap_attention_forward`` (``divide_gradient``: ``q`` and ``k`` by 4,
    ``v`` by 2), and times its inputs is theirs."""

    @staticmethod
    def forward(ctx, q, k, v, causal):
        ctx.save_for_backward(q, k, v)
        ctx.causal = causal
        return _attention(q, k, v, causal)

    @staticmethod
    def backward(ctx, relevance):
        q, k, v = (t.detach().requires_grad_() for t in ctx.saved_tensors)
        with torch.enable_grad():
            divided = (efficient.divide_gradient(q, 4), efficient.divide_gradient(k, 4), efficient.divide_gradient(v, 2))
            out = _attention(*divided, ctx.causal)
            grads = torch.autograd.grad(out, (q, k, v), relevance / (out.detach() + EPS))
        return (*(t.detach() * g for t, g in zip((q, k, v), grads)), None)


def _attention(q, k, v, causal):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        tokens = q.shape[-2]
        scores = scores.masked_fill(torch.ones(tokens, tokens, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


def lxt_efficient(q, k, v, causal: bool = False):
    return _EfficientAttention.apply(q, k, v, causal)


def _composite() -> Composite:
    """LXT's ε (``+ε``) on every linear map and sum; the softmax level keeps its own LRP-0."""
    rule = Epsilon(EPS, stabilizer="plain")
    return Composite(default=rule, by_type={"sum": rule, "mean": rule})


MODELS = {
    "sdpa": lambda: lowering.SDPAModel(causal=False),
    "sdpa-causal": lambda: lowering.SDPAModel(causal=True),
    "mha": lambda: lowering.MHAModel(),
    "mha-kdim": lambda: lowering.MHAModel(kdim=5),
    "mha-tbe": lambda: lowering.MHAModel(batch_first=False),
}


@pytest.mark.parametrize("reference", [lxt_attnlrp, lxt_efficient], ids=["explicit", "efficient"])
@pytest.mark.parametrize("name", list(MODELS))
def test_attention_relevance_equals_lxt_attnlrp(name, reference):
    model = lowering._perturbed(MODELS[name]())
    x = lowering._x()
    graph = graphlrp.lower(model, x, attention="attnlrp")
    assert [b.kind for b in graph.blocks].count("softmax") == 1
    torch.testing.assert_close(graph(x), model(x), rtol=0, atol=1e-12)
    explanation = graphlrp.explain(graph, x, target=2, composite=_composite())
    expected = model.reference(x, 2, attend=reference)
    torch.testing.assert_close(explanation.input_relevance, expected, rtol=1e-5, atol=1e-8)
    # unlike CP-LRP, queries and keys receive relevance
    for level in graph.levels:
        if level.name.endswith((":q", ":k", ":query", ":key")):
            assert explanation.level_relevance(level.index).abs().sum() > 1e-3


def test_tiny_vit_relevance_equals_lxt_attnlrp():
    model = vit.tiny_vit()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    graph = graphlrp.lower(model, x, attention="attnlrp")
    torch.testing.assert_close(graph(x), model(x), rtol=0, atol=1e-10)
    explanation = graphlrp.explain(graph, x, target=3, composite=_composite())
    expected = vit.lxt_relevance(model, x, 3, attend=lxt_attnlrp)
    torch.testing.assert_close(explanation.input_relevance, expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("causal", [False, True], ids=["bert-like", "gpt-like"])
def test_encoder_token_relevance_equals_lxt_attnlrp(causal):
    model = encoder._encoder(causal)
    ids = encoder._ids()
    vectors = graphlrp.embed(model.tokens, ids)
    graph = graphlrp.lower(model.body, vectors, attention="attnlrp")
    torch.testing.assert_close(graph(vectors), model(ids), rtol=0, atol=1e-10)
    explanation = graphlrp.explain(graph, vectors, target=1, composite=_composite())
    relevance = graphlrp.token_relevance(explanation.input_relevance)
    expected = encoder.lxt_token_relevance(model, ids, 1, core=lxt_attnlrp)
    torch.testing.assert_close(relevance, expected, rtol=1e-5, atol=1e-8)


def _bias_free_attention():
    model = lowering._perturbed(lowering.MHAModel(bias=False))
    with torch.no_grad():
        model.head.bias.zero_()
    return model


def test_lrp0_conserves_except_for_the_softmax_remainder():
    """With LRP-0 and no biases, the output's relevance reaches the input except for the share the
    softmax's Taylor remainder takes (the constant node's bias), and every level balances."""
    model = _bias_free_attention()
    x = lowering._x()
    graph = graphlrp.lower(model, x, attention="attnlrp")
    lrp0 = Epsilon(0.0)
    explanation = graphlrp.explain(graph, x, target=1, composite=Composite(default=lrp0, by_type={"sum": lrp0}))
    constant = next(level for level in graph.levels if level.layer_type == "constant")
    remainder = explanation.level_relevance(constant.index).sum(1)
    assert remainder.abs().max() > 1e-6  # Proposition 3.1 is not conservative by itself
    torch.testing.assert_close(explanation.input_relevance.sum((1, 2)) + remainder, explanation.output[:, 1],
                               rtol=1e-10, atol=1e-12)
    for balance in explanation.conservation():
        torch.testing.assert_close(balance.relevance_in, balance.relevance_out + balance.bias, rtol=1e-10,
                                   atol=1e-12)


@pytest.mark.parametrize("causal", [False, True], ids=["plain", "causal"])
def test_listed_messages_of_every_node_sum_to_its_relevance(causal):
    """Each edge's message (the blocks' per-edge weights) summed over a node's outgoing edges
    equals the node's relevance (the blocks' matrix products), for every node but the outputs."""
    model = lowering._perturbed(lowering.SDPAModel(causal=causal))
    x = lowering._x(2)
    graph = graphlrp.lower(model, x, attention="attnlrp")
    explanation = graphlrp.explain(graph, x, target=0, rule=Epsilon(1e-6))
    src, _, _ = graph.edges()
    messages = explanation.edge_relevance()
    sent = torch.zeros_like(explanation.node_relevance).index_add_(1, src, messages)
    has_edges = torch.zeros(graph.num_nodes, dtype=torch.bool).index_fill_(0, src, True)
    torch.testing.assert_close(sent[:, has_edges], explanation.node_relevance[:, has_edges], rtol=1e-9,
                               atol=1e-12)
    chosen = [k for k, b in enumerate(graph.blocks) if b.kind in ("head_product", "softmax", "softmax_remainder")]
    for run in explanation.message_runs([1], blocks=chosen, max_edges=50):
        assert torch.equal(run.messages, messages[1:, run.start: run.start + run.messages.shape[1]])


def test_a_rule_with_another_weight_transform_matches_the_dense_jacobian():
    """z⁺ on the softmax level (the Jacobian's sign parts, the remainder's positive part as the
    bias) equals the dense formula written from the softmax's Jacobian."""
    model = lowering._perturbed(lowering.SDPAModel(causal=False))
    x = lowering._x(2)
    graph = graphlrp.lower(model, x, attention="attnlrp")
    softmax_level = next(level for level in graph.levels if level.layer_type == "softmax")
    scores_level = next(level for level in graph.levels if level.layer_type == "attention_scores")
    composite = Composite(default=Epsilon(1e-6), by_type={"softmax": graphlrp.rules.ZPlus(1e-6)})
    explanation = graphlrp.explain(graph, x, target=0, composite=composite)
    s = explanation.activations[scores_level.index].reshape(2, -1, lowering.T, lowering.T)
    p = s.softmax(-1)
    r = explanation.level_relevance(softmax_level.index).reshape_as(p)
    jacobian = p[..., :, None] * (torch.eye(lowering.T, dtype=p.dtype) - p[..., None, :])  # [..., k, j]
    contributions = (s.clamp(min=0)[..., None, :] * jacobian.clamp(min=0)
                     + s.clamp(max=0)[..., None, :] * jacobian.clamp(max=0))
    remainder = p - (jacobian * s[..., None, :]).sum(-1)
    denominator = contributions.sum(-1) + remainder.clamp(min=0) + 1e-6
    expected = (contributions * (r / denominator)[..., None]).sum(-2)
    found = explanation.level_relevance(scores_level.index).reshape_as(p)
    torch.testing.assert_close(found, expected, rtol=1e-9, atol=1e-12)


def test_an_unknown_attention_rule_is_refused_naming_the_choices():
    model = lowering._perturbed(lowering.MHAModel())
    with pytest.raises(InputError, match="'attnlrp'"):
        graphlrp.lower(model, lowering._x(), attention="attn-lrp")
