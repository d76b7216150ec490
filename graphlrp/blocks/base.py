"""The interface every edge block implements.

A block holds the edges from one source level to one destination level, all of one kind, and
does the two reductions an LRP rule needs with the kernel that suits that kind:

* ``matvec``: ``(B, n_src) -> (B, n_dst)``, ``out_j = Σ_i x_i f(w_ij)`` — the forward pass and a
  rule's denominator (a sum over each destination's incoming edges);
* ``rmatvec``: ``(B, n_dst) -> (B, n_src)``, ``out_i = Σ_j f(w_ij) s_j`` — the redistribution
  (a sum over each source's outgoing edges);
* ``edge_messages``: ``x_i f(w_ij) s_j`` for every edge, for the few samples asked;
* ``edges``: the block's edges as local ``(src, dst, weight)``;
* ``edge_runs`` and ``run_messages``: the same edges and messages run by run, consecutive parts of
  the edge order of bounded size, for analyses that stream over a graph's edges instead of listing
  them (:mod:`graphlrp.streaming`);
* ``add_message_sums``: ``Σ_b x_bi s_bj`` over a batch for every *slot* (an edge, or a weight
  position shared by edges), the data-set sums of :mod:`graphlrp.aggregate`; a slot's summed
  messages are these sums times its transformed weight (``slot_weights``), its edges are listed by
  ``edge_slots`` and ``weight_sums`` shapes slot values like the layer's weight.

A block whose edges depend on the sample (max pooling: only the window's winner is connected; a
gate's weights are another branch's values) computes a per-batch ``state`` in
:meth:`Block.prepare` during the forward pass, from its source activations and those of its
:attr:`Block.context` levels; the reductions then receive it. Relevance flows only along the
block's edges, from ``dst`` to ``src``: the context levels receive none through it. Such a block's
forward is not its ``matvec`` (``linear_forward`` is False).

``f`` is a rule's weight transform (:mod:`graphlrp.transforms`). A block holds its weights and
what it derives from them alone (a CSR's transpose, an edge list's sort order), built on first use
and read-only after; what a rule derives from them (transformed weights ``f(W)`` in the kernel's
form, their sums over sources) belongs to whoever explains: the products take an
:class:`OperandCache` that keeps them between calls (:class:`graphlrp.Explainer` holds one per
block), or ``None`` to build them for the one call (dense blocks then work panel by panel, see
:mod:`graphlrp.blocks.dense`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Iterator

import torch
from torch import Tensor

from .. import kernels
from ..devices import same_device
from ..errors import InputError
from ..layout import as_node_major, in_layout_of
from ..transforms import EdgeIndicator, Identity, Transform, check_maps_zero_to_zero

#: elements of the largest ``(samples × edges)`` temporary of the default message sums
SUM_CHUNK_ELEMENTS = 1 << 22


def edge_products(x: Tensor, src: Tensor, weight: Tensor, s: Tensor, dst: Tensor, out: Tensor | None) -> Tensor:
    """``x[:, src] · weight · s[:, dst]`` per edge, written into ``out`` when given.

    ``src`` and ``dst`` may be 32-bit. One sample takes the fused kernel of
    :mod:`graphlrp.kernels` when it applies, else 1-D gathers (torch's fastest) straight into
    ``out``, so the messages are written once and then scaled in place.
    """
    if len(x) == 1:
        target = out[0] if out is not None and out.is_contiguous() else x.new_empty(len(src))
        if kernels.edge_messages_into(x[0], src, weight, s[0], dst, target):
            messages = target[None]
        else:
            gathered = torch.index_select(x[0], 0, src, out=target)
            messages = gathered.mul_(weight).mul_(s[0].index_select(0, dst))[None]
    else:
        messages = x.index_select(1, src).mul_(weight).mul_(s.index_select(1, dst))
    if out is not None and messages.data_ptr() != out.data_ptr():
        out.copy_(messages)
        return out
    return messages


def sample_edge_products(x: Tensor, src: Tensor, weights: Tensor, s: Tensor, dst: Tensor,
                         out: Tensor | None = None) -> Tensor:
    """``x[:, src] · weights · s[:, dst]`` per edge with a weight per sample, ``weights (B, E)``
    (the edges of sample-dependent blocks), written into ``out`` when given."""
    messages = x.index_select(1, src).mul_(weights).mul_(s.index_select(1, dst))
    if out is not None:
        return out.copy_(messages)
    return messages


@dataclass(frozen=True)
class EdgeRun:
    """Consecutive edges of a block: positions ``start .. start + len(src) - 1`` of its edge order.

    Attributes
    ----------
    start : int
        Position of the run's first edge in :meth:`Block.edges` order.
    src, dst : Tensor
        Local source and destination of each edge (int64).
    weight : Tensor
        Each edge's weight.
    """

    start: int
    src: Tensor
    dst: Tensor
    weight: Tensor

    def __len__(self) -> int:
        return len(self.src)

    @property
    def size(self) -> int:
        """Entries of the run's layout: here one per edge, in edge order."""
        return len(self.src)

    @property
    def valid(self) -> Tensor | None:
        """Which layout entries are edges (``None``: all of them, as here)."""
        return None

    def take(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(offset, src, dst, weight)`` of the layout entries ``index`` (edges), the offset counted
        from :attr:`start`."""
        return index, self.src[index], self.dst[index], self.weight[index]

    @property
    def grid(self) -> tuple[int, ...]:
        """The shape of one sample's layout over which :meth:`source_grid` and
        :meth:`destination_grid` broadcast, the entries of a row (its last axis) all into one
        destination: here ``(size, 1)``, a row per edge."""
        return (self.size, 1)

    def sources(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """The value of each entry's source, ``(B, size)``, from ``values (B, n_src)`` (``fill``
        at holes that read no source)."""
        return values[:, self.src]

    def destinations(self, values: Tensor) -> Tensor:
        """The value of each entry's destination, ``(B, size)``, from ``values (B, n_dst)``."""
        return values[:, self.dst]

    def source_grid(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """:meth:`sources` as ``(B, *grid)`` or a view that broadcasts to it."""
        return self.sources(values, fill)[..., None]

    def destination_grid(self, values: Tensor) -> Tensor:
        """:meth:`destinations` as ``(B, *grid)`` or a view that broadcasts to it."""
        return self.destinations(values)[..., None]

    def max_into(self, target: Tensor, rows: Tensor) -> None:
        """``target_j = max(target_j, rows into j)`` for ``target (n_dst,)`` and ``rows``
        (``grid[:-1]``), each row's value (say, the maximum over its entries) for its destination."""
        target.scatter_reduce_(0, self.dst, rows.reshape(-1), "amax")


def runs_of_listing(src: Tensor, dst: Tensor, weight: Tensor, max_edges: int) -> Iterator[EdgeRun]:
    """Runs of at most ``max_edges`` edges cut from listed edges (views where the lists are)."""
    for start in range(0, len(weight), max_edges):
        part = slice(start, start + max_edges)
        yield EdgeRun(start, src[part].long(), dst[part].long(), weight[part])


def destination_ranges(degrees: Tensor, max_edges: int) -> Iterator[tuple[int, int, int]]:
    """``(first edge, first destination, stop destination)`` of consecutive destination ranges
    holding at most ``max_edges`` edges each, for edges ordered by destination with ``degrees``
    edges into each destination; one destination with more edges is a range of its own."""
    ends = torch.cumsum(degrees.long(), 0)
    start, first = 0, 0
    while first < len(degrees):
        stop = max(int(torch.searchsorted(ends, start + max_edges, right=True)), first + 1)
        end = int(ends[stop - 1])
        if end > start:  # ranges of destinations without edges are left out
            yield start, first, stop
        start, first = end, stop


class OperandCache:
    """A block's operands for the weight transforms of one way of explaining, kept between calls.

    Parameters
    ----------
    keep : bool
        Whether a dense block may keep whole transformed matrices (else it computes products with
        transformed weights panel by panel); other kinds keep theirs until :meth:`clear`.
    """

    __slots__ = ("keep", "operands", "row_sums")

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        #: the kind's operand for each transform (:meth:`StaticBlock.operand`)
        self.operands: dict[Transform, object] = {}
        #: ``Σ_i f(w_ij)`` for each transform (:meth:`StaticBlock.sums_over_sources`)
        self.row_sums: dict[Transform, Tensor] = {}

    def clear(self) -> None:
        """Drop every kept operand."""
        self.operands.clear()
        self.row_sums.clear()


def count_after_cast(count: int, source: torch.dtype, target: torch.dtype | None) -> int | None:
    """The number of nonzero weights after casting ``count`` of them from ``source`` to ``target``:
    unchanged in the same or a wider dtype, ``None`` (count again) where a narrower one may round
    a weight to zero."""
    if target is None or target == source or torch.finfo(target).bits > torch.finfo(source).bits:
        return count
    return None


def _max_abs(weight: Tensor) -> float:
    return float(weight.abs().max()) if weight.numel() else 0.0


#: every block kind by its name, filled when a :class:`Block` subclass that names its ``kind`` is defined
KINDS: dict[str, type["Block"]] = {}


class Block(ABC):
    """Edges from level ``src`` (``n_src`` nodes) to level ``dst`` (``n_dst`` nodes).

    A subclass declares what it is in class attributes — its :attr:`kind` name (which registers
    it in :data:`KINDS`), whether its kernels prefer node-major operands, whether any edges can be
    held in it — and implements the reductions; see ``docs/howto-block-kind.md``.
    """

    #: the kind's name; a subclass that sets it is registered under it in :data:`KINDS`
    kind: ClassVar[str] = "abstract"
    #: whether the kind's kernels run fastest on node-major operands (:attr:`graphlrp.Graph.node_major`
    #: follows the kinds that hold most edges)
    prefers_node_major: ClassVar[bool] = False
    #: whether any weight matrix or edge list can be held in this kind: such a kind implements
    #: :meth:`from_edge_list` and :meth:`held_bytes`, may be forced with ``block_kind=`` and is
    #: one the front-ends choose from
    holds_any_edges: ClassVar[bool] = False
    #: whether the forward pass is ``matvec`` with untransformed weights
    linear_forward: bool = True
    #: levels, besides ``src``, whose activations :meth:`prepare` reads to make the block's
    #: per-sample weights (all before ``dst``); they receive no relevance through this block
    context: tuple[int, ...] = ()
    #: whether the kind was chosen from the weights' density (``block_kind='auto'``) rather than
    #: given: :meth:`graphlrp.Graph.to` decides such a kind again for the device it moves to
    automatic_kind: bool = False
    #: whether a product with transformed weights keeps nothing in an :class:`OperandCache` whose
    #: ``keep`` is off (else the transformed weights stay in it until it is cleared)
    transient_transforms: bool = False
    #: whether a slot's summed messages are ``Σ_b x_bi s_bj`` times one weight for every sample
    #: (:meth:`add_message_sums` times :meth:`slot_weights`); a kind whose weights depend on the
    #: sample (a gate, attention's probabilities, layer norm's ``1/σ``) has its messages summed
    #: sample by sample (:meth:`edge_messages`) instead
    fixed_slot_weights: ClassVar[bool] = True
    #: whether every slot of :attr:`sum_shape` is one edge, so that :meth:`source_sums` can split
    #: the slot sums by source node (not where edges share a slot, as a convolution's kernel)
    slot_per_edge: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            return
        known = KINDS.get(cls.kind)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise InputError(f"block kind {cls.kind!r} is taken by {known.__module__}.{known.__qualname__}")
        KINDS[cls.kind] = cls

    def __init__(self, src: int, dst: int, n_src: int, n_dst: int) -> None:
        self.src = src
        self.dst = dst
        self.n_src = n_src
        self.n_dst = n_dst

    # -- building (kinds that hold any edges) -----------------------------------------------
    @classmethod
    def from_edge_list(cls, src: int, dst: int, n_src: int, n_dst: int, src_idx: Tensor, dst_idx: Tensor,
                       weight: Tensor) -> "Block":
        """A block of this kind from local edge lists (no duplicate pairs, no zero weights)."""
        raise NotImplementedError(f"block kind {cls.kind!r} is not built from edge lists")

    @classmethod
    def from_matrix(cls, src: int, dst: int, weight: Tensor) -> "Block":
        """A block of this kind from a ``(n_dst, n_src)`` weight matrix; its zeros are not edges."""
        dst_idx, src_idx = torch.nonzero(weight, as_tuple=True)
        return cls.from_edge_list(src, dst, weight.shape[1], weight.shape[0], src_idx, dst_idx, weight[dst_idx, src_idx])

    @classmethod
    def held_bytes(cls, n_src: int, n_dst: int, num_edges: int, element_size: int) -> int:
        """Bytes a block of this kind holds for ``num_edges`` edges between levels of these sizes."""
        raise NotImplementedError(f"block kind {cls.kind!r} does not estimate its size")

    # -- what a kind implements -------------------------------------------------------------
    @property
    @abstractmethod
    def num_edges(self) -> int:
        """Number of edges (nonzero weights)."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held by the block's tensors."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Device of the block's tensors."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """Floating dtype of the block's weights."""

    @abstractmethod
    def matvec(self, x: Tensor, transform: Transform = Identity(), state: object = None,
               cache: OperandCache | None = None) -> Tensor:
        """``out_j = Σ_i x_i f(w_ij)`` for ``x`` of shape ``(B, n_src)``; ``cache`` keeps ``f``'s operand."""

    @abstractmethod
    def rmatvec(self, s: Tensor, transform: Transform = Identity(), state: object = None,
                cache: OperandCache | None = None) -> Tensor:
        """``out_i = Σ_j f(w_ij) s_j`` for ``s`` of shape ``(B, n_dst)``; ``cache`` keeps ``f``'s operand."""

    @abstractmethod
    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        """Local ``(src, dst, weight)`` of every edge, in the block's edge order."""

    @abstractmethod
    def _to(self, device: torch.device | str | None, dtype: torch.dtype | None) -> "Block": ...

    # -- shared mechanism -------------------------------------------------------------------
    def prepare(self, x: Tensor, *context: Tensor) -> object:
        """Per-batch state computed in the forward pass from the source activations ``x`` and the
        activations of the :attr:`context` levels, in their order (none here)."""
        return None

    def select_state(self, state: object, samples: Tensor) -> object:
        """The part of a batch ``state`` that belongs to ``samples`` (row indices)."""
        return state

    def forward(self, x: Tensor, state: object = None) -> Tensor:
        """The block's part of the destinations' pre-activation for source activations ``x``.

        Always a new tensor, which the caller may write to (the forward pass sums in place).
        """
        return self.matvec(x)

    def edge_messages(
        self, x: Tensor, s: Tensor, transform: Transform = Identity(), state: object = None, out: Tensor | None = None
    ) -> Tensor:
        """``x_i f(w_ij) s_j`` per edge, shape ``(B, num_edges)``, for ``x (B, n_src)``, ``s (B, n_dst)``.

        ``state`` is the block's state for exactly these ``B`` samples; ``out``, if given, receives
        the result.
        """
        src, dst, weight = self.edges()
        return edge_products(x, src, transform(weight), s, dst, out)

    def edge_runs(self, max_edges: int) -> Iterator[EdgeRun]:
        """The block's edges as consecutive runs of at most ``max_edges`` edges, in edge order.

        Together the runs are :meth:`edges`; a kind that lists its edges on demand (convolutions)
        lists one run at a time, so no more than a run's edges are held. Here: runs cut from
        :meth:`edges`.
        """
        yield from runs_of_listing(*self.edges(), max_edges)

    def run_messages(
        self, run: EdgeRun, x: Tensor, s: Tensor, transform: Transform = Identity(), state: object = None
    ) -> Tensor:
        """:meth:`edge_messages` of the run's edges only, ``(B, len(run))``, bit for bit the same."""
        return edge_products(x, run.src, transform(run.weight), s, run.dst, None)

    def max_abs_weight(self) -> float:
        """The largest ``|w_ij|`` of the block's edges (0 without edges); one pass over the weights."""
        return _max_abs(self.edges()[2])

    # -- sums over samples (data-set aggregation) ---------------------------------------------
    @property
    def sum_shape(self) -> tuple[int, ...]:
        """Shape of the block's message sums: one slot per edge here, in :meth:`edges` order."""
        return (self.num_edges,)

    def add_message_sums(self, out: Tensor, x: Tensor, s: Tensor, alpha: float = 1.0, state: object = None) -> None:
        """Add ``alpha · Σ_b x_bi s_bj`` of every slot to ``out`` (shaped :attr:`sum_shape`).

        The message of an edge with unit weight, summed over the batch ``x (B, n_src)``,
        ``s (B, n_dst)``; ``state`` is the block's state for these samples. Here: the messages of
        :meth:`edge_messages` with every edge weighing one, a chunk of samples at a time.
        """
        chunk = max(1, SUM_CHUNK_ELEMENTS // max(1, self.num_edges))
        for start in range(0, len(x), chunk):
            rows = torch.arange(start, min(start + chunk, len(x)), device=x.device)
            part = self.select_state(state, rows) if state is not None else None
            messages = self.edge_messages(x[start : start + chunk], s[start : start + chunk], EdgeIndicator(), part)
            out.add_(messages.sum(0), alpha=alpha)

    def edge_slots(self) -> Tensor:
        """The slot of every edge, in :meth:`edges` order (flat index into :attr:`sum_shape`)."""
        return torch.arange(self.num_edges, device=self.device)

    def slot_weights(self, transform: Transform) -> Tensor:
        """``f(w)`` of every slot, broadcastable to :attr:`sum_shape`."""
        return transform(self.edges()[2])

    def weight_sums(self, values: Tensor) -> Tensor:
        """Slot values ``(..., *sum_shape)`` shaped like the layer's weight: here one per edge."""
        return values

    def per_parameter(self) -> "Block":
        """This block as sums over samples see it when only relevance per parameter is kept:
        the same block, or (convolutions) one whose slots are its parameters, each summing the
        edges that share it, so that the sums hold no more than the weights."""
        return self

    def source_sums(self, values: Tensor) -> Tensor:
        """Slot values ``(..., *sum_shape)`` added over the edges leaving each source node,
        ``(..., n_src)``; for kinds with :attr:`slot_per_edge` only."""
        if not self.slot_per_edge:
            raise TypeError(f"{type(self).__name__}'s slots are shared between edges: their sums cannot be split "
                            "by source node")
        lead = values.shape[: values.dim() - len(self.sum_shape)]
        per_edge = values.reshape(*lead, -1)[..., self.edge_slots()]
        out = per_edge.new_zeros((*lead, self.n_src))
        return out.index_add_(-1, self.edges()[0], per_edge)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Block":
        """A copy of the block on ``device`` with weights of ``dtype`` (self if nothing changes)."""
        if (device is None or same_device(device, self.device)) and (dtype is None or dtype == self.dtype):
            return self
        moved = self._to(device, dtype)
        moved.automatic_kind = self.automatic_kind
        return moved

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.src}->{self.dst}, {self.n_src}x{self.n_dst}, edges={self.num_edges})"


class WeightFreeBlock(Block):
    """A block that holds no weights (they are values of the sample): its dtype and device are given."""

    def __init__(self, src: int, dst: int, n_src: int, n_dst: int, dtype: torch.dtype,
                 device: torch.device | str | None) -> None:
        super().__init__(src, dst, n_src, n_dst)
        self._dtype = dtype
        self._device = torch.device(device) if device is not None else torch.device("cpu")

    @property
    def nbytes(self) -> int:
        return 0

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype


class StaticBlock(Block):
    """A block whose edges are the same for every sample; its operand is built once per transform.

    Its products are template methods: :meth:`matvec` and :meth:`rmatvec` hand the kind's kernels
    (``_matvec``, ``_rmatvec``) their operand in the layout the kind declares
    (:attr:`operand_layout`) and return the kernel's result in the layout of the operand given.
    """

    #: the layout the kind's kernels take their operand in: ``'node'`` (node-major), ``'batch'``
    #: (contiguous ``(B, n)``), or ``None`` (either, as given); see :mod:`graphlrp.layout`
    operand_layout: ClassVar[str | None] = None

    def __init__(self, src: int, dst: int, n_src: int, n_dst: int) -> None:
        super().__init__(src, dst, n_src, n_dst)
        #: the kind's operand of the untransformed weights (built on first use)
        self._own_operand: object = None

    def sums_over_sources(self, transform: Transform, cache: OperandCache | None = None) -> Tensor:
        """``Σ_i f(w_ij)`` for every destination, as one ``(1, n_dst)`` row.

        The product with an input of ones (the w² and flat rules' denominators), the same for
        every sample: kept in ``cache`` once computed.
        """
        sums = None if cache is None else cache.row_sums.get(transform)
        if sums is None:
            ones = torch.ones((1, self.n_src), dtype=self.dtype, device=self.device)
            sums = self._product_with_ones(ones, transform)
            if cache is not None:
                cache.row_sums[transform] = sums
        return sums

    def max_abs_weight(self) -> float:
        return _max_abs(self.held()[-1])

    def _product_with_ones(self, ones: Tensor, transform: Transform) -> Tensor:
        return self.matvec(ones, transform)

    @abstractmethod
    def held(self) -> tuple[Tensor, ...]:
        """The tensors the block holds, its edge weights last."""

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.held())

    @property
    def device(self) -> torch.device:
        return self.held()[-1].device

    @property
    def dtype(self) -> torch.dtype:
        return self.held()[-1].dtype

    def operand(self, transform: Transform = Identity(), cache: OperandCache | None = None) -> object:
        """The kind's operand for ``transform``: the block's own for the identity, else kept in
        ``cache`` (built anew without one)."""
        if isinstance(transform, Identity):
            if self._own_operand is None:
                self._own_operand = self._transformed(transform)
            return self._own_operand
        operand = None if cache is None else cache.operands.get(transform)
        if operand is None:
            check_maps_zero_to_zero(transform)
            operand = self._transformed(transform)
            if cache is not None:
                cache.operands[transform] = operand
        return operand

    def matvec(self, x: Tensor, transform: Transform = Identity(), state: object = None,
               cache: OperandCache | None = None) -> Tensor:
        """``out_j = Σ_i x_i f(w_ij)`` for ``x`` of shape ``(B, n_src)``; ``cache`` keeps ``f``'s operand."""
        return in_layout_of(self._matvec(self._arranged(x), self.operand(transform, cache)), x)

    def rmatvec(self, s: Tensor, transform: Transform = Identity(), state: object = None,
                cache: OperandCache | None = None) -> Tensor:
        """``out_i = Σ_j f(w_ij) s_j`` for ``s`` of shape ``(B, n_dst)``; ``cache`` keeps ``f``'s operand."""
        return in_layout_of(self._rmatvec(self._arranged(s), self.operand(transform, cache)), s)

    def _arranged(self, v: Tensor) -> Tensor:
        """``v`` in :attr:`operand_layout` (copied only if it is not)."""
        if self.operand_layout == "node":
            return as_node_major(v)
        if self.operand_layout == "batch" and not v.is_contiguous():
            return v.contiguous()
        return v

    @abstractmethod
    def _transformed(self, transform: Transform) -> object:
        """Build the kind's operand for weights transformed by ``transform``."""

    @abstractmethod
    def _matvec(self, x: Tensor, operand: object) -> Tensor:
        """The kernel of :meth:`matvec`: ``x`` in :attr:`operand_layout`, the result in either layout."""

    @abstractmethod
    def _rmatvec(self, s: Tensor, operand: object) -> Tensor:
        """The kernel of :meth:`rmatvec`: ``s`` in :attr:`operand_layout`, the result in either layout."""
