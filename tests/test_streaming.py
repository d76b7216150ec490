"""Streaming analyses against listing references: edge runs, exact selections, circuits, contrasts,
filtered exports and flows, equal whatever the runs, and never an allocation of every edge."""
from __future__ import annotations

import contextlib
import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import graphlrp
from graphlrp import analysis, explanation as explanation_module, kernels, rules, streaming
from graphlrp.blocks import ConvBlock

from test_from_edges import random_dag

#: run sizes the analyses are cut into (every edge alone, a few, and all at once)
RUN_SIZES = [1, 7, 1 << 30]


# -- references written from the definitions ----------------------------------------------------
def reference_order(magnitude: list[float]) -> list[int]:
    """Indices by decreasing magnitude, ties by index."""
    return sorted(range(len(magnitude)), key=lambda i: (-magnitude[i], i))


def reference_mass(magnitude: list[float], fraction: float) -> list[int]:
    """The fewest indices, largest first, whose exact sum reaches ``fraction`` of the exact total."""
    total = sum(Fraction(m) for m in magnitude)
    if total == 0:
        return []
    held, chosen = Fraction(0), []
    for i in reference_order(magnitude):
        chosen.append(i)
        held += Fraction(magnitude[i])
        if held >= Fraction(fraction) * total:
            break
    return chosen


def reference_select(magnitude: list[float], top_k=None, threshold=None, mass=None) -> list[int]:
    keep = set(range(len(magnitude)))
    if top_k is not None:
        keep &= set(reference_order(magnitude)[:top_k])
    if threshold is not None:
        keep &= {i for i, m in enumerate(magnitude) if Fraction(m) >= Fraction(threshold)}
    if mass is not None:
        keep &= set(reference_mass(magnitude, mass))
    return sorted(keep)


def runs_of(values: torch.Tensor, cuts: list[int]):
    """A pass over ``values`` cut at ``cuts``, as :func:`streaming.select` takes it."""
    bounds = [0, *cuts, len(values)]

    def runs():
        for a, b in zip(bounds[:-1], bounds[1:]):
            yield streaming.listed_run(a, values[a:b], [values[a:b] * 2])
    return runs


def random_magnitudes(seed: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Magnitudes over a wide exponent range, with ties, zeros and near-equal values."""
    g = torch.Generator().manual_seed(seed)
    span = 10 if dtype == torch.float16 else 60
    values = torch.rand(n, generator=g, dtype=torch.float64) * 2.0 ** torch.randint(-span, span, (n,), generator=g)
    values[torch.randint(0, n, (n // 4,), generator=g)] = 0.0
    values[torch.randint(0, n, (n // 4,), generator=g)] = float(values[1])  # ties
    values[: n // 8] = 1.0 + torch.arange(n // 8, dtype=torch.float64) * 2.0 ** -40  # one bin, many values
    return values.to(dtype)


# -- edge runs of every kind -----------------------------------------------------------------------
def conv_out(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


@pytest.mark.parametrize("dims, stride, padding, dilation, groups",
                         [c for c in itertools.product([1, 2, 3], [1, 2], [0, 2], [1, 2], [1, 2])])
def test_conv_runs_are_the_listed_edges(dims, stride, padding, dilation, groups):
    g = torch.Generator().manual_seed(dims * 31 + stride * 7 + padding * 3 + dilation + groups)
    spatial = (7,) * dims if dims < 3 else (5,) * 3
    weight = torch.randn(6, 4 // groups, *(3,) * dims, generator=g)
    weight[weight.abs() < 0.5] = 0.0  # zero kernel entries are no edges
    out = tuple(conv_out(n, 3, stride, padding, dilation) for n in spatial)
    block = ConvBlock(0, 1, weight, (4, *spatial), (6, *out), (stride,) * dims, (padding,) * dims,
                      (dilation,) * dims, groups)
    listed = block.edges()
    for size in (1, 13, 1 << 30):
        runs = list(block.edge_runs(size))
        for got, expected in zip((torch.cat([getattr(r, name) for r in runs]) for name in ("src", "dst", "weight")),
                                 listed):
            assert torch.equal(got, expected)
        assert [r.start for r in runs] == list(itertools.accumulate([0] + [len(r) for r in runs[:-1]]))
        assert all(len(r) <= max(size, 4 // groups * 3 ** dims) for r in runs)


class Residual(nn.Module):
    """Convolutions with padding and stride, max pooling, a residual sum and a dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.inner = nn.Conv2d(3, 3, 3, padding=1)
        self.down = nn.Conv2d(3, 4, 2, stride=2)
        self.head = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x):
        y = self.pool(torch.relu(self.conv(x)))
        y = torch.relu(self.inner(y) + y)
        return self.head(torch.relu(self.down(y)).flatten(1))


