"""The :class:`Explanation` that :func:`graphlrp.explain` and :class:`graphlrp.Explainer` return."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch
from torch import Tensor

from . import export
from .errors import ArgumentTypeError, IndexOutOfRangeError, InputError
from .blocks import Block, EdgeRun
from .graph import Graph
from .memory import check_budget
from .propagate import LevelRecord, Trace, _Inputs, level_balance
from .rules import Rule
from .samples import Samples, is_index, rows
from .transforms import Identity, Zero

if TYPE_CHECKING:
    import networkx as nx


@dataclass(frozen=True)
class LevelBalance:
    """Relevance accounting of one level, summed over its nodes, per sample (shape ``(B,)``).

    ``relevance_in = relevance_out + bias + stabilizer + dropped``: what reached the level's nodes
    equals what left through its incoming edges plus what the bias terms and the stabilizer
    absorbed plus what no group passed on (zero denominators; γ at ``z = 0``).
    """

    level: int
    name: str
    rule: Rule
    relevance_in: Tensor
    relevance_out: Tensor
    bias: Tensor
    stabilizer: Tensor
    dropped: Tensor


#: edges per run of :meth:`Explanation.message_runs` (divided among the samples asked)
RUN_ELEMENTS = 1 << 21


class MessageRun:
    """The messages of consecutive edges, positions ``start .. start + len - 1`` of :meth:`Graph.edges`.

    The messages come in the run's layout (:attr:`layout`): one entry per edge in edge order, or
    for kinds that compute them densely (convolutions) a grid in edge order with holes, entries
    that are no edge (:attr:`valid`); :meth:`take` lists the edges of chosen entries only.
    :attr:`messages`, :attr:`src`, :attr:`dst` and :attr:`weight` list every edge.

    Attributes
    ----------
    block : Block
        The block holding the edges.
    start : int
        Position of the first edge in :meth:`Graph.edges` order.
    layout : Tensor
        ``(samples, size)``: each entry's relevance message, at an edge bit for bit
        :meth:`Explanation.edge_relevance`'s, ``±0`` at a hole (of finite activations and
        quotients: a hole is a product with a zero input or weight).
    contribution_layout : Tensor or None
        ``(samples, size)``: each entry's ``a_i · w_ij`` when asked for, as
        :meth:`Explanation.edge_contributions` (``±0`` at a hole).
    """

    def __init__(self, block: Block, start: int, edges: EdgeRun, src_offset: int, dst_offset: int,
                 layout: Tensor, contribution_layout: Tensor | None = None) -> None:
        self.block, self.start = block, start
        self.layout, self.contribution_layout = layout, contribution_layout
        self._edges, self._offsets = edges, (src_offset, dst_offset)

    def __len__(self) -> int:
        return len(self._edges)

    @property
    def valid(self) -> Tensor | None:
        """Which entries of the layout are edges, ``(size,)`` (``None``: every entry)."""
        return self._edges.valid

    def take(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(position, src, dst, weight)`` of the edges at layout entries ``index``: positions in
        :meth:`Graph.edges` order, global node ids (int64)."""
        offset, src, dst, weight = self._edges.take(index)
        return offset + self.start, src + self._offsets[0], dst + self._offsets[1], weight

    def sources(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """The value of each layout entry's source, ``(B, size)``, from ``values (B, n)`` of the
        source level's nodes (``fill`` at holes that read no source). A kind may read ``values``
        once for all the block's runs: pass the same tensor, unchanged, to each."""
        return self._edges.sources(values, fill)

    def destinations(self, values: Tensor) -> Tensor:
        """The value of each layout entry's destination, ``(B, size)``, from ``values (B, n)`` of
        the destination level's nodes."""
        return self._edges.destinations(values)

    @property
    def grid(self) -> tuple[int, ...]:
        """The shape of one sample's layout for :meth:`source_grid` and :meth:`destination_grid`, the
        entries of a row (the last axis) all into one destination: ``(channels, positions, kernel
        entries)`` for a convolution, else ``(size, 1)``."""
        return self._edges.grid

    def source_grid(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """:meth:`sources` as ``(B, *grid)`` or a view that broadcasts to it (a convolution's input
        patches are not repeated over its output channels)."""
        return self._edges.source_grid(values, fill)

    def destination_grid(self, values: Tensor) -> Tensor:
        """:meth:`destinations` as ``(B, *grid)`` or a view that broadcasts to it."""
        return self._edges.destination_grid(values)

    def max_into(self, target: Tensor, rows: Tensor) -> None:
        """``target_j = max(target_j, rows into j)`` for ``target (n,)`` of the destination level's
        nodes and ``rows`` (``grid[:-1]``), one value per row of :attr:`grid`, whose entries all go
        into one destination."""
        self._edges.max_into(target, rows)

    def _compact(self, values: Tensor) -> Tensor:
        valid = self.valid
        return values if valid is None else values[:, valid]

    @property
    def messages(self) -> Tensor:
        """``(samples, len)``: each edge's relevance message, bit for bit :meth:`Explanation.edge_relevance`'s."""
        return self._compact(self.layout)

    @property
    def contributions(self) -> Tensor | None:
        """``(samples, len)``: each edge's ``a_i · w_ij`` when asked for, as :meth:`Explanation.edge_contributions`."""
        return None if self.contribution_layout is None else self._compact(self.contribution_layout)

    @property
    def src(self) -> Tensor:
        """Global node id of each edge's source (int64)."""
        return self._edges.src + self._offsets[0]

    @property
    def dst(self) -> Tensor:
        """Global node id of each edge's destination (int64)."""
        return self._edges.dst + self._offsets[1]

    @property
    def weight(self) -> Tensor:
        """Each edge's weight."""
        return self._edges.weight


class Explanation:
    """The result of :func:`explain`: relevance of every node, and of every edge on demand."""

    def __init__(self, graph: Graph, trace: Trace, node_relevance: Tensor, records: list[LevelRecord | None]):
        self.graph = graph
        self._trace = trace
        self._records = records
        #: relevance of every node, ``(B, num_nodes)`` in global node id order
        self.node_relevance = node_relevance

    @property
    def output(self) -> Tensor:
        """The network's output for the explained batch."""
        return self._trace.output

    @property
    def activations(self) -> tuple[Tensor, ...]:
        """Each level's activations ``(B, n)`` in the forward pass (level 0: the input, flattened).

        Read-only views of the explanation's own tensors: write to a copy.
        """
        return tuple(self._trace.activations)

    @property
    def preactivations(self) -> tuple[Tensor | None, ...]:
        """Each level's pre-activation ``(B, n)`` (``None`` for the input and for levels without activation)."""
        return tuple(self._trace.preactivations)

    @property
    def records(self) -> tuple[LevelRecord | None, ...]:
        """Per level, how relevance crossed into its sources (``None`` for the input level).

        A :class:`graphlrp.propagate.LevelRecord` holds the level's rule, the rule's groups, and per
        group the quotients ``s_j = R_j / stab(z_j)`` and unstabilized denominators ``z_j``, each
        ``(B, n)``: every edge message is ``f_in(a_i) f_w(w_ij) s_j`` summed over the group's terms.
        """
        return tuple(self._records)

    def block_state(self, block) -> object:
        """The per-batch state ``block.prepare`` computed in the forward pass (``None`` for most kinds)."""
        return self._trace.state(block)

    @property
    def input_relevance(self) -> Tensor:
        """Relevance of the input units, shaped like the input."""
        first = self.graph.levels[0]
        return self.node_relevance[:, : first.size].reshape(len(self.node_relevance), *first.shape)

    def level_relevance(self, level: int) -> Tensor:
        """Relevance of one level's nodes, ``(B, *shape)``; ``level`` is an index into
        ``graph.levels`` (negative counts from the last level)."""
        lvl = self.graph.levels[_index("level", level, len(self.graph.levels), "graph.levels")]
        return self.node_relevance[:, lvl.offset : lvl.offset + lvl.size].reshape(-1, *lvl.shape)

    def rules(self) -> list[Rule | None]:
        """The rule used at each level (``None`` for the input level)."""
        return [None if r is None else r.rule for r in self._records]

    def sample_rows(self, sample: Samples, allow_empty: bool = False) -> list[int]:
        """The rows of the explained batch that ``sample`` names, as non-negative ints.

        ``sample`` is one index (an int, a 0-d integer tensor or array), a sequence of indices (a
        1-D tensor or array included, also of one element), or ``None`` for all; see
        :func:`graphlrp.samples.rows`, which raises for entries that are not ints, out of range,
        or (unless ``allow_empty``) an empty selection.
        """
        return rows(sample, len(self.node_relevance), allow_empty)

    def edge_relevance(
        self, sample: Samples = None, max_bytes: int | None = None, out: Tensor | None = None
    ) -> Tensor:
        """The relevance message each edge carries, in :meth:`Graph.edges` order.

        The messages leaving a node sum to that node's relevance. Computed on demand, only for the
        samples asked: ``sample`` an int gives ``(num_edges,)``, a sequence gives
        ``(len(sample), num_edges)``, ``None`` gives every sample ``(B, num_edges)``; negative
        indices count from the end of the batch, as in Python. A result
        that would exceed ``max_bytes`` (default: half the available memory) is refused before
        anything is allocated. ``out``, a contiguous tensor of the result's shape, dtype and
        device, receives the result instead of a new tensor: reusing one buffer for many samples
        saves allocating (and the operating system zeroing) the memory of every result.
        """
        chosen = self.sample_rows(sample)
        element = self.node_relevance.element_size()
        check_budget(f"edge relevance of {len(chosen)} sample(s) × {self.graph.num_edges:,} edges",
                     self.graph.num_edges * (len(chosen) * element * 3 + 16 + element), max_bytes,
                     self.node_relevance.device)
        index = torch.tensor(chosen, dtype=torch.long, device=self.node_relevance.device)
        single = is_index(sample)
        shape = (self.graph.num_edges,) if single else (len(chosen), self.graph.num_edges)
        if out is None:
            messages = self.node_relevance.new_empty((len(chosen), self.graph.num_edges))
        else:
            _check_out(out, shape, self.node_relevance)
            messages = out.view(len(chosen), self.graph.num_edges)
        start = 0
        inputs: dict[int, _Inputs] = {}  # per source level, for the chosen samples
        quotients: dict[int, list[Tensor]] = {}  # per destination level
        for block in self.graph.blocks:
            if block.src not in inputs:
                chosen = self._trace.activations[block.src].index_select(0, index)
                inputs[block.src] = _Inputs(self.graph.levels[block.src], chosen)
            if block.dst not in quotients:
                quotients[block.dst] = [q.index_select(0, index) for q in self._records[block.dst].quotients]
            count = block.num_edges
            self._block_messages(block, index, inputs[block.src], quotients[block.dst], messages[:, start : start + count])
            start += count
        if out is not None:
            return out
        return messages[0] if single else messages

    def _block_messages(self, block, index: Tensor, inputs: _Inputs, quotients: list[Tensor], out: Tensor) -> None:
        """Write the messages of ``block``'s edges for the samples ``index`` into ``out``.

        ``inputs`` are the source level's and ``quotients`` the destination level's, for those samples.
        """
        state = block.select_state(self._trace.state(block), index)

        def messages(x: Tensor, s: Tensor, transform, into: Tensor | None) -> Tensor:
            return block.edge_messages(x, s, transform, state, out=into)

        self._summed_terms(block, inputs, quotients, messages, out)

    def _summed_terms(self, block: Block, inputs: _Inputs, quotients: list[Tensor],
                      messages: Callable[..., Tensor], out: Tensor | None) -> Tensor:
        """The messages of the destination level's rule: ``Σ scale · sign · messages(x, s, f)`` over
        its groups and terms, in ``out`` if given (else a new tensor, or ``None`` for a rule without
        terms there); ``messages(x, s, f, into)`` gives one term's messages, written into ``into``
        when that is not ``None``."""
        written = None
        for group, chosen in zip(self._records[block.dst].groups, quotients):
            for term in group.terms:
                term_input = inputs(term.inputs)
                if term_input is None:
                    continue
                factor = group.scale * term.sign
                if written is None and factor == 1.0:
                    written = messages(term_input, chosen, term.weights, out)
                elif written is None:
                    written = torch.mul(messages(term_input, chosen, term.weights, None), factor, out=out)
                else:
                    written.add_(messages(term_input, chosen, term.weights, None), alpha=factor)
        if written is None and out is not None:
            out.zero_()
            return out
        return written

    def message_runs(
        self, sample: Samples = None, blocks: Sequence[int] | None = None, contributions: bool = False,
        max_edges: int | None = None,
    ) -> Iterator[MessageRun]:
        """The edge relevance of the samples asked, run by run, never every edge at once.

        Runs follow :meth:`Graph.edges` order: block after block (``blocks``, indices into
        ``graph.blocks`` in the order given, default all), each block's edges in runs of at most
        ``max_edges`` edges (default :data:`RUN_ELEMENTS` divided among the samples; a kind may
        keep one destination's edges together; a convolution's runs are layouts of at most as
        many entries, holes included, see :class:`MessageRun`). Each run's messages are bit for
        bit those of :meth:`edge_relevance`, and with ``contributions`` its ``a_i · w_ij`` those
        of :meth:`edge_contributions`. Memory: one run's edges (a convolution lists none unless
        asked), its messages, and one level's inputs and quotients.
        """
        chosen = self.sample_rows(sample)
        index = torch.tensor(chosen, dtype=torch.long, device=self.node_relevance.device)
        limit = max(1, RUN_ELEMENTS // len(chosen)) if max_edges is None else max_edges
        starts = [0]
        for block in self.graph.blocks:
            starts.append(starts[-1] + block.num_edges)
        levels = self.graph.levels
        for number in range(len(self.graph.blocks)) if blocks is None else blocks:
            block = self.graph.blocks[number]
            if block.num_edges == 0:
                continue
            inputs = _Inputs(levels[block.src], self._trace.activations[block.src].index_select(0, index))
            quotients = [q.index_select(0, index) for q in self._records[block.dst].quotients]
            state = block.select_state(self._trace.state(block), index)
            ones = inputs.activation.new_ones((len(chosen), block.n_dst)) if contributions else None
            for run in block.edge_runs(limit):
                messages = self._run_messages(block, run, inputs, quotients, state)
                contribution = block.run_messages(run, inputs.activation, ones, Identity(), state) if contributions else None
                yield MessageRun(block, starts[number] + run.start, run, levels[block.src].offset,
                                 levels[block.dst].offset, messages, contribution)

    def _run_messages(self, block: Block, run: EdgeRun, inputs: _Inputs, quotients: list[Tensor],
                      state: object) -> Tensor:
        def messages(x: Tensor, s: Tensor, transform, into: Tensor | None) -> Tensor:
            return block.run_messages(run, x, s, transform, state)

        summed = self._summed_terms(block, inputs, quotients, messages, None)
        return summed if summed is not None else inputs.activation.new_zeros((len(inputs.activation), run.size))

    def to_networkx(self, sample: Samples = 0, **options) -> "nx.DiGraph":
        """This explanation as a networkx graph; see :func:`graphlrp.export.explanation_to_networkx`."""
        return export.explanation_to_networkx(self, sample, **options)

    def bias_relevance(self, sample: Samples = None) -> Tensor:
        """The relevance each node's bias term absorbed, ``(samples, num_nodes)`` (``(num_nodes,)`` for one index).

        For node ``j`` of a level whose rule has groups ``g``: ``Σ_g scale_g · s_gj · β_gj`` with
        ``s_gj`` the group's quotient and ``β_gj`` its bias term. Summed over a level's nodes it is
        that level's :attr:`LevelBalance.bias`. Input nodes and nodes without a bias absorb nothing.
        """
        chosen = self.sample_rows(sample, allow_empty=True)
        index = torch.tensor(chosen, dtype=torch.long, device=self.node_relevance.device)
        shares = self.node_relevance.new_zeros((len(chosen), self.graph.num_nodes))
        for level in self.graph.levels[1:]:
            if level.bias is None:
                continue
            record = self._records[level.index]
            view = shares[:, level.offset : level.offset + level.size]
            for group, quotient in zip(record.groups, record.quotients):
                terms = [t.sign * t.bias(level.bias) for t in group.terms if not isinstance(t.bias, Zero)]
                if terms:
                    view += group.scale * quotient.index_select(0, index) * sum(terms)
        return shares[0] if is_index(sample) else shares

    def edge_contributions(self, sample: Samples = None) -> Tensor:
        """The forward contribution ``a_i · w_ij`` of every edge, in :meth:`Graph.edges` order.

        ``(samples, num_edges)``, or ``(num_edges,)`` for one index. A max-pooling block in
        ``'winner'`` mode contributes only through each window's winner.
        """
        chosen = self.sample_rows(sample, allow_empty=True)
        index = torch.tensor(chosen, dtype=torch.long, device=self.node_relevance.device)
        parts = []
        for block in self.graph.blocks:
            inputs = self._trace.activations[block.src].index_select(0, index)
            ones = inputs.new_ones((len(chosen), block.n_dst))
            state = block.select_state(self._trace.state(block), index)
            parts.append(block.edge_messages(inputs, ones, Identity(), state))
        contributions = torch.cat(parts, dim=1) if parts else self.node_relevance.new_zeros((len(chosen), 0))
        return contributions[0] if is_index(sample) else contributions

    def conservation(self) -> list[LevelBalance]:
        """Per level (last first), relevance in and out, and what biases and the stabilizer absorbed."""
        balances = []
        for level in reversed(self.graph.levels[1:]):
            record = self._records[level.index]
            r_level = self.node_relevance[:, level.offset : level.offset + level.size]
            parts = level_balance(record, level, r_level, self._trace.preactivations[level.index])
            balances.append(LevelBalance(level.index, level.name, record.rule, **parts))
        return balances

    def conservation_table(self, sample: int | None = None) -> str:
        """:meth:`conservation` as a text table, for one sample (negative counts from the end) or
        summed over the batch (``None``)."""
        if sample is not None:
            sample = _index("sample", sample, len(self.node_relevance), "a batch")

        def value(t: Tensor) -> float:
            return float(t.sum() if sample is None else t[sample])

        header = ("level", "name", "rule", "relevance in", "out", "bias", "stabilizer", "dropped")
        rows = [header]
        for b in self.conservation():
            rows.append((str(b.level), b.name, b.rule.label(), *(f"{value(t):+.6g}" for t in
                         (b.relevance_in, b.relevance_out, b.bias, b.stabilizer, b.dropped))))
        widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)

    def __repr__(self) -> str:
        return (
            f"Explanation(batch={len(self.node_relevance)}, nodes={self.graph.num_nodes:,}, "
            f"edges={self.graph.num_edges:,}, input_relevance={tuple(self.input_relevance.shape)})"
        )



def _index(name: str, value: object, size: int, of: str) -> int:
    """``value`` as an index into ``size`` items, negative counting from the end, as in Python."""
    if not is_index(value):
        raise ArgumentTypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    index = operator.index(value)
    if not -size <= index < size:
        raise IndexOutOfRangeError(f"{name} {index} is out of range for {of} of {size} (-{size}..{size - 1})")
    return index % size


def _check_out(out: Tensor, shape: tuple[int, ...], like: Tensor) -> None:
    if not isinstance(out, Tensor):
        raise ArgumentTypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != shape or out.dtype != like.dtype or out.device != like.device or not out.is_contiguous():
        raise InputError(
            f"out must be a contiguous {like.dtype} tensor of shape {shape} on {like.device}, got "
            f"{'a non-contiguous ' if not out.is_contiguous() else ''}{out.dtype} tensor of shape {tuple(out.shape)} on {out.device}"
        )
