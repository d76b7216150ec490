"""Random irregular DAG cases of ``scripts/bench`` (graphlrp only).

The DAG has :data:`DAG_LEVELS` levels of ``num_edges // 50`` nodes each (20 k nodes at 10⁶ edges,
200 k at 10⁷) and random edges between *every* pair of levels ``i < j``, so most edges skip levels;
every pair gets the same number of distinct random edges. Hidden levels apply ReLU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

import graphlrp
from _bench_util import PeakProbe, Timing, release_free_memory, time_interleaved, time_once
from graphlrp.activations import IDENTITY, activation_by_name
from graphlrp.blocks import Block, EdgeListBlock, SparseBlock

DAG_LEVELS = 6
EDGES_PER_NODE = 50
#: Byte model of the edge-message kernel, per edge at least: read the src and dst index (int32),
#: the weight, x[src] and s[dst] (float32), write the message (float32): 6 × 4 bytes.
EDGE_MESSAGE_BYTES = 24
COPY_MEGABYTES = 256


def _distinct_pairs(n_src: int, n_dst: int, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` distinct random ``(src, dst)`` pairs, ordered by ``(dst, src)``."""
    keys = torch.empty(0, dtype=torch.int64)
    while len(keys) < count:
        fresh = torch.randint(0, n_src * n_dst, (count - len(keys) + count // 50 + 16,), generator=generator)
        keys = torch.unique(torch.cat([keys, fresh]))
    keep = torch.randperm(len(keys), generator=generator)[:count].sort().values
    keys = keys[keep]
    return keys % n_src, keys // n_src


@dataclass
class RandomEdges:
    """A random DAG as plain data: its levels and, per level pair, local ``(src, dst, weight)`` lists."""

    levels: list[graphlrp.Level]
    edges: list[tuple[int, int, Tensor, Tensor, Tensor]]  # (src level, dst level, src idx, dst idx, weight)


def random_edges(num_edges: int, seed: int = 0) -> RandomEdges:
    """Levels and ``num_edges`` distinct random edges, spread evenly over all level pairs ``i < j``."""
    generator = torch.Generator().manual_seed(seed)
    n = num_edges // EDGES_PER_NODE
    pairs = [(i, j) for j in range(1, DAG_LEVELS) for i in range(j)]
    per_pair = [num_edges // len(pairs) + (k < num_edges % len(pairs)) for k in range(len(pairs))]
    relu = activation_by_name("relu")
    levels = [graphlrp.Level(0, "input", "input", (n,), 0)]
    for index in range(1, DAG_LEVELS):
        bias = 0.1 * torch.randn(n, generator=generator)
        activation = IDENTITY if index == DAG_LEVELS - 1 else relu
        levels.append(graphlrp.Level(index, f"level{index}", "random", (n,), index * n, bias, activation))
    edges = []
    for (src, dst), count in zip(pairs, per_pair):
        src_idx, dst_idx = _distinct_pairs(n, n, count, generator)
        fan_in = sum(c for (_, d), c in zip(pairs, per_pair) if d == dst) / n
        edges.append((src, dst, src_idx, dst_idx, torch.randn(count, generator=generator) / math.sqrt(fan_in)))
    return RandomEdges(levels, edges)


def build_graph(spec: RandomEdges, kind: str) -> graphlrp.Graph:
    """The graph of ``spec`` with blocks of ``kind``: ``'sparse'`` (CSR) or ``'edges'`` (edge list)."""
    blocks: list[Block] = []
    for src, dst, src_idx, dst_idx, weight in spec.edges:
        n_src, n_dst = spec.levels[src].size, spec.levels[dst].size
        if kind == "sparse":
            blocks.append(SparseBlock.from_edge_list(src, dst, n_src, n_dst, src_idx, dst_idx, weight))
        else:
            blocks.append(EdgeListBlock(src, dst, n_src, n_dst, src_idx, dst_idx, weight))
    return graphlrp.Graph(spec.levels, blocks)


def copy_buffers() -> tuple[Tensor, Tensor]:
    """Source and (already written) destination of the bandwidth probe: 256 MB each."""
    src = torch.rand(COPY_MEGABYTES * 2**20 // 4)
    return src, src.clone()


def copy_bytes(src: Tensor) -> int:
    """Bytes ``dst.copy_(src)`` moves: read ``src``, write ``dst``."""
    return 2 * src.numel() * src.element_size()


def _edge_sum_error(graph: graphlrp.Graph, explanation: graphlrp.Explanation, messages: Tensor) -> float:
    """Max relative gap between a node's relevance and the sum of the messages leaving it."""
    src, _, _ = graph.edges()
    leaving = torch.zeros(graph.num_nodes, dtype=messages.dtype).index_add_(0, src, messages)
    has_edges = torch.zeros(graph.num_nodes, dtype=torch.bool)
    has_edges[src] = True
    relevance = explanation.node_relevance[0]
    scale = float(relevance.abs().max())
    return float((leaving - relevance)[has_edges].abs().max()) / scale if scale else 0.0


def _warm_up_kernels(kind: str) -> None:
    """Explain a tiny DAG once, so that compiling or loading graphlrp's kernels (numba) is not
    counted in the first measured call."""
    graph = build_graph(random_edges(2000, seed=1), kind)
    graphlrp.explain(graph, torch.ones(1, *graph.input_shape), target=0).edge_relevance(0)


def measure_dag(num_edges: int, kind: str, timing: Timing) -> dict[str, float]:
    """Build a random DAG and measure it; meant to run in a fresh process (peaks are per process).

    Returns seconds (``build_s``: graphlrp's blocks and graph from ready edge lists, ``explain_s``
    warm median, ``explain_cold_s`` first call, ``edge_s`` into a new tensor, ``edge_out_s`` into a
    reused ``out=`` buffer), bytes (``nbytes``; ``build_peak``
    above the memory holding the edge lists; ``explain_peak`` above the process's memory before
    the edges existed; ``edge_working`` above the memory right before the call),
    ``copy_bandwidth`` in bytes/s, and the edge-message check ``edge_sum_error``.
    """
    _warm_up_kernels(kind)
    probe = PeakProbe()
    release_free_memory()
    baseline = probe.rss()
    spec = random_edges(num_edges)
    release_free_memory()
    before_build = probe.rss()
    probe.reset()
    build_s, graph = time_once(lambda: build_graph(spec, kind))
    build_peak = probe.peak() - before_build
    del spec
    x = torch.randn(1, *graph.input_shape, generator=torch.Generator().manual_seed(1))
    start = torch.ones(1, *graph.output_shape)  # every output node starts with relevance 1
    rule = graphlrp.rules.Epsilon()

    def run() -> graphlrp.Explanation:
        return graphlrp.explain(graph, x, output_relevance=start, rule=rule)

    probe.reset()
    explain_cold_s, explanation = time_once(run)
    run()
    explain_peak = probe.peak()
    explain_s = time_interleaved({"explain": run}, timing)["explain"]
    release_free_memory()
    before_edges = probe.rss()
    probe.reset()
    messages = explanation.edge_relevance(0)
    edge_working = probe.peak() - before_edges
    edge_sum_error = _edge_sum_error(graph, explanation, messages)
    del messages
    buffer = torch.empty(graph.num_edges)
    copy_src, copy_dst = copy_buffers()
    # the copy is timed in alternation with the edge relevance: both see the same memory traffic
    # from the machine's other tenants, which moved the copy bandwidth by 2× between runs
    edge_times = time_interleaved({
        "new": lambda: explanation.edge_relevance(0),
        "out": lambda: explanation.edge_relevance(0, out=buffer),
        "copy": lambda: copy_dst.copy_(copy_src),
    }, timing)
    return {
        "num_edges": graph.num_edges,
        "num_nodes": graph.num_nodes,
        "nbytes": graph.nbytes,
        "build_s": build_s,
        "build_peak": build_peak,
        "explain_cold_s": explain_cold_s,
        "explain_s": explain_s,
        "explain_peak": explain_peak - baseline,
        "edge_s": edge_times["new"],
        "edge_out_s": edge_times["out"],
        "edge_working": edge_working,
        "edge_sum_error": edge_sum_error,
        "copy_bandwidth": copy_bytes(copy_src) / edge_times["copy"],
    }
