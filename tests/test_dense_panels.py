"""Dense products with transformed weights computed panel by panel, and the buffers they use."""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn as nn
from zennit import rules as zrules
from zennit.composites import LayerMapComposite
from zennit.types import Activation

import graphlrp
from graphlrp import rules
from graphlrp.blocks import OperandCache, dense
from graphlrp.blocks.dense import DenseBlock
from graphlrp.layout import as_node_major
from graphlrp.scratch import scratch
from graphlrp.transforms import AddScaledPart, EdgeIndicator, Identity, Negative, Positive, Square, Transform

from conftest import make_mlp
from test_zennit_agreement import assert_close, zennit_relevance


class Halved(Transform):
    """A transform without its own ``into``: the default copies ``self(values)``."""

    def __call__(self, values):
        return values * 0.5


TRANSFORMS = [Positive(), Negative(), Square(), EdgeIndicator(), AddScaledPart(0.25), AddScaledPart(0.5, "negative"),
              Halved()]


@pytest.mark.parametrize("transform", TRANSFORMS, ids=repr)
def test_into_writes_what_the_transform_returns(transform):
    torch.manual_seed(0)
    values = torch.randn(6, 9, dtype=torch.float64)
    values[values.abs() < 0.3] = 0.0
    for view in (values, values[:, 2:7], values.T):  # contiguous and strided
        out = torch.full(view.shape, float("nan"), dtype=view.dtype)
        assert transform.into(view, out) is out
        assert torch.equal(out, transform(view))


