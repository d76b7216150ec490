"""The computation graph: levels of neurons and blocks of weighted edges between them."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor

from .activations import IDENTITY, Activation
from .blocks import Block, converted
from .errors import ArgumentTypeError, IndexOutOfRangeError, InputError
from .layout import as_node_major
from .memory import check_budget, format_bytes
from .thresholds import choose_kind

LayerType = Any  # a module class (e.g. ``torch.nn.Linear``) or a string such as ``'input'``


@dataclass(frozen=True)
class Level:
    """Nodes that come from one layer, in topological order of the graph.

    Attributes
    ----------
    index : int
        Position among the graph's levels (0 is the input).
    name : str
        Module path the level came from (``'input'`` for the input level).
    layer_type : type or str
        The module class it came from (rules can be chosen by it), or a string tag.
    shape : tuple of int
        Shape of one sample's tensor at this level; nodes are its elements in row-major order.
    offset : int
        Id of the level's first node; the level's nodes are ``offset .. offset + size - 1``.
    bias : Tensor or None
        One bias per node, or ``None`` for none.
    activation : Activation
        Element-wise function applied to the node's pre-activation.
    default_rule : Rule or None
        Rule for a structural level (pooling, sum, copy) unless a composite names the level or
        its type; ``None`` for layers with learned weights, which take the composite's rule.
    """

    index: int
    name: str
    layer_type: LayerType
    shape: tuple[int, ...]
    offset: int
    bias: Tensor | None = None
    activation: Activation = IDENTITY
    default_rule: Any = None

    @property
    def size(self) -> int:
        """Number of nodes."""
        return math.prod(self.shape)

    @property
    def nodes(self) -> range:
        """Global ids of the level's nodes."""
        return range(self.offset, self.offset + self.size)

    @property
    def type_name(self) -> str:
        """Readable name of ``layer_type``."""
        return self.layer_type if isinstance(self.layer_type, str) else self.layer_type.__name__


