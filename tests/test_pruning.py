"""Pruning by explaining: the criteria equal the papers' definitions written here from dense
per-sample LRP (and Zennit), pruned units score zero, masks compose, the loop re-explains."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from zennit import composites as zcomposites
from zennit import rules as zrules
from zennit.attribution import Gradient
from zennit.composites import LayerMapComposite
from zennit.types import Activation

import graphlrp
from graphlrp import composites, pruning, rules
from graphlrp.errors import ArgumentTypeError, GraphLRPError, InputError

from conftest import make_mlp

EPSILON = 1e-6
#: relative agreement with the float64 references: rounding of float64 sums in another order (measured ≤ 3e-15)
FLOAT64 = 1e-12


def stab(z: torch.Tensor) -> torch.Tensor:
    """Zennit's stabilizer ``z + ε·sign(z)``, sign(0) = +1."""
    return z + EPSILON * torch.where(z >= 0, 1.0, -1.0).to(z)


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = FLOAT64) -> None:
    actual, expected = actual.detach(), expected.detach()
    scale = float(expected.abs().max())
    assert scale > 0
    assert float((actual - expected).abs().max()) <= rtol * scale


def make_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 3))
    return model.double().eval()


def reference_data(seed: int = 1, n: int = 7, shape: tuple[int, ...] = (1, 6, 6)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=generator, dtype=torch.float64), torch.randint(0, 3, (n,), generator=generator)


# -- dense per-sample ε-LRP of an MLP, written from the formula ------------------------------------
def mlp_epsilon_lrp(model: nn.Sequential, x: torch.Tensor, target: torch.Tensor):
    """Per Linear (by index in the Sequential): the relevance of its outputs ``(N, out)`` and of its
    edges ``(N, out, in)``, ``R_ij = a_i w_ji / stab(z_j) · R_j``, from the target logit."""
    linears = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    inputs, pre = {}, {}
    a = x
    for i, module in enumerate(model):
        if isinstance(module, nn.Linear):
            inputs[i] = a
            a = a @ module.weight.T + module.bias
            pre[i] = a
        else:
            a = module(a)
    R = F.one_hot(target, a.shape[1]).to(a) * a
    outputs, edges = {}, {}
    for i in reversed(linears):
        outputs[i] = R
        s = R / stab(pre[i])
        edges[i] = inputs[i][:, None, :] * model[i].weight[None] * s[:, :, None]
        R = edges[i].sum(1)
    return outputs, edges


def test_mlp_neuron_and_weight_scores_equal_summed_magnitudes_of_dense_lrp():
    model = make_mlp([6, 8, 5, 3])
    x, y = reference_data(n=9, shape=(6,))
    outputs, edges = mlp_epsilon_lrp(model, x, y)
    for criterion in pruning.CRITERIA:  # for neurons and dense weights the two criteria coincide
        neurons = pruning.relevance_scores(model, x, target=y, rule=rules.Epsilon(EPSILON), granularity="neuron",
                                           criterion=criterion, batch_size=4)
        assert set(neurons) == {"0", "2"}  # the output layer is not pruned at neuron granularity
        for name in neurons:
            close(neurons[name], outputs[int(name)].abs().sum(0))
        weights = pruning.relevance_scores(model, x, target=y, rule=rules.Epsilon(EPSILON), granularity="weight",
                                           criterion=criterion)
        assert set(weights) == {"0", "2", "4"}
        for name in weights:
            close(weights[name], edges[int(name)].abs().sum(0))
    normalized = pruning.relevance_scores(model, x, target=y, rule=rules.Epsilon(EPSILON), granularity="neuron",
                                          normalize=True)
    for name in normalized:
        raw = outputs[int(name)].abs().sum(0)
        close(normalized[name], raw / raw.sum())


# -- convolutions: Zennit's relevance at the layer outputs (how both papers' code reads it) ---------
def zennit_layer_relevance(model: nn.Module, x: torch.Tensor, target: torch.Tensor, composite) -> dict[int, torch.Tensor]:
    """Relevance at every convolution's output, ``(N, C, H, W)``, computed by Zennit from the
    target logit (the gradient at the output with the composite's rules registered)."""
    outputs = {}

    def keep(index):
        def hook(module, inputs, output):
            output.retain_grad()
            outputs[index] = output
        return hook

    def start_from_logit(output):
        return output * F.one_hot(target, output.shape[1]).to(output)

    with Gradient(model, composite) as attributor:
        handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(model) if isinstance(m, nn.Conv2d)]
        try:
            attributor(x.clone().requires_grad_(True), start_from_logit)
        finally:
            for handle in handles:
                handle.remove()
    return {i: out.grad.detach() for i, out in outputs.items()}


ZENNIT_EPSILON = LayerMapComposite([(Activation, zrules.Pass()), (nn.Conv2d, zrules.Epsilon(EPSILON)),
                                    (nn.Linear, zrules.Epsilon(EPSILON))])


