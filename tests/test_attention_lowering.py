"""F.scaled_dot_product_attention and nn.MultiheadAttention lowered onto the attention block:
the graph's forward against the model, relevance against LXT 2.1's CP-LRP (its ε rule on every
linear map, the softmax probabilities detached), refusals by argument name, and per-parameter
relevance under the module's own parameter names."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphlrp
from graphlrp.composites import Composite
from graphlrp.errors import UnsupportedModuleError
from graphlrp.rules import Epsilon

lf = pytest.importorskip("lxt.explicit.functional")
lxt_rules = pytest.importorskip("lxt.explicit.rules")

EPS = 1e-9
T, E, H = 4, 6, 2


def _epsilon_everywhere() -> Composite:
    rule = Epsilon(EPS, stabilizer="plain")
    return Composite(default=rule, by_type={"sum": rule})


def _cp_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """LXT's CP-LRP of ``softmax(q kᵀ/√d) v`` on ``(B, H, T, d)``: ε rule on ``A · v``, ``A`` constant."""
    scores = q.detach() @ k.detach().transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        scores = scores.masked_fill(torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1), float("-inf"))
    probabilities = scores.softmax(-1)
    return lxt_rules.epsilon_lrp(lambda values: probabilities @ values, EPS, v)


def _seeded(out: torch.Tensor, target: int) -> torch.Tensor:
    seed = torch.zeros_like(out)
    seed[:, target] = out[:, target]
    return seed.detach()


