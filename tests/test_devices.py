"""Device placement without a GPU: every tensor follows the graph's device through ``Graph.to``,
and the reduction backend is chosen by what the installed kernels can run."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import reductions


def tensors_of(obj, seen=None):
    """Every tensor reachable through the attributes of ``obj`` (blocks, their inner blocks, caches)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for value in obj.values() for t in tensors_of(value, seen)]
    if isinstance(obj, (list, tuple)):
        return [t for value in obj for t in tensors_of(value, seen)]
    if hasattr(obj, "__dict__") and type(obj).__module__.startswith("graphlrp"):
        return [t for value in vars(obj).values() for t in tensors_of(value, seen)]
    return []


@pytest.mark.parametrize("mode", ["winner", "proportional"])
def test_a_dtype_change_keeps_every_block_on_the_graphs_device(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3)).eval()
    x = torch.randn(2, 1, 8, 8)
    graph = graphlrp.lower(model, x, max_pool=mode)
    # a default device other than the graph's: what is made without the graph's device lands there
    with torch.device("meta"):
        widened = graph.to(dtype=torch.float64)
    found = tensors_of(widened.blocks) + [l.bias for l in widened.levels if l.bias is not None]
    assert found and {t.device.type for t in found} == {"cpu"}
    explanation = graphlrp.explain(widened, x.double(), target=1)
    reference = graphlrp.explain(graphlrp.lower(model.double(), x.double(), max_pool=mode), x.double(), target=1)
    torch.testing.assert_close(explanation.edge_relevance(0), reference.edge_relevance(0), rtol=1e-12, atol=1e-14)


def test_auto_takes_torch_scatter_on_cuda_only_with_its_cuda_kernels(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not reductions._use_torch_scatter(cpu)
    expected = reductions.has_cuda_kernels()  # a build made without a GPU has none
    assert reductions._use_torch_scatter(cuda) == expected
    if reductions._torch_scatter is not None:
        assert expected == (torch.ops.torch_scatter.cuda_version() != -1)
    monkeypatch.setattr(reductions, "_cuda_kernels", lambda: False)
    assert not reductions._use_torch_scatter(cuda)
