"""The fewest edges holding a fraction of the total magnitude, sorted, in the memory of the result.

:func:`heaviest` answers what :func:`graphlrp.streaming.select` answers for ``mass`` alone, with
the result by decreasing magnitude instead of by position, and without a copy or a sort of the
whole result: the first pass's histogram (:class:`graphlrp.streaming.Histogram`) counts the edges
of every bin the result takes, so the second pass writes each edge straight into its bin's
slice of columns allocated once, and each bin is then sorted on its own. Sums are exact and ties
go to the earlier edge, as in :mod:`graphlrp.streaming`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .streaming import HeldMass, Runs, _split, boundary_count, exact_sum, histogram_of, mass_cut


#: candidate edges of a run listed and placed at once (bounds the temporaries above the result)
TAKE_AT_ONCE = 1 << 18


@dataclass(frozen=True)
class Heaviest(HeldMass):
    """The edges :func:`heaviest` takes, by decreasing magnitude, ties by position (see :class:`HeldMass`)."""

    positions: Tensor
    payload: list[Tensor]


def heaviest(runs: Runs, fraction: float, magnitude: int, position_dtype: torch.dtype = torch.long,
             what: str = "edge relevance") -> Heaviest:
    """The fewest edges, largest magnitude first, whose magnitudes sum to ``fraction`` of the total.

    ``runs()`` starts a pass over the edges (two passes). Payload column number ``magnitude``
    must hold values whose absolute values are the run's values (e.g. the signed messages of
    magnitudes ``|m|``); each column keeps the dtype the runs give it, positions take
    ``position_dtype``. Memory: the result's columns, the lowest bin's other edges, one run.
    """
    histogram = histogram_of(runs, what)
    if histogram is None:
        return Heaviest(held=0, total=0, positions=torch.zeros(0, dtype=position_dtype), payload=[])
    cut = mass_cut(histogram, fraction)
    numbers, counts, sums = histogram.bin_sums()
    taken = [i for i, number in enumerate(numbers) if number >= cut.bin] if cut.bin >= 0 else []
    if not taken:
        return Heaviest(held=0, total=cut.total, positions=torch.zeros(0, dtype=position_dtype), payload=[])
    device = histogram.counts.device
    # every taken bin's slice of the columns, bins by decreasing value (the boundary bin last)
    sizes = torch.tensor([counts[i] for i in taken], dtype=torch.long)
    first = torch.cumsum(sizes, 0) - sizes
    base = torch.zeros(len(histogram.counts), dtype=torch.long, device=device)
    base[torch.tensor([numbers[i] for i in taken], device=device)] = first.to(device)
    filled = torch.zeros_like(base)
    size = int(sizes.sum())
    positions = torch.empty(size, dtype=position_dtype, device=device)
    columns: list[Tensor] | None = None
    # the least value of the lowest bin taken: non-negative values order as their bit patterns
    lowest = torch.tensor([cut.bin << cut.fmt.bin_shift], dtype=cut.fmt.int_dtype).view(cut.fmt.float_dtype).item()
    for run in runs():
        values = run.values if run.values.dtype == cut.fmt.float_dtype else run.values.to(cut.fmt.float_dtype)
        index = run.entries(values >= lowest)
        if len(index) == 0:
            continue
        for part in index.split(TAKE_AT_ONCE):
            chosen = _split(values[part], cut.fmt)[0]
            taken_positions, payload = run.take(part)
            order = torch.argsort(chosen, stable=True)  # by bin, in edge order within one
            chosen = chosen[order]
            per_bin = torch.bincount(chosen, minlength=len(base))
            rank = torch.arange(len(part), device=device) - (torch.cumsum(per_bin, 0) - per_bin)[chosen]
            slot = base[chosen] + filled[chosen] + rank
            filled += per_bin
            positions[slot] = taken_positions[order].to(position_dtype)
            if columns is None:
                columns = [torch.empty(size, dtype=p.dtype, device=p.device) for p in payload]
            for column, listed in zip(columns, payload):
                column[slot] = listed[order]
    assert columns is not None  # the taken bins hold edges
    held = sum(sums[i] for i in taken[:-1])
    sizes[-1] = int(filled[cut.bin])  # the lowest bin may be bin 0, whose count includes the runs' holes
    for start, count in zip(first.tolist(), sizes.tolist()):
        part = slice(start, start + count)
        order = torch.argsort(columns[magnitude][part].abs(), descending=True, stable=True)
        positions[part] = positions[part][order]
        for column in columns:
            column[part] = column[part][order]
    last = columns[magnitude][int(first[-1]) : int(first[-1] + sizes[-1])].abs()
    count = boundary_count(_split(last.to(cut.fmt.float_dtype), cut.fmt)[1], cut.needed)
    held += exact_sum(last[:count]) if count else 0
    end = int(first[-1]) + count
    return Heaviest(held=held, total=cut.total, positions=positions[:end], payload=[column[:end] for column in columns])
