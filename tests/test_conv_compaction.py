"""Convolutions with whole channels pruned convolve their live channels only, and compute the same."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from zennit import composites as zcomposites
from zennit.canonizers import SequentialMergeBatchNorm

import graphlrp
from graphlrp.blocks import ConvBlock
from graphlrp.transforms import EdgeIndicator, Identity, Positive

from test_zennit_agreement import FLOAT64, assert_close, zennit_relevance

GEOMETRIES = [  # stride, padding, dilation
    ((1, 1), (1, 1), (1, 1)),
    ((2, 2), (1, 0), (1, 1)),
    ((1, 2), (2, 2), (2, 1)),
]


def channel_pruned_kernel(c_out: int, c_in: int, dead_out: list[int], dead_in: list[int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(c_out, c_in, 3, 3, generator=generator, dtype=torch.float64)
    weight[dead_out] = 0
    weight[:, dead_in] = 0
    return weight


@pytest.mark.parametrize("stride,padding,dilation", GEOMETRIES)
@pytest.mark.parametrize("dead_out,dead_in", [([0, 2, 3, 5], []), ([], [1, 2, 4]), ([1, 4, 5], [0, 3])])
def test_compacted_products_equal_torch_convolution_and_its_transpose(stride, padding, dilation, dead_out, dead_in):
    weight = channel_pruned_kernel(6, 5, dead_out, dead_in, seed=len(dead_out) + 7 * len(dead_in))
    in_shape = (5, 9, 8)
    out = F.conv2d(torch.zeros(1, *in_shape, dtype=torch.float64), weight, None, stride, padding, dilation)
    out_shape = tuple(out.shape[1:])
    block = ConvBlock(0, 1, weight, in_shape, out_shape, stride, padding, dilation, groups=1)
    operand = block.operand(Identity())
    assert operand.kernel.shape[:2] == (6 - len(dead_out), 5 - len(dead_in))  # only live channels convolved
    x = torch.randn(4, *in_shape, dtype=torch.float64, requires_grad=True)
    for transform in (Identity(), Positive(), EdgeIndicator()):
        kernel = transform(weight)
        expected = F.conv2d(x, kernel, None, stride, padding, dilation)
        actual = block.matvec(x.detach().reshape(4, -1), transform)
        torch.testing.assert_close(actual, expected.reshape(4, -1), rtol=0, atol=1e-12)
        s = torch.randn_like(expected)
        (gradient,) = torch.autograd.grad(expected, x, s)  # the transpose, by autograd
        torch.testing.assert_close(block.rmatvec(s.reshape(4, -1), transform), gradient.reshape(4, -1),
                                   rtol=0, atol=1e-12)


def test_mostly_live_kernel_is_not_compacted():
    weight = channel_pruned_kernel(10, 4, [3], [], seed=0)  # 90% of the channel pairs live
    block = ConvBlock(0, 1, weight, (4, 6, 6), (10, 4, 4), (1, 1), (0, 0), (1, 1), groups=1)
    operand = block.operand(Identity())
    assert operand.live_out is None and operand.live_in is None and operand.kernel.shape == weight.shape


def test_channel_pruned_cnn_explains_like_zennit():
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 4),
    ).double().eval()
    for layer in (model[0], model[2], model[4]):
        prune.ln_structured(layer, "weight", amount=0.5, n=1, dim=0)  # half the filters
        prune.remove(layer, "weight")
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    assert graph.blocks[0].operand(Identity()).live_out is not None  # the pruned filters are skipped
    target = torch.tensor([0, 3, 1])
    # not EpsilonPlusFlat: on a pruned first layer Zennit's Flat gives pruned weights one (docs/differences.md)
    for ours, theirs in [(graphlrp.composites.EpsilonAlpha2Beta1(), zcomposites.EpsilonAlpha2Beta1()),
                         (graphlrp.composites.EpsilonGammaBox(-3.0, 3.0), zcomposites.EpsilonGammaBox(-3.0, 3.0))]:
        theirs.canonizers = [SequentialMergeBatchNorm()]
        expected = zennit_relevance(model, x, target, theirs)
        assert_close(graphlrp.explain(graph, x, target=target, composite=ours).input_relevance, expected, FLOAT64)