class Graph:
    """A network as levels of nodes (neurons) and blocks of weighted edges.

    ``graph(x)`` computes the network: for every level after the input, the pre-activation of
    node ``j`` is ``z_j = Σ_i w_ij a_i + b_j`` over its incoming edges (from any earlier level) and
    its output is ``a_j = activation(z_j)``.

    Build one with :func:`graphlrp.lower` from a torch module.

    Parameters
    ----------
    levels : sequence of Level
        In topological order; ``levels[0]`` is the input.
    blocks : sequence of Block
        Each from an earlier level to a later one.
    outputs : Tensor, optional
        Global ids of the output nodes, row-major in the output's shape (default: all nodes of
        the last level, shaped like it).
    output_shape : tuple of int, optional
        One sample's output shape when ``outputs`` is given (default ``(len(outputs),)``).
    """

    def __init__(
        self,
        levels: Sequence[Level],
        blocks: Sequence[Block],
        outputs: Tensor | None = None,
        output_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.levels: tuple[Level, ...] = tuple(levels)
        self.blocks: tuple[Block, ...] = tuple(blocks)
        self._validate_structure()
        last = self.levels[-1]
        if outputs is None:
            self.outputs = torch.arange(last.offset, last.offset + last.size, device=self.device)
            self.output_shape: tuple[int, ...] = tuple(output_shape) if output_shape is not None else last.shape
        else:
            self.output_shape = tuple(output_shape) if output_shape is not None else (len(outputs),)
        if math.prod(self.output_shape) != len(self.outputs if outputs is None else outputs):
            raise InputError(f"output_shape {self.output_shape} does not hold {len(outputs)} outputs")
        #: whether the outputs are the last level's nodes in order (the common case); decided where
        #: ``outputs`` are given (a graph moved to a device reads them on the host)
        self.outputs_are_last_level = outputs is None or (len(outputs) == last.size and bool(
            (outputs == torch.arange(last.offset, last.offset + last.size, device=outputs.device)).all()))
        if outputs is not None:
            self.outputs = outputs.to(device=self.device, dtype=torch.long)
        incoming: list[list[Block]] = [[] for _ in self.levels]
        for block in self.blocks:
            incoming[block.dst].append(block)
        #: the blocks coming into each level
        self.incoming: tuple[tuple[Block, ...], ...] = tuple(tuple(blocks) for blocks in incoming)
        #: the caller's id of every node, for graphs built from edge lists (``Graph.from_edges``)
        self.original_ids: Tensor | None = None
        #: the caller's name of every node, when names were given (``from_edges(names=...)``, ``from_networkx``)
        self.node_names: list | None = None
        self._node_major: bool | None = None

    #: a graph of any DAG given as edge lists: :func:`graphlrp.frontends.edges.graph_from_edges`,
    #: which the front-end sets here when it is defined (the data type does not import its front-ends)
    from_edges: ClassVar[Callable[..., "Graph"]]

    def _validate_structure(self) -> None:
        if not self.levels:
            raise InputError("a graph needs at least an input level")
        offset = 0
        for position, level in enumerate(self.levels):
            if level.index != position or level.offset != offset:
                raise InputError(f"level {level.name!r} has index/offset {level.index}/{level.offset}, "
                                 f"expected {position}/{offset}")
            if level.bias is not None and level.bias.shape != (level.size,):
                raise InputError(f"level {level.name!r}: bias has shape {tuple(level.bias.shape)}, expected ({level.size},)")
            offset += level.size
        for block in self.blocks:
            if not 0 <= block.src < block.dst < len(self.levels):
                raise InputError(f"{block!r} must go from an earlier level to a later one")
            if block.n_src != self.levels[block.src].size or block.n_dst != self.levels[block.dst].size:
                raise InputError(f"{block!r} does not match the sizes of levels {block.src} and {block.dst}")
            if not all(0 <= level < block.dst for level in block.context):
                raise InputError(f"{block!r} reads context levels {block.context}; they must come before level {block.dst}")

    # -- sizes --------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return self.levels[0].shape

    @property
    def num_nodes(self) -> int:
        """Number of nodes (neurons), inputs included."""
        return sum(level.size for level in self.levels)

    @property
    def num_edges(self) -> int:
        """Number of edges (nonzero weights)."""
        return sum(block.num_edges for block in self.blocks)

    @property
    def nbytes(self) -> int:
        """Bytes held by the graph's edges and biases."""
        biases = sum(l.bias.numel() * l.bias.element_size() for l in self.levels if l.bias is not None)
        return sum(block.nbytes for block in self.blocks) + biases

    @property
    def device(self) -> torch.device:
        """Device of the graph's tensors."""
        for block in self.blocks:
            return block.device
        for level in self.levels:
            if level.bias is not None:
                return level.bias.device
        outputs = self.__dict__.get("outputs")  # a graph without weights: where its outputs are
        return torch.device("cpu") if outputs is None else outputs.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the graph's weights."""
        for block in self.blocks:
            return block.dtype
        for level in self.levels:
            if level.bias is not None:
                return level.bias.dtype
        return torch.get_default_dtype()

    @property
    def node_major(self) -> bool:
        """Whether per-level tensors are held node-major while computing; see :mod:`graphlrp.layout`.

        Chosen from the block kinds (node-major unless most edges are in convolution, pooling or
        element-wise blocks); assign ``True`` or ``False`` to force a layout. Results are the same
        in both, up to rounding.
        """
        if self._node_major is None:
            node_major = sum(block.num_edges for block in self.blocks if block.prefers_node_major)
            self._node_major = 2 * node_major > self.num_edges
        return self._node_major

    @node_major.setter
    def node_major(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ArgumentTypeError(f"node_major must be True or False, got {value!r}")
        self._node_major = value

    # -- edges --------------------------------------------------------------------------------
    def edges(self, max_bytes: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Global ``(src, dst, weight)`` of every edge, block after block (the order of edge relevance).

        Convolutions' edges are listed on demand; ``max_bytes`` (default: half the available
        memory) refuses a listing that would not fit, before allocating it.
        """
        check_budget(f"listing {self.num_edges:,} edges", self.num_edges * (16 + _element_size(self.dtype)), max_bytes,
                     self.device)
        if not self.blocks:
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            return empty, empty, torch.zeros(0, dtype=self.dtype, device=self.device)
        parts = [block.edges() for block in self.blocks]
        src = torch.cat([s + self.levels[b.src].offset for (s, _, _), b in zip(parts, self.blocks)])
        dst = torch.cat([d + self.levels[b.dst].offset for (_, d, _), b in zip(parts, self.blocks)])
        return src, dst, torch.cat([w for _, _, w in parts])

    def node_label(self, node: int) -> str:
        """A readable name for a node: its level's name and its position in that level's tensor."""
        level = self.level_of(node)
        position, index = [], node - level.offset
        for extent in reversed(level.shape):
            position.append(index % extent)
            index //= extent
        where = ", ".join(map(str, reversed(position)))
        return f"input[{where}]" if level.index == 0 else f"{level.type_name} {level.name}[{where}]"

    def level_of(self, node: int) -> Level:
        """The level holding global node id ``node``."""
        for level in self.levels:
            if node in level.nodes:
                return level
        raise IndexOutOfRangeError(f"node {node} is not in the graph (it has {self.num_nodes} nodes)")

    # -- devices ------------------------------------------------------------------------------
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Graph":
        """A copy of the graph on ``device`` with floating tensors of ``dtype``.

        Blocks whose kind was chosen from their density (:attr:`Block.automatic_kind`, lowered with
        ``block_kind='auto'``) are held in the kind that device's threshold gives
        (:mod:`graphlrp.thresholds`), converted where it differs: the same edges and weights, so
        the same relevance up to rounding. Kinds given at lowering are kept.
        """
        target = self.device if device is None else torch.device(device)
        levels = [
            replace(l, bias=None if l.bias is None else l.bias.to(device=device, dtype=dtype)) for l in self.levels
        ]
        blocks = [_kind_for(b, target).to(device=device, dtype=dtype) for b in self.blocks]
        graph = Graph(levels, blocks, self.outputs, self.output_shape)
        graph.outputs = graph.outputs.to(device)  # of a graph without weights too
        graph.original_ids = None if self.original_ids is None else self.original_ids.to(device)
        graph.node_names = self.node_names
        graph._node_major = self._node_major
        return graph

    # -- computing ----------------------------------------------------------------------------
    def check_input(self, x: Tensor, finite: bool = True) -> None:
        """Raise a clear error if ``x`` is not a finite, non-empty batch of the graph's input shape,
        dtype and device: :class:`~graphlrp.errors.ArgumentTypeError` for a type or dtype,
        :class:`~graphlrp.errors.InputError` for a shape, an empty batch, a device, NaN or inf.

        ``finite=False`` leaves out the test for NaN and inf (one read of the device), for a
        caller that makes it later (:func:`check_finite_input`)."""
        if not isinstance(x, Tensor):
            raise ArgumentTypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        expected = self.input_shape
        if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise InputError(
                f"input has shape {tuple(x.shape)}, expected (batch, {', '.join(map(str, expected))})"
                + (" — add a batch dimension with x.unsqueeze(0)" if tuple(x.shape) == expected else "")
            )
        if len(x) == 0:
            raise InputError(f"input has an empty batch (shape {tuple(x.shape)}); give at least one sample")
        if not x.is_floating_point():
            raise ArgumentTypeError(f"input must be a floating point tensor, got {x.dtype}")
        if x.dtype != self.dtype:
            raise ArgumentTypeError(f"input dtype {x.dtype} does not match the graph's {self.dtype}; use graph.to(dtype=...)")
        if x.device != self.device:
            raise InputError(f"input is on {x.device} but the graph is on {self.device}; use graph.to({str(x.device)!r})")
        if finite and not math.isfinite(x.sum().item()):  # a finite sum has only finite terms
            check_finite_input(x)

    def input_activations(self, x: Tensor) -> Tensor:
        """Level 0's activations ``(B, n)`` for the batch ``x``, in the graph's layout."""
        first = self.levels[0]
        flat = x.reshape(len(x), first.size)
        return first.activation(as_node_major(flat) if self.node_major else flat)

    def preactivation(self, level: Level, activations: Sequence[Tensor], states: dict[int, object],
                      like: Tensor) -> Tensor:
        """``level``'s pre-activation: its incoming blocks applied to their sources' ``activations``, plus its bias.

        The states of sample-dependent blocks (``block.prepare``) are stored in ``states`` by
        ``id(block)``; ``like`` gives the dtype and device of a level without incoming blocks.
        """
        z = None
        for block in self.incoming[level.index]:
            state = block.prepare(activations[block.src], *(activations[c] for c in block.context))
            if state is not None:
                states[id(block)] = state
            part = block.forward(activations[block.src], state)
            z = part if z is None else z.add_(part)  # block results are new tensors: summed in place
        if z is None:
            z = like.new_zeros((len(activations[0]), level.size))
        if level.bias is not None:
            z.add_(level.bias)
        return z

    def gather_outputs(self, activations: Sequence[Tensor]) -> Tensor:
        """The network's output ``(B, *output_shape)`` from every level's ``activations``."""
        batch = len(activations[0])
        if self.outputs_are_last_level:
            return activations[-1].reshape(batch, *self.output_shape)
        nodes = torch.cat(list(activations), dim=1)
        return nodes.index_select(1, self.outputs).reshape(batch, *self.output_shape)

    def __call__(self, x: Tensor) -> Tensor:
        """The network's output for the batch ``x`` of shape ``(B, *input_shape)``."""
        self.check_input(x)
        x = x.detach()
        activations = [self.input_activations(x)]
        states: dict[int, object] = {}
        for level in self.levels[1:]:
            activations.append(level.activation(self.preactivation(level, activations, states, x)))
        return self.gather_outputs(activations)

    def __repr__(self) -> str:
        header = (
            f"Graph(levels={len(self.levels)}, nodes={self.num_nodes:,}, edges={self.num_edges:,}, "
            f"memory={format_bytes(self.nbytes)}, device={self.device}, dtype={self.dtype})"
        )
        rows = [("level", "name", "type", "shape", "nodes", "activation", "incoming")]
        for level in self.levels:
            incoming = ", ".join(f"{b.kind} from {b.src} ({b.num_edges:,} edges)" for b in self.incoming[level.index])
            rows.append(
                (str(level.index), level.name, level.type_name, str(level.shape), f"{level.size:,}",
                 level.activation.name, incoming or "-")
            )
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join([header, *lines])


def _kind_for(block: Block, device: torch.device) -> Block:
    """``block`` in the kind ``device``'s threshold gives it, if its kind was chosen automatically
    (converted where it is, before it moves: its edges are read on its own device)."""
    if not block.automatic_kind:
        return block
    return converted(block, choose_kind(block.num_edges, block.n_src, block.n_dst, device))


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def check_finite_input(x: Tensor) -> None:
    """Raise :class:`~graphlrp.errors.InputError` naming the samples of ``x`` that hold NaN or inf."""
    finite = torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:5].tolist()
        raise InputError(f"input contains NaN or inf (samples {bad})")
