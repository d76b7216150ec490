"""``explain``: LRP over a graph, and the :class:`Explanation` it returns."""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from . import export
from .composites import Composite
from .errors import ArgumentTypeError, IndexOutOfRangeError, InputError, NumericRangeError
from .graph import Graph
from .layout import is_node_major
from .memory import check_budget
from .propagate import LevelRecord, Trace, _Inputs, level_balance, redistribute_level, run_forward
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
                     self.graph.num_edges * (len(chosen) * element * 3 + 16 + element), max_bytes)
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
        written = False
        for group, chosen in zip(self._records[block.dst].groups, quotients):
            for term in group.terms:
                term_input = inputs(term.inputs)
                if term_input is None:
                    continue
                factor = group.scale * term.sign
                if not written and factor == 1.0:
                    block.edge_messages(term_input, chosen, term.weights, state, out=out)
                elif not written:
                    torch.mul(block.edge_messages(term_input, chosen, term.weights, state), factor, out=out)
                else:
                    out.add_(block.edge_messages(term_input, chosen, term.weights, state), alpha=factor)
                written = True
        if not written:
            out.zero_()

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


_is_index = is_index


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


def _check_request(output: Tensor, target, output_relevance: Tensor | None) -> Tensor | None:
    """The target class of every sample as a ``(B, 1)`` index (``None`` with ``output_relevance``),
    after checking what was asked for."""
    batch = len(output)
    if (target is None) == (output_relevance is None):
        raise InputError("give exactly one of target= (class index per sample) and output_relevance=")
    if output_relevance is not None:
        if not isinstance(output_relevance, Tensor):
            raise ArgumentTypeError(f"output_relevance must be a torch.Tensor, got {type(output_relevance).__name__}")
        if tuple(output_relevance.shape) != tuple(output.shape):
            raise InputError(f"output_relevance has shape {tuple(output_relevance.shape)}, expected the "
                             f"output's {tuple(output.shape)}")
        if not bool(torch.isfinite(output_relevance).all()):
            raise InputError("output_relevance contains NaN or inf")
        return None
    try:
        targets = torch.as_tensor(target, device=output.device)
    except (TypeError, ValueError, RuntimeError):
        raise ArgumentTypeError(f"target must be an int, a sequence of ints or an integer tensor, got {target!r}") from None
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ArgumentTypeError(f"target must be integer class indices, got dtype {targets.dtype}")
    targets = targets.long().reshape(-1)
    if targets.numel() == 1:
        targets = targets.expand(batch)
    if targets.numel() != batch:
        raise InputError(f"target has {targets.numel()} entries for a batch of {batch}; give one, or one per sample")
    classes = output[0].numel()
    if batch <= 1024:  # one transfer for a small batch ...
        values = targets.tolist()
        low, high = (min(values), max(values)) if values else (0, 0)
    else:  # ... two reductions for a large one
        low, high = int(targets.min()), int(targets.max())
    if batch and not 0 <= low <= high < classes:
        bad = targets[(targets < 0) | (targets >= classes)][:5].tolist()
        raise IndexOutOfRangeError(f"target {bad} out of range: the output has {classes} classes (0..{classes - 1})")
    return targets[:, None]


def _seed_relevance(graph: Graph, output: Tensor, targets: Tensor | None, output_relevance: Tensor | None,
                    node_relevance: Tensor) -> None:
    """Put the initial relevance on the output nodes: the target logit of each sample, or
    ``output_relevance``."""
    flat = output.reshape(len(output), -1)
    if targets is not None:
        values = flat.gather(1, targets)
    if graph.outputs_are_last_level:  # written straight into the last level's nodes
        last = graph.levels[-1]
        nodes = node_relevance[:, last.offset : last.offset + last.size]
        if targets is not None:
            nodes.scatter_(1, targets, values)
        else:
            nodes.copy_(output_relevance.reshape(flat.shape))
        return
    initial = torch.zeros_like(flat).scatter_(1, targets, values) if targets is not None else output_relevance.to(
        device=flat.device, dtype=flat.dtype).reshape(flat.shape)
    node_relevance.index_add_(1, graph.outputs, initial)


def _relevance_storage(graph: Graph, like: Tensor, batch: int) -> Tensor:
    """Zeros ``(B, num_nodes)`` in the graph's layout (:mod:`graphlrp.layout`)."""
    if graph.node_major:
        return like.new_zeros((graph.num_nodes, batch)).T
    return like.new_zeros((batch, graph.num_nodes))