def explained_cnn(kind: str = "auto", rule=None, batch: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = Residual().double().eval()
    x = torch.randn(batch, 2, 8, 8, dtype=torch.float64)
    graph = graphlrp.lower(model, x) if kind == "auto" else graphlrp.lower(model, x, block_kind=kind)
    return graphlrp.explain(graph, x, target=1, rule=rule or rules.Epsilon())


def explained_dag(seed: int, batch: int = 2):
    graph = random_dag(seed, n=14, n_inputs=3, edge_probability=0.5).build(dtype=torch.float64, block_kind="edges")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, dtype=torch.float64, generator=g)
    start = torch.randn(batch, len(graph.outputs), dtype=torch.float64, generator=g)
    return graphlrp.explain(graph, x, output_relevance=start, rule=rules.Epsilon())


def explained_mlp(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x = torch.randn(3, 6)
    return graphlrp.explain(graphlrp.lower(model, x, block_kind="sparse"), x, target=0, rule=rules.AlphaBeta(2, 1))


class Gated(nn.Module):
    """A squeeze-and-excitation gate (per-sample edge weights) after a weight-pruned convolution
    (held unrolled) and a layer norm over the channels (per-sample 1/σ)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.squeeze, self.norm = nn.Linear(4, 4), nn.LayerNorm(4)
        self.head = nn.Linear(4 * 8 * 8, 5)
        with torch.no_grad():
            self.conv.weight.view(-1)[3:].zero_()

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = y * torch.sigmoid(self.squeeze(y.mean((2, 3))))[:, :, None, None]
        return self.head(self.norm(y.permute(0, 2, 3, 1)).flatten(1))


def explained_gated(seed: int = 0):
    torch.manual_seed(seed)
    model = Gated().double().eval()
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    return graphlrp.explain(graphlrp.lower(model, x), x, target=2, rule=rules.Epsilon())


class Dilated(nn.Module):
    """Convolutions with dilation, groups, stride, padding, a zero output channel and zero kernel entries."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(2, 4, 3, padding=2, dilation=2)
        self.grouped = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.head = nn.Linear(6 * 4 * 4, 3)
        with torch.no_grad():
            self.wide.weight[1] = 0.0
            self.grouped.weight[self.grouped.weight.abs() < 0.1] = 0.0

    def forward(self, x):
        return self.head(torch.relu(self.grouped(torch.relu(self.wide(x)))).flatten(1))


def explained_dilated(rule, dtype=torch.float64):
    torch.manual_seed(1)
    model = Dilated().to(dtype).eval()
    x = torch.randn(3, 2, 8, 8, dtype=dtype)
    return graphlrp.explain(graphlrp.lower(model, x), x, target=0, rule=rule)


EXPLANATIONS = {
    "cnn": lambda: explained_cnn(),
    "cnn-conv-zplus": lambda: explained_cnn(rule=rules.ZPlus()),
    "cnn-conv-alphabeta": lambda: explained_cnn(rule=rules.AlphaBeta(2, 1)),
    "dilated-gamma": lambda: explained_dilated(rules.Gamma(0.25)),
    "dilated-alphabeta-float32": lambda: explained_dilated(rules.AlphaBeta(1, 0), torch.float32),
    "cnn-sparse-zplus": lambda: explained_cnn("sparse", rules.ZPlus()),
    "cnn-edges-gamma": lambda: explained_cnn("edges", rules.Gamma(0.25)),
    "cnn-dense-alphabeta": lambda: explained_cnn("dense", rules.AlphaBeta(2, 1)),
    "mlp-float32": explained_mlp,
    "gated": explained_gated,
    **{f"dag{seed}": (lambda seed=seed: explained_dag(seed)) for seed in range(4)},
}


@pytest.fixture(params=sorted(EXPLANATIONS))
def explanation(request):
    return EXPLANATIONS[request.param]()


@pytest.mark.parametrize("size", RUN_SIZES)
def test_message_runs_are_edge_relevance_bit_for_bit(explanation, size):
    src, dst, weight = explanation.graph.edges()
    for sample in ([0, 1], 1):
        runs = list(explanation.message_runs(sample, contributions=True, max_edges=size))
        rows = [sample] if isinstance(sample, int) else sample
        assert torch.equal(torch.cat([r.messages for r in runs], 1), explanation.edge_relevance(rows))
        assert torch.equal(torch.cat([r.contributions for r in runs], 1), explanation.edge_contributions(rows))
        assert torch.equal(torch.cat([r.src for r in runs]), src) and torch.equal(torch.cat([r.dst for r in runs]), dst)
        assert torch.equal(torch.cat([r.weight for r in runs]), weight)
        for r in runs:  # a layout's holes hold zeros
            holes = torch.zeros(r.layout.shape[1], dtype=torch.bool) if r.valid is None else ~r.valid
            assert not r.layout[:, holes].any() and not r.contribution_layout[:, holes].any()


@pytest.mark.parametrize("size", [1, 30, 1 << 30])
def test_conv_runs_take_the_listed_edges_of_any_entries(size):
    explanation = explained_dilated(rules.Epsilon())
    g = torch.Generator().manual_seed(size)
    for block in explanation.graph.blocks:
        if not isinstance(block, ConvBlock):
            continue
        src, dst, weight = block.edges()
        for run in block.edge_runs(size):
            valid = torch.nonzero(run.valid).flatten()
            assert len(valid) == len(run) and run.size >= len(run)
            for chosen in (valid, valid[torch.randperm(len(valid), generator=g)[:3]].sort().values):
                offset, *listed = run.take(chosen)
                position = offset + run.start
                assert torch.equal(offset, torch.searchsorted(valid, chosen))  # edges before it in the run
                for got, expected in zip(listed, (src, dst, weight)):
                    assert torch.equal(got, expected[position])


# -- exact selections --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("seed", range(4))
def test_selection_equals_the_exact_reference_however_cut(seed, dtype):
    values = random_magnitudes(seed, 400, dtype)
    listed = [float(v) for v in values]
    rng = np.random.default_rng(seed)
    criteria = [dict(mass=f) for f in (1e-9, 0.3, 0.5, 0.9, 1.0)] + [
        dict(top_k=0), dict(top_k=7), dict(top_k=150), dict(threshold=float(values[3])),
        dict(top_k=40, mass=0.5), dict(threshold=1.0, mass=0.99), dict(top_k=90, threshold=1e-3, mass=0.7)]
    for cuts in ([], sorted(rng.choice(np.arange(1, 400), 30, replace=False).tolist()), list(range(1, 400))):
        for options in criteria:
            chosen = streaming.select(runs_of(values, cuts), **options)
            expected = reference_select(listed, **options)
            assert chosen.positions.tolist() == expected, (cuts[:3], options)
            assert not expected or torch.equal(chosen.payload[0], values[expected] * 2)
            total = sum(Fraction(m) for m in listed)
            assert chosen.fraction == float(sum(Fraction(listed[i]) for i in expected) / total)


def test_mass_of_a_huge_and_tiny_values_counts_the_tiny_ones():
    # in float64 arithmetic 1 + 2⁻⁶⁰ == 1: a rounded running sum would stop after the large value
    values = torch.tensor([1.0] + [2.0 ** -60] * 8, dtype=torch.float64)
    chosen = streaming.select(runs_of(values, [3]), mass=1.0)
    assert chosen.positions.tolist() == list(range(9))
    assert chosen.fraction == 1.0


def test_mass_of_zero_magnitudes_is_empty_and_nan_is_refused():
    assert streaming.select(runs_of(torch.zeros(5), [2]), mass=0.5).positions.tolist() == []
    with pytest.raises(ValueError, match="NaN, inf or negative"):
        streaming.select(runs_of(torch.tensor([1.0, float("nan")]), []), mass=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_histogram_of_the_compiled_kernel_is_torchs(dtype):
    values = random_magnitudes(5, 3000, dtype)
    values[7] = -0.0
    histograms = []
    for context in (contextlib.nullcontext(), kernels.disabled()):
        with context:
            histogram = streaming.Histogram(dtype, values.device)
            histogram.add(values[:1000], "values")
            histogram.add(values[1000:], "values")
            histograms.append(histogram)
            for bad in (float("nan"), float("inf"), -1e-3):
                with pytest.raises(ValueError, match="NaN, inf or negative"):
                    streaming.Histogram(dtype, values.device).add(torch.tensor([1.0, bad], dtype=dtype), "values")
    compiled, plain = histograms
    for name in ("counts", "high", "low"):
        a, b = getattr(compiled, name), getattr(plain, name)
        assert (a is None and b is None) or torch.equal(a, b)
    assert compiled.total() == sum(Fraction(float(v)) * 2 ** 1074 for v in values)


def test_exact_sum_and_flow_sums():
    values = torch.tensor([2.0 ** 60, 1.0, -0.0, 2.0 ** -70, 3.5], dtype=torch.float64)
    assert Fraction(streaming.exact_sum(values), 2 ** 1074) == sum(Fraction(float(v)) for v in values)


# -- analyses: streamed in small runs against listing references -----------------------------------
@pytest.fixture(params=[1, 5])
def small_runs(request, monkeypatch):
    """Runs of ``RUN_ELEMENTS`` edges (divided among the samples): every analysis sees many runs."""
    monkeypatch.setattr(explanation_module, "RUN_ELEMENTS", request.param)
    return request.param


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 1.0])
def test_circuit_equals_the_listing_reference(explanation, small_runs, fraction):
    messages = explanation.edge_relevance(1)
    magnitude = [abs(float(m)) for m in messages]
    expected = reference_mass(magnitude, fraction)
    circuit = analysis.relevant_circuit(explanation, 1, fraction)
    assert circuit.edges.tolist() == expected
    src, dst, _ = explanation.graph.edges()
    assert circuit.src.dtype == circuit.dst.dtype == circuit.edges.dtype == torch.int32
    assert torch.equal(circuit.src.long(), src[expected]) and torch.equal(circuit.dst.long(), dst[expected])
    assert torch.equal(circuit.nodes, torch.unique(torch.cat([src[expected], dst[expected]])))
    assert torch.equal(circuit.relevance, messages[expected])
    total = sum(Fraction(m) for m in magnitude)
    assert circuit.fraction == float(sum(Fraction(magnitude[i]) for i in expected) / total)


