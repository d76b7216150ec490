"""Questions about an explanation answered over its edges: paths, circuits, flows, rankings.

Every function takes an :class:`~graphlrp.Explanation` (or, for :func:`mean_edge_relevance`, a
graph and a data set) and works on the edge relevance of :meth:`Explanation.edge_relevance`:
the message ``m_ij`` on edge ``i → j`` is the part of ``R_j`` that went to ``i``, and the messages
leaving ``i`` sum to ``R_i``. Several samples are processed in chunks, never ``samples × edges``
at once.
"""
from __future__ import annotations

import functools
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from . import kernels, reductions, streaming
from .composites import Composite
from .explanation import Explanation, MessageRun
from .errors import ArgumentTypeError, IndexOutOfRangeError, InputError
from .edge_ends import edge_ends
from .export import check_bool, check_fraction, check_int
from .graph import Graph, Level
from .heaviest import heaviest
from .memory import check_budget
from .rules import Rule
from .samples import Samples, check_explanation, is_index

PathScore = Literal["product", "sum"]
PATH_SCORES = ("product", "sum")

#: bytes per kept path and node, in each of three ``(N, k)`` tables (a score, and how the path continues)
PATH_BYTES = 8
#: edges per run when paths are counted
RUN_EDGES = 1 << 21
#: rows of the ``k`` best paths' tables at first (doubled as more nodes hold paths)
ROWS_AT_FIRST = 1 << 12
#: above this ``k``, :func:`top_paths` counts the paths first (one pass over the edges) and keeps
#: no more than that many per node
COUNT_PATHS_ABOVE = 16
#: relative slack of the bound an edge must reach to be relaxed (covers the rounding of a path's
#: score computed in another order), and an absolute one for scores near the subnormal range
BOUND_SLACK, BOUND_FLOOR = 1e-9, 1e-290


# -- helpers ------------------------------------------------------------------------------------
def _one_sample(explanation: Explanation, sample: int) -> int:
    """``sample`` as a non-negative row, which must be a single int."""
    check_explanation(explanation)
    if not is_index(sample):
        raise ArgumentTypeError(f"sample must be one int, got {sample!r} ({type(sample).__name__})")
    return explanation.sample_rows(sample)[0]


def _position(level: Level, node: int) -> tuple[int, ...]:
    return tuple(int(c) for c in np.unravel_index(node - level.offset, level.shape))


# -- top paths ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Path:
    """A path of edges from an input node to an output node.

    Attributes
    ----------
    nodes : tuple of int
        Global node ids, input first.
    labels : tuple of str
        :meth:`Graph.node_label` of each node.
    score : float
        ``'product'``: the relevance that flows along the path, ``R_t · Π f_e`` with ``f_ij =
        m_ij / R_j`` (signed); ``'sum'``: ``Σ |m_e|`` over its edges.
    edge_relevance : tuple of float
        The message ``m_e`` of each edge along the path.
    """

    nodes: tuple[int, ...]
    labels: tuple[str, ...]
    score: float
    edge_relevance: tuple[float, ...]


class _Suffixes:
    """The ``k`` best path scores from each node to the target, and how each continues.

    Ranked by score, ties by the first edge's position, then by the continuation's rank. Only
    the nodes that hold a path have a row of the tables (given out as their first path
    arrives); every node's best and ``k``-th best score are kept in full.
    """

    def __init__(self, num_nodes: int, k: int, goal: int, start: float, index_dtype: torch.dtype,
                 message_dtype: torch.dtype, device: torch.device) -> None:
        self.k, self._index_dtype, self._message_dtype = k, index_dtype, message_dtype
        self.row = torch.full((num_nodes,), -1, dtype=index_dtype, device=device)  # table row of each node
        self.first = torch.full((num_nodes,), float("-inf"), dtype=torch.float64, device=device)
        self.last = self.first.clone()  # the k-th best (-inf for fewer than k)
        self.used = 0
        self._grow(min(num_nodes, ROWS_AT_FIRST), device)
        goal_row = self.rows_of(torch.tensor([goal], device=device))
        self.value[goal_row, 0] = self.first[goal] = start
        if k == 1:
            self.last[goal] = start

    def _grow(self, rows: int, device: torch.device) -> None:
        k = self.k
        fresh = (torch.full((rows, k), float("-inf"), dtype=torch.float64, device=device),  # scores, -inf: none
                 torch.full((rows, k), -1, dtype=self._index_dtype, device=device),  # destination of the first edge
                 torch.full((rows, k), -1, dtype=torch.int32, device=device),  # which of its paths continues
                 torch.zeros((rows, k), dtype=self._message_dtype, device=device))  # the first edge's message
        if self.used:
            fresh = tuple(torch.cat([old[: self.used], new]) for old, new in
                          zip((self.value, self.next_node, self.next_rank, self.next_message), fresh))
        self.value, self.next_node, self.next_rank, self.next_message = fresh

    def rows_of(self, nodes: Tensor) -> Tensor:
        """The table rows of distinct ``nodes``, given out to those without one (int64)."""
        rows = self.row[nodes].long()
        new = rows < 0
        count = int(new.sum())
        if count:
            if self.used + count > len(self.value):
                rows_wanted = max(self.used + count, min(2 * len(self.value), len(self.row)))
                self._grow(rows_wanted - len(self.value), nodes.device)
            rows[new] = torch.arange(self.used, self.used + count, device=nodes.device)
            self.row[nodes[new]] = rows[new].to(self.row.dtype)
            self.used += count
        return rows

    def of_nodes(self, nodes: slice) -> Tensor:
        """The scores of a range of nodes, ``(n, k)`` (-inf rows for nodes without paths)."""
        rows = self.row[nodes].long()
        held = rows >= 0
        value = self.first.new_full((len(rows), self.k), float("-inf"))
        value[held] = self.value[rows[held]]
        return value