@pytest.mark.parametrize("node_major", [False, True], ids=["batch-major", "node-major"])
@pytest.mark.parametrize("batch", [1, 3, 20])
@pytest.mark.parametrize("transform", TRANSFORMS, ids=repr)
def test_panel_products_match_the_dense_formula(monkeypatch, transform, batch, node_major):
    torch.manual_seed(1)
    weight = torch.randn(13, 11, dtype=torch.float64)
    weight[weight.abs() < 0.4] = 0.0
    block, cache = DenseBlock(0, 1, weight), OperandCache(keep=False)
    monkeypatch.setattr(dense, "PANEL_ELEMENTS", 4 * 11)  # panels of 4 rows or 3 columns, and a remainder
    x, s = torch.randn(batch, 11, dtype=torch.float64), torch.randn(batch, 13, dtype=torch.float64)
    if node_major:
        x, s = as_node_major(x), as_node_major(s)
    transformed = transform(weight)
    forward, backward = block.matvec(x, transform, cache=cache), block.rmatvec(s, transform, cache=cache)
    torch.testing.assert_close(forward, x @ transformed.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(backward, s @ transformed, rtol=1e-12, atol=1e-12)
    for result in (forward, backward):  # the results keep the operand's layout
        assert result.is_contiguous() if not node_major or batch == 1 else result.T.is_contiguous()
    assert not cache.operands
    without_cache = block.matvec(x, transform), block.rmatvec(s, transform)  # no cache: panels too
    assert torch.equal(without_cache[0], forward) and torch.equal(without_cache[1], backward)


def test_small_or_batch_major_operands_keep_transformed_weights_and_large_node_major_ones_use_panels():
    block, cache = DenseBlock(0, 1, torch.randn(5, 4, dtype=torch.float64)), OperandCache()
    large = as_node_major(torch.randn(dense.PANELS_FROM_BATCH, 4, dtype=torch.float64))
    expected = large @ Positive()(block.weight).T
    torch.testing.assert_close(block.matvec(large, Positive(), cache=cache), expected, rtol=1e-12, atol=1e-12)
    s = as_node_major(torch.randn(dense.PANELS_FROM_BATCH, 5, dtype=torch.float64))
    torch.testing.assert_close(block.rmatvec(s, Positive(), cache=cache), s @ Positive()(block.weight),
                               rtol=1e-12, atol=1e-12)
    assert not cache.operands
    block.matvec(large.contiguous(), Positive(), cache=cache)  # batch-major: the kept matrix
    assert Positive() in cache.operands
    cache.clear()
    block.matvec(as_node_major(torch.randn(dense.PANELS_FROM_BATCH - 1, 4, dtype=torch.float64)), Positive(),
                 cache=cache)
    assert Positive() in cache.operands  # kept from now on, and used for large batches too
    torch.testing.assert_close(block.matvec(large, Positive(), cache=cache), expected, rtol=1e-12, atol=1e-12)


def test_a_panel_transform_that_creates_edges_is_refused():
    class PlusOne(Transform):
        def __call__(self, values):
            return values + 1.0

    block = DenseBlock(0, 1, torch.randn(5, 4))
    with pytest.raises(ValueError, match="maps 0 to 1"):
        block.matvec(torch.randn(2, 4), PlusOne())


@pytest.mark.parametrize("zero_bias", [False, True], ids=["bias", "zero_bias"])
def test_rules_match_zennit_at_batches_that_use_panels(zero_bias):
    model = make_mlp([6, 9, 7, 4], nn.Tanh, seed=5)
    batch = dense.PANELS_FROM_BATCH + 4
    torch.manual_seed(5)
    x = torch.randn(batch, 6, dtype=torch.float64)
    target = torch.randint(0, 4, (batch,))
    graph = graphlrp.lower(model, x)
    kept = []
    zp = ["bias"] if zero_bias else None
    pairs = [(rules.ZPlus(zero_bias=zero_bias), zrules.ZPlus(zero_params=zp)),
             (rules.AlphaBeta(2, 1, zero_bias=zero_bias), zrules.AlphaBeta(2, 1, zero_params=zp)),
             (rules.Gamma(0.25, zero_bias=zero_bias), zrules.Gamma(0.25, zero_params=zp)),
             (rules.WSquare(zero_bias=zero_bias), zrules.WSquare(zero_params=zp)),
             (rules.Flat(), zrules.Flat(zero_params=zp))]
    for ours, theirs in pairs:
        expected = zennit_relevance(model, x, target, LayerMapComposite([(Activation, zrules.Pass()), (nn.Linear, theirs)]))
        explainer = graphlrp.Explainer(graph, ours)
        assert_close(explainer(x, target=target).input_relevance, expected)
        kept += [explainer._workspace.operands(block).operands for block in graph.blocks]
    assert not any(kept)  # no transformed matrix kept between calls


def test_scratch_is_reused_grown_and_kept_apart_by_dtype_and_thread():
    like = torch.zeros(1)
    first = scratch(10, like)
    assert scratch(8, like).data_ptr() == first.data_ptr()
    grown = scratch(1000, like)
    assert grown.numel() == 1000 and scratch(10, like).data_ptr() == grown.data_ptr()
    other_dtype = scratch(10, like.double())
    assert other_dtype.dtype == torch.float64 and other_dtype.data_ptr() != grown.data_ptr()
    seen = []
    thread = threading.Thread(target=lambda: seen.append(scratch(10, like).data_ptr()))
    thread.start()
    thread.join()
    assert seen[0] != grown.data_ptr()


@pytest.mark.parametrize("batch", [1, 8, 16, 31, 32, 40])
@pytest.mark.parametrize("node_major", [False, True], ids=["batch-major", "node-major"])
def test_plain_products_match_the_dense_formula_at_every_batch(batch, node_major):
    torch.manual_seed(2)
    block = DenseBlock(0, 1, torch.randn(13, 11, dtype=torch.float64))
    x, s = torch.randn(batch, 11, dtype=torch.float64), torch.randn(batch, 13, dtype=torch.float64)
    if node_major:
        x, s = as_node_major(x), as_node_major(s)
    forward, backward = block.matvec(x), block.rmatvec(s)
    torch.testing.assert_close(forward, x @ block.weight.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(backward, s @ block.weight, rtol=1e-12, atol=1e-12)
    for result in (forward, backward):  # whichever kernel ran, the result is in the operand's layout
        assert result.is_contiguous() if not node_major or batch == 1 else result.T.is_contiguous()
