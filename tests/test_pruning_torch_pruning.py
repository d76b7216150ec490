"""RelevanceImportance inside Torch-Pruning's pruner: the smaller model runs, lowers and explains,
and the channels removed are the least relevant ones."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import pruning, rules

tp = pytest.importorskip("torch_pruning")

RULE = rules.Epsilon(1e-6)


def make_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 10), nn.ReLU(), nn.Linear(10, 3)).double().eval()


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(12, 1, 6, 6, generator=generator, dtype=torch.float64), torch.randint(0, 3, (12,), generator=generator)


def test_a_torch_pruning_pruner_removes_the_least_relevant_channels_and_the_model_still_explains():
    model = make_cnn()
    original = copy.deepcopy(model)
    x, y = data()
    channels = pruning.relevance_scores(original, x, target=y, rule=RULE, granularity="channel", criterion="pxp")
    neurons = pruning.relevance_scores(original, x, target=y, rule=RULE, granularity="neuron", criterion="pxp")
    importance = pruning.RelevanceImportance(model, x, target=y, rule=RULE, criterion="pxp")
    pruner = tp.pruner.BasePruner(model, x[:1], importance=importance, pruning_ratio=0.5, ignored_layers=[model[7]])
    pruner.step()

    assert [model[0].out_channels, model[2].out_channels, model[5].out_features] == [4, 4, 5]
    expected = {0: channels["0"], 2: channels["2"], 5: neurons["5"]}
    for index, scores in expected.items():
        top = sorted(scores.topk(len(model[index].weight)).indices.tolist())
        # the kept units are the most relevant ones: the smaller layer's bias is the original's at them
        assert torch.equal(model[index].bias.detach(), original[index].bias.detach()[top])
    assert torch.equal(model[2].weight.detach(),
                       original[2].weight.detach()[sorted(channels["2"].topk(4).indices.tolist())]
                       [:, sorted(channels["0"].topk(4).indices.tolist())])

    assert model(x).shape == (12, 3)
    graph = graphlrp.lower(model, x[:1])
    explanation = graphlrp.explain(graph, x, target=y, rule=RULE)
    assert explanation.input_relevance.shape == x.shape and torch.isfinite(explanation.node_relevance).all()


def test_an_iterative_pruner_re_explains_the_smaller_model_at_every_step(monkeypatch):
    model = make_cnn()
    x, y = data()
    explained = []

    def recording(model, *args, **kwargs):
        explained.append((kwargs["granularity"], model[0].out_channels))
        return pruning.relevance_scores(model, *args, **kwargs)

    monkeypatch.setattr("graphlrp.pruning.importance.relevance_scores", recording)
    importance = pruning.RelevanceImportance(model, x, target=y, rule=RULE)
    pruner = tp.pruner.BasePruner(model, x[:1], importance=importance, pruning_ratio=0.5, iterative_steps=2,
                                  ignored_layers=[model[7]])
    pruner.step()
    pruner.step()
    assert explained == [("channel", 8), ("neuron", 8), ("channel", 6), ("neuron", 6)]
    assert model[0].out_channels == 4 and model(x).shape == (12, 3)
    graphlrp.explain(graphlrp.lower(model, x[:1]), x, target=y, rule=RULE)
