"""Device placement without a GPU: every tensor follows the graph's device through ``Graph.to``,
and the reduction backend is chosen by what the installed kernels can run."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import reductions
from graphlrp.devices import held_tensors


def test_held_tensors_reach_every_block_tensor_inner_blocks_and_caches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3)).eval()
    graph = graphlrp.lower(model, torch.randn(2, 1, 8, 8), max_pool="proportional", block_kind="sparse")
    graphlrp.explain(graph, torch.randn(2, 1, 8, 8), target=0).edge_relevance(0)  # fills the caches
    found = {id(t) for t in held_tensors(graph)}
    pool = next(b for b in graph.blocks if b.kind == "maxpool")
    expected = [graph.outputs, *(l.bias for l in graph.levels if l.bias is not None), *pool.windows.held(),
                *(t for b in graph.blocks if hasattr(b, "held") for t in b.held())]
    assert all(id(t) in found for t in expected)
    sparse = next(b for b in graph.blocks if b.kind == "sparse")
    assert sparse._rows is not None and id(sparse._rows) in found


@pytest.mark.parametrize("mode", ["winner", "proportional"])
def test_a_dtype_change_keeps_every_block_on_the_graphs_device(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3)).eval()
    x = torch.randn(2, 1, 8, 8)
    graph = graphlrp.lower(model, x, max_pool=mode)
    # a default device other than the graph's: what is made without the graph's device lands there
    with torch.device("meta"):
        widened = graph.to(dtype=torch.float64)
    found = held_tensors(widened.blocks) + [l.bias for l in widened.levels if l.bias is not None]
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


def test_the_memory_guard_reads_the_memory_of_the_device_that_receives_the_allocation(monkeypatch):
    from graphlrp import memory

    gib = 1 << 30
    # a GPU with 2 GiB free, 1 GiB reserved by the caching allocator of which 0.25 GiB is in use
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * gib, 16 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: gib // 4)
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 64 * gib)
    assert memory.available_bytes("cuda:0") == 2 * gib + gib - gib // 4
    assert memory.available_bytes() == memory.available_bytes("cpu") == 64 * gib
    # 2 GiB fit the host's budget (32 GiB) but not the GPU's (1.375 GiB)
    memory.check_budget("a listing", 2 * gib, None)
    with pytest.raises(graphlrp.GraphTooLargeError, match="on cuda:0"):
        memory.check_budget("a listing", 2 * gib, None, torch.device("cuda:0"))
    # and the other way round: a GPU larger than the host's free memory is not held to the host's
    monkeypatch.setattr(memory, "host_available_bytes", lambda: gib)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 * gib, 141 * gib))
    memory.check_budget("a listing", 10 * gib, None, "cuda")
    with pytest.raises(graphlrp.GraphTooLargeError):
        memory.check_budget("a listing", 10 * gib, None)


def test_edge_listings_are_checked_against_the_graphs_device(monkeypatch):
    from graphlrp import memory

    seen = []
    monkeypatch.setattr(memory, "default_budget", lambda device=None: seen.append(device) or 1 << 40)
    graph = graphlrp.lower(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval(), torch.randn(2, 4))
    seen.clear()  # lowering checks the host, where graphs are built
    graph.edges()
    explanation = graphlrp.explain(graph, torch.randn(2, 4), target=0)
    explanation.edge_relevance(0)
    assert seen == [graph.device, graph.device]


def test_cuda_and_cuda_0_name_one_device(monkeypatch):
    from graphlrp.devices import resolve, same_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve("cuda") == torch.device("cuda", 1)
    assert same_device("cuda", torch.device("cuda:1")) and not same_device("cuda", "cuda:0")
    assert same_device("cpu", torch.device("cpu")) and not same_device("cpu", "cuda:1")


def test_moving_a_graph_keeps_what_it_counted_and_a_graph_without_weights_moves_its_outputs():
    from graphlrp.blocks import conv, dense

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3)).eval()
    graph = graphlrp.lower(model, torch.randn(2, 1, 8, 8), block_kind="dense")
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        moved = graph.to(dtype=dtype)
        assert [b.num_edges for b in moved.blocks] == [b.num_edges for b in graph.blocks]
    # a narrowing copy counts again: a weight that rounds to zero is no edge
    tiny = dense.DenseBlock(0, 1, torch.tensor([[1e-30, 1.0]], dtype=torch.float64))
    assert tiny.num_edges == 2 and tiny.to(dtype=torch.float32).num_edges == 2
    assert tiny.to(dtype=torch.float16).num_edges == 1
    kernel = torch.tensor([[[[1e-30, 1.0]]]], dtype=torch.float64)
    layer = conv.ConvBlock(0, 1, kernel, (1, 1, 3), (1, 1, 2), (1, 1), (0, 0), (1, 1), 1)
    assert layer.num_edges == 4 and layer.to(dtype=torch.float16).num_edges == 2
    from graphlrp.graph import Level

    empty = graphlrp.Graph([Level(0, "input", "input", (3,), 0)], [], torch.tensor([2, 0]))
    with torch.device("meta"):
        assert empty.to("meta").outputs.device.type == "meta" and empty.to("meta").device.type == "meta"


@pytest.fixture
def device_reads(monkeypatch):
    """Every read of a ``meta`` tensor's values from graphlrp's code (a host synchronisation on a
    GPU), by site; answered with a finite dummy so that the call runs on."""
    import traceback

    reads: dict[tuple[str, str], int] = {}
    answers = {"item": 0.0, "__bool__": True, "__float__": 0.0, "__int__": 0, "__index__": 0, "tolist": [],
               "numpy": None}
    for name, answer in answers.items():
        original = getattr(torch.Tensor, name)

        def read(self, *args, _original=original, _answer=answer, _name=name, **kwargs):
            if self.device.type != "meta":
                return _original(self, *args, **kwargs)
            site = next((f for f in reversed(traceback.extract_stack()[:-1]) if "/graphlrp/" in f.filename), None)
            key = (_name, "outside graphlrp" if site is None else f"{site.filename.rsplit('graphlrp/', 1)[-1]}:{site.name}")
            reads[key] = reads.get(key, 0) + 1
            return _answer

        monkeypatch.setattr(torch.Tensor, name, read)
    return reads


def _meta_graphs():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 5)).eval()
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)).eval()
    for model, x in ((mlp, torch.randn(4, 20)), (cnn, torch.randn(2, 1, 10, 10))):
        # CSR has no kernels on meta; dense and convolution blocks have
        yield graphlrp.lower(model, x, block_kind="dense").to("meta"), x.to("meta")


@pytest.mark.parametrize("setting", [{"rule": graphlrp.rules.Epsilon()}, {"rule": graphlrp.rules.ZPlus()},
                                     {"rule": graphlrp.rules.AlphaBeta()},
                                     {"composite": graphlrp.composites.EpsilonGammaBox(-3.0, 3.0)}],
                         ids=["epsilon", "zplus", "alphabeta", "EpsilonGammaBox"])
def test_a_warm_explanation_reads_the_device_once(device_reads, setting):
    """The one read: whether input, output and relevance are finite (one sum of three sums). A
    target tensor on the device adds one (its range is checked before it indexes the output);
    ints are checked on the host."""
    for graph, x in _meta_graphs():
        graphlrp.explain(graph, x, target=1, **setting)  # cold: plans, operands, range checks
        device_reads.clear()
        graphlrp.explain(graph, x, target=1, **setting)
        assert device_reads == {("item", "explainer.py:_check_finite"): 1}
        device_reads.clear()
        graphlrp.explain(graph, x, target=torch.ones(len(x), dtype=torch.long, device="meta"), **setting)
        assert device_reads == {("item", "explainer.py:_check_finite"): 1, ("tolist", "explainer.py:_check_request"): 1}
        device_reads.clear()
        graph(x)
        assert device_reads == {("item", "graph.py:check_input"): 1}


def test_finiteness_is_still_checked_for_input_output_and_relevance():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.fill_(10.0)
    graph = graphlrp.lower(model, torch.randn(1, 3))
    x = torch.randn(3, 3)
    x[1, 2] = float("nan")
    with pytest.raises(graphlrp.InputError, match=r"NaN or inf \(samples \[1\]\)"):
        graphlrp.explain(graph, x, target=0)
    with pytest.raises(graphlrp.NumericRangeError, match="output is inf or NaN"):
        graphlrp.explain(graph, torch.full((2, 3), 3e38), target=0)