@pytest.mark.parametrize("k", [1, 4, 1000])
def test_contrast_equals_the_listing_reference(small_runs, k):
    a = explained_cnn(seed=3)
    b = graphlrp.explain(a.graph, a.activations[0].reshape(3, 2, 8, 8), target=2)
    difference = a.edge_relevance(0) - b.edge_relevance(0)
    expected = reference_order([abs(float(d)) for d in difference])[:k]
    found = analysis.contrast(a, b, 0, k)
    assert [c.edge for c in found] == expected
    assert [c.difference for c in found] == difference[expected].tolist()


def test_contrast_with_equal_differences_ranks_by_edge_order(small_runs):
    a = explained_dag(1)
    found = analysis.contrast(a, a, 0, 6)  # every difference is zero
    assert [c.edge for c in found] == list(range(6))


@pytest.mark.parametrize("options", [dict(top_k=5), dict(top_k=1000), dict(threshold=1e-3), dict(mass=0.6),
                                     dict(top_k=9, mass=0.8), dict(top_k=20, threshold=1e-4, mass=0.95), {}])
@pytest.mark.parametrize("sample, aggregate", [(0, "sum"), ([0, 2], "mean"), (None, "mean_abs")])
def test_filtered_networkx_equals_the_listing_reference(small_runs, options, sample, aggregate):
    explanation = explained_cnn()
    G = explanation.to_networkx(sample, aggregate=aggregate, **options)
    rows = [sample] if isinstance(sample, int) else sample or [0, 1, 2]
    relevance = explanation.edge_relevance(rows)
    relevance = relevance.abs() if aggregate == "mean_abs" else relevance
    summed = relevance[0].clone()
    for row in relevance[1:]:
        summed += row
    if aggregate != "sum" and not isinstance(sample, int):
        summed = summed / len(rows)
    magnitude = [abs(float(v)) for v in summed]
    kept = reference_select(magnitude, **options)
    src, dst, _ = explanation.graph.edges()
    pairs = {(int(src[e]), int(dst[e])) for e in kept}
    assert set(G.edges) == pairs  # no parallel edges in this graph
    for e in kept:
        assert G.edges[int(src[e]), int(dst[e])]["relevance"] == float(summed[e])
    total = sum(Fraction(m) for m in magnitude)
    assert G.graph["mass_kept"] == float(sum(Fraction(magnitude[e]) for e in kept) / total)