class SDPAModel(nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.qkv = nn.Linear(E, 3 * E)
        self.head = nn.Linear(T * E, 3)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(t.shape[0], T, H, E // H).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.head(out.transpose(1, 2).flatten(1))

    def reference(self, x: torch.Tensor, target: int, attend=_cp_attention) -> torch.Tensor:
        x = x.detach().requires_grad_()
        q, k, v = lf.linear_epsilon(x, self.qkv.weight, self.qkv.bias, EPS).chunk(3, dim=-1)
        q, k, v = (t.reshape(t.shape[0], T, H, E // H).transpose(1, 2) for t in (q, k, v))
        out = lf.linear_epsilon(attend(q, k, v, self.causal).transpose(1, 2).flatten(1), self.head.weight,
                                self.head.bias, EPS)
        out.backward(_seeded(out, target))
        return x.grad


class MHAModel(nn.Module):
    """A residual self-attention block; with ``kdim`` the keys and values come from another
    projection; with ``batch_first=False`` the module works on ``(T, B, E)``, the batch moved there
    and back by transposes."""

    def __init__(self, kdim: int | None = None, bias: bool = True, batch_first: bool = True) -> None:
        super().__init__()
        self.keys = nn.Linear(E, kdim) if kdim else None
        self.attention = nn.MultiheadAttention(E, H, batch_first=batch_first, kdim=kdim, vdim=kdim, bias=bias)
        self.head = nn.Linear(T * E, 3)

    def forward(self, x):
        memory = self.keys(x) if self.keys is not None else x
        if self.attention.batch_first:
            out, _ = self.attention(x, memory, memory, need_weights=False)
        else:
            query, memory = x.transpose(0, 1), memory.permute(1, 0, 2)
            out = self.attention(query, memory, memory, need_weights=False)[0].transpose(1, 0)
        return self.head((x + out).flatten(1))

    def reference(self, x: torch.Tensor, target: int, attend=_cp_attention) -> torch.Tensor:
        x = x.detach().requires_grad_()
        a = self.attention
        memory = lf.linear_epsilon(x, self.keys.weight, self.keys.bias, EPS) if self.keys is not None else x
        if a._qkv_same_embed_dim:
            weights = a.in_proj_weight.chunk(3)
        else:
            weights = (a.q_proj_weight, a.k_proj_weight, a.v_proj_weight)
        biases = a.in_proj_bias.chunk(3) if a.in_proj_bias is not None else (None,) * 3
        q, k, v = (lf.linear_epsilon(inp, w, b, EPS) for inp, w, b in zip((x, memory, memory), weights, biases))
        q, k, v = (t.reshape(t.shape[0], T, H, E // H).transpose(1, 2) for t in (q, k, v))
        attended = attend(q, k, v).transpose(1, 2).reshape(len(x), T, E)
        out = lf.linear_epsilon(attended, a.out_proj.weight, a.out_proj.bias, EPS)
        out = lf.linear_epsilon(lf.add2(x, out, epsilon=EPS).flatten(1), self.head.weight, self.head.bias, EPS)
        out.backward(_seeded(out, target))
        return x.grad


def _perturbed(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _x(batch: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, T, E, dtype=torch.float64)


@pytest.mark.parametrize("model", [SDPAModel(causal=False), SDPAModel(causal=True), MHAModel(),
                                   MHAModel(kdim=5), MHAModel(bias=False), MHAModel(batch_first=False),
                                   MHAModel(kdim=5, batch_first=False)],
                         ids=["sdpa", "sdpa-causal", "mha", "mha-kdim", "mha-no-bias", "mha-tbe", "mha-tbe-kdim"])
def test_forward_and_relevance_equal_lxt_cp_lrp(model):
    model = _perturbed(model)
    x = _x()
    graph = graphlrp.lower(model, x)
    assert [b.kind for b in graph.blocks].count("attention") == 1
    torch.testing.assert_close(graph(x), model(x), rtol=0, atol=1e-12)
    explanation = graphlrp.explain(graph, x, target=2, composite=_epsilon_everywhere())
    torch.testing.assert_close(explanation.input_relevance, model.reference(x, 2), rtol=1e-5, atol=1e-8)


def test_need_weights_true_when_only_the_output_is_used():
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(E, H, batch_first=True)

        def forward(self, x):
            return self.attention(x, x, x)[0].flatten(1)

    model = _perturbed(Model())
    x = _x()
    torch.testing.assert_close(graphlrp.lower(model, x)(x), model(x), rtol=0, atol=1e-12)


class _Configured(nn.Module):
    def __init__(self, reads_weights: bool = False, batch_first: bool = True, **call) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(E, H, batch_first=batch_first)
        self.reads_weights, self.call = reads_weights, call

    def forward(self, x):
        out, weights = self.attention(x, x, x, **self.call)
        return out.flatten(1) + weights.flatten(1).sum(1, keepdim=True) if self.reads_weights else out.flatten(1)


@pytest.mark.parametrize("model, named", [
    (_Configured(attn_mask=torch.zeros(T, T, dtype=torch.bool)), "attn_mask"),
    (_Configured(key_padding_mask=torch.zeros(1, T, dtype=torch.bool)), "key_padding_mask"),
    (_Configured(reads_weights=True), "attention weights"),
    (_Configured(batch_first=False), "batch_first=False: its query must have the batch in dimension 1"),
])
def test_multihead_attention_options_are_refused_by_name(model, named):
    with pytest.raises(UnsupportedModuleError, match=named):
        graphlrp.lower(model.double().eval(), _x())


class _Moved(nn.Module):
    """A ``(T, B, E)`` tensor read by something other than ``MultiheadAttention(batch_first=False)``."""

    def __init__(self, reader: str) -> None:
        super().__init__()
        self.reader = reader
        self.attention = nn.MultiheadAttention(E, H, batch_first=self.reader == "batch-first-attention")
        self.linear = nn.Linear(E, E)

    def forward(self, x):
        moved = x.transpose(0, 1)
        if self.reader == "linear":
            return self.linear(moved).transpose(0, 1).flatten(1)
        if self.reader == "output":
            return moved
        if self.reader == "sum":
            return (moved + moved).transpose(0, 1).flatten(1)
        return self.attention(moved, moved, moved)[0].flatten(1)


@pytest.mark.parametrize("reader, named", [
    ("linear", "'linear' .* reads a tensor whose batch is dimension 1"),
    ("output", "'output' .* reads a tensor whose batch is dimension 1"),
    ("sum", "'add' .* reads a tensor whose batch is dimension 1"),
    ("batch-first-attention", "batch_first=True, but its query has the batch in dimension 1"),
])
def test_a_moved_batch_is_refused_outside_multihead_attention(reader, named):
    with pytest.raises(UnsupportedModuleError, match=named):
        graphlrp.lower(_Moved(reader).double().eval(), _x())


def test_sdpa_with_a_mask_or_dropout_is_refused_by_name():
    class Masked(nn.Module):
        def __init__(self, **options) -> None:
            super().__init__()
            self.options = options

        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x, **self.options).flatten(1)

    with pytest.raises(UnsupportedModuleError, match="attn_mask"):
        graphlrp.lower(Masked(attn_mask=torch.ones(T, T, dtype=torch.bool)), _x())
    with pytest.raises(UnsupportedModuleError, match="dropout_p"):
        graphlrp.lower(Masked(dropout_p=0.5), _x())


@pytest.mark.parametrize("kdim", [None, 5])
def test_parameter_relevance_uses_the_modules_names_and_shapes(kdim):
    """Names and shapes of ``named_parameters()``; the query and key projections receive no
    relevance (CP-LRP), the value projection's weights and biases share its level's relevance."""
    model = _perturbed(MHAModel(kdim=kdim))
    x = _x(4)
    graph = graphlrp.lower(model, x)
    rule = Epsilon(0.0)
    found = graphlrp.aggregate(graph, x, 1, rule=rule, progress=False)
    relevance = found.parameter_relevance()
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == {n: tuple(v.shape) for n, v in
                                                                        relevance.items()}
    level = {level.name: level for level in graph.levels}["attention:v"]
    v_level = found.node_relevance[level.offset: level.offset + level.size].sum()
    if kdim is None:
        weight = relevance["attention.in_proj_weight"]
        q_k, v_part = weight[: 2 * E], weight[2 * E:]
    else:
        q_k = torch.cat([relevance[f"attention.{role}_proj_weight"].flatten() for role in "qk"])
        v_part = relevance["attention.v_proj_weight"]
    assert torch.count_nonzero(q_k) == 0 and torch.count_nonzero(relevance["attention.in_proj_bias"][: 2 * E]) == 0
    total = v_part.sum() + relevance["attention.in_proj_bias"][2 * E:].sum()
    torch.testing.assert_close(total, v_level, rtol=1e-10, atol=1e-12)
