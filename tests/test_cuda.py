"""On a CUDA device (skipped without one): results match the CPU's, and a warm explanation makes
no more host synchronisations than the one documented read."""
from __future__ import annotations

import warnings

import pytest
import torch

import graphlrp
from graphlrp import rules

from conftest import make_mlp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def synchronisations(fn) -> int:
    """Synchronising CUDA operations ``fn`` makes (CUDA's sync debug mode warns at each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("kind", ["dense", "sparse", "edges"])
@pytest.mark.parametrize("rule", [rules.Epsilon(), rules.ZPlus(), rules.Gamma(0.25)], ids=str)
def test_a_warm_explanation_synchronises_once(kind, rule):
    model = make_mlp([20, 30, 30, 5], seed=0)
    x = torch.rand(8, 20, dtype=torch.float64)
    graph = graphlrp.lower(model, x, block_kind=kind).to("cuda")
    x = x.cuda()
    graphlrp.explain(graph, x, target=3, rule=rule)
    # the one read: finiteness of input, output and relevance, checked together at the end
    assert synchronisations(lambda: graphlrp.explain(graph, x, target=3, rule=rule)) <= 1


@pytest.mark.parametrize("kind", ["auto", "edges"])
def test_relevance_on_cuda_matches_the_cpu(kind):
    model = make_mlp([20, 30, 5], seed=1)
    x = torch.rand(4, 20, dtype=torch.float64)
    graph = graphlrp.lower(model, x, block_kind=kind)
    expected = graphlrp.explain(graph, x, target=1, rule=rules.Gamma(0.25))
    got = graphlrp.explain(graph.to("cuda"), x.cuda(), target=1, rule=rules.Gamma(0.25), deterministic=True)
    torch.testing.assert_close(got.node_relevance.cpu(), expected.node_relevance, rtol=1e-10, atol=1e-12)
