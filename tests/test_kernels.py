"""The compiled edge kernel gives bit for bit what torch's ops give, on every block kind."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import kernels, rules

from conftest import make_mlp

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["dense", "sparse", "edges"])
def test_edge_relevance_equals_torch_ops(kind, dtype):
    model = make_mlp([7, 11, 9, 4], nn.ReLU, seed=5).to(dtype)
    x = torch.randn(3, 7, dtype=dtype)
    graph = graphlrp.lower(model, x, block_kind=kind)
    for rule in (rules.Epsilon(), rules.Gamma(0.25), rules.AlphaBeta(2, 1), rules.Flat()):
        explanation = graphlrp.explain(graph, x, target=1, rule=rule)
        for sample in range(3):
            fused = explanation.edge_relevance(sample)
            with kernels.disabled():
                assert not kernels.available()
                reference = explanation.edge_relevance(sample)
            assert torch.equal(fused, reference), (kind, rule)
        assert kernels.available()


def test_kernel_declines_what_it_does_not_handle():
    x, s = torch.randn(5), torch.randn(4)
    src, dst = torch.tensor([0, 4, 2], dtype=torch.int32), torch.tensor([3, 3, 0])
    weight, out = torch.randn(3), torch.empty(3)
    assert kernels.edge_messages_into(x, src, weight, s, dst, out)
    torch.testing.assert_close(out, x[src.long()] * weight * s[dst], rtol=0, atol=0)
    assert not kernels.edge_messages_into(x.half(), src, weight.half(), s.half(), dst, out.half())
    assert not kernels.edge_messages_into(x, src, weight.double(), s, dst, out)
    assert not kernels.edge_messages_into(torch.randn(5, 2)[:, 0], src, weight, s, dst, out)
    with pytest.raises(ValueError, match="differ in length"):
        kernels.edge_messages_into(x, src, weight, s, dst[:2], out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("node_major", [True, False])
@pytest.mark.parametrize("served", ["all", "positive", "negative"])
def test_fused_quotient_equals_torch_ops_bit_for_bit(monkeypatch, dtype, node_major, served):
    from graphlrp.propagate import _quotient

    monkeypatch.setattr(kernels, "COMPILED_QUOTIENT_FROM", 1)  # the kernel on these small tensors too
    from graphlrp.rules import Group

    generator = torch.Generator().manual_seed(7)
    storage = torch.randn(40, 6, generator=generator, dtype=dtype)  # relevance of several levels
    relevance = storage[10:30].T if node_major else storage.T.contiguous()[:, 10:30]
    denominator = torch.randn(6, 20, generator=generator, dtype=dtype) * 1e-5
    denominator[0, :4] = torch.tensor([0.0, -0.0, 1e-6, -1e-6], dtype=dtype)
    forward = torch.randn(6, 20, generator=generator, dtype=dtype)
    if node_major:
        denominator, forward = denominator.T.contiguous().T, forward.T.contiguous().T
    rule, group = rules.Gamma(0.25), Group((), served=served)
    fused = _quotient(rule, group, relevance, denominator, forward)
    assert fused.stride() == denominator.stride()
    with kernels.disabled():
        reference = _quotient(rule, group, relevance, denominator, forward)
    assert torch.equal(fused, reference)
    assert torch.equal(torch.signbit(fused), torch.signbit(reference))


def test_fused_quotient_declines_what_it_does_not_handle(monkeypatch):
    r, z = torch.randn(3, 4), torch.randn(3, 4)
    assert kernels.signed_quotient(r, z, 1e-6) is None  # fewer elements than the kernel pays for
    monkeypatch.setattr(kernels, "COMPILED_QUOTIENT_FROM", r.numel())
    assert kernels.signed_quotient(r, z, 1e-6) is not None
    assert kernels.signed_quotient(r.half(), z.half(), 1e-6) is None
    assert kernels.signed_quotient(r, z.double(), 1e-6) is None
    assert kernels.signed_quotient(r, z[:, :3], 1e-6) is None
    assert kernels.signed_quotient(r.T.contiguous().T, z, 1e-6) is None  # layouts differ
    assert kernels.signed_quotient(r[:, ::2], z[:, ::2], 1e-6) is None  # no unit stride


THREAD_PROBE = """
import torch
torch.set_num_threads(1)
import graphlrp
from graphlrp import kernels
model = torch.nn.Sequential(torch.nn.Linear(200, 100), torch.nn.ReLU(), torch.nn.Linear(100, 3)).eval()
x = torch.randn(200, 200)
graph = graphlrp.lower(model, x[:1])
explanation = graphlrp.explain(graph, x, 0)  # the quotients take the compiled kernel (≥ 16384 elements)
explanation.edge_relevance(0)
import numba
print(kernels.available(), numba.threading_layer(), torch.get_num_threads(), numba.get_num_threads())
"""


def test_compiled_kernels_keep_torchs_thread_count():
    # numba's OpenMP layer, started by the first launch, would reset the shared OpenMP thread count
    # to every core: a process that asked torch for one thread would silently compute on all
    found = subprocess.run([sys.executable, "-c", THREAD_PROBE], capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    enabled, layer, torch_threads, numba_threads = found.stdout.split()
    if enabled != "True":
        pytest.skip("numba is not installed")
    assert (torch_threads, numba_threads) == ("1", "1"), f"threading layer {layer}"
