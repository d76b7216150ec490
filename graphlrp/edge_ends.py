"""The two ends of edges named by their positions, found run by run without listing the graph's edges.

A position counts edges in :meth:`Graph.edges` order. :func:`edge_ends` walks each block's runs
(:meth:`Block.edge_runs`) and asks only the runs that hold a wanted position for those edges'
ends (:meth:`EdgeRun.take`), so a convolution of 10⁸ edges is never listed.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .graph import Graph

#: layout entries per run while decoding (a run's validity mask and the wanted entries in it)
DECODE_RUN = 1 << 21
#: positions compared with a block's range at once
SCAN_CHUNK = 1 << 22


def edge_ends(graph: Graph, positions: Tensor, dtype: torch.dtype = torch.long) -> tuple[Tensor, Tensor]:
    """Global source and destination node ids of the edges at ``positions``.

    Parameters
    ----------
    graph : Graph
    positions : Tensor
        1-D integer positions in :meth:`Graph.edges` order, in any order, each in
        ``0 .. num_edges - 1``.
    dtype : torch.dtype
        Integer dtype of the ids returned.

    Returns
    -------
    src, dst : Tensor
        ``graph.edges()[0][positions]`` and ``graph.edges()[1][positions]``, computed block by
        block. Memory: the result, one block's share of ``positions`` sorted, and one run.
    """
    src = torch.empty(len(positions), dtype=dtype, device=positions.device)
    dst = torch.empty_like(src)
    first = 0
    for block in graph.blocks:
        last = first + block.num_edges
        wanted = _within(positions, first, last)
        if len(wanted):
            local = positions[wanted].long() - first
            local, order = torch.sort(local, stable=True)
            wanted = wanted[order]
            src_offset, dst_offset = graph.levels[block.src].offset, graph.levels[block.dst].offset
            for run in block.edge_runs(DECODE_RUN):
                low, high = torch.searchsorted(local, torch.tensor([run.start, run.start + len(run)],
                                                                   device=local.device)).tolist()
                if high == low:
                    continue
                offsets = local[low:high] - run.start
                valid = run.valid
                entries = offsets if valid is None else torch.nonzero(valid).flatten()[offsets]
                _, run_src, run_dst, _ = run.take(entries)
                src[wanted[low:high]] = (run_src + src_offset).to(dtype)
                dst[wanted[low:high]] = (run_dst + dst_offset).to(dtype)
        first = last
    return src, dst


def _within(positions: Tensor, first: int, last: int) -> Tensor:
    """Indices of the ``positions`` in ``first .. last - 1``, compared a chunk at a time."""
    found = [torch.nonzero((part >= first) & (part < last)).flatten() + start
             for start, part in zip(range(0, len(positions), SCAN_CHUNK), positions.split(SCAN_CHUNK))]
    return torch.cat(found) if found else positions.new_zeros(0, dtype=torch.long)