def test_level_flow_is_the_exact_sum_of_the_messages(explanation, small_runs):
    messages = explanation.edge_relevance([0, 1])
    graph = explanation.graph
    starts = list(itertools.accumulate([0] + [b.num_edges for b in graph.blocks]))
    for row in analysis.level_flow(explanation, [0, 1]):
        part = torch.cat([messages[:, starts[i] : starts[i + 1]].reshape(-1) for i, b in enumerate(graph.blocks)
                          if (b.src, b.dst) == (row["src_level"], row["dst_level"])])
        assert row["positive"] == float(sum(Fraction(float(m)) for m in part if m > 0))
        assert row["negative"] == float(sum(Fraction(float(m)) for m in part if m < 0))


def reference_top_paths(explanation, sample: int, goal: int, k: int, score: str) -> list[tuple[int, ...]]:
    """The nodes of the ``k`` best paths into ``goal``, by a plain dynamic program over the listed
    edges: every node's ``k`` best continuations from all its edges' (no bounds, no runs), ranked
    by score, then first edge, then the continuation's rank; the best of the input nodes' by
    score, then node, then rank."""
    graph = explanation.graph
    src, dst, _ = (t.tolist() for t in graph.edges())
    assert all(d > s for s, d in zip(src, dst))  # destinations first: by descending node id
    messages = explanation.edge_relevance(sample).double().tolist()
    relevance = explanation.node_relevance[sample].double().tolist()
    leaving = {}
    for e, s in enumerate(src):
        leaving.setdefault(s, []).append(e)
    best = {goal: [(1.0 if score == "product" else 0.0, None, None)]}  # (score, first edge, its rank)
    for node in sorted(leaving, reverse=True):
        candidates = []
        for e in leaving[node]:
            r = relevance[dst[e]]
            step = abs(messages[e] / r if r != 0 else 0.0) if score == "product" else abs(messages[e])
            for rank, (value, _, _) in enumerate(best.get(dst[e], [])):
                candidates.append((step * value if score == "product" else step + value, e, rank))
        if candidates:
            best[node] = sorted(candidates, key=lambda c: (-c[0], c[1], c[2]))[:k]
    starts = [(best[v][r][0], v, r) for v in graph.levels[0].nodes if v in best for r in range(len(best[v]))]
    found = []
    for _, node, rank in sorted(starts, key=lambda c: (-c[0], c[1], c[2]))[:k]:
        nodes = [node]
        while node != goal:
            _, e, rank = best[node][rank]
            node = dst[e]
            nodes.append(node)
        found.append(tuple(nodes))
    return found


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("score", ["product", "sum"])
def test_top_paths_equal_the_plain_dynamic_program(explanation, score, compiled, monkeypatch):
    # convolutions with padding, stride, dilation, groups and zero weights, max pooling, residual
    # sums, gates and dense heads; runs of 64 entries cut a convolution's channels and positions,
    # and the tables of paths grow from one row
    monkeypatch.setattr(explanation_module, "RUN_ELEMENTS", 64)
    monkeypatch.setattr(analysis, "ROWS_AT_FIRST", 1)
    graph = explanation.graph
    for sample, target, k in ((0, None, 1), (1, 0, 7), (2 % len(explanation.node_relevance), -1, 30)):
        relevance = explanation.node_relevance[sample]
        outputs = graph.outputs
        goal = int(outputs[target] if target is not None else outputs[relevance[outputs].abs().argmax()])
        with contextlib.nullcontext() if compiled else kernels.disabled():
            found = analysis.top_paths(explanation, sample, target, k, score)
        assert found and [p.nodes for p in found] == reference_top_paths(explanation, sample, goal, k, score)