@pytest.mark.parametrize("ours, theirs", [
    (dict(rule=rules.Epsilon(EPSILON)), ZENNIT_EPSILON),
    (dict(composite=composites.EpsilonPlus()), zcomposites.EpsilonPlus()),
], ids=["epsilon", "EpsilonPlus"])
def test_channel_scores_equal_yeom_and_pxp_from_zennit(ours, theirs):
    model = make_cnn()
    x, y = reference_data()
    relevance = zennit_layer_relevance(model, x, y, theirs)
    yeom = pruning.relevance_scores(model, x, target=y, granularity="channel", criterion="yeom", batch_size=3, **ours)
    pxp = pruning.relevance_scores(model, x, target=y, granularity="channel", criterion="pxp", batch_size=3, **ours)
    assert set(yeom) == set(pxp) == {"0", "2"}
    for name in yeom:
        R = relevance[int(name)]
        close(yeom[name], R.abs().sum((0, 2, 3)))  # Yeom: Σ over samples and positions of |R|
        close(pxp[name], R.sum((2, 3)).abs().sum(0))  # Hatefi: |Σ over positions|, summed over samples
    assert not torch.allclose(yeom["2"], pxp["2"])  # the two definitions differ here


def test_convolution_weight_scores_equal_the_papers_definitions_from_dense_lrp():
    model = make_cnn()
    x, y = reference_data()
    relevance = zennit_layer_relevance(model, x, y, ZENNIT_EPSILON)
    yeom = pruning.relevance_scores(model, x, target=y, rule=rules.Epsilon(EPSILON), granularity="weight")
    pxp = pruning.relevance_scores(model, x, target=y, rule=rules.Epsilon(EPSILON), granularity="weight",
                                   criterion="pxp")
    conv_input = {0: x, 2: model[1](model[0](x))}
    for index in (0, 2):
        conv = model[index]
        z = conv(conv_input[index])
        s = relevance[index] / stab(z)  # R_out / stab(z): every edge's message is a_i w s_j
        a = conv_input[index]
        # per sample, Σ over positions of a_i w s_j (one weight's edges) = w ⊙ the weight gradient of s
        per_sample = torch.stack([conv.weight * torch.nn.grad.conv2d_weight(a[n : n + 1], conv.weight.shape, s[n : n + 1],
                                                                            padding=conv.padding)
                                  for n in range(len(x))])
        close(pxp[str(index)], per_sample.abs().sum(0))
        magnitudes = conv.weight.abs() * torch.nn.grad.conv2d_weight(a.abs(), conv.weight.shape, s.abs(),
                                                                     padding=conv.padding)
        close(yeom[str(index)], magnitudes)


# -- baselines --------------------------------------------------------------------------------------
def test_magnitude_and_taylor_scores_equal_their_formulas():
    model = make_mlp([6, 8, 3])
    x, y = reference_data(n=9, shape=(6,))
    first, last = model[0], model[2]
    close(pruning.magnitude_scores(model)["0"], first.weight.abs())
    close(pruning.magnitude_scores(model, "neuron")["0"], first.weight.abs().sum(1))
    h = x @ first.weight.T + first.bias
    gradient = last.weight[y] * (h > 0)  # ∂ logit_y / ∂ h for y = W2 relu(h) + b2
    close(pruning.taylor_scores(model, x, target=y, granularity="neuron", batch_size=4)["0"], (h * gradient).abs().mean(0))
    weight_gradient = gradient.T @ x  # Σ over samples of ∂ logit_y / ∂ W1
    close(pruning.taylor_scores(model, x, target=y)["0"], (first.weight * weight_gradient).abs() / len(x))

    cnn = make_cnn()
    images, labels = reference_data()
    outputs = {}
    handles = [cnn[i].register_forward_hook(lambda m, i, o, k=i: outputs.__setitem__(k, o)) for i in (0, 2)]
    image = images.clone().requires_grad_(True)
    logits = cnn(image)
    for handle in handles:
        handle.remove()
    grads = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), [outputs[0], outputs[2]])
    taylor = pruning.taylor_scores(cnn, images, target=labels, granularity="channel")
    for index, grad in zip((0, 2), grads):  # Molchanov et al.: per sample |mean over positions of a·∂y/∂a|
        close(taylor[str(index)], (outputs[index] * grad).mean((2, 3)).abs().mean(0))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_scores_never_modify_the_model_and_pruned_units_score_zero():
    model = make_cnn()
    x, y = reference_data()
    pruning.prune(model, pruning.magnitude_scores(model, "channel"), 0.5, "channel", scope="layer")
    pruning.prune(model, pruning.magnitude_scores(model, "neuron"), 0.4, "neuron")
    before = state(model)
    flags = [p.requires_grad for p in model.parameters()]
    for granularity in pruning.GRANULARITIES:
        found = {
            "yeom": pruning.relevance_scores(model, x, target=y, rule=rules.Epsilon(EPSILON), granularity=granularity),
            "pxp": pruning.relevance_scores(model, x, target=y, composite=composites.EpsilonPlus(),
                                            granularity=granularity, criterion="pxp"),
            "magnitude": pruning.magnitude_scores(model, granularity),
            "taylor": pruning.taylor_scores(model, x, target=y, granularity=granularity),
        }
        for criterion, scores in found.items():
            for name, values in scores.items():
                mask = model.get_submodule(name).weight_mask if hasattr(model.get_submodule(name), "weight_mask") else None
                if mask is None:
                    continue
                pruned = mask == 0 if granularity == "weight" else (mask.reshape(len(mask), -1) == 0).all(1)
                assert pruned.any(), (criterion, granularity, name)
                assert (values[pruned] == 0).all(), (criterion, granularity, name)
                assert (values[~pruned] != 0).any(), (criterion, granularity, name)
    after = state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert flags == [p.requires_grad for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters())


