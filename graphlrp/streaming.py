"""Selections over per-edge values that arrive run by run, never all at once.

The analyses of :mod:`graphlrp.analysis` and the filtered export of :mod:`graphlrp.export` see a
graph's edges as :meth:`graphlrp.Explanation.message_runs`: consecutive runs of edges in
:meth:`graphlrp.Graph.edges` order with their messages. What they select, they select here, with
memory for the selection and one run, and in time linear in the number of edges:

* :class:`TopK`, the ``k`` largest values, kept while the runs pass;
* :class:`Histogram`, exact sums of non-negative values by bins of their leading bits: the exact
  total, and the bin where a running sum by decreasing value reaches a fraction of it;
* :func:`select`, which combines them: the ``top_k`` largest, those ``>= threshold`` and the
  fewest, largest first, that hold the fraction ``mass`` of the total (two passes over the runs
  for ``mass``: the histogram, then the edges of the bins above the boundary bin and the boundary
  bin's candidates, decided exactly).

**Ties** are broken by the edges' global order: of equal values, the edge that comes first in
:meth:`graphlrp.Graph.edges` order ranks first, in every selection and ranking.

**Sums are exact.** Totals and running sums of magnitudes are computed in exact arithmetic (each
value's integer mantissa summed per bin, combined as Python integers), so a selection does not
depend on how the edges are cut into runs or in which order they are summed, and the fraction a
selection holds is the exact one, rounded once.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor

from . import kernels
from .errors import InputError

#: a float64 value is ``M · 2^E`` with an integer mantissa ``M < 2⁵³`` and ``E >= -1074``; exact sums
#: are integers in units of ``2^-1074``, the smallest positive float64
_UNIT_EXPONENT = -1074


@dataclass(frozen=True)
class Run:
    """One run of a pass over per-edge values, in edge order.

    ``values`` (1-D) are laid out in edge order, possibly with holes: entries that are no edge,
    where ``valid`` (a boolean mask like ``values``, ``None`` for none) is False; a hole's value
    must be ``±0``. Edges are listed only for the entries a selection keeps: ``take(index)``
    gives the global edge positions of layout entries ``index`` (edges, ascending) and their
    payload columns.
    """

    values: Tensor
    valid: Tensor | None
    take: Callable[[Tensor], tuple[Tensor, list[Tensor]]]

    def entries(self, mask: Tensor | None) -> Tensor | None:
        """The edges' entries where ``mask`` holds (every edge's for ``None``; ``None`` when that
        is every entry)."""
        if mask is None:
            return None if self.valid is None else torch.nonzero(self.valid).flatten()
        return torch.nonzero(mask if self.valid is None else mask & self.valid).flatten()


def listed_run(start: int, values: Tensor, payload: Iterable[Tensor] = ()) -> Run:
    """A run without holes: ``values`` of the edges at positions ``start ..``, with payload columns
    aligned with them."""
    columns = list(payload)
    return Run(values, None, lambda index: (index + start, [c[index] for c in columns]))


def _best_of(values: Tensor, k: int) -> Tensor:
    """The indices (ascending) of the ``k`` largest ``values``, of equal ones the first."""
    if len(values) <= k:
        return torch.arange(len(values), device=values.device)
    kth = torch.topk(values, k, sorted=False).values.min()
    keep = values > kth
    tied = torch.nonzero(values == kth).flatten()[: k - int(keep.sum())]
    keep[tied] = True
    return torch.nonzero(keep).flatten()


class TopK:
    """The ``k`` largest values seen so far, with their positions and payload columns.

    Values arrive run by run with ascending positions (every run's positions after the previous
    run's). Of equal values the earlier position ranks first, so the result is that of a stable
    sort of all values by decreasing value, cut after ``k``. Only the entries of a run that can
    enter (larger than the ``k``-th value so far, and the run's own ``k`` best) are listed.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: Tensor | None = None
        self.positions: Tensor | None = None
        self.payload: list[Tensor] = []

    def add(self, run: Run) -> None:
        """Take a run's values."""
        if self.k == 0 or len(run.values) == 0:
            return
        full = self.values is not None and len(self.values) == self.k
        # a later value enters only if larger than the k-th best so far (ties go to earlier edges)
        index = run.entries(run.values > self.values.min() if full else None)
        values = run.values if index is None else run.values[index]
        if len(values) == 0:
            return
        best = _best_of(values, self.k)
        if len(best) < len(values):
            index, values = (best if index is None else index[best]), values[best]
        elif index is None:
            index = best
        positions, payload = run.take(index)
        if self.values is not None:
            values = torch.cat([self.values, values])
            positions = torch.cat([self.positions, positions])
            payload = [torch.cat([kept, new]) for kept, new in zip(self.payload, payload)]
            best = _best_of(values, self.k)
            if len(best) < len(values):
                values, positions, payload = values[best], positions[best], [p[best] for p in payload]
        self.values, self.positions, self.payload = values, positions, payload

    def result(self) -> tuple[Tensor, Tensor, list[Tensor]] | None:
        """``(values, positions, payload)``, best first; ``None`` if nothing was added."""
        if self.values is None:
            return None
        order = torch.argsort(self.values, descending=True, stable=True)
        return self.values[order], self.positions[order], [p[order] for p in self.payload]


@dataclass(frozen=True)
class _Format:
    """How a float dtype's bit pattern splits into bins, exponent and integer mantissa."""

    float_dtype: torch.dtype
    int_dtype: torch.dtype
    mantissa_bits: int
    exponent_bias: int
    bin_shift: int  # bins: the bits above this one (the exponent and the mantissa's leading bits)


_FLOAT32 = _Format(torch.float32, torch.int32, 23, 127, 15)
_FLOAT64 = _Format(torch.float64, torch.int64, 52, 1023, 47)


def _format_of(dtype: torch.dtype) -> _Format:
    return _FLOAT64 if dtype == torch.float64 else _FLOAT32


def _as_format(values: Tensor, fmt: _Format) -> Tensor:
    """``values`` in ``fmt``'s float dtype (exact: half types widen to float32)."""
    return values if values.dtype == fmt.float_dtype else values.to(fmt.float_dtype)


def _split(values: Tensor, fmt: _Format) -> tuple[Tensor, Tensor]:
    """The bin (int64) and the integer mantissa (int64) of every non-negative finite value
    (the sign bit is cleared: ``-0.0`` counts as ``0.0``)."""
    bits = values.view(fmt.int_dtype) & torch.iinfo(fmt.int_dtype).max
    biased = bits >> fmt.mantissa_bits
    mantissa = (bits & ((1 << fmt.mantissa_bits) - 1)) | ((biased > 0).to(fmt.int_dtype) << fmt.mantissa_bits)
    return (bits >> fmt.bin_shift).long(), mantissa.long()


def _bin_scale(fmt: _Format, bins: Tensor) -> list[int]:
    """For each bin, the power of two ``2^s`` with value ``= mantissa · 2^s`` in units of ``2^-1074``."""
    biased = (bins >> (fmt.mantissa_bits - fmt.bin_shift)).tolist()
    return [max(b, 1) - fmt.exponent_bias - fmt.mantissa_bits - _UNIT_EXPONENT for b in biased]


def check_finite_magnitudes(values: Tensor, what: str) -> None:
    """Raise :class:`InputError` unless every value is finite and ``>= 0``."""
    if len(values) and not bool(torch.isfinite(values).all() & (values >= 0).all()):
        _refuse(what)


def _refuse(what: str) -> None:
    raise InputError(f"{what} holds NaN, inf or negative values; the selection needs finite magnitudes")


class Histogram:
    """Counts and exact sums of non-negative finite values, by bins of their leading bits.

    A bin holds the values whose bit pattern agrees above :attr:`_Format.bin_shift`: one exponent
    and the mantissa's leading bits (8 for float32, 5 for float64), so bins ordered by number are
    ordered by value. Sums are kept as integer mantissa sums per bin (64-bit, with float64
    mantissas split in two halves so that no sum overflows below ``2³⁶`` values per bin).
    """

    _HALF = 26

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.fmt = _format_of(dtype)
        size = 1 << (8 * self.fmt.float_dtype.itemsize - 1 - self.fmt.bin_shift)
        self.counts = torch.zeros(size, dtype=torch.long, device=device)
        self.high = torch.zeros(size, dtype=torch.long, device=device)
        self.low = torch.zeros(size, dtype=torch.long, device=device) if self.fmt is _FLOAT64 else None

    def add(self, values: Tensor, what: str | None = None) -> None:
        """Count and sum ``values`` (1-D, non-negative, finite); with ``what``, first check that
        they are (:func:`check_finite_magnitudes`), in the same pass where a compiled kernel applies."""
        values = _as_format(values, self.fmt)
        bad = kernels.histogram_add(values, self.counts, self.high, self.low, self.fmt.mantissa_bits,
                                    self.fmt.bin_shift, self._HALF)
        if bad is not None:
            if bad and what is not None:
                _refuse(what)
            return
        if what is not None:
            check_finite_magnitudes(values, what)
        bins, mantissa = _split(values, self.fmt)
        self.counts += torch.bincount(bins, minlength=len(self.counts))
        if self.low is None:
            self.high.index_add_(0, bins, mantissa)
        else:
            self.high.index_add_(0, bins, mantissa >> self._HALF)
            self.low.index_add_(0, bins, mantissa & ((1 << self._HALF) - 1))

    def bin_sums(self) -> tuple[list[int], list[int], list[int]]:
        """The occupied bins by decreasing value: their numbers, counts and exact sums (units of ``2^-1074``)."""
        occupied = torch.nonzero(self.counts).flatten().flip(0)
        high = self.high[occupied].tolist()
        low = self.low[occupied].tolist() if self.low is not None else [0] * len(high)
        scales = _bin_scale(self.fmt, occupied)
        half = self._HALF if self.low is not None else 0
        sums = [((h << half) + l) << s for h, l, s in zip(high, low, scales)]
        return occupied.tolist(), self.counts[occupied].tolist(), sums

    def total(self) -> int:
        """The exact sum of every value added, in units of ``2^-1074``."""
        return sum(self.bin_sums()[2])


def exact_sum(values: Tensor) -> int:
    """The exact sum of non-negative finite ``values``, in units of ``2^-1074`` (see :class:`Histogram`)."""
    histogram = Histogram(values.dtype, values.device)
    histogram.add(values.reshape(-1))
    return histogram.total()


def as_float(units: int) -> float:
    """An exact sum in units of ``2^-1074`` as the nearest float."""
    return float(Fraction(units, 1 << -_UNIT_EXPONENT))


def ratio(part: int, whole: int) -> float:
    """``part / whole`` of two exact sums, rounded once (1.0 for an empty whole)."""
    return float(Fraction(part, whole)) if whole else 1.0


@dataclass(frozen=True)
class MassCut:
    """Where the fewest values, largest first, that hold a fraction of the total end.

    Every value in a bin above :attr:`bin` is taken; of the bin's values, by decreasing value and
    ties by position, the first whose running sum (on top of the bins above) reaches the fraction
    of the total; values in lower bins are not. ``bin`` is ``-1`` when nothing is taken (all
    values zero).
    """

    bin: int
    fmt: _Format
    needed: int  # mantissa sum the boundary bin must contribute
    total: int

    def classify(self, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per value: whether it lies above the boundary bin, whether in it, and its mantissa."""
        bins, mantissa = _split(_as_format(values, self.fmt), self.fmt)
        return bins > self.bin, bins == self.bin, mantissa


def mass_cut(histogram: Histogram, fraction: float) -> MassCut:
    """The boundary of the fewest values holding ``fraction`` of ``histogram``'s total, exactly."""
    numbers, _, sums = histogram.bin_sums()
    total = sum(sums)
    share = Fraction(fraction)
    target = share.numerator * total  # the running sum must reach target / share.denominator
    held = 0
    for number, part in zip(numbers, sums):
        if (held + part) * share.denominator >= target:
            scale = _bin_scale(histogram.fmt, torch.tensor([number]))[0]
            missing = target - held * share.denominator  # > 0: the bins above fall short
            needed = -(-missing // (share.denominator << scale))  # ceiling, in the bin's mantissa units
            return MassCut(number, histogram.fmt, needed, total)
        held += part
    return MassCut(-1, histogram.fmt, 0, total)


def boundary_count(mantissas: Tensor, needed: int) -> int:
    """The fewest leading ``mantissas`` (in their order) whose sum reaches ``needed`` (exact; all if none)."""
    if needed <= 0:
        return 0
    high = torch.cumsum(mantissas >> Histogram._HALF, 0)
    low = torch.cumsum(mantissas & ((1 << Histogram._HALF) - 1), 0)

    def prefix(n: int) -> int:  # the sum of the first n
        return (int(high[n - 1]) << Histogram._HALF) + int(low[n - 1]) if n else 0

    lo, hi = 1, len(mantissas)
    if prefix(hi) < needed:
        return hi
    while lo < hi:
        middle = (lo + hi) // 2
        if prefix(middle) >= needed:
            hi = middle
        else:
            lo = middle + 1
    return lo


#: a pass over the values, run by run
Runs = Callable[[], Iterator[Run]]


@dataclass(frozen=True)
class HeldMass:
    """A share of the edges' total magnitude.

    ``held`` and ``total`` are the exact sums of the kept and of all magnitudes (units of
    ``2^-1074``); :attr:`fraction` is their ratio.
    """

    held: int
    total: int

    @property
    def fraction(self) -> float:
        return ratio(self.held, self.total)


@dataclass(frozen=True)
class Selection(HeldMass):
    """The edges that pass every criterion of :func:`select`, by ascending position (see :class:`HeldMass`)."""

    positions: Tensor
    magnitudes: Tensor
    payload: list[Tensor]


def histogram_of(runs: Runs, what: str = "edge relevance") -> Histogram | None:
    """One pass over ``runs()`` counted in a :class:`Histogram` (``None`` when there is no run)."""
    histogram = None
    for run in runs():
        if histogram is None:
            histogram = Histogram(run.values.dtype, run.values.device)
        histogram.add(run.values, what)
    return histogram


def _no_selection(total: int) -> Selection:
    return Selection(held=0, total=total, positions=torch.zeros(0, dtype=torch.long), magnitudes=torch.zeros(0),
                     payload=[])


def select(runs: Runs, top_k: int | None = None, threshold: float | None = None, mass: float | None = None,
           what: str = "edge relevance") -> Selection:
    """The edges whose magnitude passes every criterion given (all edges without any).

    ``top_k``: the ``top_k`` largest; ``threshold``: those ``>= threshold`` (compared exactly);
    ``mass``: the fewest, largest first, whose magnitudes sum to at least ``mass`` of the total.
    Ties are broken by position (the earlier edge first). ``runs()`` starts a pass over the
    edges: one pass, or two with ``mass``. Memory: the edges kept (for ``top_k``, the ``top_k``
    candidates), the boundary bin's candidates for ``mass``, and one run.
    """
    cut = None
    if mass is not None:
        histogram = histogram_of(runs, what)
        if histogram is None:
            return _no_selection(0)
        cut = mass_cut(histogram, mass)
    best = TopK(top_k) if top_k is not None else None
    kept: list[tuple[Tensor, Tensor, list[Tensor]]] = []
    boundary: list[tuple[Tensor, Tensor]] = []  # the boundary bin's (mantissa, position)
    totals: Histogram | None = None
    for run in runs():
        magnitude = run.values
        if cut is None:
            if totals is None:
                totals = Histogram(magnitude.dtype, magnitude.device)
            totals.add(magnitude, what)
        passes = None if threshold is None else magnitude.double() >= threshold
        if cut is not None:
            above, inside, mantissa = cut.classify(magnitude)
            index = run.entries(inside)
            boundary.append((mantissa[index], run.take(index)[0]))
            candidate = above | inside
            passes = candidate if passes is None else passes & candidate
        if best is not None:
            best.add(run)
        else:
            index = run.entries(passes)
            if index is None:
                index = torch.arange(len(magnitude), device=magnitude.device)
            positions, payload = run.take(index)
            kept.append((positions, magnitude[index], payload))
    total = cut.total if cut is not None else (totals.total() if totals is not None else 0)
    if best is not None:
        found = best.result()
        if found is None:
            return _no_selection(total)
        values, positions, payload = found
        order = torch.argsort(positions)
        kept = [(positions[order], values[order], [p[order] for p in payload])]
    if not kept:
        return _no_selection(total)
    positions = torch.cat([k[0] for k in kept])
    magnitudes = torch.cat([k[1] for k in kept])
    payload = [torch.cat(columns) for columns in zip(*(k[2] for k in kept))]
    keep = torch.ones(len(positions), dtype=torch.bool, device=positions.device)
    if threshold is not None:
        keep &= magnitudes.double() >= threshold
    if cut is not None:
        keep &= _mass_members(cut, magnitudes, positions, boundary)
    index = torch.nonzero(keep).flatten()
    positions, magnitudes, payload = positions[index], magnitudes[index], [p[index] for p in payload]
    return Selection(held=exact_sum(magnitudes) if len(magnitudes) else 0, total=total, positions=positions,
                     magnitudes=magnitudes, payload=payload)


def _mass_members(cut: MassCut, magnitudes: Tensor, positions: Tensor,
                  boundary: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Which of the edges (``magnitudes`` at ``positions``) the fewest edges holding the mass take."""
    above, inside, _ = cut.classify(magnitudes)
    if cut.bin < 0:
        return torch.zeros_like(above)
    mantissa = torch.cat([b[0] for b in boundary])
    where = torch.cat([b[1] for b in boundary])
    order = torch.argsort(mantissa, descending=True, stable=True)  # positions ascend within a value
    taken = where[order[: boundary_count(mantissa[order], cut.needed)]]
    return above | (inside & torch.isin(positions, taken))