@pytest.mark.skipif(not kernels.available(), reason="numba is not installed")
@pytest.mark.parametrize("score", ["product", "sum"])
def test_path_bounds_compiled_are_torch_bit_for_bit(explanation, score, monkeypatch):
    monkeypatch.setattr(explanation_module, "RUN_ELEMENTS", 64)
    graph = explanation.graph
    relevance = explanation.node_relevance[1].double()
    goal = int(graph.outputs[0])
    compiled = analysis._best_prefixes(explanation, 1, relevance, goal, score)
    with kernels.disabled():
        reference = analysis._best_prefixes(explanation, 1, relevance, goal, score)
    assert torch.equal(compiled, reference) and bool((compiled > float("-inf")).any())
    # every run's edges to relax, under bounds that keep some and drop others
    suffixes = torch.where(compiled > float("-inf"), compiled.abs() * 0.5 + 0.25, compiled)
    kept = 0
    for run in explanation.message_runs(1):
        block = run.block
        src, dst = graph.levels[block.src], graph.levels[block.dst]
        rows = [analysis._level_view(v, level) for v, level in
                ((relevance, dst), (suffixes, dst), (suffixes * 0.1, src), (compiled, src))]
        for bound in (float("-inf"), 0.0, float(compiled[compiled > float("-inf")].median())):
            found = analysis._passes(run, *rows, bound, score)
            with kernels.disabled():
                assert torch.equal(found, analysis._passes(run, *rows, bound, score))
            kept += int(found.sum())
    assert kept


