"""Tiny BERT-like (MultiheadAttention, class token 0) and GPT-like (causal
scaled_dot_product_attention, mean over tokens) encoders of token ids: lowered from the embedding
output on (graphlrp.embed), forward against the model, token relevance against LXT 2.1's CP-LRP
from its explicit rule functions, in float64."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphlrp
from graphlrp.composites import Composite
from graphlrp.errors import InputError, UnsupportedModuleError
from graphlrp.rules import Epsilon

lf = pytest.importorskip("lxt.explicit.functional")
lxt_rules = pytest.importorskip("lxt.explicit.rules")

EPS = 1e-9
VOCAB, T, E, HEADS, CLASSES = 11, 5, 8, 2, 3


class Layer(nn.Module):
    """Pre-norm block: attention (MultiheadAttention, or causal SDPA on a packed projection) and a GELU MLP."""

    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.norm1, self.norm2 = nn.LayerNorm(E), nn.LayerNorm(E)
        if causal:
            self.qkv, self.out = nn.Linear(E, 3 * E), nn.Linear(E, E)
        else:
            self.attention = nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(E, 2 * E), nn.GELU(), nn.Linear(2 * E, E))

    def attend(self, x):
        if not self.causal:
            return self.attention(x, x, x, need_weights=False)[0]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(-1, T, HEADS, E // HEADS).transpose(1, 2) for t in (q, k, v))
        return self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(-1, T, E))

    def forward(self, x):
        x = x + self.attend(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Body(nn.Module):
    """Everything after the token lookup: position embedding, layers, final norm, head."""

    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.position = nn.Parameter(torch.randn(1, T, E))
        self.layers = nn.Sequential(Layer(causal), Layer(causal))
        self.norm = nn.LayerNorm(E)
        self.head = nn.Linear(E, CLASSES)

    def forward(self, x):
        y = self.norm(self.layers(x + self.position))
        return self.head(y.mean(1) if self.causal else y[:, 0])


class Encoder(nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, E)
        self.body = Body(causal)

    def forward(self, ids):
        return self.body(self.tokens(ids))


def _encoder(causal: bool) -> Encoder:
    torch.manual_seed(0)
    model = Encoder(causal).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


# -- the LXT reference ----------------------------------------------------------------------------
def _linear(module, v):
    return lf.linear_epsilon(v, module.weight, module.bias, EPS)


def _norm(module, v):
    return lf.layer_norm_grad_fn.apply(v, module.weight, module.bias, module.eps, EPS)


def _cp(q, k, v, causal):
    scores = q.detach() @ k.detach().transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    probabilities = scores.softmax(-1)
    return lxt_rules.epsilon_lrp(lambda values: probabilities @ values, EPS, v)


def _attend(layer: Layer, x, core):
    if layer.causal:
        weights, biases, out = layer.qkv.weight.chunk(3), layer.qkv.bias.chunk(3), layer.out
    else:
        a = layer.attention
        weights, biases, out = a.in_proj_weight.chunk(3), a.in_proj_bias.chunk(3), a.out_proj
    q, k, v = (lf.linear_epsilon(x, w, b, EPS).reshape(len(x), T, HEADS, -1).transpose(1, 2)
               for w, b in zip(weights, biases))
    return _linear(out, core(q, k, v, layer.causal).transpose(1, 2).reshape(len(x), T, E))


def lxt_token_relevance(model: Encoder, ids, target: int, core=_cp):
    """Token relevance by LXT's rule functions, ``core(q, k, v, causal)`` the attention's (CP-LRP
    by default)."""
    x = model.tokens(ids).detach().requires_grad_()
    body = model.body
    y = lxt_rules.epsilon_lrp(lambda t: t + body.position, EPS, x)
    for layer in body.layers:
        y = lf.add2(y, _attend(layer, _norm(layer.norm1, y), core), epsilon=EPS)
        mlp = layer.mlp
        y = lf.add2(y, _linear(mlp[2], lxt_rules.identity(F.gelu, _linear(mlp[0], _norm(layer.norm2, y)))),
                    epsilon=EPS)
    y = _norm(body.norm, y)
    out = _linear(body.head, lf.mean(y, 1, False, EPS) if body.causal else y[:, 0])
    seed = torch.zeros_like(out)
    seed[:, target] = out[:, target]
    out.backward(seed.detach())
    return x.grad.sum(-1)


def _composite() -> Composite:
    rule = Epsilon(EPS, stabilizer="plain")
    return Composite(default=rule, by_type={"sum": rule, "mean": rule})


def _ids(batch: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, VOCAB, (batch, T))


@pytest.mark.parametrize("causal", [False, True], ids=["bert-like", "gpt-like"])
def test_encoder_forward_and_token_relevance_equal_lxt(causal):
    model = _encoder(causal)
    ids = _ids()
    vectors = graphlrp.embed(model.tokens, ids)
    graph = graphlrp.lower(model.body, vectors)
    assert [b.kind for b in graph.blocks].count("attention") == 2
    torch.testing.assert_close(graph(vectors), model(ids), rtol=0, atol=1e-12)
    explanation = graphlrp.explain(graph, vectors, target=1, composite=_composite())
    relevance = graphlrp.token_relevance(explanation.input_relevance)
    assert relevance.shape == ids.shape
    torch.testing.assert_close(relevance, lxt_token_relevance(model, ids, 1), rtol=1e-5, atol=1e-8)


def test_an_embedding_inside_the_lowered_model_is_refused_pointing_to_embed():
    model = _encoder(False)
    with pytest.raises(InputError, match="graphlrp.embed"):
        graphlrp.lower(model, _ids())


def test_embed_refuses_ids_out_of_range_and_non_integer_ids():
    embedding = nn.Embedding(VOCAB, E)
    with pytest.raises(InputError, match="0 .. 10"):
        graphlrp.embed(embedding, torch.tensor([[0, VOCAB]]))
    with pytest.raises(InputError, match="integer"):
        graphlrp.embed(embedding, torch.zeros(1, T))


def test_an_embedding_of_a_traced_input_is_refused_by_name():
    class Float(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(VOCAB, E)

        def forward(self, x):
            return self.tokens(x.long()).flatten(1)

    with pytest.raises(UnsupportedModuleError, match="'tokens' .nn.Embedding.*graphlrp.embed"):
        graphlrp.lower(Float(), torch.zeros(2, T))