def top_paths(
    explanation: Explanation, sample: int = 0, target: int | None = None, k: int = 5, score: PathScore = "product"
) -> list[Path]:
    """The ``k`` most relevant paths from any input node to one output node.

    Found by dynamic programming over the DAG, level by level backwards from the target, keeping
    the ``k`` best continuations per node (paths are never enumerated). Each level's outgoing
    edges are streamed run by run (:meth:`Explanation.message_runs`): memory holds each node's
    best and ``k``-th best score, ``k`` entries per node that receives a path, and one run,
    never every edge.

    Parameters
    ----------
    explanation : Explanation
    sample : int
        Sample of the batch.
    target : int, optional
        Index into ``graph.outputs`` of the output node; default the output node with the largest
        ``|relevance|``.
    k : int
        Number of paths, ``>= 1``; fewer when fewer paths reach the target.
    score : {'product', 'sum'}
        ``'product'``: a path's relevance, ``R_t · Π f_ij`` with the flow fraction
        ``f_ij = m_ij / R_j`` (0 where ``R_j = 0``) — the part of the target's relevance that
        reached the input along the path; ranked by its absolute value. ``'sum'``: ``Σ |m_ij|``
        along the path.

    Returns
    -------
    list of Path
        Best first; of equal scores, the one from the input node with the lower id first, and
        of two from one node the one whose first edge comes first in :meth:`Graph.edges` order
        (the same rule along the rest of the path). The work is bounded by the number of paths that
        reach the target, however large ``k`` is.

    Raises
    ------
    ArgumentTypeError
        For an ``explanation``, ``sample``, ``target`` or ``k`` of the wrong type.
    InputError
        For an unknown ``score`` or ``k < 1``.
    IndexOutOfRangeError
        For a ``sample`` or ``target`` out of range (negative ones count from the end).
    GraphTooLargeError
        If the ``k`` best paths per node would exceed the memory budget.
    """
    row = _one_sample(explanation, sample)
    if not isinstance(score, str) or score not in PATH_SCORES:
        raise InputError(f"unknown score {score!r}; choose one of {PATH_SCORES}")
    k = check_int("k", k, 1)
    graph = explanation.graph
    relevance = explanation.node_relevance[row].double()
    goal = _target_node(graph, relevance, target)
    if k > COUNT_PATHS_ABOVE:
        k = min(k, _count_paths(graph, goal, k))
        if k == 0:
            return []
    check_budget(f"the {k:,} best paths from each of {graph.num_nodes:,} nodes", PATH_BYTES * k * 3 * graph.num_nodes,
                 None)
    prefixes = _best_prefixes(explanation, row, relevance, goal, score)
    suffixes = _best_suffixes(explanation, row, relevance, goal, k, score, prefixes)
    first = graph.levels[0]
    starts = suffixes.of_nodes(slice(first.offset, first.offset + first.size)).flatten()
    order = torch.argsort(starts, descending=True, stable=True)
    paths = []
    for slot in order[starts[order] > float("-inf")][:k].tolist():
        nodes, messages = _follow(suffixes, first.offset + slot // k, slot % k, goal)
        found = torch.tensor(messages, dtype=torch.float64, device=relevance.device)
        if score == "product":
            value = float(relevance[goal]) * math.prod(_fractions(found, relevance[list(nodes[1:])]).tolist())
        else:
            value = float(found.abs().sum())
        labels = tuple(graph.node_label(v) for v in nodes)
        paths.append(Path(nodes, labels, value, tuple(messages)))
    return paths


def _fractions(messages: Tensor, relevance: Tensor) -> Tensor:
    """``m_ij / R_j`` per edge, 0 where ``R_j = 0`` (float64)."""
    nonzero = relevance != 0
    return torch.where(nonzero, messages / torch.where(nonzero, relevance, 1.0), 0.0)


def _target_node(graph: Graph, relevance: Tensor, target: int | None) -> int:
    outputs = graph.outputs
    if target is None:
        return int(outputs[relevance[outputs].abs().argmax()])
    if not is_index(target):
        raise ArgumentTypeError(f"target must be an int index into the graph's outputs or None, got {target!r}")
    if not -len(outputs) <= target < len(outputs):
        raise IndexOutOfRangeError(f"target {target!r} is not an index into the graph's {len(outputs)} outputs "
                                   f"(-{len(outputs)} .. {len(outputs) - 1})")
    return int(outputs[target])


def _count_paths(graph: Graph, goal: int, limit: int) -> int:
    """The number of paths from the input level to ``goal``, or ``limit`` if there are at least that many.

    Counted backwards from ``goal``, level by level over runs of edges, each node's count capped at ``limit``.
    """
    count = torch.zeros(graph.num_nodes, dtype=torch.float64, device=graph.device)
    count[goal] = 1.0
    for level in reversed(graph.levels[: graph.level_of(goal).index]):
        for block in graph.blocks:
            if block.src != level.index:
                continue
            src_offset, dst_offset = level.offset, graph.levels[block.dst].offset
            for run in block.edge_runs(RUN_EDGES):
                count.index_add_(0, run.src + src_offset, count[run.dst + dst_offset])
        count[level.offset : level.offset + level.size].clamp_(max=limit)
    first = graph.levels[0]
    return int(min(float(count[first.offset : first.offset + first.size].sum()), limit))


def _steps(messages: Tensor, relevance: Tensor, score: PathScore) -> Tensor:
    """What each edge adds to a path's score, a new float64 tensor shaped like ``messages``:
    ``|m_ij / R_j|`` or ``|m_ij|``, for the relevance ``R_j`` of each edge's destination
    (``relevance`` broadcasts against ``messages``)."""
    step = messages.to(torch.float64, copy=True)
    if score == "sum":
        return step.abs_()
    nonzero = relevance != 0
    step.div_(torch.where(nonzero, relevance, 1.0)).abs_()
    return step if bool(nonzero.all()) else step.masked_fill_(~nonzero, 0.0)


def _extend(values: Tensor, by: Tensor, score: PathScore) -> Tensor:
    """Scores ``values`` extended by ``by`` (which broadcasts against them), in place: where ``by``
    is -inf (no path) the result is -inf, never NaN."""
    if score == "product":
        values.mul_(by)
    else:
        values.add_(by)
    missing = ~(by > float("-inf"))
    return values.masked_fill_(missing, float("-inf")) if bool(missing.any()) else values


def _level_view(values: Tensor, level: Level) -> Tensor:
    """``values``' part for ``level``'s nodes, as one row ``(1, n)`` (a view)."""
    return values[level.offset : level.offset + level.size][None]


def _best_prefixes(explanation: Explanation, row: int, relevance: Tensor, goal: int, score: PathScore) -> Tensor:
    """For every node, the best score of a path from an input node to it (-inf for none).

    One forward pass over the blocks below ``goal``'s level, by ascending source level: a node's
    incoming edges all come from lower levels, so its score is final before its edges leave.
    Each run is scored over its grid (:attr:`MessageRun.grid`), a convolution's sources and
    destinations broadcast rather than repeated.
    """
    graph = explanation.graph
    prefixes = relevance.new_full((graph.num_nodes,), float("-inf"))
    first = graph.levels[0]
    prefixes[first.offset : first.offset + first.size] = 1.0 if score == "product" else 0.0
    top = graph.level_of(goal).index
    blocks = sorted((b for b, block in enumerate(graph.blocks) if block.dst <= top), key=lambda b: graph.blocks[b].src)
    block = None
    for run in explanation.message_runs(row, blocks=blocks) if blocks else ():
        if run.block is not block:  # the source level's prefixes are final: read once per block
            block = run.block
            source, target = _level_view(prefixes, graph.levels[block.src]), _level_view(prefixes, graph.levels[block.dst])
            target_relevance = _level_view(relevance, graph.levels[block.dst])
        messages, valid = _grid_of(run)
        relevance_grid = run.destination_grid(target_relevance)[0]
        prefix_grid = run.source_grid(source, float("-inf"))[0]
        rows = kernels.best_extensions(run.grid, messages, relevance_grid, prefix_grid, valid, score == "product")
        if rows is None:
            extended = _extend(_steps(messages, relevance_grid, score), prefix_grid, score)
            if valid is not None:
                extended.masked_fill_(~valid, float("-inf"))
            rows = extended.amax(-1)
        run.max_into(target[0], rows)
    return prefixes


def _grid_of(run: MessageRun) -> tuple[Tensor, Tensor | None]:
    """A run's messages and which entries are edges (``None``: all), shaped as its grid."""
    return run.layout[0].view(run.grid), None if run.valid is None else run.valid.view(run.grid)


def _slackened(bound: float) -> float:
    """A score just below ``bound``: what an edge must reach to be relaxed, safe against rounding."""
    return bound - abs(bound) * BOUND_SLACK - BOUND_FLOOR


def _best_suffixes(
    explanation: Explanation, row: int, relevance: Tensor, goal: int, k: int, score: PathScore, prefixes: Tensor
) -> _Suffixes:
    """The ``k`` best scores of paths from every node to ``goal``, source levels last to first,
    each level's outgoing edges streamed run by run.

    Only edges that can lie on one of the ``k`` best paths overall are relaxed: the best path
    through edge ``i → j`` scores at most ``prefix_i ⊗ f_ij ⊗ suffix_j`` (best path into ``i``,
    the edge, best path from ``j``), and once the nodes of a level hold ``k`` paths to the goal
    between them, the ``k`` best overall score at least the ``k``-th best ``prefix_v ⊗ (v's r-th
    best)`` over the level's nodes ``v`` and ranks ``r`` (:func:`_kth_through`). An edge below that
    bound is on none of them, and dropping it removes only paths that score strictly less than any kept one, so
    the ranking (ties included) is unchanged. These bounds, and whether an edge's best
    continuation beats its source's ``k``-th best when its block began, are tested over a run's
    grid before any edge is listed.
    """
    graph = explanation.graph
    n = graph.num_nodes
    index_dtype = torch.int32 if n < 2**31 else torch.long
    suffixes = _Suffixes(n, k, goal, 1.0 if score == "product" else 0.0, index_dtype,
                         explanation.node_relevance.dtype, relevance.device)
    floor = float("-inf")  # every one of the k best paths overall scores at least this
    for level in reversed(graph.levels[: graph.level_of(goal).index]):
        blocks = [number for number, block in enumerate(graph.blocks) if block.src == level.index]
        bound = _slackened(floor)
        block = None
        for run in explanation.message_runs(row, blocks=blocks) if blocks else ():
            if run.block is not block:
                block = run.block
                src_level, dst_level = graph.levels[block.src], graph.levels[block.dst]
                source = _level_view(prefixes, src_level)
                # the sources' k-th best when the block begins: a bound below their current one
                worst = _level_view(suffixes.last, src_level).clone()
                ahead = _level_view(suffixes.first, dst_level)  # destinations are final
                target_relevance = _level_view(relevance, dst_level)
            passes = _passes(run, target_relevance, ahead, worst, source, bound, score)
            index = torch.nonzero(passes.view(-1)).flatten()
            del passes
            if len(index):
                _, src, dst, _ = run.take(index)
                messages = run.layout[0][index]
                _relax(src, dst, _steps(messages, relevance[dst], score), messages, k, score, suffixes)
        nodes = slice(level.offset, level.offset + level.size)
        rows = suffixes.row[nodes].long()
        held = rows >= 0
        floor = max(floor, _kth_through(suffixes.value[rows[held]], prefixes[nodes][held], k, score))
    return suffixes


def _kth_through(value: Tensor, prefixes: Tensor, k: int, score: PathScore) -> float:
    """The ``k``-th best score of the paths through one level's nodes: node ``v``'s best path
    from the inputs followed by each of its ``k`` best to the goal (``value (n, k)``); -inf when
    there are fewer than ``k``. A path crosses a level at most once, so these are distinct paths."""
    through = _extend(value.clone(), prefixes[:, None], score).view(-1)
    found = through[through > float("-inf")]
    return float(torch.topk(found, k, sorted=False).values.min()) if len(found) >= k else float("-inf")


def _passes(run: MessageRun, relevance: Tensor, ahead: Tensor, worst: Tensor, prefixes: Tensor, bound: float,
            score: PathScore) -> Tensor:
    """Which entries of a run's grid are edges to relax: their best continuation ``f_ij ⊗
    ahead_j`` beats ``worst_i``, and ``prefix_i ⊗ f_ij ⊗ ahead_j >= bound`` (rows ``(1, n)`` of
    the destination level's ``relevance`` and ``ahead``, of the source level's ``worst`` and
    ``prefixes``)."""
    messages, valid = _grid_of(run)
    relevance_grid, ahead_grid = run.destination_grid(relevance)[0], run.destination_grid(ahead)[0]
    worst_grid, prefix_grid = run.source_grid(worst, float("inf"))[0], run.source_grid(prefixes, float("-inf"))[0]
    passes = kernels.path_passes(run.grid, messages, relevance_grid, ahead_grid, worst_grid, prefix_grid, valid,
                                 score == "product", bound)
    if passes is None:
        best = _extend(_steps(messages, relevance_grid, score), ahead_grid, score)
        passes = best > worst_grid
        passes &= _extend(best, prefix_grid, score) >= bound
        if valid is not None:
            passes &= valid
    return passes


def _relax(src: Tensor, dst: Tensor, step: Tensor, messages: Tensor, k: int, score: PathScore,
           suffixes: _Suffixes) -> None:
    """Merge the paths that start with edges ``src → dst`` (in edge order, adding ``step`` to a
    path's score) into their sources' rows (destinations are final).

    A candidate (edge, rank) enters only if it beats its source's ``k``-th best so far (the
    earlier edge wins a tie).
    """
    worst = suffixes.last[src]
    ahead = suffixes.value[suffixes.row[dst].long()]  # a destination with no row has no path: no edge here
    candidate = step[:, None] * ahead if score == "product" else step[:, None] + ahead
    edge, rank = torch.nonzero((ahead > float("-inf")) & (candidate > worst[:, None]), as_tuple=True)
    if len(edge) == 0:
        return
    nodes, local = torch.unique(src[edge], return_inverse=True)
    table = suffixes.rows_of(nodes)
    # the rows' current entries first (they come from earlier edges), then the run's candidates
    kept = suffixes.value[table]
    held = torch.nonzero(kept > float("-inf"), as_tuple=True)
    values = torch.cat([kept[held], candidate[edge, rank]])
    group = torch.cat([held[0], local])
    next_node = torch.cat([suffixes.next_node[table][held], dst[edge].to(suffixes.next_node.dtype)])
    next_rank = torch.cat([suffixes.next_rank[table][held], rank.to(torch.int32)])
    next_message = torch.cat([suffixes.next_message[table][held], messages[edge]])
    picked, rows, slots = _k_best_per_group(values, group, len(nodes), k)
    rows = table[rows]
    suffixes.value[table] = float("-inf")
    suffixes.value[rows, slots] = values[picked]
    suffixes.next_node[rows, slots] = next_node[picked]
    suffixes.next_rank[rows, slots] = next_rank[picked]
    suffixes.next_message[rows, slots] = next_message[picked]
    suffixes.first[nodes] = suffixes.value[table, 0]
    suffixes.last[nodes] = suffixes.value[table, k - 1]


def _k_best_per_group(values: Tensor, group: Tensor, groups: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` largest ``values`` of every group: positions, their group and rank within it."""
    order = torch.argsort(values, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    grouped = group[order]
    counts = torch.bincount(grouped, minlength=groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=values.device) - starts[grouped]
    keep = rank < k
    return order[keep], grouped[keep], rank[keep]


def _follow(suffixes: _Suffixes, node: int, rank: int, goal: int) -> tuple[tuple[int, ...], list[float]]:
    """The nodes and edge messages of path number ``rank`` from ``node`` to ``goal``."""
    nodes, messages = [node], []
    while node != goal:
        row = int(suffixes.row[node])
        following = int(suffixes.next_node[row, rank])
        messages.append(float(suffixes.next_message[row, rank]))
        node, rank = following, int(suffixes.next_rank[row, rank])
        nodes.append(node)
    return tuple(nodes), messages


# -- relevant circuit ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Faithfulness:
    """The network's output for one sample, in full and with only a circuit's edges."""

    output: Tensor
    circuit_output: Tensor


@dataclass(frozen=True)
class Circuit:
    """The fewest edges that carry a given fraction of one sample's total ``|edge relevance|``.

    Attributes
    ----------
    sample : int
    edges : Tensor
        Positions of the circuit's edges in :meth:`Graph.edges` order, by decreasing ``|relevance|``
        (ties by position); int32 where the graph's edges fit, else int64.
    relevance : Tensor
        Each edge's message.
    fraction : float
        The share of the total ``|edge relevance|`` the circuit carries.

    The ends of the edges, :attr:`src` and :attr:`dst`, and :attr:`nodes` are found from the
    positions when first asked for (:func:`graphlrp.edge_ends.edge_ends`), so that a circuit of
    10⁷ edges holds two numbers per edge until then.
    """

    explanation: Explanation = field(repr=False)
    sample: int
    edges: Tensor
    relevance: Tensor
    fraction: float

    @functools.cached_property
    def _ends(self) -> tuple[Tensor, Tensor]:
        graph = self.explanation.graph
        return edge_ends(graph, self.edges, _index_dtype(graph.num_nodes))

    @property
    def src(self) -> Tensor:
        """Global node id of each edge's source; int32 where the graph's nodes fit, else int64."""
        return self._ends[0]

    @property
    def dst(self) -> Tensor:
        """Global node id of each edge's destination; int32 where the graph's nodes fit, else int64."""
        return self._ends[1]

    @functools.cached_property
    def nodes(self) -> Tensor:
        """The edges' endpoints, ascending."""
        ends = torch.zeros(self.explanation.graph.num_nodes, dtype=torch.bool, device=self.edges.device)
        for part in (*self.src.split(RUN_EDGES), *self.dst.split(RUN_EDGES)):  # without a 64-bit copy of every id
            ends[part.long()] = True
        return torch.nonzero(ends).flatten()

    def faithfulness(self) -> Faithfulness:
        """The sample's output when only the circuit's edges are kept (others weigh 0), and in full.

        Biases and activations are kept. At ``fraction=1`` under LRP-0/ε the explained output is
        reproduced (up to rounding, unless relevance cancels exactly): there, an edge that carries
        no relevance adds nothing to any node that passes relevance on. Outputs that received no
        relevance, and outputs under rules that split by sign (z⁺, αβ), generally change.

        Raises
        ------
        ValueError
            For a graph with blocks whose edges depend on the sample (max pooling).
        """
        graph = self.explanation.graph
        pruned = prune(graph, self.edges)
        inputs = self.explanation.activations[0][self.sample : self.sample + 1]
        circuit_output = pruned(inputs).reshape(graph.output_shape)
        return Faithfulness(self.explanation.output[self.sample], circuit_output)


def relevant_circuit(explanation: Explanation, sample: int = 0, fraction: float = 0.9) -> Circuit:
    """The fewest edges, taken by decreasing ``|relevance|``, that carry ``fraction`` of the total.

    Taking edges greedily is optimal: no smaller set of edges carries the fraction. Sums are exact
    and ties go to the earlier edge (:mod:`graphlrp.streaming`); the edges are streamed in two
    passes, memory holds the circuit (a position and a message per edge) and one run of edges.

    Parameters
    ----------
    explanation : Explanation
    sample : int
    fraction : float
        In ``(0, 1]``. Edges without relevance are never part of a circuit.

    Returns
    -------
    Circuit
        :meth:`Circuit.faithfulness` runs the network on the circuit alone.

    Raises
    ------
    ArgumentTypeError
        For an ``explanation``, ``sample`` or ``fraction`` of the wrong type.
    InputError
        For a ``fraction`` outside ``(0, 1]``.
    IndexOutOfRangeError
        For a ``sample`` out of range.
    """
    row = _one_sample(explanation, sample)
    check_fraction("fraction", fraction)

    graph = explanation.graph

    def runs() -> Iterator[streaming.Run]:
        for run in explanation.message_runs(row):
            messages = run.layout[0]

            def take(index: Tensor, run=run, messages=messages) -> tuple[Tensor, list[Tensor]]:
                return run.take(index)[0], [messages[index]]

            yield streaming.Run(messages.abs(), run.valid, take)

    chosen = heaviest(runs, fraction, magnitude=0, position_dtype=_index_dtype(graph.num_edges))
    device = explanation.node_relevance.device
    relevance = chosen.payload[0] if chosen.payload else explanation.node_relevance.new_zeros(0)
    return Circuit(explanation, row, chosen.positions.to(device), relevance, fraction=chosen.fraction)


def _index_dtype(count: int) -> torch.dtype:
    """int32 for indices below ``count`` where they fit, else int64."""
    return torch.int32 if count <= 2**31 else torch.long


def prune(graph: Graph, keep: Tensor) -> Graph:
    """A graph computing ``graph`` with only the edges ``keep`` (positions in :meth:`Graph.edges` order).

    The result is a :meth:`Graph.from_edges` graph whose ``original_ids`` are ``graph``'s global
    node ids, with the same biases, activations and outputs (flattened to one dimension). Its
    inputs are level 0's nodes in order; feed them the values after the input level's activation
    (``explanation.activations[0]``).

    ``keep`` may also be a boolean mask with one entry per edge.

    Raises
    ------
    ArgumentTypeError
        For a ``graph`` that is not a :class:`Graph`, or a ``keep`` that holds neither edge
        positions (ints) nor a mask.
    IndexOutOfRangeError
        For a position outside ``0 .. num_edges - 1`` (negative ones count from the end).
    InputError
        For blocks whose edges depend on the sample (max pooling), naming the block, or a mask
        whose length is not the number of edges.
    """
    if not isinstance(graph, Graph):
        raise ArgumentTypeError(f"graph must be a graphlrp.Graph, got {type(graph).__name__}")
    for block in graph.blocks:
        if not block.linear_forward:
            raise InputError(f"cannot prune {block!r} (kind {block.kind!r}): its edges depend on the sample")
    src, dst, weight = graph.edges()
    mask = _edge_mask(keep, len(weight), weight.device)
    bias = torch.cat([weight.new_zeros(l.size) if l.bias is None or l.index == 0 else l.bias for l in graph.levels])
    activation = ["identity"] * graph.levels[0].size + [l.activation for l in graph.levels[1:] for _ in l.nodes]
    first = graph.levels[0]
    return Graph.from_edges(
        src, dst, torch.where(mask, weight, 0.0), bias, activation,
        inputs=torch.arange(first.size, device=weight.device), outputs=graph.outputs, dtype=graph.dtype,
    )


# -- flows and rankings -------------------------------------------------------------------------
def level_flow(explanation: Explanation, sample: Samples = None) -> list[dict[str, object]]:
    """Relevance that crossed from each destination level to each source level.

    Parameters
    ----------
    explanation : Explanation
    sample : int or sequence of int or None
        Summed over these samples (``None``: all).

    Returns
    -------
    list of dict
        One row per (source level, destination level) pair with edges, ordered by the pair:
        ``src_level``, ``dst_level``, ``src_name``, ``dst_name``, ``positive`` and ``negative``
        (sums of the positive and negative messages) and ``total`` (their sum); the two are
        summed exactly and rounded once. The totals of the rows into a level equal that level's ``relevance_out``
        in :meth:`Explanation.conservation`. The edges are streamed run by run.
    """
    check_explanation(explanation)
    rows = explanation.sample_rows(sample)
    graph = explanation.graph
    pairs = sorted({(b.src, b.dst) for b in graph.blocks})
    sums: dict[tuple[int, int], tuple[streaming.Histogram, streaming.Histogram]] = {}
    for run in explanation.message_runs(rows):
        pair = (run.block.src, run.block.dst)
        if pair not in sums:
            sums[pair] = tuple(streaming.Histogram(run.messages.dtype, run.messages.device) for _ in range(2))
        messages = run.layout.reshape(-1)  # the holes of the layout hold ±0
        sums[pair][0].add(messages.clamp(min=0))
        sums[pair][1].add(messages.neg().clamp_(min=0))
    table = []
    for a, b in pairs:
        positive, negative = (streaming.as_float(h.total()) for h in sums[a, b]) if (a, b) in sums else (0.0, 0.0)
        table.append({
            "src_level": a, "dst_level": b, "src_name": graph.levels[a].name, "dst_name": graph.levels[b].name,
            "positive": positive, "negative": -negative, "total": positive - negative,
        })
    return table


@dataclass(frozen=True)
class Neuron:
    """A node of a level with its relevance."""

    node: int
    label: str
    position: tuple[int, ...]
    relevance: float


def rank_neurons(
    explanation: Explanation, level: int | str, sample: Samples = None, k: int = 10, absolute: bool = False
) -> list[Neuron]:
    """The ``k`` most relevant nodes of one level.

    Parameters
    ----------
    explanation : Explanation
    level : int or str
        Level index or name.
    sample : int or sequence of int or None
        One sample, or the mean over several (``None``: all).
    k : int
        How many, ``>= 1``.
    absolute : bool
        Rank by ``|relevance|`` instead of relevance (most positive first).

    Raises
    ------
    ArgumentTypeError
        For arguments of the wrong type.
    InputError
        For an unknown level name, ``k < 1`` or a ``sample`` that selects no samples.
    IndexOutOfRangeError
        For a level index or sample out of range (negative ones count from the end).
    """
    check_explanation(explanation)
    rows = explanation.sample_rows(sample)
    graph = explanation.graph
    chosen = _level(graph, level)
    check_int("k", k, 1)
    check_bool("absolute", absolute)
    index = torch.tensor(rows, device=explanation.node_relevance.device)
    values = explanation.node_relevance.index_select(0, index)[:, chosen.offset : chosen.offset + chosen.size].mean(0)
    order = torch.argsort(values.abs() if absolute else values, descending=True, stable=True)[:k]
    nodes = [(chosen.offset + i, float(values[i])) for i in order.tolist()]
    return [Neuron(node, graph.node_label(node), _position(chosen, node), value) for node, value in nodes]


def _level(graph: Graph, level: int | str) -> Level:
    if isinstance(level, str):
        for candidate in graph.levels:
            if candidate.name == level:
                return candidate
        raise InputError(f"no level is named {level!r}; levels: {[l.name for l in graph.levels]}")
    count = len(graph.levels)
    if not is_index(level):
        raise ArgumentTypeError(f"level must be a level index (int) or name (str), got {level!r}")
    if not -count <= level < count:
        raise IndexOutOfRangeError(f"level {level!r} is not one of the graph's {count} levels (-{count} .. {count - 1})")
    return graph.levels[level]


def _edge_mask(keep: object, num_edges: int, device: torch.device) -> Tensor:
    """A boolean mask over the edges from positions (ints, negative from the end) or a mask."""
    if isinstance(keep, (str, bytes, dict, set)) or not (isinstance(keep, (Tensor, np.ndarray))
                                                         or hasattr(keep, "__iter__")):
        raise ArgumentTypeError(f"keep must be edge positions (ints) or a boolean mask, got {type(keep).__name__}")
    try:
        index = torch.as_tensor(keep if isinstance(keep, (Tensor, np.ndarray)) else list(keep))
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise ArgumentTypeError("keep must be edge positions (ints) or a boolean mask") from None
    index = index.detach().to(device).reshape(-1)
    if index.dtype == torch.bool:
        if len(index) != num_edges:
            raise InputError(f"keep is a mask of {len(index)} entries for a graph of {num_edges} edges")
        return index.clone()
    if index.numel() and (index.is_floating_point() or index.is_complex()):
        raise ArgumentTypeError(f"keep must hold int edge positions or be a boolean mask, got dtype {index.dtype}")
    index = index.long()
    if index.numel() and not bool(((index >= -num_edges) & (index < num_edges)).all()):
        bad = index[(index < -num_edges) | (index >= num_edges)][:5].tolist()
        raise IndexOutOfRangeError(f"keep holds the edge positions {bad}; the graph has {num_edges} edges "
                                   f"(-{num_edges} .. {num_edges - 1})")
    mask = torch.zeros(num_edges, dtype=torch.bool, device=device)
    mask[index] = True
    return mask


@dataclass(frozen=True)
class EdgeContrast:
    """An edge's relevance in two explanations; ``difference = relevance_a - relevance_b``."""

    edge: int
    src: int
    dst: int
    relevance_a: float
    relevance_b: float
    difference: float


def contrast(
    explanation_a: Explanation, explanation_b: Explanation, sample: int = 0, k: int = 20
) -> list[EdgeContrast]:
    """The ``k`` edges whose relevance differs most between two explanations of one graph.

    E.g. the same input explained for class A and for class B. Ranked by ``|difference|``, ties
    by edge order (the earlier edge first); the edges are streamed run by run (memory: ``k``
    edges and one run), and compared as they pass (edges and weights must be equal).

    Raises
    ------
    ArgumentTypeError
        For arguments of the wrong type.
    InputError
        If the explanations are of different graphs, or ``k < 1``.
    IndexOutOfRangeError
        For a ``sample`` out of range in either explanation.
    """
    check_explanation(explanation_a, "explanation_a")
    check_explanation(explanation_b, "explanation_b")
    _check_same_graph(explanation_a.graph, explanation_b.graph)
    check_int("k", k, 1)
    best = streaming.TopK(k)
    runs_b = explanation_b.message_runs(_one_sample(explanation_b, sample))
    for run_a in explanation_a.message_runs(_one_sample(explanation_a, sample)):
        run_b = next(runs_b)
        if run_a.block is not run_b.block and not (
                torch.equal(run_a.src, run_b.src) and torch.equal(run_a.dst, run_b.dst)
                and torch.equal(run_a.weight, run_b.weight)):
            raise InputError("the explanations are of different graphs: their edges or weights differ")
        a, b = run_a.layout[0], run_b.layout[0]
        difference = a - b

        def take(index: Tensor, run=run_a, a=a, b=b, difference=difference) -> tuple[Tensor, list[Tensor]]:
            positions, src, dst, _ = run.take(index)
            return positions, [src, dst, a[index], b[index], difference[index]]

        best.add(streaming.Run(difference.abs(), run_a.valid, take))
    found = best.result()
    if found is None:
        return []
    _, positions, columns = found
    return [
        EdgeContrast(e, s, d, ra, rb, diff)
        for e, s, d, ra, rb, diff in zip(positions.tolist(), *(c.tolist() for c in columns))
    ]


def _check_same_graph(a: Graph, b: Graph) -> None:
    if a is b:
        return
    if (a.num_nodes, a.num_edges) != (b.num_nodes, b.num_edges):
        raise InputError(f"the explanations are of different graphs: {a.num_nodes:,} nodes and {a.num_edges:,} "
                         f"edges against {b.num_nodes:,} nodes and {b.num_edges:,} edges")
    if [(x.kind, x.src, x.dst, x.num_edges) for x in a.blocks] != [(y.kind, y.src, y.dst, y.num_edges) for y in b.blocks]:
        raise InputError("the explanations are of different graphs: their blocks differ")


# -- data sets ----------------------------------------------------------------------------------
def mean_edge_relevance(
    graph: Graph,
    inputs: Tensor,
    targets: int | Sequence[int] | Tensor,
    rule: Rule | None = None,
    composite: Composite | None = None,
    batch_size: int = 64,
    absolute: bool = False,
    progress: bool = True,
) -> Tensor:
    """Mean edge relevance over a data set: :func:`graphlrp.aggregate`'s edge sums over the count.

    Parameters
    ----------
    graph : Graph
    inputs : Tensor
        ``(N, *graph.input_shape)``.
    targets : int or sequence of int or Tensor
        Class to explain, one for all or one per sample.
    rule, composite : optional
        As for :func:`graphlrp.explain`.
    batch_size : int
        Samples explained at once.
    absolute : bool
        Average ``|relevance|`` instead of relevance.
    progress : bool
        Show progress on stderr (with tqdm when it is installed).

    Returns
    -------
    Tensor
        ``(num_edges,)`` in :meth:`Graph.edges` order, in the graph's dtype (summed in float64).
        Memory does not grow with the number of samples: never ``samples × edges``.

    Raises
    ------
    ArgumentTypeError
        For a ``graph``, ``inputs``, ``targets``, ``batch_size``, ``absolute`` or ``progress`` of
        the wrong type.
    InputError
        For ``inputs`` without samples, ``batch_size < 1``, or a number of targets that is
        neither one nor one per sample; and whatever :func:`graphlrp.explain` refuses.
    """
    if not isinstance(graph, Graph):
        raise ArgumentTypeError(f"graph must be a graphlrp.Graph, got {type(graph).__name__}")
    if not isinstance(inputs, Tensor):
        raise ArgumentTypeError(f"inputs must be a torch.Tensor of shape (N, *graph.input_shape), "
                                f"got {type(inputs).__name__}")
    count = len(inputs) if inputs.dim() else 0
    if count == 0:
        raise InputError("inputs holds no samples")
    check_int("batch_size", batch_size, 1)
    check_bool("absolute", absolute)
    check_bool("progress", progress)
    per_sample = _targets(targets)
    if per_sample.numel() not in (1, count):
        raise InputError(f"targets has {per_sample.numel()} entries for {count} samples; give one, or one per sample")
    from .aggregation import aggregate

    sums = aggregate(graph, inputs, per_sample, rule=rule, composite=composite, batch_size=batch_size,
                     absolute=absolute, progress=progress)
    return (sums.edge_relevance() / count).to(graph.dtype)


def _targets(targets: object) -> Tensor:
    """``targets`` as a 1-D integer tensor."""
    if targets is None or isinstance(targets, (str, bytes, float)):
        raise ArgumentTypeError(f"targets must be an int, a sequence of ints or an integer tensor, got {targets!r}")
    try:
        per_sample = torch.as_tensor(targets).reshape(-1)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise ArgumentTypeError(f"targets must be an int, a sequence of ints or an integer tensor, "
                                f"got {targets!r}") from None
    if per_sample.dtype == torch.bool or per_sample.is_floating_point() or per_sample.is_complex():
        raise ArgumentTypeError(f"targets must hold ints (class indices), got dtype {per_sample.dtype}")
    return per_sample


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``, which reports ``n`` more samples done (with tqdm, else on stderr)."""
    if not enabled:
        yield lambda n: None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        with tqdm(total=total, unit="sample", desc="mean_edge_relevance") as bar:
            yield bar.update
        return
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        sys.stderr.write(f"\rmean_edge_relevance: {done}/{total} samples")
        sys.stderr.flush()

    try:
        yield advance
    finally:
        sys.stderr.write("\n")