@pytest.mark.parametrize("score", ["product", "sum"])
def test_top_paths_do_not_depend_on_the_runs(explanation, score, monkeypatch):
    found = {}
    for size in (1, 5, 1 << 21):
        monkeypatch.setattr(explanation_module, "RUN_ELEMENTS", size)
        monkeypatch.setattr(analysis, "RUN_EDGES", size)
        found[size] = [(p.nodes, p.score, p.edge_relevance) for p in analysis.top_paths(explanation, 1, k=6, score=score)]
    assert found[1] == found[5] == found[1 << 21] and found[1]


def test_tied_paths_rank_by_input_node_then_edge_order():
    # two inputs, each with two equal routes through the hidden layer to one output
    graph = graphlrp.Graph.from_edges([0, 0, 1, 1, 2, 3], [2, 3, 2, 3, 4, 4], [1.0] * 6, dtype=torch.float64)
    explanation = graphlrp.explain(graph, torch.ones(1, 2, dtype=torch.float64), target=0)
    paths = analysis.top_paths(explanation, 0, k=4)
    assert len({p.score for p in paths}) == 1
    assert [p.nodes for p in paths] == [(0, 2, 4), (0, 3, 4), (1, 2, 4), (1, 3, 4)]


# -- memory: no tensor of every edge ---------------------------------------------------------------
class LargestAllocation(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("channels, side, factor", [
    (8, 16, 1.5),
    pytest.param(16, 28, 5, marks=pytest.mark.slow),  # the probe's dispatch costs about a minute here
])
def test_analyses_never_allocate_every_edge(monkeypatch, channels, side, factor):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * channels * (side // 2) ** 2, 4)).eval()
    x = torch.randn(2, 3, side, side)
    explanation = graphlrp.explain(graphlrp.lower(model, x), x, target=1)
    graph = explanation.graph
    # per-node tensors of two samples, and the fixed 2¹⁶ bins of a float32 histogram
    bound = max(level.size for level in graph.levels) * 4 + (1 << 16)
    assert graph.num_edges > factor * bound  # the bound is far below every edge
    monkeypatch.setattr(explanation_module, "RUN_ELEMENTS", 1 << 14)
    monkeypatch.setattr(analysis, "RUN_EDGES", 1 << 14)
    for block in graph.blocks:
        block.edges()  # listings the blocks keep for their own products are not the analyses'
    for name, run in {
        "circuit": lambda: analysis.relevant_circuit(explanation, 0, 0.05),
        "contrast": lambda: analysis.contrast(explanation, explanation, 0, 10),
        "flow": lambda: analysis.level_flow(explanation),
        "networkx": lambda: explanation.to_networkx([0, 1], top_k=100, mass=0.3),
    }.items():
        with LargestAllocation() as probe:
            run()
        assert probe.largest < bound, (name, probe.largest, graph.num_edges)
    with LargestAllocation() as probe:  # k entries per node, and (k candidates per edge of a run) × 2 indices
        analysis.top_paths(explanation, 0, k=2)
    assert probe.largest <= max(2 * graph.num_nodes, 4 * (1 << 14)) < graph.num_edges / 1.5
