"""Max-pooling block: edges that depend on the sample.

A max-pooling edge exists for every (window position → output unit) pair inside the input, with
weight 1 (padding gives no edge); they are listed by :meth:`MaxPoolBlock.edges`. In one sample,
the forward pass uses only the winner's edge. With ``mode='winner'`` (the default, and what
Zennit's gradient does) the winner's edge is the only active one in that sample: its effective
weight is 1, every other edge of the window has effective weight 0, so relevance goes to the unit
that won. With ``mode='proportional'`` every window edge stays active with weight 1 and the level's
rule (by default the ε-like ``Norm``) splits relevance over the window in proportion to the
inputs. The winners are found in the forward pass and kept as the block's state.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import reductions
from ..errors import InputError
from ..layout import in_layout_of
from ..transforms import Transform
from .base import Block, EdgeRun, OperandCache
from .conv import ConvBlock

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
MODES = ("winner", "proportional")


@functools.lru_cache(maxsize=64)
def _transformed_one(transform: Transform) -> float:
    """``transform(1)``: the transformed weight of a pooling edge (computed once per transform)."""
    return float(transform(torch.ones(1, dtype=torch.float64)))


class MaxPoolBlock(Block):
    """Max pooling over windows of an N-d input (N = 1, 2 or 3), channel by channel."""

    kind = "maxpool"
    linear_forward = False

    def __init__(
        self,
        src: int,
        dst: int,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        kernel: tuple[int, ...],
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        dilation: tuple[int, ...],
        ceil_mode: bool = False,
        mode: str = "winner",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        num_edges: int | None = None,
    ) -> None:
        """``num_edges``, the windows' edges, is counted unless given (a copy knows it already)."""
        if mode not in MODES:
            raise InputError(f"max pooling mode must be one of {MODES}, got {mode!r}")
        channels = in_shape[0]
        ones = torch.ones((channels, 1, *kernel), dtype=dtype, device=device)
        # the windows as a depthwise convolution with unit weights: same edges, same geometry
        self.windows = ConvBlock(src, dst, ones, in_shape, out_shape, stride, padding, dilation, groups=channels,
                                 num_edges=num_edges)
        super().__init__(src, dst, self.windows.n_src, self.windows.n_dst)
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.kernel, self.stride, self.padding, self.dilation = kernel, stride, padding, dilation
        self.ceil_mode, self.mode = ceil_mode, mode
        self._origins: dict[torch.device, Tensor] = {}
        self._keys: Tensor | None = None

    @property
    def num_edges(self) -> int:
        return self.windows.num_edges

    @property
    def nbytes(self) -> int:
        return 0

    @property
    def device(self) -> torch.device:
        return self.windows.device

    @property
    def dtype(self) -> torch.dtype:
        return self.windows.dtype

    def max_abs_weight(self) -> float:
        return 1.0  # every window edge weighs 1

    def _planes(self, x: Tensor) -> Tensor:
        return x.reshape(len(x), self.in_shape[0], -1)

    def prepare(self, x: Tensor) -> Tensor:
        """Index of each window's winner within its channel plane, ``(B, C, outputs per channel)``.

        The winner is the first maximum in the window's row-major order, as torch's max pooling
        picks it. Windows that lie inside the input are compared offset by offset over strided
        views (several times faster than torch's pooling kernel on small planes); others (padding,
        ``ceil_mode`` overhang) go through torch's pooling.
        """
        planes = x.reshape(len(x), *self.in_shape)
        if self._windows_inside() and math.prod(self.in_shape[1:]) < 2**24:
            return self._winners_by_offset(planes)
        pool = _MAX_POOL[len(self.kernel)]
        _, winners = pool(planes, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode,
                          return_indices=True)
        return winners.reshape(len(x), self.in_shape[0], -1)

    def _windows_inside(self) -> bool:
        spatial, out = self.in_shape[1:], self.out_shape[1:]
        return all(p == 0 for p in self.padding) and all(
            (o - 1) * s + (k - 1) * d < n for n, o, k, s, d in zip(spatial, out, self.kernel, self.stride, self.dilation)
        )

    def _winners_by_offset(self, planes: Tensor) -> Tensor:
        """Running maximum over the window offsets in row-major order; a later offset wins only if
        strictly greater. The offset of the winner is tracked in float (exact below 2²⁴)."""
        spatial, out = self.in_shape[1:], self.out_shape[1:]
        plane_strides = [math.prod(spatial[d + 1:]) for d in range(len(spatial))]

        def at(offset: tuple[int, ...]) -> Tensor:
            return planes[(slice(None), slice(None)) + tuple(
                slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in zip(offset, self.dilation, self.stride, out)
            )]

        offsets = list(itertools.product(*(range(k) for k in self.kernel)))
        best = at(offsets[0]).contiguous()
        chosen = torch.zeros(best.shape, dtype=torch.float32, device=planes.device)
        for offset in offsets[1:]:
            candidate = at(offset).contiguous()  # element-wise kernels on strided views are ~20× slower
            relative = sum(o * d * p for o, d, p in zip(offset, self.dilation, plane_strides))
            better = torch.gt(candidate, best, out=torch.empty_like(chosen))
            chosen.addcmul_(better, torch.sub(relative, chosen))  # the offset where better, else unchanged
            best = torch.maximum(best, candidate)
        return chosen.to(torch.int64).reshape(len(planes), self.in_shape[0], -1).add_(self._window_origins(planes.device))

    def _window_origins(self, device: torch.device) -> Tensor:
        """Flat index of every window's first element within its plane (kept per device)."""
        if device not in self._origins:
            self._origins[device] = self._origins_on(device)
        return self._origins[device]

    def _origins_on(self, device: torch.device) -> Tensor:
        spatial, out = self.in_shape[1:], self.out_shape[1:]
        origins = torch.zeros((), dtype=torch.int64, device=device)
        for d in range(len(spatial)):
            step = self.stride[d] * math.prod(spatial[d + 1:])
            position = torch.arange(out[d], device=device) * step
            origins = origins[..., None] + position
        return origins.reshape(-1)

    def select_state(self, state: Tensor, samples: Tensor) -> Tensor:
        return state.index_select(0, samples)

    def forward(self, x: Tensor, state: Tensor = None) -> Tensor:
        return in_layout_of(self._planes(x).gather(2, state).reshape(len(x), self.n_dst), x)

    def _unit_weight(self, transform: Transform) -> float:
        return _transformed_one(transform)

    def matvec(self, x: Tensor, transform: Transform, state: Tensor = None, cache: OperandCache | None = None) -> Tensor:
        if self.mode == "proportional":
            return self.windows.matvec(x, transform, cache=cache)
        return self.forward(x, state) * self._unit_weight(transform)

    def rmatvec(self, s: Tensor, transform: Transform, state: Tensor = None, cache: OperandCache | None = None) -> Tensor:
        if self.mode == "proportional":
            return self.windows.rmatvec(s, transform, cache=cache)
        planes = s.new_zeros((len(s), self.in_shape[0], self.n_src // self.in_shape[0]))
        reductions.scatter_add_last_(planes, state, s.reshape(len(s), self.in_shape[0], -1) * self._unit_weight(transform))
        return in_layout_of(planes.reshape(len(s), self.n_src), s)

    def edge_messages(
        self, x: Tensor, s: Tensor, transform: Transform, state: Tensor = None, out: Tensor | None = None
    ) -> Tensor:
        messages = super().edge_messages(x, s, transform, out=out)
        if self.mode == "proportional":
            return messages
        src, dst, _ = self.edges()
        return messages.mul_(src[None, :] == self._winner_sources(state)[:, dst])

    def edge_runs(self, max_edges: int) -> Iterator[EdgeRun]:
        return (run.listed() for run in self.windows.edge_runs(max_edges))

    def run_messages(
        self, run: EdgeRun, x: Tensor, s: Tensor, transform: Transform, state: Tensor = None
    ) -> Tensor:
        messages = super().run_messages(run, x, s, transform)
        if self.mode == "proportional":
            return messages
        return messages.mul_(run.src[None, :] == self._winner_sources(state)[:, run.dst])

    def _winner_sources(self, state: Tensor) -> Tensor:
        """The local source id of each output's winner, ``(B, n_dst)``, for winners ``state (B, C, P)``."""
        channels = self.in_shape[0]
        plane_start = torch.arange(self.n_dst, device=state.device) // (self.n_dst // channels) * (self.n_src // channels)
        return state.reshape(len(state), -1) + plane_start

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.windows.edges()

    # -- sums over samples: the windows' convolution slots, or one slot per edge for winners ------
    @property
    def sum_shape(self) -> tuple[int, ...]:
        return self.windows.sum_shape if self.mode == "proportional" else (self.num_edges,)

    def add_message_sums(self, out: Tensor, x: Tensor, s: Tensor, alpha: float = 1.0, state: Tensor = None) -> None:
        """``'winner'``: each output's message goes to the edge from its winner in that sample
        (found by the edges' ``(dst, src)`` order, which is sorted); ``'proportional'``: the
        windows' sums."""
        if self.mode == "proportional":
            self.windows.add_message_sums(out, x, s, alpha)
            return
        batch = len(s)
        planes = self._planes(x)
        messages = planes.gather(2, state).reshape(batch, self.n_dst) * s
        out.index_add_(0, self._winner_edges(state), messages.reshape(-1).to(out.dtype), alpha=alpha)

    def _winner_edges(self, state: Tensor) -> Tensor:
        """The edge from each output's winner, ``(B · n_dst,)``, for winners ``state (B, C, P)``.

        Windows inside the input each hold all ``K`` kernel positions as edges, in row-major
        order: the edge is ``K · output + rank`` of the winner's offset in its window. Other
        windows (padding, ``ceil_mode`` overhang) are searched for among the sorted edge keys.
        """
        kernel_size = math.prod(self.kernel)
        if self._windows_inside() and self.num_edges == self.n_dst * kernel_size:
            relative = state - self._window_origins(state.device)
            ranks = self._offset_ranks(state.device)
            outputs = torch.arange(self.n_dst, device=state.device).reshape(self.in_shape[0], -1)
            return (outputs * kernel_size + ranks[relative]).reshape(-1)
        plane_start = torch.arange(self.in_shape[0], device=state.device)[:, None] * (self.n_src // self.in_shape[0])
        keys = torch.arange(self.n_dst, device=state.device) * self.n_src + (state + plane_start).reshape(len(state), -1)
        return torch.searchsorted(self._edge_keys(), keys.reshape(-1))

    def _offset_ranks(self, device: torch.device) -> Tensor:
        """Rank of each kernel position's offset within its plane, indexed by the offset."""
        spatial = self.in_shape[1:]
        plane_strides = [math.prod(spatial[d + 1:]) for d in range(len(spatial))]
        offsets = [sum(o * d * p for o, d, p in zip(offset, self.dilation, plane_strides))
                   for offset in itertools.product(*(range(k) for k in self.kernel))]
        ranks = torch.zeros(max(offsets) + 1, dtype=torch.int64, device=device)
        ranks[torch.tensor(offsets, device=device)] = torch.arange(len(offsets), device=device)
        return ranks

    def _edge_keys(self) -> Tensor:
        """``dst · n_src + src`` of every edge, ascending (the edges' order); listed once, kept with the block."""
        if self._keys is None:
            src, dst, _ = self.edges()
            self._keys = dst * self.n_src + src
        return self._keys

    def edge_slots(self) -> Tensor:
        return self.windows.edge_slots() if self.mode == "proportional" else super().edge_slots()

    def slot_weights(self, transform: Transform) -> Tensor:
        if self.mode == "proportional":
            return self.windows.slot_weights(transform)
        return transform(torch.ones((), dtype=self.dtype, device=self.device))

    def weight_sums(self, values: Tensor) -> Tensor:
        """Per edge: the windows have no weights of their own."""
        if self.mode == "proportional":
            return values.reshape(*values.shape[:-4], -1)[..., self.windows.edge_slots()]
        return values

    def _to(self, device, dtype) -> "MaxPoolBlock":
        return MaxPoolBlock(self.src, self.dst, self.in_shape, self.out_shape, self.kernel, self.stride, self.padding,
                            self.dilation, self.ceil_mode, self.mode, dtype or self.dtype,
                            device if device is not None else self.device, self.windows.num_edges)