def explain(
    graph: Graph,
    x: Tensor,
    target: int | Sequence[int] | Tensor | None = None,
    rule: Rule | None = None,
    composite: Composite | None = None,
    output_relevance: Tensor | None = None,
) -> Explanation:
    """Explain the graph's output for the batch ``x`` with Layer-wise Relevance Propagation.

    Parameters
    ----------
    graph : Graph
        The network, e.g. from :func:`graphlrp.lower`.
    x : Tensor
        Input batch ``(B, *graph.input_shape)``, ``B >= 1``, on the graph's device and dtype,
        finite. Only read: a tensor that requires grad is used without its autograd history.
    target : int or sequence of int or Tensor
        Class to explain, one for all samples or one per sample; relevance starts as that class's
        output value (the logit), zero elsewhere.
    rule : Rule, optional
        One rule for every level (default ``Epsilon()`` when no composite is given).
    composite : Composite, optional
        A rule per level; give ``rule`` or ``composite``, not both.
    output_relevance : Tensor, optional
        Initial relevance of the output's shape, instead of ``target``.

    Returns
    -------
    Explanation
        Its relevance is finite: what would leave the range of the graph's dtype is refused.

    Raises
    ------
    ArgumentTypeError
        ``graph``, ``rule``, ``composite``, ``x`` or ``target`` of the wrong type (a composite
        given as ``rule=``, a model instead of its graph).
    InputError
        ``x`` of the wrong shape or device, empty, or holding NaN or inf; a bad ``target`` or
        ``output_relevance``.
    IndexOutOfRangeError
        A target class outside the output (the message lists the offending targets).
    NumericRangeError
        Before anything is computed: a rule whose parameters, applied to the graph's weights and
        biases, overflow its dtype (``Epsilon(1e39)`` or ``WSquare`` on a weight of ``1e30`` in
        float32). After the forward pass: an output that is inf or NaN. At the end: relevance
        that left the dtype's range (it names the level and rule).
    """
    _check_arguments(graph, rule, composite)
    composite = composite if composite is not None else Composite(default=rule)
    level_rules = composite.rules(graph)
    graph.check_range(level_rules)
    trace = run_forward(graph, x, level_rules)
    _check_finite_output(trace.output)
    targets = _check_request(trace.output, target, output_relevance)
    if output_relevance is not None:
        output_relevance = output_relevance.detach()
    batch = len(x)
    node_relevance = _relevance_storage(graph, trace.output, batch)
    _seed_relevance(graph, trace.output, targets, output_relevance, node_relevance)
    views = [node_relevance[:, l.offset : l.offset + l.size] for l in graph.levels]
    records: list[LevelRecord | None] = [None] * len(graph.levels)
    for level in reversed(graph.levels[1:]):
        records[level.index] = redistribute_level(graph, level, level_rules[level.index], trace, views)
    trace.release()
    _check_finite_relevance(graph, node_relevance, level_rules)
    _own_copy_of_input(trace, x)
    return Explanation(graph, trace, node_relevance, records)


def _own_copy_of_input(trace: Trace, x: Tensor) -> None:
    """Replace what the trace shares with the caller's ``x`` (the input level's activation is a view
    of it) by a copy: the explanation's later results (edge relevance) then do not follow changes
    the caller makes to ``x``."""
    storage = x.untyped_storage().data_ptr()
    for position, activation in enumerate(trace.activations):
        if activation.untyped_storage().data_ptr() == storage:
            trace.activations[position] = activation.clone()
    if trace.output.untyped_storage().data_ptr() == storage:
        trace.output = trace.output.clone()


def _check_arguments(graph: object, rule: object, composite: object) -> None:
    """Raise :class:`~graphlrp.errors.ArgumentTypeError` for a graph, rule or composite of the wrong kind."""
    if not isinstance(graph, Graph):
        hint = "; lower the model first: graph = graphlrp.lower(model, x)" if isinstance(graph, torch.nn.Module) else ""
        raise ArgumentTypeError(f"graph must be a graphlrp.Graph (from graphlrp.lower or Graph.from_edges), "
                                f"got {type(graph).__name__}{hint}")
    if isinstance(rule, Composite):
        raise ArgumentTypeError(f"rule= takes one rule for every level, got the composite {rule!r}; "
                                "pass a composite as composite=, e.g. explain(graph, x, target, composite=graphlrp.composites.EpsilonPlus())")
    if rule is not None and not isinstance(rule, Rule):
        raise ArgumentTypeError(f"rule must be a graphlrp rule (graphlrp.rules), got {rule!r}")
    if isinstance(composite, Rule):
        raise ArgumentTypeError(f"composite= takes a Composite, got the rule {composite!r}; pass one rule as rule=")
    if composite is not None and not isinstance(composite, Composite):
        raise ArgumentTypeError(f"composite must be a graphlrp Composite (graphlrp.composites), got {composite!r}")
    if rule is not None and composite is not None:
        raise InputError("give rule= or composite=, not both")


def _nonfinite_samples(values: Tensor) -> list[int] | None:
    """The first samples (rows) of ``values (B, …)`` holding NaN or inf, ``None`` if all are finite.

    One sum decides in the common case: a finite sum has only finite terms. It runs over the
    tensor in its stored order (a node-major tensor's transpose), many times faster than across it.
    """
    stored = values.T if is_node_major(values) else values
    if math.isfinite(stored.sum().item()):
        return None
    finite = torch.isfinite(values.reshape(len(values), -1)).all(dim=1)
    return None if bool(finite.all()) else torch.nonzero(~finite).flatten()[:5].tolist()


def _check_finite_output(output: Tensor) -> None:
    """Raise :class:`~graphlrp.errors.NumericRangeError` if the forward pass overflowed."""
    bad = _nonfinite_samples(output)
    if bad is not None:
        raise NumericRangeError(
            f"the network's output is inf or NaN for samples {bad}: the forward pass leaves the range of "
            f"{output.dtype} on this input; scale the input down or use graph.to(dtype=torch.float64)"
        )


def _check_finite_relevance(graph: Graph, node_relevance: Tensor, level_rules: list[Rule | None]) -> None:
    """Raise :class:`~graphlrp.errors.NumericRangeError` naming the highest level whose relevance
    left the range of the graph's dtype, and the rule of the level above it."""
    if _nonfinite_samples(node_relevance) is None:
        return
    for level in reversed(graph.levels):
        bad = _nonfinite_samples(node_relevance[:, level.offset : level.offset + level.size])
        if bad is not None:
            rules = sorted({level_rules[b.dst].label() for b in graph.blocks if b.src == level.index})
            raise NumericRangeError(
                f"relevance of level {level.index} ({level.name!r}) is inf or NaN for samples {bad}: it leaves "
                f"the range of {graph.dtype} under {', '.join(rules) or 'the initial relevance'}; "
                "use a larger epsilon or parameters of smaller magnitude, or graph.to(dtype=torch.float64)"
            )
