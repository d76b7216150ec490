"""Sums over samples of one graph's node, bias and edge relevance, built from explanations.

Summed over samples, an edge's messages ``Σ_b Σ_t c_t f_t(a_bi) f_t(w_ij) s_bj`` are, per term,
``c_t f_t(w_ij) · Σ_b f_t(a_bi) s_bj``: every block adds the sums ``Σ_b x_bi s_bj`` of its slots
with its own kernel (:meth:`graphlrp.blocks.Block.add_message_sums`: one matrix product for a
dense block, a sampled product for CSR and edge lists, a batched product over positions for a
convolution). They are kept per weight transform and multiplied by the transformed weights once,
when the sums are read.

Sums of ``|message|`` separate the same way, ``|c_t| |f_t(w)| · Σ_b |f_t(a)| |s|``, when on
every edge at most one term is nonzero per sample (:func:`separable`): the terms' input or weight
transforms keep opposite signs (``a⁺`` against ``a⁻``, ``w⁺`` against ``w⁻``) or their groups
serve destinations of opposite sign. ε, z⁺, αβ, γ, w², flat, and the structural levels' Pass and
Norm qualify; z^B (its bound terms overlap the plain term) does not, and its levels sum
``|message|`` of every sample, a chunk of samples at a time.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..blocks import Block, DenseBlock
from ..blocks.base import SUM_CHUNK_ELEMENTS
from ..errors import InputError
from ..explanation import Explanation
from ..graph import Graph
from ..propagate import LevelRecord, _Inputs
from ..rules import Group, Term
from ..transforms import Negative, Positive, Transform, Zero
from .operands import Gathering, gathering_rows

#: samples a graph of another dtype than float64 sums in its own dtype before they are added to
#: the float64 sums (a product written straight into a running sum costs no extra pass)
FLUSH_SAMPLES = 1024
#: elements of a block's sums a flush converts and weighs at a time (its float64 piece stays in
#: cache between the conversion and the multiply-add)
FLUSH_PIECE = 1 << 16

_ALL = frozenset((-1, 0, 1))
_SERVED = {"all": _ALL, "positive": frozenset((1,)), "negative": frozenset((-1,))}


def _support(transform: Transform) -> frozenset[int]:
    """Signs of the argument at which ``transform`` may be nonzero."""
    if isinstance(transform, Positive):
        return frozenset((1,))
    if isinstance(transform, Negative):
        return frozenset((-1,))
    return _ALL


def _exclusive(first: tuple[Group, Term], second: tuple[Group, Term]) -> bool:
    """Whether two terms are never both nonzero on one edge in one sample."""
    (group_a, a), (group_b, b) = first, second
    return (not _support(a.inputs) & _support(b.inputs) or not _support(a.weights) & _support(b.weights)
            or not _SERVED[group_a.served] & _SERVED[group_b.served])


def separable(groups: Sequence[Group]) -> bool:
    """Whether the sum of ``|message|`` of a rule's groups separates per term (at most one term
    nonzero per edge and sample)."""
    terms = [(group, term) for group in groups for term in group.terms]
    return all(_exclusive(terms[i], terms[j]) for i in range(len(terms)) for j in range(i + 1, len(terms)))


def inputs_from_edges(graph: Graph, blocks: Sequence[Block], absolute: bool) -> bool:
    """Whether the input level's summed relevance follows from its outgoing edges' summed messages
    (``blocks``: the graph's blocks as the sums see them).

    A source node's relevance is the sum of the messages leaving it, sample by sample, so its sum
    over samples is the sum of those edges' summed messages: where every block leaving the input
    level keeps one slot per edge (not a convolution's shared kernel) with fixed weights, and not
    for sums of magnitudes (``|Σ_j m_ij| ≠ Σ_j |m_ij|``).
    """
    first = graph.levels[0].index
    leaving = [block for block in blocks if block.src == first]
    return bool(leaving) and not absolute and all(b.slot_per_edge and b.fixed_slot_weights for b in leaving)


class SlotWeights:
    """Every block's transformed slot weights in float64 (of magnitudes if ``absolute``), worked out
    once per aggregate and reused by every chunk's sums.

    ``edges=False`` keeps sums per parameter only: :attr:`blocks` holds each block as
    :meth:`graphlrp.blocks.Block.per_parameter` gives it (a convolution sums its edges per kernel
    weight), else the graph's blocks themselves.
    """

    def __init__(self, graph: Graph, absolute: bool, edges: bool = True) -> None:
        self.graph, self.absolute, self.edges = graph, absolute, edges
        #: the blocks as the sums see them
        self.blocks: list[Block] = list(graph.blocks) if edges else [block.per_parameter() for block in graph.blocks]
        self._found: dict[tuple[int, Transform], Tensor] = {}

    def __call__(self, position: int, transform: Transform) -> Tensor:
        key = (position, transform)
        if key not in self._found:
            weights = self.blocks[position].slot_weights(transform).to(torch.float64)
            self._found[key] = (weights.abs() if self.absolute else weights).contiguous()
        return self._found[key]


class Sums:
    """Float64 sums over samples, per class (one class unless split by class), in one vector.

    The vector holds the counts, then ``nodes`` and ``biases`` (``(classes, num_nodes)``: node
    relevance and the relevance each node's bias term absorbed), then per block ``weighted[k]``,
    its slot sums with the weights applied; these are views of it. ``running[k]`` holds a block's
    slot sums per weight transform in the graph's dtype, multiplied by the transformed weights and
    added to ``weighted[k]`` in float64 every ``FLUSH_SAMPLES`` samples and when the sums are read.
    Where a block's product pays for it, its operands are first gathered over batches
    (:mod:`graphlrp.aggregation.operands`) and multiplied into ``running[k]`` when the gathering
    is full and at every flush.
    Every buffer is allocated once: :meth:`reset` zeroes them for the next chunk.
    """

    def __init__(self, graph: Graph, classes: int, absolute: bool, weights: SlotWeights | None = None) -> None:
        self.graph = graph
        self.absolute = absolute
        self.classes = classes
        self.weights = weights if weights is not None else SlotWeights(graph, absolute)
        #: the blocks as these sums see them (:attr:`SlotWeights.blocks`)
        self.blocks = self.weights.blocks
        self.counts = torch.zeros(classes, dtype=torch.int64)
        self.values = torch.zeros(sum(self._lengths()), dtype=torch.float64, device=graph.device)
        _, self.nodes, self.biases, *self.weighted = self._views(self.values)
        self.running: list[dict[Transform, Tensor]] = [{} for _ in self.blocks]
        #: per ``(block, weight transform, class)`` the operands gathered for its next product
        self.gathered: dict[tuple[int, Transform, int], Gathering] = {}
        self._gathering_rows = [gathering_rows(block) for block in self.blocks]
        self._scratch: Tensor | None = None
        #: per block, whether its float64 sums are still to be zeroed (their first write overwrites them)
        self._fresh = [False] * len(self.blocks)
        self._partial_samples = 0
        self._separable: dict[int, bool] = {}
        self._betas: dict[tuple[int, int], tuple[Group, tuple[Tensor, Tensor] | None]] = {}
        #: whether the input level's node sums are read from the sums of the edges leaving it (then
        #: the explanations need not move relevance onto the input level, and these sums hold none)
        self.inputs_from_edges = inputs_from_edges(graph, self.blocks, absolute)

    def _running(self, position: int, transform: Transform) -> Tensor:
        """The running slot sums of a block and weight transform, in the graph's dtype."""
        found = self.running[position].get(transform)
        if found is None:
            block = self.blocks[position]
            found = self.running[position][transform] = torch.zeros(
                (self.classes, *block.sum_shape), dtype=self.graph.dtype, device=self.graph.device)
        return found

    def _in_float64(self, sums: Tensor) -> Tensor:
        """``sums`` as float64: itself, or a copy in a scratch buffer reused by every flush."""
        if sums.dtype == torch.float64:
            return sums
        if self._scratch is None or self._scratch.numel() < sums.numel():
            self._scratch = torch.empty(sums.numel(), dtype=torch.float64, device=sums.device)
        return self._scratch[: sums.numel()].view(sums.shape).copy_(sums)

    def _block_sums(self, position: int) -> Tensor:
        """Block ``position``'s float64 sums, zeroed first if they are still to be."""
        if self._fresh[position]:
            self.weighted[position].zero_()
            self._fresh[position] = False
        return self.weighted[position]

    def flush(self) -> None:
        """Multiply the gathered operands into the running sums, add the running sums times their
        transformed weights to the float64 sums, and zero them."""
        for key, gathering in self.gathered.items():
            self._multiply(key, gathering)
        for position, running in enumerate(self.running):
            for transform, sums in running.items():
                self._add_weighted(position, sums, self.weights(position, transform))
            self._block_sums(position)
        self._partial_samples = 0

    def _add_weighted(self, position: int, sums: Tensor, weights: Tensor) -> None:
        """``weighted[position] += sums · weights`` in float64 (written, not added, while the block's
        sums are still to be zeroed), zeroing ``sums``: a piece of the slots at a time where every
        slot has a weight of its own (a convolution's weights broadcast over its positions)."""
        fresh, self._fresh[position] = self._fresh[position], False
        target = self.weighted[position]
        if weights.numel() != target[0].numel():
            self._weigh(sums, weights, target, fresh)
            return
        target, sums, weights = target.view(self.classes, -1), sums.view(self.classes, -1), weights.view(-1)
        step = max(1, FLUSH_PIECE // self.classes)
        for start in range(0, len(weights), step):
            piece = slice(start, start + step)
            self._weigh(sums[:, piece], weights[piece], target[:, piece], fresh)

    def _weigh(self, running: Tensor, weights: Tensor, slots: Tensor, fresh: bool) -> None:
        """``slots (+)= running · weights`` in float64, zeroing ``running``."""
        if fresh:
            torch.mul(self._in_float64(running), weights, out=slots)
        else:
            slots.addcmul_(self._in_float64(running), weights)
        running.zero_()

    def reset(self) -> None:
        """Zero every sum, keeping the buffers (for the next chunk); the block sums are zeroed
        when first written."""
        self.counts.zero_()
        self.values[: self.classes * (1 + 2 * self.graph.num_nodes)].zero_()
        self._fresh = [True] * len(self.blocks)
        if self._partial_samples:  # (a flush leaves the running sums zero)
            self._zero_running()

    def _zero_running(self) -> None:
        for gathering in self.gathered.values():
            gathering.clear()
        for running in self.running:
            for sums in running.values():
                sums.zero_()
        self._partial_samples = 0

    # -- adding an explanation --------------------------------------------------------------
    def add(self, explanation: Explanation, classes: Tensor | None) -> None:
        """Add every sample of ``explanation``; ``classes (B,)`` puts sample ``b`` into class
        ``classes[b]`` (``None``: all into class 0)."""
        batch = len(explanation.node_relevance)
        if self._partial_samples + batch > FLUSH_SAMPLES:
            self.flush()
        self._partial_samples += batch
        if classes is None:
            self._add_rows(explanation, 0, None, batch)
            return
        for k in torch.unique(classes).tolist():
            rows = torch.nonzero(classes == k).flatten().to(explanation.node_relevance.device)
            self._add_rows(explanation, int(k), rows, len(rows))

    def _add_rows(self, explanation: Explanation, k: int, rows: Tensor | None, count: int) -> None:
        def chosen(t: Tensor) -> Tensor:
            return t if rows is None else t.index_select(0, rows)

        self.counts[k] += count
        self.nodes[k] += self._magnitude(chosen(explanation.node_relevance)).sum(0, dtype=torch.float64)
        records = explanation.records
        self._add_biases(records, chosen, k)
        activations = explanation.activations
        inputs: dict[int, _Inputs] = {}
        for position, block in enumerate(self.blocks):
            if block.src not in inputs:
                inputs[block.src] = _Inputs(self.graph.levels[block.src], chosen(activations[block.src]))
            state = explanation.block_state(block)
            if state is not None and rows is not None:
                state = block.select_state(state, rows)
            record = records[block.dst]
            quotients = [chosen(q) for q in record.quotients]
            if not block.fixed_slot_weights or (self.absolute and not self._is_separable(record)):
                self._add_messages(position, block, record, inputs[block.src], quotients, state, k)
            else:
                self._add_terms(position, block, record, inputs[block.src], quotients, state, k)

    def _magnitude(self, values: Tensor) -> Tensor:
        return values.abs() if self.absolute else values

    def _is_separable(self, record: LevelRecord) -> bool:
        key = id(record.groups)
        if key not in self._separable:
            self._separable[key] = separable(record.groups)
        return self._separable[key]

    def _add_biases(self, records: Sequence[LevelRecord | None], chosen, k: int) -> None:
        """Per node ``Σ_b Σ_g scale_g s_gbj β_gj``: summed over samples first, unless of magnitudes."""
        for level in self.graph.levels[1:]:
            if level.bias is None:
                continue
            record = records[level.index]
            total = None
            for g, (group, quotient) in enumerate(zip(record.groups, record.quotients)):
                beta = self._bias_term(level, g, group)
                if beta is None:
                    continue
                if self.absolute:
                    part = chosen(quotient) * beta[0]
                else:
                    part = chosen(quotient).sum(0, dtype=torch.float64) * beta[1]
                total = part if total is None else total + part
            if total is not None:
                if self.absolute:
                    total = total.abs().sum(0, dtype=torch.float64)
                self.biases[k, level.offset : level.offset + level.size] += total

    def _bias_term(self, level, g: int, group: Group) -> tuple[Tensor, Tensor] | None:
        """``scale · Σ_t sign_t β_t`` of a level's group ``g``, in the graph's dtype and in float64
        (``None`` without bias terms), worked out once per level and group."""
        key = (level.index, g)
        found = self._betas.get(key)
        if found is None or found[0] is not group:
            terms = [t.sign * t.bias(level.bias) for t in group.terms if not isinstance(t.bias, Zero)]
            beta = sum(terms) * group.scale if terms else None
            found = self._betas[key] = (group, None if beta is None else (beta, beta.to(torch.float64)))
        return found[1]

    def _add_terms(self, position: int, block: Block, record: LevelRecord, inputs: _Inputs,
                   quotients: list[Tensor], state: object, k: int) -> None:
        """Each term's slot sums into the sums of its weight transform (of magnitudes if absolute)."""
        magnitudes: dict[int, Tensor] = {}
        for g, (group, quotient) in enumerate(zip(record.groups, quotients)):
            for term in group.terms:
                x = inputs(term.inputs)
                if x is None:
                    continue
                factor = group.scale * term.sign
                if self.absolute:
                    x, factor = x.abs(), abs(factor)
                    if g not in magnitudes:
                        magnitudes[g] = quotient.abs()
                    quotient_used = magnitudes[g]
                else:
                    quotient_used = quotient
                if state is None and self._gathering_rows[position] >= 2 * len(x):
                    self._gather((position, term.weights, k), x, quotient_used, factor)
                else:
                    block.add_message_sums(self._running(position, term.weights)[k], x, quotient_used, factor, state)

    def _gather(self, key: tuple[int, Transform, int], x: Tensor, s: Tensor, factor: float) -> None:
        """Add a term's rows to the gathering of its block, weight transform and class, first
        multiplying what the gathering holds if the rows do not fit."""
        gathering = self.gathered.get(key)
        if gathering is None:
            gathering = self.gathered[key] = Gathering(self._gathering_rows[key[0]], self.blocks[key[0]], x,
                                                          self.graph.node_major)
        if gathering.room < len(x):
            self._multiply(key, gathering)
        gathering.append(x, s, factor)

    def _multiply(self, key: tuple[int, Transform, int], gathering: Gathering) -> None:
        """Add the product of a gathering's rows to its running sums."""
        if gathering.filled:
            position, transform, k = key
            x, s = gathering.take()
            self.blocks[position].add_message_sums(self._running(position, transform)[k], x, s)

    def _add_messages(self, position: int, block: Block, record: LevelRecord, inputs: _Inputs,
                      quotients: list[Tensor], state: object, k: int) -> None:
        """``Σ_b message`` (``Σ_b |message|`` if absolute) of every edge from each sample's messages,
        a chunk of samples at a time."""
        batch = len(quotients[0]) if quotients else 0
        chunk = max(1, SUM_CHUNK_ELEMENTS // max(1, block.num_edges))
        slots = block.edge_slots()
        target = self._block_sums(position)[k].view(-1)
        for start in range(0, batch, chunk):
            rows = torch.arange(start, min(start + chunk, batch), device=quotients[0].device)
            part = None if state is None else block.select_state(state, rows)
            messages = None
            for group, quotient in zip(record.groups, quotients):
                for term in group.terms:
                    x = inputs(term.inputs)
                    if x is None:
                        continue
                    m = block.edge_messages(x[start : start + chunk], quotient[start : start + chunk], term.weights,
                                            part)
                    factor = group.scale * term.sign
                    messages = m.mul_(factor) if messages is None else messages.add_(m, alpha=factor)
            if messages is not None:
                summed = (messages.abs() if self.absolute else messages).sum(0, dtype=torch.float64)
                target.index_add_(0, slots, summed)

    # -- reading ----------------------------------------------------------------------------
    def collapse(self) -> None:
        """Bring every running sum into the float64 sums."""
        self.flush()

    # -- as one vector ---------------------------------------------------------------------
    def _lengths(self) -> list[int]:
        sizes = [self.classes * math.prod(block.sum_shape) for block in self.blocks]
        return [self.classes, self.classes * self.graph.num_nodes, self.classes * self.graph.num_nodes, *sizes]

    def vector(self) -> Tensor:
        """Every sum in one float64 vector: the counts, node sums, bias sums, then each block's
        sums with the weights applied (what :meth:`add_vector` and :meth:`load_vector` read).
        It is these sums' own storage, not a copy: it changes when they do."""
        self.collapse()
        self.values[: self.classes].copy_(self.counts)
        return self.values

    def move_to(self, storage: Tensor) -> None:
        """Keep these sums in ``storage`` from now on (a float64 vector shaped like :attr:`values`,
        whatever it holds), zeroed, letting go of the storage :meth:`vector` returned."""
        self.values = storage
        _, self.nodes, self.biases, *self.weighted = self._views(storage)
        self.reset()

    def samples_in(self, vector: Tensor) -> int:
        """Samples counted in a :meth:`vector`."""
        return int(vector[: self.classes].sum())

    def _views(self, vector: Tensor) -> list[Tensor]:
        pieces = vector.split(self._lengths())
        blocks = [piece.view(self.classes, *block.sum_shape) for piece, block in zip(pieces[3:], self.blocks)]
        nodes = (self.classes, self.graph.num_nodes)
        return [pieces[0], pieces[1].view(nodes), pieces[2].view(nodes), *blocks]

    def add_vector(self, vector: Tensor) -> None:
        """Add the sums of a :meth:`vector` to these, element by element."""
        self.collapse()
        self.counts += vector[: self.classes].round().to(device="cpu", dtype=torch.int64)
        self.values[self.classes :].add_(vector[self.classes :])

    def add_sums(self, other: "Sums") -> None:
        """Add ``other``'s sums to these, element by element."""
        self.add_vector(other.vector())

    def load_vector(self, vector: Tensor) -> None:
        """Make these sums the ones of a :meth:`vector`, bit for bit."""
        self.counts = vector[: self.classes].round().to(device="cpu", dtype=torch.int64)
        if vector.data_ptr() != self.values.data_ptr():  # (a vector broadcast into these sums' own is read as is)
            self.values.copy_(vector)
        self._fresh = [False] * len(self.blocks)
        self._zero_running()

    def load_parts(self, counts: Tensor, nodes: Tensor, biases: Tensor, blocks: Sequence[Tensor]) -> None:
        """Make these sums the given counts, node, bias and block sums (shaped as these hold them)."""
        self.reset()
        self._fresh = [False] * len(self.blocks)
        self.counts = counts.to(device="cpu", dtype=torch.int64).clone()
        for mine, given in zip((self.nodes, self.biases, *self.weighted), (nodes, biases, *blocks)):
            mine.copy_(given)

    def node_values(self) -> Tensor:
        """``(classes, num_nodes)`` node sums, the input level's read from its edges' sums where
        :attr:`inputs_from_edges` (a new tensor)."""
        self.collapse()
        values = self.nodes.clone()
        if self.inputs_from_edges:
            first = self.graph.levels[0]
            inputs = values[:, first.offset : first.offset + first.size]
            inputs.zero_()
            for position, block in enumerate(self.blocks):
                if block.src == first.index:
                    inputs += block.source_sums(self.weighted[position])
        return values

    def edge_values(self, position: int) -> Tensor:
        """``(classes, num_edges)`` of block ``position``, in its edges' order."""
        if self.blocks[position] is not self.graph.blocks[position]:
            raise InputError(f"block {position} ({self.graph.blocks[position].kind}) was summed per parameter only "
                             f"(edges=False): its edges' sums were not kept; aggregate with edges=True for them")
        self.collapse()
        block, values = self.blocks[position], self.weighted[position].reshape(self.classes, -1)
        if isinstance(block, DenseBlock) and block.num_edges == values.shape[1]:  # every weight an edge, row-major
            return values
        return values[:, block.edge_slots()]

    def weight_values(self, position: int) -> Tensor:
        """``(classes, *weight shape)`` of block ``position`` (:meth:`Block.weight_sums`)."""
        self.collapse()
        return self.blocks[position].weight_sums(self.weighted[position])
