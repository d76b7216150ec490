"""Convolution block: weight-shared edges, reductions by convolution and transposed convolution.

A convolution's edges are never materialized for the reductions: ``matvec`` is the convolution
with the (transformed) kernel and ``rmatvec`` its transpose. A convolution whose kernel has whole
output or input channels of zeros (channel pruning) convolves only its live channels, with the
compacted kernel, and places the result by channel index (:class:`ConvOperand`): its cost falls
with the live multiply-adds. ``edges`` lists them on demand by
vectorized index arithmetic: output unit ``(o, *p)`` receives from input unit
``(g·C_in/groups + c, *(p·stride − padding + k·dilation))`` for every kernel position ``(c, *k)``
whose weight is nonzero and whose input position is inside the input (padding gives no edge).
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..transforms import EdgeIndicator, Identity, Ones, Transform
from .base import SUM_CHUNK_ELEMENTS, EdgeRun, StaticBlock, count_after_cast
from .sparse import UnrolledConvBlock

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
#: compact a kernel when at most this fraction of its ``C_out × C_in`` channel pairs is live: below
#: it, convolving the live channels and placing them by index beats the whole convolution
#: (``scripts/bench-pruned-conv``)
COMPACT_AT_MOST = 0.8
#: weights converted to float64 at once when counting the edges into output units
DEGREE_PANEL_ELEMENTS = 1 << 18
_CONV_INPUT_GRAD = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input, 3: torch.nn.grad.conv3d_input}
_CONV_WEIGHT_GRAD = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight, 3: torch.nn.grad.conv3d_weight}


def _valid_positions(kernel: int, n_in: int, n_out: int, stride: int, padding: int, dilation: int,
                     device: torch.device) -> Tensor:
    """For each kernel offset along one axis, how many output positions read inside the input."""
    out = torch.arange(n_out, device=device)
    offsets = torch.arange(kernel, device=device)
    position = out[None, :] * stride - padding + offsets[:, None] * dilation
    return ((position >= 0) & (position < n_in)).sum(1)


def _placed(channels: Tensor, live: Tensor | None, shape: tuple[int, ...]) -> Tensor:
    """``channels (B, len(live), *spatial)`` placed at channel indices ``live`` of zeros shaped
    ``(B, *shape)`` (``channels`` itself where every channel is live)."""
    if live is None:
        return channels
    full = channels.new_zeros((len(channels), *shape))
    return full.index_copy_(1, live, channels)


def count_conv_edges(weight: Tensor, in_shape, out_shape, stride, padding, dilation) -> int:
    """Number of edges of a convolution (nonzero kernel entries × output positions reading inside
    the input), computed without listing them."""
    counts = weight.ne(0).to(torch.int64)
    for axis in range(weight.dim() - 2):
        valid = _valid_positions(weight.shape[2 + axis], in_shape[1 + axis], out_shape[1 + axis], stride[axis],
                                 padding[axis], dilation[axis], weight.device)
        shape = [1] * weight.dim()
        shape[2 + axis] = -1
        counts = counts * valid.reshape(shape)
    return int(counts.sum())


@dataclass(frozen=True)
class ConvOperand:
    """A (transformed) kernel as the reductions use it.

    ``kernel`` holds the live output and input channels only where ``live_out`` / ``live_in``
    (channel indices) are given; ``flipped`` is the transposed convolution's kernel as a plain one
    where that applies (:meth:`ConvBlock._flipped`).
    """

    kernel: Tensor
    flipped: Tensor | None
    live_out: Tensor | None = None
    live_in: Tensor | None = None


class ConvBlock(StaticBlock):
    """Edges of an N-d convolution (N = 1, 2 or 3) between two levels.

    Parameters
    ----------
    src, dst : int
        Source and destination level indices.
    weight : Tensor
        ``(C_out, C_in / groups, *kernel)``.
    in_shape, out_shape : tuple of int
        ``(C_in, *spatial_in)`` and ``(C_out, *spatial_out)`` of one sample.
    stride, padding, dilation : tuple of int
        Per spatial dimension.
    groups : int
    """

    kind = "conv"
    operand_layout = "batch"  # convolutions read (B, C, *spatial)

    def __init__(
        self,
        src: int,
        dst: int,
        weight: Tensor,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        dilation: tuple[int, ...],
        groups: int,
        num_edges: int | None = None,
    ) -> None:
        """``num_edges`` is counted unless given (a copy knows it already)."""
        super().__init__(src, dst, n_src=math.prod(in_shape), n_dst=math.prod(out_shape))
        self.dims = weight.dim() - 2
        if self.dims not in _CONV:
            raise InputError(f"convolution weight must have 3 to 5 dimensions, got {weight.dim()}")
        self.weight = weight
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.groups = groups
        self._num_edges = num_edges if num_edges is not None else count_conv_edges(
            weight, self.in_shape, self.out_shape, self.stride, self.padding, self.dilation)
        self._edges: tuple[Tensor, Tensor, Tensor] | None = None
        self._slots: Tensor | None = None
        #: whether the message sums keep one slot per kernel weight (:meth:`per_parameter`)
        self.per_kernel = False

    @property
    def num_edges(self) -> int:
        return self._num_edges

    def held(self) -> tuple[Tensor, ...]:
        return (self.weight,)

    def _transformed(self, transform: Transform) -> ConvOperand:
        live_out, live_in = self._live_channels
        weight = self.weight
        if live_out is not None:
            weight = weight.index_select(0, live_out)
        if live_in is not None:
            weight = weight.index_select(1, live_in)
        kernel = transform(weight)
        uniform = isinstance(transform, Ones) or (isinstance(transform, EdgeIndicator) and bool(weight.ne(0).all()))
        return ConvOperand(kernel, self._flipped(kernel, uniform), live_out, live_in)

    @functools.cached_property
    def _live_channels(self) -> tuple[Tensor | None, Tensor | None]:
        """The output and input channels with a nonzero weight, where compacting to them pays
        (:data:`COMPACT_AT_MOST`; one group only), else ``None``; found once per block."""
        if self.groups != 1:
            return None, None
        nonzero = self.weight.ne(0).flatten(2).any(2)  # (C_out, C_in): channel pairs with an edge
        rows, columns = nonzero.any(1), nonzero.any(0)
        live_out, live_in = int(rows.sum()), int(columns.sum())
        c_out, c_in = nonzero.shape
        if live_out * live_in > COMPACT_AT_MOST * c_out * c_in or live_out * live_in == 0:
            return None, None
        return (torch.nonzero(rows).flatten() if live_out < c_out else None,
                torch.nonzero(columns).flatten() if live_in < c_in else None)

    def _flipped(self, kernel: Tensor, uniform: bool) -> Tensor | None:
        """The kernel of the transposed convolution as a plain one, where that is exact and applies.

        With stride 1 and one group, the transpose of a convolution is a convolution with the
        kernel flipped in space, channels swapped and padding ``d·(k − 1) − p``; torch computes it
        several times faster than its transposed convolution (its input gradient).
        """
        reach = [d * (k - 1) for d, k in zip(self.dilation, kernel.shape[2:])]
        if self.groups != 1 or any(s != 1 for s in self.stride) or any(r < p for r, p in zip(reach, self.padding)):
            return None
        flipped = kernel.transpose(0, 1).flip(dims=tuple(range(2, kernel.dim()))).contiguous()
        if flipped.shape[1] > 1 and uniform:
            # the same kernel for every channel it sums over (the flat rule's ones): sum the
            # channels first, then one channel's convolution
            return flipped[:, :1].contiguous()
        return flipped

    def _matvec(self, x: Tensor, operand: ConvOperand) -> Tensor:
        planes = x.reshape(len(x), *self.in_shape)
        if operand.live_in is not None:
            planes = planes.index_select(1, operand.live_in)
        out = _CONV[self.dims](planes, operand.kernel, None, self.stride, self.padding, self.dilation, self.groups)
        return _placed(out, operand.live_out, self.out_shape).reshape(len(x), self.n_dst)

    def _rmatvec(self, s: Tensor, operand: ConvOperand) -> Tensor:
        kernel, flipped = operand.kernel, operand.flipped
        upper = s.reshape(len(s), *self.out_shape)
        if operand.live_out is not None:
            upper = upper.index_select(1, operand.live_out)
        if flipped is not None:
            padding = tuple(d * (k - 1) - p for d, k, p in zip(self.dilation, kernel.shape[2:], self.padding))
            if flipped.shape[1] == 1 < upper.shape[1]:
                upper = upper.sum(1, keepdim=True)
            out = _CONV[self.dims](upper, flipped, None, 1, padding, self.dilation, 1)
        else:
            in_shape = (kernel.shape[1] * self.groups, *self.in_shape[1:])
            out = _CONV_INPUT_GRAD[self.dims]((len(s), *in_shape), kernel, upper, self.stride, self.padding,
                                              self.dilation, self.groups)
        return _placed(out, operand.live_in, self.in_shape).reshape(len(s), self.n_src)

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._edges is None:
            self._edges = self._enumerate_edges()[:3]
        return self._edges

    def _enumerate_edges(self, with_slots: bool | str = False) -> tuple[Tensor, ...]:
        """``(src, dst, weight)`` of every edge, ordered by ``(dst, src)``, and with ``with_slots``
        the slot of each edge in :attr:`sum_shape` (``'kernel'``: its flat position in the kernel)."""
        device = self.weight.device
        c_out, c_in_group = self.weight.shape[:2]
        out_per_group = c_out // self.groups
        # kernel entries with a nonzero weight: (o, c, *k)
        nonzero = torch.nonzero(self.weight, as_tuple=True)
        o, c, kernel = nonzero[0], nonzero[1], nonzero[2:]
        weights = self.weight[nonzero]
        in_channel = (o // out_per_group) * c_in_group + c
        # every output position, flattened: (P, dims)
        grids = torch.meshgrid(*[torch.arange(n, device=device) for n in self.out_shape[1:]], indexing="ij")
        positions = torch.stack([g.reshape(-1) for g in grids], dim=1)
        src_flat = in_channel[:, None].clone()
        dst_flat = o[:, None] * positions.shape[0] + torch.arange(positions.shape[0], device=device)[None, :]
        valid = torch.ones((len(o), positions.shape[0]), dtype=torch.bool, device=device)
        for axis in range(self.dims):
            coordinate = (positions[None, :, axis] * self.stride[axis] - self.padding[axis]
                          + kernel[axis][:, None] * self.dilation[axis])
            valid &= (coordinate >= 0) & (coordinate < self.in_shape[1 + axis])
            src_flat = src_flat * self.in_shape[1 + axis] + coordinate
        src = src_flat[valid]
        dst = dst_flat[valid]
        weight = weights[:, None].expand_as(valid)[valid]
        order = torch.argsort(dst * self.n_src + src)
        if not with_slots:
            return src[order], dst[order], weight[order]
        entry = c
        for axis in range(self.dims):  # the kernel entry within its output channel, row-major
            entry = entry * self.weight.shape[2 + axis] + kernel[axis]
        if with_slots == "kernel":
            kernel_index = (o * self._entries + entry)[:, None].expand_as(valid)[valid]
            return src[order], dst[order], weight[order], kernel_index[order]
        group, within = o // out_per_group, o % out_per_group
        count = positions.shape[0]
        position = torch.arange(count, device=device)[None, :]
        slots = ((group[:, None] * count + position) * out_per_group + within[:, None]) * self._entries + entry[:, None]
        return src[order], dst[order], weight[order], slots[valid][order]

    def edge_runs(self, max_edges: int) -> Iterator["ConvRun"]:
        """Runs of whole output units laid out ``(output channel, position, kernel entry)``.

        Into one output unit the edges come from its kernel entries in row-major order, which is
        the order of their sources: a run's layout is the grid of its output units and the kernel
        entries, in edge order, with holes where a weight is zero or an input position lies in the
        padding (:class:`ConvRun`). A run is whole output channels of one group, or part of one
        channel's positions; no more than ``max_edges`` layout entries unless one output unit has
        more. No edge is listed unless asked for (:meth:`ConvRun.take`).
        """
        yield from _RunGrid(self).runs(max_edges)

    def run_messages(self, run: "ConvRun", x: Tensor, s: Tensor, transform: Transform = Identity(),
                     state: object = None) -> Tensor:
        """The messages of a run's layout, ``(B, run.size)``: at each edge bit for bit
        :meth:`edge_messages`' (``x_i · f(w) · s_j``, in that order); at the holes a product
        with a zero input (padding) or weight (``f(w)`` taken as 0 there), ``±0`` for finite
        inputs and quotients."""
        return run.messages(x, s, transform)

    # -- sums over samples: one slot per (position, kernel weight), a batched product ----------
    @property
    def _entries(self) -> int:
        """Kernel weights per output channel: ``C_in / groups · Π kernel``."""
        return math.prod(self.weight.shape[1:])

    @property
    def sum_shape(self) -> tuple[int, ...]:
        """``(groups, positions, C_out / groups, C_in / groups · Π kernel)``: every output
        position's edges from each kernel weight (padding positions hold zeros); one position,
        the sum over all of them, :attr:`per_kernel`."""
        positions = 1 if self.per_kernel else self.n_dst // self.out_shape[0]
        return (self.groups, positions, self.out_shape[0] // self.groups, self._entries)

    def per_parameter(self) -> "ConvBlock":
        """A copy of this block whose message sums keep one slot per kernel weight: the edges of
        all output positions that share it, summed by the weight gradient's convolution."""
        summed = copy.copy(self)
        summed.per_kernel, summed._slots = True, None
        return summed

    def add_message_sums(self, out: Tensor, x: Tensor, s: Tensor, alpha: float = 1.0, state: object = None) -> None:
        """``out += alpha · Σ_b s_b,(o,p) x_b,(c, p·stride + k·dilation − padding)``: per output
        position ``p``, the product of the quotients with the input patch it reads (one batched
        matrix product over positions and groups, samples in chunks)."""
        if self.per_kernel:
            kernel_sums = _CONV_WEIGHT_GRAD[self.dims](x.reshape(len(x), *self.in_shape), self.weight.shape,
                                                       s.reshape(len(s), *self.out_shape), self.stride, self.padding,
                                                       self.dilation, self.groups)
            out.add_(kernel_sums.reshape(out.shape), alpha=alpha)
            return
        groups, count, out_group, entries = self.sum_shape
        chunk = max(1, SUM_CHUNK_ELEMENTS // max(1, self.in_shape[0] * math.prod(self.weight.shape[2:]) * count))
        flat = out.view(groups * count, out_group, entries)
        for start in range(0, len(x), chunk):
            patches = self._patches(x[start : start + chunk])  # (G·P, b, C_in/G · K)
            quotients = s[start : start + chunk].reshape(-1, groups, out_group, count).permute(1, 3, 2, 0)
            # contiguous operands: a strided batch is copied matrix by matrix inside bmm
            product = torch.bmm(quotients.reshape(groups * count, out_group, -1).contiguous(), patches.contiguous())
            flat.add_(product, alpha=alpha)

    def _patches(self, x: Tensor) -> Tensor:
        """The input patch every output position reads: ``(groups · positions, B, C_in/groups · K)``."""
        batch, kernel = len(x), self.weight.shape[2:]
        planes = x.reshape(batch, *self.in_shape)
        if any(self.padding):
            planes = F.pad(planes, [p for p in reversed(self.padding) for _ in range(2)])
        for axis in range(self.dims):  # each spatial axis becomes (outputs, window span)
            span = (kernel[axis] - 1) * self.dilation[axis] + 1
            planes = planes.unfold(2 + axis, span, self.stride[axis])
        windows = planes[(...,) + tuple(slice(None, None, d) for d in self.dilation)]  # (B, C, *out, *k)
        groups, count = self.groups, self.n_dst // self.out_shape[0]
        grouped = windows.reshape(batch, groups, self.in_shape[0] // groups, count, math.prod(kernel))
        return grouped.permute(1, 3, 0, 2, 4).reshape(groups * count, batch, self._entries)

    def unrolled(self) -> UnrolledConvBlock:
        """These edges held as CSR, each remembering its kernel weight (:class:`UnrolledConvBlock`)."""
        src, dst, weight, kernel_index = self._enumerate_edges(with_slots="kernel")
        return UnrolledConvBlock.from_edges(self.src, self.dst, self.n_src, self.n_dst, src, dst, weight, kernel_index,
                                            tuple(self.weight.shape))

    def edge_slots(self) -> Tensor:
        if self._slots is None:
            self._slots = self._enumerate_edges(with_slots="kernel" if self.per_kernel else True)[3]
        return self._slots

    def slot_weights(self, transform: Transform) -> Tensor:
        groups, _, out_group, entries = self.sum_shape
        return transform(self.weight).reshape(groups, 1, out_group, entries)

    def weight_sums(self, values: Tensor) -> Tensor:
        """Slot values summed over output positions: ``(..., C_out, C_in / groups, *kernel)``."""
        return values.sum(-3).reshape(*values.shape[:-4], *self.weight.shape)

    def _to(self, device, dtype) -> "ConvBlock":
        return ConvBlock(self.src, self.dst, self.weight.to(device=device, dtype=dtype), self.in_shape,
                         self.out_shape, self.stride, self.padding, self.dilation, self.groups,
                         count_after_cast(self._num_edges, self.dtype, dtype))


class _RunGrid:
    """A convolution's edges into ranges of output units, by index arithmetic.

    The source of the edge from kernel entry ``e = (c, *k)`` into output unit ``(o, *p)`` is
    ``entry_offset[g, e] + position_offset[p]`` with ``g`` the group of channel ``o``: the input
    channel's plane and the kernel offset, plus the window's origin; the edge exists where the
    weight is nonzero and every coordinate ``p·stride − padding + k·dilation`` lies inside the
    input (``inside[p, e]``). Memory beyond the weight: a boolean per weight and per
    (position, entry), and one offset per (group, entry), position and output unit.
    """

    def __init__(self, block: ConvBlock) -> None:
        device = block.weight.device
        c_out, c_in_group, *kernel = block.weight.shape
        spatial, out = block.in_shape[1:], block.out_shape[1:]
        plane_strides = [math.prod(spatial[axis + 1:]) for axis in range(block.dims)]
        self.block = block
        self.per_group = c_out // block.groups
        self.positions = math.prod(out)
        self.weight = block.weight.reshape(c_out, -1)
        self.entries = self.weight.shape[1]
        self.nonzero = self.weight.ne(0)
        entries = torch.arange(self.entries, device=device)
        entry_axes = _unravel(entries, kernel)
        position_axes = _unravel(torch.arange(self.positions, device=device), out)
        group = torch.arange(block.groups, device=device)[:, None]
        channel = group * c_in_group + (entries // math.prod(kernel))[None, :]  # input channel, (groups, E)
        offset = channel * math.prod(spatial)
        position_offset = torch.zeros(self.positions, dtype=torch.long, device=device)
        inside = torch.ones((self.positions, self.entries), dtype=torch.bool, device=device)
        for axis in range(block.dims):
            step = plane_strides[axis]
            offset += (entry_axes[axis] * block.dilation[axis] * step)[None, :]
            origin = torch.arange(out[axis], device=device) * block.stride[axis] - block.padding[axis]
            position_offset += origin[position_axes[axis]] * step
            reach = origin[:, None] + torch.arange(kernel[axis], device=device)[None, :] * block.dilation[axis]
            inside &= ((reach >= 0) & (reach < spatial[axis]))[position_axes[axis]][:, entry_axes[axis]]
        self.entry_offset = offset
        self.position_offset = position_offset
        #: whether position ``p`` reads inside the input through kernel entry ``e``, ``(P, E)``
        self.inside = inside
        self.zero_weights = not bool(self.nonzero.all())
        self.holes = self.zero_weights or not bool(inside.all())
        degrees = self._degrees().reshape(-1)
        ends = torch.cumsum(degrees, 0)
        #: position of the first edge into every output unit, in the block's edge order
        self.starts = ends - degrees

    def _degrees(self) -> Tensor:
        """Edges into each output unit, ``(C_out, P)``: counted exactly in float64, a panel of
        output channels at a time (no float copy of the whole weight)."""
        within = self.inside.sum(1)
        if not self.zero_weights:
            return within[None, :].expand(len(self.weight), -1)
        inside = self.inside.to(torch.float64).T
        panel = max(1, DEGREE_PANEL_ELEMENTS // self.entries)
        return torch.cat([(rows.to(torch.float64) @ inside).round().long() for rows in self.nonzero.split(panel)])

    def group_of(self, channel: Tensor) -> Tensor:
        """The group of each output channel."""
        return channel // self.per_group

    def runs(self, max_edges: int) -> Iterator["ConvRun"]:
        """The runs of at most ``max_edges`` layout entries (or one output unit), in edge order;
        runs without edges are left out."""
        block, positions, entries = self.block, self.positions, self.entries
        per_group = block.out_shape[0] // block.groups
        patches: dict[tuple[int, float], tuple[Tensor, Tensor]] = {}  # the runs' shared input patches, by input tensor
        rectangles = []
        for first in range(0, block.out_shape[0], per_group):
            if positions * entries <= max_edges:
                step = max_edges // (positions * entries)
                rectangles += [(o, min(o + step, first + per_group), 0, positions)
                               for o in range(first, first + per_group, step)]
            else:
                step = max(1, max_edges // entries)
                rectangles += [(o, o + 1, p, min(p + step, positions))
                               for o in range(first, first + per_group) for p in range(0, positions, step)]
        bounds = torch.tensor([[o0 * positions + p0, (o1 - 1) * positions + p1] for o0, o1, p0, p1 in rectangles])
        ends = torch.cat([self.starts, self.starts.new_tensor([block.num_edges])])
        for (o0, o1, p0, p1), start, stop in zip(rectangles, ends[bounds[:, 0]].tolist(), ends[bounds[:, 1]].tolist()):
            if stop > start:
                yield ConvRun(self, start, stop - start, (o0, o1), (p0, p1), patches)


class ConvRun:
    """A convolution's edges into output channels ``o0 .. o1 - 1`` at positions ``p0 .. p1 - 1``,
    laid out ``(channel, position, kernel entry)``: positions ``start .. start + len - 1`` of the
    block's edge order, monotone in the layout, with holes (zero weights, padding) where
    :attr:`valid` is False.

    Only :meth:`take` lists edges, for the entries asked; :attr:`src`, :attr:`dst` and
    :attr:`weight` list them all.
    """

    def __init__(self, grid: _RunGrid, start: int, count: int, channels: tuple[int, int],
                 positions: tuple[int, int], patches: dict[tuple[int, float], tuple[Tensor, Tensor]]) -> None:
        self.start = start
        self._grid, self._count = grid, count
        self.channels, self.positions = channels, positions
        self._patches = patches

    def __len__(self) -> int:
        return self._count

    @property
    def size(self) -> int:
        """Entries of the layout: channels × positions × kernel entries."""
        return (self.channels[1] - self.channels[0]) * (self.positions[1] - self.positions[0]) * self._grid.entries

    @functools.cached_property
    def valid(self) -> Tensor | None:
        """Which layout entries are edges, ``(size,)`` (``None``: all of them)."""
        grid = self._grid
        if not grid.holes:
            return None
        (o0, o1), (p0, p1) = self.channels, self.positions
        return (grid.nonzero[o0:o1, None, :] & grid.inside[None, p0:p1, :]).reshape(-1)

    def take(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(offset, src, dst, weight)`` of the layout entries ``index`` (edges; local ids, the
        offset counted from :attr:`start`)."""
        grid, entries = self._grid, self._grid.entries
        (o0, _), (p0, p1) = self.channels, self.positions
        entry, row = index % entries, index // entries
        channel, position = o0 + row // (p1 - p0), p0 + row % (p1 - p0)
        src = grid.entry_offset[grid.group_of(channel), entry] + grid.position_offset[position]
        dst = channel * grid.positions + position
        weight = grid.weight[channel, entry]
        valid = self.valid
        if valid is None:
            offset = index
        elif len(index) * entries >= self.size:  # many entries: count the edges before each in one pass
            offset = torch.cumsum(valid, 0, dtype=torch.int32)[index].long() - 1
        else:  # few: the edges into the entry's unit before it
            before = valid.view(-1, entries)[row] & (torch.arange(entries, device=index.device) < entry[:, None])
            offset = grid.starts[dst] - self.start + before.sum(1)
        return offset, src, dst, weight

    @functools.cached_property
    def _listing(self) -> tuple[Tensor, Tensor, Tensor]:
        valid = self.valid
        index = torch.arange(self.size, device=self._grid.weight.device) if valid is None else torch.nonzero(valid).flatten()
        return self.take(index)[1:]

    @property
    def src(self) -> Tensor:
        """Local source of every edge of the run, in edge order."""
        return self._listing[0]

    @property
    def dst(self) -> Tensor:
        """Local destination of every edge of the run, in edge order."""
        return self._listing[1]

    @property
    def weight(self) -> Tensor:
        """Weight of every edge of the run, in edge order."""
        return self._listing[2]

    def listed(self) -> EdgeRun:
        """The run's edges as an :class:`EdgeRun` (layout without holes)."""
        return EdgeRun(self.start, *self._listing)

    @property
    def grid(self) -> tuple[int, int, int]:
        """The layout's shape per sample: ``(channels, positions, kernel entries)``."""
        (o0, o1), (p0, p1) = self.channels, self.positions
        return (o1 - o0, p1 - p0, self._grid.entries)

    def sources(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """The value of each entry's source, ``(B, size)``, from ``values (B, n_src)`` (``fill``
        in the padding); read once per ``values`` tensor for the block's runs."""
        return self.source_grid(values, fill).expand(len(values), *self.grid).reshape(len(values), -1)

    def destinations(self, values: Tensor) -> Tensor:
        """The value of each entry's destination, ``(B, size)``, from ``values (B, n_dst)``."""
        return self.destination_grid(values).expand(len(values), *self.grid).reshape(len(values), -1)

    def source_grid(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """:meth:`sources` as a view ``(B, 1, positions, entries)`` of the input patches (read
        once per ``values`` tensor for the block's runs), broadcasting over :attr:`grid`."""
        (o0, _), (p0, p1) = self.channels, self.positions
        group = o0 // (self._grid.block.out_shape[0] // self._grid.block.groups)
        return self._patches_of(values, fill)[:, group, p0:p1][:, None]

    def destination_grid(self, values: Tensor) -> Tensor:
        """:meth:`destinations` as a view ``(B, channels, positions, 1)``, broadcasting over :attr:`grid`."""
        (o0, o1), (p0, p1) = self.channels, self.positions
        return values.reshape(len(values), -1, self._grid.positions)[:, o0:o1, p0:p1][..., None]

    def max_into(self, target: Tensor, rows: Tensor) -> None:
        """``target_j = max(target_j, rows into j)`` for ``target (n_dst,)`` and ``rows``
        ``(channels, positions)``, the value of each output unit (a row of :attr:`grid`)."""
        (o0, o1), (p0, p1) = self.channels, self.positions
        view = target.view(-1, self._grid.positions)[o0:o1, p0:p1]
        view.copy_(torch.maximum(view, rows))

    def messages(self, x: Tensor, s: Tensor, transform: Transform) -> Tensor:
        """``x_i · f(w) · s_j`` over the layout, ``(B, size)``, for ``x (B, n_src)``, ``s (B, n_dst)``."""
        grid = self._grid
        block = grid.block
        (o0, o1), (p0, p1) = self.channels, self.positions
        group = o0 // (block.out_shape[0] // block.groups)
        patch = self._patches_of(x)[:, group, p0:p1]  # (B, positions, E)
        weight = transform(grid.weight[o0:o1])  # (channels, E)
        if grid.zero_weights:  # f(0) is no weight: the flat rule's ones would make a hole a message
            weight = weight.masked_fill(~grid.nonzero[o0:o1], 0)
        quotients = s.reshape(len(s), block.out_shape[0], grid.positions)[:, o0:o1, p0:p1]
        messages = patch[:, None] * weight[None, :, None, :]
        return messages.mul_(quotients[..., None]).reshape(len(x), -1)

    def _patches_of(self, x: Tensor, fill: float = 0.0) -> Tensor:
        """The input patch every output position reads, ``(B, groups, positions, E)`` (``fill`` in
        the padding), made once per input tensor for the block's runs."""
        kept = self._patches.get((id(x), fill))
        if kept is None or kept[0] is not x:
            block = self._grid.block
            batch, kernel = len(x), block.weight.shape[2:]
            planes = x.reshape(batch, *block.in_shape)
            if any(block.padding):
                planes = F.pad(planes, [p for p in reversed(block.padding) for _ in range(2)], value=fill)
            for axis in range(block.dims):  # each spatial axis becomes (outputs, window span)
                span = (kernel[axis] - 1) * block.dilation[axis] + 1
                planes = planes.unfold(2 + axis, span, block.stride[axis])
            windows = planes[(...,) + tuple(slice(None, None, d) for d in block.dilation)]  # (B, C, *out, *k)
            grouped = windows.reshape(batch, block.groups, block.in_shape[0] // block.groups, self._grid.positions,
                                      math.prod(kernel))
            kept = (x, grouped.permute(0, 1, 3, 2, 4).reshape(batch, block.groups, self._grid.positions, -1))
            self._patches[id(x), fill] = kept
        return kept[1]


def _unravel(flat: Tensor, shape: list[int] | tuple[int, ...]) -> list[Tensor]:
    """The row-major coordinates of ``flat`` indices into ``shape``, one tensor per axis."""
    coordinates = []
    for extent in reversed(shape):
        coordinates.append(flat % extent)
        flat = flat // extent
    return coordinates[::-1]
