"""Every classification model of torchvision: lowered with random weights, checked against its own forward.

Models that need what is not lowered yet are refused, naming the op; :data:`REFUSED` keeps them
with the reason, so that this test fails loudly when they start to lower.
"""
from __future__ import annotations

import pytest
import torch

torchvision = pytest.importorskip("torchvision")

import graphlrp

#: model name prefix -> the op the refusal names
REFUSED = {
    "swin_v2_": "attn_cpb_mlp",  # its position bias is an MLP of a constant table, not of the input
    "swin_": "_get_relative_position_bias",
    "maxvit_": "einsum",
}
#: one small model per family, run in CI at a tiny input; AlexNet and VGG run with --slow only, as their
#: classifiers (58 M and 120 M weights) take about 10 s each to initialize, copy and check
REPRESENTATIVES = ["resnet18", "densenet121", "googlenet", "inception_v3", "squeezenet1_1",
                   "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5", "shufflenet_v2_x0_5", "efficientnet_b0",
                   "regnet_x_400mf", "regnet_y_400mf", "convnext_tiny"]
#: the smallest input each model lowers at, where 32×32 leaves nothing to pool (alexnet's pools need
#: 63×63, inception_v3's stem 75×75)
SMALLEST_INPUT = {"alexnet": 63, "inception_v3": 75}


def _refusal(name: str) -> str | None:
    return next((reason for prefix, reason in REFUSED.items() if name.startswith(prefix)), None)


def _lower_and_compare(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, size, size)
    reason = _refusal(name)
    if reason is not None:
        with pytest.raises(graphlrp.UnsupportedModuleError, match=reason):
            graphlrp.lower(model, x)
        return
    graph = graphlrp.lower(model, x)  # checks graph(x) against the model on x and a random input
    with torch.no_grad():
        expected = model(x)
    scale = float(expected.abs().max().clamp(min=1.0))
    torch.testing.assert_close(graph(x), expected, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_representative_models_lower_exactly(name):
    _lower_and_compare(name, SMALLEST_INPUT.get(name, 32))


@pytest.mark.slow
@pytest.mark.parametrize("name", torchvision.models.list_models(module=torchvision.models))
def test_every_classification_model_lowers_or_is_refused_by_name(name):
    size = max(64, SMALLEST_INPUT.get(name, 0))
    if name.startswith(("vit_", "swin_", "maxvit_")):
        size = 224
    _lower_and_compare(name, size)
