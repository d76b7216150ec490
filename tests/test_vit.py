"""A tiny torchvision VisionTransformer: the graph's forward against the model, relevance against
LXT 2.1's CP-LRP built from its explicit rule functions, operation by operation (ε rule on the
patch convolution, every Linear and sum, σ constant in the layer norms, the identity rule on GELU,
the softmax probabilities detached), in float64."""
import pytest
import torch
import torch.nn.functional as F

import graphlrp
from graphlrp.composites import Composite
from graphlrp.rules import Epsilon

torchvision = pytest.importorskip("torchvision")
lf = pytest.importorskip("lxt.explicit.functional")
lxt_rules = pytest.importorskip("lxt.explicit.rules")

EPS = 1e-9


def tiny_vit() -> torch.nn.Module:
    """image_size=16, patch_size=8, 2 layers of 2 heads, hidden 16, MLP 32, 5 classes; every
    parameter (the zero class token too) perturbed."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=5).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _layer_norm(module, v):
    return lf.layer_norm_grad_fn.apply(v, module.weight, module.bias, module.eps, EPS)


def _linear(module, v):
    return lf.linear_epsilon(v, module.weight, module.bias, EPS)


def cp_attention(q, k, v):
    """LXT's CP-LRP of ``softmax(q kᵀ/√d) v`` on ``(B, H, T, d)``: the probabilities detached."""
    probabilities = (q.detach() @ k.detach().transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
    return lxt_rules.epsilon_lrp(lambda values: probabilities @ values, EPS, v)


def _self_attention(module, x, attend):
    heads, (batch, tokens, width) = module.num_heads, x.shape
    q, k, v = (lf.linear_epsilon(x, w, b, EPS) for w, b in zip(module.in_proj_weight.chunk(3),
                                                              module.in_proj_bias.chunk(3)))
    q, k, v = (t.reshape(batch, tokens, heads, -1).transpose(1, 2) for t in (q, k, v))
    return _linear(module.out_proj, attend(q, k, v).transpose(1, 2).reshape(batch, tokens, width))


def lxt_relevance(model, x: torch.Tensor, target: int, attend=cp_attention) -> torch.Tensor:
    """Input relevance of ``model`` (a torchvision VisionTransformer) by LXT's rule functions,
    ``attend(q, k, v)`` the attention's (CP-LRP by default)."""
    x = x.detach().requires_grad_()
    conv = model.conv_proj
    patches = lxt_rules.epsilon_lrp(lambda image: F.conv2d(image, conv.weight, conv.bias, conv.stride), EPS, x)
    patches = patches.flatten(2).transpose(1, 2)
    token = model.class_token.expand(len(x), -1, -1)
    y = lxt_rules.epsilon_lrp(lambda p: torch.cat([token, p], dim=1), EPS, patches)
    y = lxt_rules.epsilon_lrp(lambda t: t + model.encoder.pos_embedding, EPS, y)
    for layer in model.encoder.layers:
        y = lf.add2(_self_attention(layer.self_attention, _layer_norm(layer.ln_1, y), attend), y, epsilon=EPS)
        hidden = lxt_rules.identity(F.gelu, _linear(layer.mlp[0], _layer_norm(layer.ln_2, y)))
        y = lf.add2(y, _linear(layer.mlp[3], hidden), epsilon=EPS)
    out = _linear(model.heads.head, _layer_norm(model.encoder.ln, y)[:, 0])
    seed = torch.zeros_like(out)
    seed[:, target] = out[:, target]
    out.backward(seed.detach())
    return x.grad


def epsilon_everywhere() -> Composite:
    rule = Epsilon(EPS, stabilizer="plain")
    return Composite(default=rule, by_type={"sum": rule})


def test_tiny_vit_forward_equals_model():
    model = tiny_vit()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    assert [b.kind for b in graph.blocks].count("attention") == 2
    torch.testing.assert_close(graph(x), model(x), rtol=0, atol=1e-12)


def test_tiny_vit_relevance_equals_lxt_cp_lrp():
    model = tiny_vit()
    torch.manual_seed(1)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    explanation = graphlrp.explain(graph, x, target=3, composite=epsilon_everywhere())
    expected = lxt_relevance(model, x, 3)
    torch.testing.assert_close(explanation.input_relevance, expected, rtol=1e-5, atol=1e-8)


def test_tiny_vit_parameter_relevance_is_named_like_the_model():
    model = tiny_vit()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    relevance = graphlrp.aggregate(graph, x, 0, composite=epsilon_everywhere(), progress=False).parameter_relevance()
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    found = {name: tuple(v.shape) for name, v in relevance.items()}
    # the class token and the position embedding are constants of the graph (biases of sum levels)
    expected = {name: shape for name, shape in shapes.items() if not name.startswith(("class_token", "encoder.pos"))}
    assert found == expected