# -- prune ------------------------------------------------------------------------------------------
def test_global_and_layer_scope_prune_the_lowest_scores_and_lowering_sees_fewer_edges():
    model = make_cnn()
    x, _ = reference_data()
    scores = {name: torch.rand(v.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
              for name, v in pruning.magnitude_scores(model).items()}
    globally = pruning.prune(copy.deepcopy(model), scores, 0.7, "weight", "global")
    flat = torch.cat([v.reshape(-1) for v in scores.values()])
    threshold = flat.sort().values[round(0.7 * len(flat)) - 1]
    for name, values in scores.items():
        assert torch.equal(globally.get_submodule(name).weight_mask == 0, values <= threshold)
    per_layer = pruning.prune(copy.deepcopy(model), scores, 0.7, "weight", "layer")
    for name, values in scores.items():
        mask = per_layer.get_submodule(name).weight_mask
        assert int((mask == 0).sum()) == round(0.7 * values.numel())
        assert values[mask == 0].max() < values[mask == 1].min()
    graph = graphlrp.lower(per_layer, x[:1])
    dense = [b for b in graph.blocks if graph.levels[b.dst].layer_type is nn.Linear]
    assert [b.num_edges for b in dense] == [int((per_layer.get_submodule(n).weight != 0).sum()) for n in ("5", "7")]
    assert graph.num_edges < graphlrp.lower(model, x[:1]).num_edges


def test_neuron_and_channel_pruning_silence_the_units_and_masks_compose():
    model = make_cnn()
    x, _ = reference_data()
    channels = {"0": torch.tensor([3.0, 1.0, 2.0]), "2": torch.tensor([0.5, 4.0, 5.0, 6.0])}
    pruning.prune(model, channels, 2 / 7, "channel")  # the two lowest of seven: channel 2.0 and 0.1
    assert model[0].weight_mask[:, 0, 0, 0].tolist() == [1, 0, 1] and model[0].bias_mask.tolist() == [1, 0, 1]
    assert model[2].weight_mask[:, 0, 0, 0].tolist() == [0, 1, 1, 1]
    with torch.no_grad():
        assert (model[0](x)[:, 1] == 0).all() and (model[2](model[1](model[0](x)))[:, 0] == 0).all()
    # re-pruning composes: the pruned channels count towards the amount and stay pruned
    pruning.prune(model, {"0": torch.tensor([0.0, 9.0, 1.0]), "2": torch.tensor([9.0, 9.0, 0.1, 9.0])}, 4 / 7, "channel")
    assert model[0].weight_mask[:, 0, 0, 0].tolist() == [0, 0, 1]
    assert model[2].weight_mask[:, 0, 0, 0].tolist() == [0, 1, 0, 1]
    neurons = pruning.prune(model, {"5": torch.arange(5.0)}, 0.4, "neuron")
    assert neurons is model and model[5].weight_mask[:, 0].tolist() == [0, 0, 1, 1, 1]
    graph = graphlrp.lower(model, x[:1])
    close(graph(x).reshape(len(x), -1), model(x).detach(), 1e-12)


# -- the loop ---------------------------------------------------------------------------------------
def test_iterative_pruning_explains_the_model_pruned_so_far_at_every_step():
    model = make_cnn()
    x, y = reference_data()
    rule = rules.Epsilon(EPSILON)
    seen = []
    history = pruning.prune_iteratively(model, x, steps=[0.3, 0.6], target=y, rule=rule, granularity="weight",
                                        on_step=lambda amount, m: seen.append((amount, state(m))))
    assert [amount for amount, _ in seen] == [0.3, 0.6] and len(history) == 2

    by_hand = make_cnn()
    first = pruning.relevance_scores(by_hand, x, target=y, rule=rule, granularity="weight")
    pruning.prune(by_hand, first, 0.3, "weight")
    second = pruning.relevance_scores(by_hand, x, target=y, rule=rule, granularity="weight")
    for name in first:  # the second step's scores are those of the pruned model: zero where step one pruned
        close(history[0][name], first[name])
        close(history[1][name], second[name])
        mask = getattr(by_hand.get_submodule(name), "weight_mask", None)
        assert mask is None or (history[1][name][mask == 0] == 0).all()
    assert any(not torch.allclose(first[n], second[n]) for n in first)
    pruning.prune(by_hand, second, 0.6, "weight")
    final = state(model)
    assert all(torch.equal(final[k], v) for k, v in state(by_hand).items())
    masks = [v for k, v in final.items() if k.endswith("weight_mask")]
    assert sum(int((m == 0).sum()) for m in masks) == round(0.6 * sum(m.numel() for m in masks))


# -- errors -----------------------------------------------------------------------------------------
MLP = make_mlp([4, 3, 2])
DATA = torch.rand(5, 4, dtype=torch.float64)


@pytest.mark.parametrize("call, error, message", [
    (lambda: pruning.prune(MLP, pruning.magnitude_scores(MLP), 1.5), InputError, "amount must be a number in"),
    (lambda: pruning.prune(MLP, pruning.magnitude_scores(MLP), -0.1), InputError, "amount must be a number in"),
    (lambda: pruning.prune(MLP, pruning.magnitude_scores(MLP), "0.5"), ArgumentTypeError, "amount must be a number"),
    (lambda: pruning.prune(MLP, pruning.magnitude_scores(MLP), True), ArgumentTypeError, "amount must be a number"),
    (lambda: pruning.prune(MLP, pruning.magnitude_scores(MLP), 0.5, scope="model"), InputError, "scope must be one of"),
    (lambda: pruning.prune(MLP, pruning.magnitude_scores(MLP), 0.5, granularity="filter"), InputError,
     "granularity must be one of 'weight', 'neuron', 'channel', got 'filter'"),
    (lambda: pruning.prune(MLP, {"9": torch.ones(3)}, 0.5), InputError, "scores name '9'"),
    (lambda: pruning.prune(MLP, {"0": torch.ones(3)}, 0.5), InputError, "must be a tensor of shape (3, 4)"),
    (lambda: pruning.prune(MLP, {"0": torch.full((3, 4), float("nan"))}, 0.5), InputError, "finite"),
    (lambda: pruning.prune(MLP, {}, 0.5), ArgumentTypeError, "non-empty dict"),
    (lambda: pruning.magnitude_scores(MLP, "channel"), InputError, "it needs a convolution"),
    (lambda: pruning.magnitude_scores(nn.Sequential(nn.ReLU()), "weight"), InputError, "no layer to prune"),
    (lambda: pruning.magnitude_scores(make_mlp([4, 2]), "neuron"), InputError, "the output layer is never pruned"),
    (lambda: pruning.magnitude_scores("model"), ArgumentTypeError, "model must be a torch.nn.Module"),
    (lambda: pruning.relevance_scores(MLP, DATA, target=0, rule=rules.Epsilon(), criterion="lrp",
                                      granularity="neuron"), InputError, "criterion must be one of"),
    (lambda: pruning.relevance_scores(MLP, DATA, target=0, granularity="neuron"), InputError, "give a rule="),
    (lambda: pruning.relevance_scores(MLP, DATA[:0], target=0, rule=rules.Epsilon(), granularity="neuron"),
     InputError, "no samples"),
    (lambda: pruning.prune_iteratively(MLP, DATA, [0.5, 0.2], target=0, rule=rules.Epsilon(), granularity="neuron"),
     InputError, "steps must increase"),
    (lambda: pruning.prune_iteratively(MLP, DATA, 0.5, target=0, rule=rules.Epsilon(), granularity="neuron"),
     ArgumentTypeError, "steps must be a non-empty sequence"),
])
def test_bad_arguments_are_refused_with_graphlrp_errors(call, error, message):
    before = state(MLP)
    with pytest.raises(error, match=None) as raised:
        call()
    assert isinstance(raised.value, GraphLRPError) and message in str(raised.value)
    assert all(torch.equal(before[k], v) for k, v in state(MLP).items())


def test_graphlrp_imports_without_torch_pruning_and_says_what_to_install():
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch_pruning'] = None\n"
            "import torch, graphlrp\n"
            "from graphlrp import pruning, rules\n"
            "model = torch.nn.Sequential(torch.nn.Linear(3, 2))\n"
            "importance = pruning.RelevanceImportance(model, torch.rand(4, 3), target=0, rule=rules.Epsilon())\n"
            "try:\n    importance([])\nexcept ImportError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pip install 'graphlrp[pruning]'" in result.stdout
