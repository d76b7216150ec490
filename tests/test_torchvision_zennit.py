"""torchvision classifiers explained like Zennit, in float64, for EpsilonPlusFlat and EpsilonGammaBox.

Zennit explains the model's twin (:func:`zennit_twins.zennit_twin`): the same modules and weights,
batch norms merged into the layer they read (:class:`zennit_twins.TracedMergeBatchNorm`), residual
sums as Zennit's ``Sum``, and the operations Zennit has no module for (gates, ``mean``, layer
norms) rewritten into the conventions graphlrp follows. Batch norms have random statistics and a
tiny ``eps``, since Zennit's merged batch norm still divides by ``√(1 + eps)``.
"""
from __future__ import annotations

import pytest
import torch
from zennit import composites as zcomposites

import graphlrp

from test_cnn import randomize_batch_norms
from test_zennit_agreement import assert_close, zennit_relevance
from zennit_twins import TracedMergeBatchNorm, twin_layer_map, zennit_twin

torchvision = pytest.importorskip("torchvision")

#: relative agreement, about 10× the largest error measured (float64, 32×32 inputs, both composites):
#: ≤ 1.2e-11 for every family but DenseNet, whose ε = 1e-6 on the classifier and the Norm rule on
#: its concatenated, batch-normalized features meet near-zero denominators (5.2e-9 measured)
TOLERANCE = 1e-10
TOLERANCE_DENSENET = 5e-8
#: one small model per family, explained in CI
REPRESENTATIVES = ["resnet18", "squeezenet1_1", "mnasnet0_5", "shufflenet_v2_x0_5", "regnet_y_400mf",
                   "efficientnet_b0", "mobilenet_v3_small", "googlenet"]
#: the other families and variants (run with --slow)
OTHERS = ["alexnet", "vgg11_bn", "vgg16", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "densenet121",
          "inception_v3", "squeezenet1_0", "mobilenet_v2", "mobilenet_v3_large", "mnasnet1_0",
          "shufflenet_v2_x1_0", "efficientnet_v2_s", "regnet_x_400mf", "convnext_tiny"]
#: inputs smaller than this leave nothing to pool in these models
INPUT_SIZE = {"alexnet": 64, "inception_v3": 75}


def _composites() -> list[tuple[graphlrp.Composite, object]]:
    def canonizers():
        return [TracedMergeBatchNorm()]

    return [
        (graphlrp.composites.EpsilonPlusFlat(),
         zcomposites.EpsilonPlusFlat(layer_map=twin_layer_map(), canonizers=canonizers())),
        (graphlrp.composites.EpsilonGammaBox(-3.0, 3.0),
         zcomposites.EpsilonGammaBox(-3.0, 3.0, layer_map=twin_layer_map(), canonizers=canonizers())),
    ]


def _explain_like_zennit(name: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    randomize_batch_norms(model)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eps = 1e-12
    model = model.double().eval()
    size = INPUT_SIZE.get(name, 32)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    target = torch.tensor([1, 7])
    graph = graphlrp.lower(model, x)
    twin = zennit_twin(model)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), rtol=0, atol=1e-12)  # the rewrites keep the function
    tolerance = TOLERANCE_DENSENET if name.startswith("densenet") else TOLERANCE
    for ours, theirs in _composites():
        expected = zennit_relevance(twin, x, target, theirs)
        actual = graphlrp.explain(graph, x, target=target, composite=ours).input_relevance
        assert_close(actual, expected, tolerance)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_representatives_explain_like_zennit(name):
    _explain_like_zennit(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHERS)
def test_other_families_explain_like_zennit(name):
    _explain_like_zennit(name)
